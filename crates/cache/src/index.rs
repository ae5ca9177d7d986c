//! The index traits: what the cache asks of the database that is the source of truth for what
//! is cached. SQLite (`proxyd-index-sqlite`) implements them for one node; a shared database
//! implements them for several.
//!
//! The parts are separate traits because they are separate jobs a shared database must do
//! right: artifact records (with the totals kept beside them and the two-phase eviction),
//! metadata documents and their validators, fetch leases (one upstream fetch per artifact),
//! and the eviction lease (one evictor at a time).

use std::time::Duration;

use async_trait::async_trait;

use crate::entry::Document;

/// Whether retrying an index call may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IndexErrorKind {
    /// Busy, locked, unreachable, or timed out: the same call may succeed later.
    Temporary,
    /// The database holds a schema newer than this proxyd knows: upgrade proxyd.
    SchemaTooNew,
    /// Anything else (corrupt file, bad permissions, a bug): retrying will not help.
    Permanent,
}

/// An index call that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct IndexError {
    /// What a caller can do about it.
    pub kind: IndexErrorKind,
    /// One line for the log.
    pub message: String,
}

impl IndexError {
    /// A failure of `kind`.
    pub fn new(kind: IndexErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Whether retrying may help.
    pub fn is_temporary(&self) -> bool {
        self.kind == IndexErrorKind::Temporary
    }
}

/// One artifact row of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRecord {
    /// Storage key.
    pub key: String,
    /// Ecosystem label (the instance).
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
    /// Last access, milliseconds since the epoch (the eviction order).
    pub last_access_ms: u64,
}

/// Hits to add to a row, and its latest access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUpdate {
    /// Storage key.
    pub key: String,
    /// Hits since the last update.
    pub hits: u64,
    /// Last access, milliseconds since the epoch (only ever moves forward).
    pub last_access_ms: u64,
}

/// Cached artifacts and their bytes, for one ecosystem label; rows marked for eviction are not
/// counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexTotals {
    /// Ecosystem label.
    pub ecosystem: String,
    /// Rows.
    pub artifacts: u64,
    /// Sum of their sizes.
    pub bytes: u64,
}

/// A row chosen for eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// Storage key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Artifact records: the cache reads through to these on a memory miss and writes every
/// commit, hit batch and eviction here.
///
/// Eviction is two-phase: a row is first *marked* (it no longer counts, and lookups no longer
/// see it), its object is deleted after the grace period, then the row. A row that is put again
/// while marked is live again.
#[async_trait]
pub trait ArtifactIndex: Send + Sync + std::fmt::Debug + 'static {
    /// The live (unmarked) row for `key`.
    async fn artifact(&self, key: &str) -> Result<Option<IndexRecord>, IndexError>;
    /// Insert or replace a row (a replaced row that was marked is live again).
    async fn put_artifact(&self, record: IndexRecord) -> Result<(), IndexError>;
    /// Remove rows, marked or not.
    async fn remove_artifacts(&self, keys: Vec<String>) -> Result<(), IndexError>;
    /// Add hits and move last-access times forward.
    async fn record_access(&self, batch: Vec<AccessUpdate>) -> Result<(), IndexError>;
    /// Live rows and bytes per ecosystem label (kept with the rows, not counted on each call).
    async fn totals(&self) -> Result<Vec<IndexTotals>, IndexError>;
    /// Up to `limit` live rows, least recently used first.
    async fn least_recently_used(&self, limit: usize) -> Result<Vec<Victim>, IndexError>;
    /// Mark rows for eviction at `at_ms`; the keys that were live and are now marked.
    async fn mark_evicted(&self, keys: Vec<String>, at_ms: u64) -> Result<Vec<String>, IndexError>;
    /// Up to `limit` rows marked at or before `before_ms`, oldest mark first.
    async fn marked_before(&self, before_ms: u64, limit: usize) -> Result<Vec<String>, IndexError>;
    /// Remove the row for `key` if it is still marked; whether it was.
    async fn remove_marked(&self, key: &str) -> Result<bool, IndexError>;
    /// Reconciliation saw these objects in storage at `at_ms`: note it on their rows, and
    /// return the keys no row (live or marked) knows.
    async fn sighted(&self, keys: Vec<String>, at_ms: u64) -> Result<Vec<String>, IndexError>;
    /// Up to `limit` live rows fetched before `before_ms` and not sighted since: their objects
    /// may be gone.
    async fn unsighted(&self, before_ms: u64, limit: usize) -> Result<Vec<String>, IndexError>;
}

