//! Schema versions (a one-row `proxyd_schema` table) and the migrations between them. Each
//! runs in one transaction under an advisory lock, so nodes that start together migrate one
//! at a time and a database is always at one version or the next.

use proxyd_cache::{IndexError, IndexErrorKind};

use crate::pg_error;

/// The advisory lock that orders migrations across nodes (any fixed number; "proxyd").
const MIGRATION_LOCK: i64 = 0x7072_6f78_7964;

/// Migration `n` takes the database from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: artifacts with last access in milliseconds (the eviction order) and the two-phase
    // eviction mark; totals kept by a trigger in the same transaction as every change;
    // documents; leases with an owner and an expiry on the database's clock.
    "CREATE TABLE artifacts (
        key text PRIMARY KEY,
        ecosystem text NOT NULL,
        name text NOT NULL,
        version text NOT NULL,
        filename text NOT NULL,
        size bigint NOT NULL,
        sha256 text NOT NULL,
        content_type text NOT NULL,
        upstream_url text NOT NULL,
        fetched_at bigint NOT NULL,
        hit_count bigint NOT NULL DEFAULT 0,
        last_access bigint NOT NULL,
        evicted_at bigint,
        sighted_at bigint
    );
    CREATE INDEX artifacts_by_last_access ON artifacts (last_access, key)
        WHERE evicted_at IS NULL;
    CREATE INDEX artifacts_by_mark ON artifacts (evicted_at) WHERE evicted_at IS NOT NULL;
    CREATE TABLE totals (
        ecosystem text PRIMARY KEY,
        artifacts bigint NOT NULL,
        bytes bigint NOT NULL
    );
    CREATE FUNCTION proxyd_count_totals() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.evicted_at IS NULL THEN
            UPDATE totals SET artifacts = artifacts - 1, bytes = bytes - OLD.size
            WHERE ecosystem = OLD.ecosystem;
        END IF;
        IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.evicted_at IS NULL THEN
            INSERT INTO totals AS t (ecosystem, artifacts, bytes)
            VALUES (NEW.ecosystem, 1, NEW.size)
            ON CONFLICT (ecosystem) DO UPDATE SET artifacts = t.artifacts + 1,
                bytes = t.bytes + excluded.bytes;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER artifacts_totals
        AFTER INSERT OR DELETE OR UPDATE OF ecosystem, size, evicted_at ON artifacts
        FOR EACH ROW EXECUTE FUNCTION proxyd_count_totals();
    CREATE TABLE documents (
        key text PRIMARY KEY,
        body bytea NOT NULL,
        etag text,
        last_modified text,
        content_type text,
        fetched_at bigint NOT NULL
    );
    CREATE TABLE leases (
        name text PRIMARY KEY,
        owner text NOT NULL,
        expires_at timestamptz NOT NULL
    );",
];

/// The version this build writes.
pub(crate) const CURRENT: i32 = MIGRATIONS.len() as i32;

/// Bring the database to [`CURRENT`], one migration and one transaction at a time.
pub(crate) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), IndexError> {
    let err = |e: tokio_postgres::Error| pg_error(&e);
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS proxyd_schema (version integer NOT NULL)")
        .await
        .map_err(err)?;
    let version: i32 = match tx
        .query_opt("SELECT version FROM proxyd_schema", &[])
        .await
        .map_err(err)?
    {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO proxyd_schema (version) VALUES (0)", &[])
                .await
                .map_err(err)?;
            0
        }
    };
    if version > CURRENT {
        return Err(IndexError::new(
            IndexErrorKind::SchemaTooNew,
            format!(
                "the index has schema version {version}, newer than this proxyd knows ({CURRENT}): upgrade proxyd or use another database"
            ),
        ));
    }
    for (n, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(migration).await.map_err(err)?;
        tx.execute(
            "UPDATE proxyd_schema SET version = $1",
            &[&(i32::try_from(n).unwrap_or(i32::MAX) + 1)],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}
