#![doc = include_str!("../README.md")]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use proxyd_cache::{
    AccessUpdate, ArtifactIndex, Document, DocumentIndex, EvictionLease, FetchLeases, IndexError,
    IndexErrorKind, IndexRecord, IndexTotals, Lease, LocalLeases, Victim,
};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params, params_from_iter};

mod schema;

/// Connections that read, each on a thread of its own: lookups run beside each other and
/// beside the writer (WAL). Dedicated threads, not the runtime's blocking pool: a lookup burst
/// then never grows the pool (each of its threads keeps allocator caches).
const READERS: usize = 2;

/// Pages each connection keeps in memory, in KiB (SQLite's default is 2 MiB; the operating
/// system caches the file too).
const PAGE_CACHE_KIB: u32 = 1024;

/// Calls queued for the connection threads before callers wait.
const QUEUE: usize = 256;

/// How long a call waits for a lock held by another connection before it fails as temporary.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The embedded SQLite index: one file, one writer connection and a few readers, leases in
/// this process's memory (one process uses the file).
#[derive(Clone)]
pub struct SqliteIndex {
    inner: Arc<Inner>,
}

struct Inner {
    path: String,
    writer: Worker,
    readers: Worker,
    leases: LocalLeases,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Threads that each own a connection and run the calls queued for them.
struct Worker {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Worker {
    fn start(name: &str, connections: Vec<Connection>) -> Result<Self, IndexError> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for (n, mut conn) in connections.into_iter().enumerate() {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(&mut conn),
                            Err(_) => return, // the index was dropped
                        }
                    }
                })
                .map_err(|e| {
                    IndexError::new(
                        IndexErrorKind::Permanent,
                        format!("cannot start an index thread: {e}"),
                    )
                })?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn).map_err(index_error));
        });
        let jobs = self.jobs.clone();
        // A full queue blocks the sender: wait for room off the runtime's threads.
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|e| IndexError::new(IndexErrorKind::Permanent, e.to_string()))?
                    .map_err(|_| stopped())?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> IndexError {
    IndexError::new(IndexErrorKind::Permanent, "the index threads stopped")
}

impl std::fmt::Debug for SqliteIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteIndex")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "shaped for `map_err(index_error)`"
)]
fn index_error(err: rusqlite::Error) -> IndexError {
    let kind = match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => IndexErrorKind::Temporary,
        _ => IndexErrorKind::Permanent,
    };
    IndexError::new(kind, format!("sqlite: {err}"))
}

fn connect(path: &Path) -> Result<Connection, IndexError> {
    let conn = Connection::open(path).map_err(index_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(index_error)?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{PAGE_CACHE_KIB};"
    ))
    .map_err(index_error)?;
    Ok(conn)
}

