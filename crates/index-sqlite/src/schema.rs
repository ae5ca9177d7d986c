//! Schema versions (SQLite's `user_version`) and the migrations between them. Each runs in
//! one transaction, so a database is always at one version or the next, never between.

use proxyd_cache::{IndexError, IndexErrorKind};
use rusqlite::Connection;

use crate::index_error;

/// Migration `n` takes the database from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the first releases (a database they made is at version 0 with these
    // tables already there).
    "CREATE TABLE IF NOT EXISTS artifacts (
        key TEXT PRIMARY KEY,
        ecosystem TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        filename TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        upstream_url TEXT NOT NULL,
        fetched_at INTEGER NOT NULL,
        hit_count INTEGER NOT NULL DEFAULT 0,
        last_access INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS documents (
        key TEXT PRIMARY KEY,
        body BLOB NOT NULL,
        etag TEXT,
        last_modified TEXT,
        content_type TEXT,
        fetched_at INTEGER NOT NULL
    );",
    // 2: the index is the source of truth. Last access in milliseconds, indexed for the
    // eviction order; a mark for two-phase eviction; when reconciliation last saw the object;
    // totals kept by triggers in the same transaction as every change.
    "ALTER TABLE artifacts ADD COLUMN evicted_at INTEGER;
    ALTER TABLE artifacts ADD COLUMN sighted_at INTEGER;
    UPDATE artifacts SET last_access = last_access * 1000;
    CREATE INDEX artifacts_by_last_access ON artifacts (last_access, key)
        WHERE evicted_at IS NULL;
    CREATE INDEX artifacts_by_mark ON artifacts (evicted_at) WHERE evicted_at IS NOT NULL;
    CREATE TABLE totals (
        ecosystem TEXT PRIMARY KEY,
        artifacts INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    INSERT INTO totals (ecosystem, artifacts, bytes)
        SELECT ecosystem, count(*), sum(size) FROM artifacts GROUP BY ecosystem;
    CREATE TRIGGER totals_on_insert AFTER INSERT ON artifacts WHEN NEW.evicted_at IS NULL
    BEGIN
        INSERT INTO totals (ecosystem, artifacts, bytes) VALUES (NEW.ecosystem, 1, NEW.size)
        ON CONFLICT (ecosystem) DO UPDATE SET artifacts = artifacts + 1,
            bytes = bytes + excluded.bytes;
    END;
    CREATE TRIGGER totals_on_delete AFTER DELETE ON artifacts WHEN OLD.evicted_at IS NULL
    BEGIN
        UPDATE totals SET artifacts = artifacts - 1, bytes = bytes - OLD.size
        WHERE ecosystem = OLD.ecosystem;
    END;
    CREATE TRIGGER totals_on_update_old AFTER UPDATE OF ecosystem, size, evicted_at ON artifacts
        WHEN OLD.evicted_at IS NULL
    BEGIN
        UPDATE totals SET artifacts = artifacts - 1, bytes = bytes - OLD.size
        WHERE ecosystem = OLD.ecosystem;
    END;
    CREATE TRIGGER totals_on_update_new AFTER UPDATE OF ecosystem, size, evicted_at ON artifacts
        WHEN NEW.evicted_at IS NULL
    BEGIN
        INSERT INTO totals (ecosystem, artifacts, bytes) VALUES (NEW.ecosystem, 1, NEW.size)
        ON CONFLICT (ecosystem) DO UPDATE SET artifacts = artifacts + 1,
            bytes = bytes + excluded.bytes;
    END;",
];

/// The version this build writes.
pub(crate) const CURRENT: u32 = MIGRATIONS.len() as u32;

/// Bring the database to [`CURRENT`], one migration and one transaction at a time.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), IndexError> {
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(index_error)?;
    if version > CURRENT {
        return Err(IndexError::new(
            IndexErrorKind::SchemaTooNew,
            format!(
                "the index has schema version {version}, newer than this proxyd knows ({CURRENT}): upgrade proxyd or use another database.path"
            ),
        ));
    }
    for (n, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(index_error)?;
        tx.execute_batch(migration).map_err(index_error)?;
        tx.pragma_update(None, "user_version", n as u32 + 1)
            .map_err(index_error)?;
        tx.commit().map_err(index_error)?;
    }
    Ok(())
}
