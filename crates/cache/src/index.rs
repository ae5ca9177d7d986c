use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::CacheError;
use crate::entry::{Document, from_unix_secs, unix_secs};

/// One artifact row of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    /// Storage key.
    pub key: String,
    /// Ecosystem label.
    pub ecosystem: String,
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// File name.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// Content type.
    pub content_type: String,
    /// Upstream URL.
    pub upstream_url: String,
    /// Fetched-at, seconds since the epoch.
    pub fetched_at: u64,
    /// Hit count.
    pub hit_count: u64,
    /// Last access, seconds since the epoch.
    pub last_access: u64,
}

/// Where the cache keeps its index. SQLite by default; a shared database can implement it to
/// serve several proxyd nodes.
#[async_trait]
pub trait Index: Send + Sync + std::fmt::Debug + 'static {
    /// Every artifact row.
    async fn load_all(&self) -> Result<Vec<IndexRecord>, CacheError>;
    /// Insert or replace an artifact row.
    async fn upsert(&self, record: IndexRecord) -> Result<(), CacheError>;
    /// Remove artifact rows.
    async fn remove(&self, keys: Vec<String>) -> Result<(), CacheError>;
    /// Add hits and set last-access times: `(key, hits to add, last access)`.
    async fn record_access(&self, batch: Vec<(String, u64, u64)>) -> Result<(), CacheError>;
    /// A stored metadata document.
    async fn document(&self, key: String) -> Result<Option<Document>, CacheError>;
    /// Store a metadata document.
    async fn put_document(&self, key: String, document: Document) -> Result<(), CacheError>;
}

/// The embedded SQLite index.
#[derive(Clone)]
pub struct SqliteIndex {
    conn: Arc<Mutex<Connection>>,
    path: String,
}

impl std::fmt::Debug for SqliteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteIndex")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS artifacts (
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
);
";

impl SqliteIndex {
    /// Open (creating if missing, with its parent directory) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                CacheError::Index(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.display().to_string(),
        })
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, CacheError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: ":memory:".into(),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, CacheError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| CacheError::Index(e.to_string()))?
        .map_err(CacheError::from)
    }
}

#[async_trait]
impl Index for SqliteIndex {
    async fn load_all(&self) -> Result<Vec<IndexRecord>, CacheError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT key, ecosystem, name, version, filename, size, sha256, content_type,
                        upstream_url, fetched_at, hit_count, last_access FROM artifacts",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(IndexRecord {
                    key: r.get(0)?,
                    ecosystem: r.get(1)?,
                    name: r.get(2)?,
                    version: r.get(3)?,
                    filename: r.get(4)?,
                    size: r.get::<_, i64>(5)? as u64,
                    sha256: r.get(6)?,
                    content_type: r.get(7)?,
                    upstream_url: r.get(8)?,
                    fetched_at: r.get::<_, i64>(9)? as u64,
                    hit_count: r.get::<_, i64>(10)? as u64,
                    last_access: r.get::<_, i64>(11)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn upsert(&self, rec: IndexRecord) -> Result<(), CacheError> {
        self.with(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO artifacts (key, ecosystem, name, version, filename, size,
                    sha256, content_type, upstream_url, fetched_at, hit_count, last_access)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    rec.key,
                    rec.ecosystem,
                    rec.name,
                    rec.version,
                    rec.filename,
                    rec.size as i64,
                    rec.sha256,
                    rec.content_type,
                    rec.upstream_url,
                    rec.fetched_at as i64,
                    rec.hit_count as i64,
                    rec.last_access as i64
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn remove(&self, keys: Vec<String>) -> Result<(), CacheError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            for key in &keys {
                tx.execute("DELETE FROM artifacts WHERE key = ?1", params![key])?;
            }
            tx.commit()
        })
        .await
    }

    async fn record_access(&self, batch: Vec<(String, u64, u64)>) -> Result<(), CacheError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            for (key, hits, last) in &batch {
                tx.execute(
                    "UPDATE artifacts SET hit_count = hit_count + ?2,
                        last_access = MAX(last_access, ?3) WHERE key = ?1",
                    params![key, *hits as i64, *last as i64],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn document(&self, key: String) -> Result<Option<Document>, CacheError> {
        self.with(move |conn| {
            conn.query_row(
                "SELECT body, etag, last_modified, content_type, fetched_at FROM documents
                 WHERE key = ?1",
                params![key],
                |r| {
                    Ok(Document {
                        body: r.get::<_, Vec<u8>>(0)?.into(),
                        etag: r.get(1)?,
                        last_modified: r.get(2)?,
                        content_type: r.get(3)?,
                        fetched_at: from_unix_secs(r.get::<_, i64>(4)? as u64),
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn put_document(&self, key: String, doc: Document) -> Result<(), CacheError> {
        self.with(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO documents (key, body, etag, last_modified, content_type,
                    fetched_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key,
                    doc.body.as_ref(),
                    doc.etag,
                    doc.last_modified,
                    doc.content_type,
                    unix_secs(doc.fetched_at) as i64
                ],
            )
            .map(|_| ())
        })
        .await
    }
}