impl SqliteIndex {
    /// Open the database at `path`, creating it (and its directory) if missing, and bring its
    /// schema to the current version. A schema newer than this build knows is refused
    /// ([`IndexErrorKind::SchemaTooNew`]).
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                IndexError::new(
                    IndexErrorKind::Permanent,
                    format!("cannot create {}: {e}", parent.display()),
                )
            })?;
        }
        let mut writer = connect(path)?;
        writer
            .execute_batch("PRAGMA journal_mode = WAL;")
            .map_err(index_error)?;
        schema::migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| connect(path))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.display().to_string(),
                writer: Worker::start("index-writer", vec![writer])?,
                readers: Worker::start("index-reader", readers)?,
                leases: LocalLeases::new(),
            }),
        })
    }

    /// The schema version of the open database.
    pub async fn schema_version(&self) -> Result<u32, IndexError> {
        self.read(|conn| conn.pragma_query_value(None, "user_version", |r| r.get(0)))
            .await
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, IndexError> {
        self.inner.writer.run(f).await
    }

    /// The keys `sql` selects with `?1` = `before_ms` and `?2` = `limit`.
    async fn keys_before(
        &self,
        sql: &'static str,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, IndexError> {
        self.read(move |conn| {
            conn.prepare_cached(sql)?
                .query_map(params![as_i64(before_ms), as_i64(limit as u64)], |r| {
                    r.get(0)
                })?
                .collect()
        })
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, IndexError> {
        self.inner.readers.run(|conn| f(conn)).await
    }
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Keys per statement where a call takes many (well under SQLite's variable limit).
const KEYS_PER_STATEMENT: usize = 500;

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(",")
}

#[async_trait]
impl ArtifactIndex for SqliteIndex {
    async fn artifact(&self, key: &str) -> Result<Option<IndexRecord>, IndexError> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT key, ecosystem, name, version, filename, size, sha256, content_type,
                        upstream_url, fetched_at, hit_count, last_access
                 FROM artifacts WHERE key = ?1 AND evicted_at IS NULL",
            )?
            .query_row(params![key], |r| {
                Ok(IndexRecord {
                    key: r.get(0)?,
                    ecosystem: r.get(1)?,
                    name: r.get(2)?,
                    version: r.get(3)?,
                    filename: r.get(4)?,
                    size: as_u64(r.get(5)?),
                    sha256: r.get(6)?,
                    content_type: r.get(7)?,
                    upstream_url: r.get(8)?,
                    fetched_at: as_u64(r.get(9)?),
                    hit_count: as_u64(r.get(10)?),
                    last_access_ms: as_u64(r.get(11)?),
                })
            })
            .optional()
        })
        .await
    }

    async fn put_artifact(&self, rec: IndexRecord) -> Result<(), IndexError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO artifacts (key, ecosystem, name, version, filename, size, sha256,
                    content_type, upstream_url, fetched_at, hit_count, last_access, evicted_at,
                    sighted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL, NULL)
                 ON CONFLICT (key) DO UPDATE SET ecosystem = excluded.ecosystem,
                    name = excluded.name, version = excluded.version,
                    filename = excluded.filename, size = excluded.size,
                    sha256 = excluded.sha256, content_type = excluded.content_type,
                    upstream_url = excluded.upstream_url, fetched_at = excluded.fetched_at,
                    hit_count = excluded.hit_count, last_access = excluded.last_access,
                    evicted_at = NULL, sighted_at = NULL",
            )?
            .execute(params![
                rec.key,
                rec.ecosystem,
                rec.name,
                rec.version,
                rec.filename,
                as_i64(rec.size),
                rec.sha256,
                rec.content_type,
                rec.upstream_url,
                as_i64(rec.fetched_at),
                as_i64(rec.hit_count),
                as_i64(rec.last_access_ms)
            ])
            .map(|_| ())
        })
        .await
    }

    async fn remove_artifacts(&self, keys: Vec<String>) -> Result<(), IndexError> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            for key in &keys {
                tx.prepare_cached("DELETE FROM artifacts WHERE key = ?1")?
                    .execute(params![key])?;
            }
            tx.commit()
        })
        .await
    }

    async fn record_access(&self, batch: Vec<AccessUpdate>) -> Result<(), IndexError> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            for update in &batch {
                tx.prepare_cached(
                    "UPDATE artifacts SET hit_count = hit_count + ?2,
                        last_access = MAX(last_access, ?3) WHERE key = ?1",
                )?
                .execute(params![
                    update.key,
                    as_i64(update.hits),
                    as_i64(update.last_access_ms)
                ])?;
            }
            tx.commit()
        })
        .await
    }

    async fn totals(&self) -> Result<Vec<IndexTotals>, IndexError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT ecosystem, artifacts, bytes FROM totals WHERE artifacts > 0",
            )?;
            stmt.query_map([], |r| {
                Ok(IndexTotals {
                    ecosystem: r.get(0)?,
                    artifacts: as_u64(r.get(1)?),
                    bytes: as_u64(r.get(2)?),
                })
            })?
            .collect()
        })
        .await
    }

    async fn least_recently_used(&self, limit: usize) -> Result<Vec<Victim>, IndexError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, size FROM artifacts WHERE evicted_at IS NULL
                 ORDER BY last_access, key LIMIT ?1",
            )?;
            stmt.query_map(params![as_i64(limit as u64)], |r| {
                Ok(Victim {
                    key: r.get(0)?,
                    size: as_u64(r.get(1)?),
                })
            })?
            .collect()
        })
        .await
    }

    async fn mark_evicted(&self, keys: Vec<String>, at_ms: u64) -> Result<Vec<String>, IndexError> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut marked = Vec::with_capacity(keys.len());
            for key in keys {
                let changed = tx
                    .prepare_cached(
                        "UPDATE artifacts SET evicted_at = ?2
                         WHERE key = ?1 AND evicted_at IS NULL",
                    )?
                    .execute(params![key, as_i64(at_ms)])?;
                if changed > 0 {
                    marked.push(key);
                }
            }
            tx.commit()?;
            Ok(marked)
        })
        .await
    }

    async fn marked_before(&self, before_ms: u64, limit: usize) -> Result<Vec<String>, IndexError> {
        self.keys_before(
            "SELECT key FROM artifacts WHERE evicted_at IS NOT NULL AND evicted_at <= ?1
             ORDER BY evicted_at LIMIT ?2",
            before_ms,
            limit,
        )
        .await
    }

    async fn remove_marked(&self, key: &str) -> Result<bool, IndexError> {
        let key = key.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM artifacts WHERE key = ?1 AND evicted_at IS NOT NULL")?
                .execute(params![key])
                .map(|n| n > 0)
        })
        .await
    }

    async fn sighted(&self, keys: Vec<String>, at_ms: u64) -> Result<Vec<String>, IndexError> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut unknown = Vec::new();
            for chunk in keys.chunks(KEYS_PER_STATEMENT) {
                // One statement notes the sighting and names the rows it found.
                let mut update = tx.prepare(&format!(
                    "UPDATE artifacts SET sighted_at = ? WHERE key IN ({}) RETURNING key",
                    placeholders(chunk.len())
                ))?;
                let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() + 1);
                values.push(as_i64(at_ms).into());
                values.extend(chunk.iter().map(|k| k.clone().into()));
                let known = update
                    .query_map(params_from_iter(values), |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<std::collections::HashSet<String>>>()?;
                unknown.extend(chunk.iter().filter(|k| !known.contains(*k)).cloned());
            }
            tx.commit()?;
            Ok(unknown)
        })
        .await
    }

    async fn unsighted(&self, before_ms: u64, limit: usize) -> Result<Vec<String>, IndexError> {
        self.keys_before(
            "SELECT key FROM artifacts WHERE evicted_at IS NULL AND fetched_at * 1000 < ?1
               AND (sighted_at IS NULL OR sighted_at < ?1)
             LIMIT ?2",
            before_ms,
            limit,
        )
        .await
    }
}

