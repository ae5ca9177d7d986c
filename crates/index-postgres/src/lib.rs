#![doc = include_str!("../README.md")]

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use proxyd_cache::{
    AccessUpdate, ArtifactIndex, Document, DocumentIndex, EvictionLease, FetchLeases, IndexError,
    IndexErrorKind, IndexRecord, IndexTotals, Lease, Victim,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

mod schema;
mod tls;

/// How a [`PostgresIndex`] connects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long one call may take, waiting for a connection included, before it fails as
    /// temporary.
    pub call_timeout: Duration,
    /// PEM certificates trusted for the database's TLS in addition to the system's store.
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            call_timeout: Duration::from_secs(10),
            extra_ca_pem: None,
        }
    }
}

impl PostgresOptions {
    /// These options with extra CA certificates (PEM) for the database's TLS.
    #[must_use]
    pub fn with_extra_ca_pem(mut self, pem: Option<Vec<u8>>) -> Self {
        self.extra_ca_pem = pem;
        self
    }

    /// These options with `n` pooled connections.
    #[must_use]
    pub fn with_pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }
}

/// The shared index: one PostgreSQL database that every node of a cluster uses. Rows, totals,
/// documents and leases all live in the database, so a node sees what another cached, one
/// node fetches each artifact, and one node evicts at a time.
#[derive(Clone)]
pub struct PostgresIndex {
    pool: Pool,
    target: String,
    call_timeout: Duration,
}

impl std::fmt::Debug for PostgresIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresIndex")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn pg_error(err: &tokio_postgres::Error) -> IndexError {
    let kind = match err.code() {
        // Lost races, lock waits, a server shutting down or full: the same call may work later.
        Some(code)
            if [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::QUERY_CANCELED,
            ]
            .contains(code) =>
        {
            IndexErrorKind::Temporary
        }
        Some(_) => IndexErrorKind::Permanent,
        // No SQL state: the connection failed or closed.
        None => IndexErrorKind::Temporary,
    };
    let message = match err.as_db_error() {
        Some(db) => format!("postgres: {}", db.message()),
        None => {
            // The cause says what failed (refused connection, certificate, ...).
            let mut message = format!("postgres: {err}");
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            message
        }
    };
    IndexError::new(kind, message)
}

fn pool_error(err: PoolError) -> IndexError {
    match err {
        PoolError::Backend(err) => pg_error(&err),
        PoolError::Timeout(_) => IndexError::new(
            IndexErrorKind::Temporary,
            "postgres: no connection within the deadline",
        ),
        other => IndexError::new(IndexErrorKind::Temporary, format!("postgres: {other}")),
    }
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `host:port/dbname` of a connection string, without user or password (for logs).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""))
}