/// Upstream metadata documents with their validators, so a node that restarts (or one that
/// never fetched a document) can revalidate or serve it stale.
#[async_trait]
pub trait DocumentIndex: Send + Sync + std::fmt::Debug + 'static {
    /// A stored document.
    async fn document(&self, key: &str) -> Result<Option<Document>, IndexError>;
    /// Store a document.
    async fn put_document(&self, key: &str, document: Document) -> Result<(), IndexError>;
}

/// The outcome of asking for a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// The caller holds it until the deadline it asked for (renew to keep it).
    Acquired,
    /// Another owner holds it.
    HeldElsewhere {
        /// That owner.
        owner: String,
    },
}

/// One upstream fetch per artifact across every node sharing the index: the node that holds an
/// artifact's lease fetches it; the others wait for its row, and take the lease over when it
/// expires (its owner died).
#[async_trait]
pub trait FetchLeases: Send + Sync + std::fmt::Debug + 'static {
    /// Take the lease on `key` for `ttl`, unless another owner holds an unexpired one.
    async fn acquire_fetch(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, IndexError>;
    /// Extend a held lease; `false` if the caller no longer holds it.
    async fn renew_fetch(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, IndexError>;
    /// Give the lease up (nothing if the caller does not hold it).
    async fn release_fetch(&self, key: &str, owner: &str) -> Result<(), IndexError>;
}

/// One evictor at a time across every node sharing the index.
#[async_trait]
pub trait EvictionLease: Send + Sync + std::fmt::Debug + 'static {
    /// Take (or extend) the eviction lease for `ttl`, unless another owner holds it.
    async fn acquire_eviction(&self, owner: &str, ttl: Duration) -> Result<Lease, IndexError>;
    /// Give it up.
    async fn release_eviction(&self, owner: &str) -> Result<(), IndexError>;
}

/// Everything the cache needs of its index.
pub trait Index: ArtifactIndex + DocumentIndex + FetchLeases + EvictionLease {}

impl<T: ArtifactIndex + DocumentIndex + FetchLeases + EvictionLease> Index for T {}

/// Leases held in this process's memory: right for an index only one process uses (SQLite),
/// where they order the fetches and evictions of the caches sharing it.
#[derive(Debug, Default)]
pub struct LocalLeases {
    held: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl LocalLeases {
    /// No lease held.
    pub fn new() -> Self {
        Self::default()
    }

    fn held(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, std::time::Instant)>>
    {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take `name` for `ttl` unless another owner holds it unexpired.
    pub fn acquire(&self, name: &str, owner: &str, ttl: Duration) -> Lease {
        let now = std::time::Instant::now();
        let mut held = self.held();
        // Expired leases go whenever a lease is taken: the map holds only live fetches.
        held.retain(|_, (_, until)| *until > now);
        match held.get(name) {
            Some((other, _)) if other != owner => Lease::HeldElsewhere {
                owner: other.clone(),
            },
            _ => {
                held.insert(name.to_owned(), (owner.to_owned(), now + ttl));
                Lease::Acquired
            }
        }
    }

    /// Extend `name` if `owner` holds it.
    pub fn renew(&self, name: &str, owner: &str, ttl: Duration) -> bool {
        let now = std::time::Instant::now();
        match self.held().get_mut(name) {
            Some((holder, until)) if holder == owner && *until > now => {
                *until = now + ttl;
                true
            }
            _ => false,
        }
    }

    /// Give `name` up if `owner` holds it.
    pub fn release(&self, name: &str, owner: &str) {
        let mut held = self.held();
        if held.get(name).is_some_and(|(holder, _)| holder == owner) {
            held.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_leases_exclude_until_released_or_expired() {
        let leases = LocalLeases::new();
        let long = Duration::from_secs(60);
        assert_eq!(leases.acquire("k", "a", long), Lease::Acquired);
        assert_eq!(
            leases.acquire("k", "b", long),
            Lease::HeldElsewhere { owner: "a".into() }
        );
        assert!(leases.renew("k", "a", long));
        assert!(!leases.renew("k", "b", long));
        leases.release("k", "b");
        assert!(matches!(
            leases.acquire("k", "b", long),
            Lease::HeldElsewhere { .. }
        ));
        leases.release("k", "a");
        assert_eq!(leases.acquire("k", "b", Duration::ZERO), Lease::Acquired);
        assert_eq!(leases.acquire("k", "c", long), Lease::Acquired, "expired");
    }
}