#[async_trait]
impl DocumentIndex for SqliteIndex {
    async fn document(&self, key: &str) -> Result<Option<Document>, IndexError> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT body, etag, last_modified, content_type, fetched_at FROM documents
                 WHERE key = ?1",
            )?
            .query_row(params![key], |r| {
                Ok(Document {
                    body: r.get::<_, Vec<u8>>(0)?.into(),
                    etag: r.get(1)?,
                    last_modified: r.get(2)?,
                    content_type: r.get(3)?,
                    fetched_at: std::time::UNIX_EPOCH
                        + Duration::from_secs(as_u64(r.get::<_, i64>(4)?)),
                })
            })
            .optional()
        })
        .await
    }

    async fn put_document(&self, key: &str, doc: Document) -> Result<(), IndexError> {
        let key = key.to_owned();
        let fetched_at = doc
            .fetched_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO documents (key, body, etag, last_modified, content_type,
                    fetched_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                key,
                doc.body.as_ref(),
                doc.etag,
                doc.last_modified,
                doc.content_type,
                as_i64(fetched_at)
            ])
            .map(|_| ())
        })
        .await
    }
}

#[async_trait]
impl FetchLeases for SqliteIndex {
    async fn acquire_fetch(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, IndexError> {
        Ok(self.inner.leases.acquire(key, owner, ttl))
    }

    async fn renew_fetch(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, IndexError> {
        Ok(self.inner.leases.renew(key, owner, ttl))
    }

    async fn release_fetch(&self, key: &str, owner: &str) -> Result<(), IndexError> {
        self.inner.leases.release(key, owner);
        Ok(())
    }
}

/// The name of the eviction lease among the fetch leases (no artifact key is empty).
const EVICTION_LEASE: &str = "";

#[async_trait]
impl EvictionLease for SqliteIndex {
    async fn acquire_eviction(&self, owner: &str, ttl: Duration) -> Result<Lease, IndexError> {
        Ok(self.inner.leases.acquire(EVICTION_LEASE, owner, ttl))
    }

    async fn release_eviction(&self, owner: &str) -> Result<(), IndexError> {
        self.inner.leases.release(EVICTION_LEASE, owner);
        Ok(())
    }
}