impl PostgresIndex {
    /// Connect to the database at `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`, with
    /// `?sslmode=require` for TLS), check that it answers and accepts the credentials, and
    /// bring its schema to the current version. A schema newer than this build knows is refused
    /// ([`IndexErrorKind::SchemaTooNew`]). Nodes that start together migrate one at a time.
    pub async fn connect(url: &str, options: &PostgresOptions) -> Result<Self, IndexError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            IndexError::new(
                IndexErrorKind::Permanent,
                format!("database.url is not a PostgreSQL connection URL: {e}"),
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("proxyd");
        }
        let target = describe(&config);
        let tls = tls::connector(options.extra_ca_pem.as_deref())?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.call_timeout))
            .create_timeout(Some(options.call_timeout))
            .recycle_timeout(Some(options.call_timeout))
            .build()
            .map_err(|e| IndexError::new(IndexErrorKind::Permanent, e.to_string()))?;
        let index = Self {
            pool,
            target,
            call_timeout: options.call_timeout,
        };
        let mut client = index.pool.get().await.map_err(|e| {
            let err = pool_error(e);
            IndexError::new(err.kind, format!("{} ({})", err.message, index.target))
        })?;
        schema::migrate(&mut client).await?;
        Ok(index)
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<u32, IndexError> {
        let row = self
            .query_one("SELECT version FROM proxyd_schema", &[])
            .await?;
        Ok(u32::try_from(row.get::<_, i32>(0)).unwrap_or(0))
    }

    /// `host:port/dbname`, for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, IndexError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Run `f` on a pooled connection within the call deadline.
    async fn call<T, F>(&self, f: F) -> Result<T, IndexError>
    where
        F: AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        let deadline = self.call_timeout;
        let run = async {
            let mut client = self.client().await?;
            f(&mut client).await.map_err(|e| pg_error(&e))
        };
        tokio::time::timeout(deadline, run).await.map_err(|_| {
            IndexError::new(
                IndexErrorKind::Temporary,
                format!("postgres: no answer within {}s", deadline.as_secs()),
            )
        })?
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, IndexError> {
        self.call(async |client| {
            let stmt = client.prepare_cached(sql).await?;
            client.query(&stmt, params).await
        })
        .await
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Row, IndexError> {
        self.call(async |client| {
            let stmt = client.prepare_cached(sql).await?;
            client.query_one(&stmt, params).await
        })
        .await
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, IndexError> {
        self.call(async |client| {
            let stmt = client.prepare_cached(sql).await?;
            client.execute(&stmt, params).await
        })
        .await
    }

    async fn keys(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<String>, IndexError> {
        Ok(self
            .query(sql, params)
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<Lease, IndexError> {
        // The database's clock decides expiry, so the nodes' clocks need not agree.
        let taken = self
            .query(
                "INSERT INTO leases AS l (name, owner, expires_at)
                 VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                    expires_at = excluded.expires_at
                 WHERE l.owner = excluded.owner OR l.expires_at <= clock_timestamp()
                 RETURNING owner",
                &[&name, &owner, &ttl.as_secs_f64()],
            )
            .await?;
        if !taken.is_empty() {
            return Ok(Lease::Acquired);
        }
        let holder = self
            .query("SELECT owner FROM leases WHERE name = $1", &[&name])
            .await?;
        Ok(Lease::HeldElsewhere {
            owner: holder.first().map(|r| r.get(0)).unwrap_or_default(),
        })
    }

    async fn renew(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool, IndexError> {
        let renewed = self
            .execute(
                "UPDATE leases SET expires_at = clock_timestamp() + make_interval(secs => $3)
                 WHERE name = $1 AND owner = $2 AND expires_at > clock_timestamp()",
                &[&name, &owner, &ttl.as_secs_f64()],
            )
            .await?;
        Ok(renewed > 0)
    }

    async fn release(&self, name: &str, owner: &str) -> Result<(), IndexError> {
        self.execute(
            "DELETE FROM leases WHERE name = $1 AND owner = $2",
            &[&name, &owner],
        )
        .await
        .map(|_| ())
    }
}

fn record(r: &Row) -> IndexRecord {
    IndexRecord {
        key: r.get(0),
        ecosystem: r.get(1),
        name: r.get(2),
        version: r.get(3),
        filename: r.get(4),
        size: as_u64(r.get(5)),
        sha256: r.get(6),
        content_type: r.get(7),
        upstream_url: r.get(8),
        fetched_at: as_u64(r.get(9)),
        hit_count: as_u64(r.get(10)),
        last_access_ms: as_u64(r.get(11)),
    }
}

#[async_trait]
impl ArtifactIndex for PostgresIndex {
    async fn artifact(&self, key: &str) -> Result<Option<IndexRecord>, IndexError> {
        let rows = self
            .query(
                "SELECT key, ecosystem, name, version, filename, size, sha256, content_type,
                        upstream_url, fetched_at, hit_count, last_access
                 FROM artifacts WHERE key = $1 AND evicted_at IS NULL",
                &[&key],
            )
            .await?;
        Ok(rows.first().map(record))
    }

    async fn put_artifact(&self, rec: IndexRecord) -> Result<(), IndexError> {
        self.execute(
            "INSERT INTO artifacts (key, ecosystem, name, version, filename, size, sha256,
                content_type, upstream_url, fetched_at, hit_count, last_access, evicted_at,
                sighted_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL)
             ON CONFLICT (key) DO UPDATE SET ecosystem = excluded.ecosystem,
                name = excluded.name, version = excluded.version,
                filename = excluded.filename, size = excluded.size,
                sha256 = excluded.sha256, content_type = excluded.content_type,
                upstream_url = excluded.upstream_url, fetched_at = excluded.fetched_at,
                hit_count = excluded.hit_count, last_access = excluded.last_access,
                evicted_at = NULL, sighted_at = NULL",
            &[
                &rec.key,
                &rec.ecosystem,
                &rec.name,
                &rec.version,
                &rec.filename,
                &as_i64(rec.size),
                &rec.sha256,
                &rec.content_type,
                &rec.upstream_url,
                &as_i64(rec.fetched_at),
                &as_i64(rec.hit_count),
                &as_i64(rec.last_access_ms),
            ],
        )
        .await
        .map(|_| ())
    }

    async fn remove_artifacts(&self, keys: Vec<String>) -> Result<(), IndexError> {
        self.execute("DELETE FROM artifacts WHERE key = ANY($1)", &[&keys])
            .await
            .map(|_| ())
    }

    async fn record_access(&self, mut batch: Vec<AccessUpdate>) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Every node locks rows in key order, so two batches never wait on each other in a
        // cycle; one update per key.
        batch.sort_by(|a, b| a.key.cmp(&b.key));
        batch.dedup_by(|later, first| {
            if later.key == first.key {
                first.hits += later.hits;
                first.last_access_ms = first.last_access_ms.max(later.last_access_ms);
                true
            } else {
                false
            }
        });
        let keys: Vec<&str> = batch.iter().map(|u| u.key.as_str()).collect();
        let hits: Vec<i64> = batch.iter().map(|u| as_i64(u.hits)).collect();
        let access: Vec<i64> = batch.iter().map(|u| as_i64(u.last_access_ms)).collect();
        self.call(async |client| {
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT 1 FROM artifacts WHERE key = ANY($1) ORDER BY key FOR UPDATE",
                &[&keys],
            )
            .await?;
            tx.execute(
                "UPDATE artifacts AS a SET hit_count = a.hit_count + u.hits,
                    last_access = GREATEST(a.last_access, u.last_access)
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                    AS u(key, hits, last_access)
                 WHERE a.key = u.key",
                &[&keys, &hits, &access],
            )
            .await?;
            tx.commit().await
        })
        .await
    }

    async fn totals(&self) -> Result<Vec<IndexTotals>, IndexError> {
        Ok(self
            .query(
                "SELECT ecosystem, artifacts, bytes FROM totals WHERE artifacts > 0",
                &[],
            )
            .await?
            .iter()
            .map(|r| IndexTotals {
                ecosystem: r.get(0),
                artifacts: as_u64(r.get(1)),
                bytes: as_u64(r.get(2)),
            })
            .collect())
    }

    async fn least_recently_used(&self, n: usize) -> Result<Vec<Victim>, IndexError> {
        Ok(self
            .query(
                "SELECT key, size FROM artifacts WHERE evicted_at IS NULL
                 ORDER BY last_access, key LIMIT $1",
                &[&limit(n)],
            )
            .await?
            .iter()
            .map(|r| Victim {
                key: r.get(0),
                size: as_u64(r.get(1)),
            })
            .collect())
    }

    async fn mark_evicted(&self, keys: Vec<String>, at_ms: u64) -> Result<Vec<String>, IndexError> {
        self.keys(
            "UPDATE artifacts SET evicted_at = $2 WHERE key = ANY($1) AND evicted_at IS NULL
             RETURNING key",
            &[&keys, &as_i64(at_ms)],
        )
        .await
    }

    async fn marked_before(&self, before_ms: u64, n: usize) -> Result<Vec<String>, IndexError> {
        self.keys(
            "SELECT key FROM artifacts WHERE evicted_at IS NOT NULL AND evicted_at <= $1
             ORDER BY evicted_at LIMIT $2",
            &[&as_i64(before_ms), &limit(n)],
        )
        .await
    }

    async fn remove_marked(&self, key: &str) -> Result<bool, IndexError> {
        Ok(self
            .execute(
                "DELETE FROM artifacts WHERE key = $1 AND evicted_at IS NOT NULL",
                &[&key],
            )
            .await?
            > 0)
    }

    async fn sighted(&self, keys: Vec<String>, at_ms: u64) -> Result<Vec<String>, IndexError> {
        let known: HashSet<String> = self
            .keys(
                "UPDATE artifacts SET sighted_at = $2 WHERE key = ANY($1) RETURNING key",
                &[&keys, &as_i64(at_ms)],
            )
            .await?
            .into_iter()
            .collect();
        Ok(keys.into_iter().filter(|k| !known.contains(k)).collect())
    }

    async fn unsighted(&self, before_ms: u64, n: usize) -> Result<Vec<String>, IndexError> {
        self.keys(
            "SELECT key FROM artifacts WHERE evicted_at IS NULL AND fetched_at * 1000 < $1
               AND (sighted_at IS NULL OR sighted_at < $1)
             LIMIT $2",
            &[&as_i64(before_ms), &limit(n)],
        )
        .await
    }
}

#[async_trait]
impl DocumentIndex for PostgresIndex {
    async fn document(&self, key: &str) -> Result<Option<Document>, IndexError> {
        let rows = self
            .query(
                "SELECT body, etag, last_modified, content_type, fetched_at FROM documents
                 WHERE key = $1",
                &[&key],
            )
            .await?;
        Ok(rows.first().map(|r| Document {
            body: r.get::<_, Vec<u8>>(0).into(),
            etag: r.get(1),
            last_modified: r.get(2),
            content_type: r.get(3),
            fetched_at: UNIX_EPOCH + Duration::from_secs(as_u64(r.get(4))),
        }))
    }

    async fn put_document(&self, key: &str, doc: Document) -> Result<(), IndexError> {
        let fetched_at = doc
            .fetched_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.execute(
            "INSERT INTO documents (key, body, etag, last_modified, content_type, fetched_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (key) DO UPDATE SET body = excluded.body, etag = excluded.etag,
                last_modified = excluded.last_modified, content_type = excluded.content_type,
                fetched_at = excluded.fetched_at",
            &[
                &key,
                &doc.body.as_ref(),
                &doc.etag,
                &doc.last_modified,
                &doc.content_type,
                &as_i64(fetched_at),
            ],
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl FetchLeases for PostgresIndex {
    async fn acquire_fetch(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, IndexError> {
        self.acquire(key, owner, ttl).await
    }

    async fn renew_fetch(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, IndexError> {
        self.renew(key, owner, ttl).await
    }

    async fn release_fetch(&self, key: &str, owner: &str) -> Result<(), IndexError> {
        self.release(key, owner).await
    }
}

/// The name of the eviction lease among the fetch leases (no artifact key is empty).
const EVICTION_LEASE: &str = "";

/// Leases whose owners died are removed this long after they expired (a later acquire
/// replaces an expired lease anyway; this keeps the table from keeping them forever).
const EXPIRED_LEASES_KEPT: Duration = Duration::from_secs(3600);

#[async_trait]
impl EvictionLease for PostgresIndex {
    async fn acquire_eviction(&self, owner: &str, ttl: Duration) -> Result<Lease, IndexError> {
        let lease = self.acquire(EVICTION_LEASE, owner, ttl).await?;
        if lease == Lease::Acquired {
            self.execute(
                "DELETE FROM leases
                 WHERE expires_at < clock_timestamp() - make_interval(secs => $1)",
                &[&EXPIRED_LEASES_KEPT.as_secs_f64()],
            )
            .await?;
        }
        Ok(lease)
    }

    async fn release_eviction(&self, owner: &str) -> Result<(), IndexError> {
        self.release(EVICTION_LEASE, owner).await
    }
}
