use std::any::Any;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proxyd_storage_core::ObjectKey;

use crate::Verifier;

/// What an ecosystem handler knows about an artifact before it is fetched.
#[derive(Debug)]
pub struct ArtifactSpec {
    /// Storage key.
    pub key: ObjectKey,
    /// Ecosystem label (`npm`, `pypi`, `cargo`).
    pub ecosystem: &'static str,
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// File name as clients see it.
    pub filename: String,
    /// Content type to store and serve.
    pub content_type: String,
    /// Where upstream has it (from the upstream's own metadata, never from the client).
    pub upstream_url: String,
    /// Checks the bytes before they are committed (a declared digest, or a hash the ecosystem
    /// computes over the content); `None` when upstream declared nothing to check against.
    pub verifier: Option<Box<dyn Verifier>>,
}

/// A cached artifact as the index knows it.
#[derive(Debug)]
pub struct ArtifactEntry {
    /// Storage key.
    pub key: ObjectKey,
    /// Ecosystem label.
    pub ecosystem: String,
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// File name as clients see it.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the stored bytes.
    pub sha256: [u8; 32],
    /// Content type.
    pub content_type: String,
    /// Where it came from.
    pub upstream_url: String,
    /// When it was fetched.
    pub fetched_at: SystemTime,
    pub(crate) etag: String,
    pub(crate) hits: AtomicU64,
    pub(crate) pending_hits: AtomicU64,
    pub(crate) last_access: AtomicU64,
    pub(crate) dirty: AtomicBool,
    pub(crate) rendered: OnceLock<Box<dyn Any + Send + Sync>>,
    /// Its ecosystem's hit counters, found at the first hit (no map lookup on the next).
    pub(crate) counters: OnceLock<std::sync::Arc<crate::cache::Counters>>,
}

impl ArtifactEntry {
    /// Strong ETag: the quoted SHA-256 (computed once, when the entry is made).
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// What a server renders from this entry (its response headers, say), made by `render` on
    /// first use and kept with the entry, so a hit does not render it again. The first type
    /// asked for is the one kept: asking for another gives `None`.
    pub fn rendered<T: Any + Send + Sync>(&self, render: impl FnOnce(&Self) -> T) -> Option<&T> {
        self.rendered
            .get_or_init(|| Box::new(render(self)))
            .downcast_ref()
    }

    /// Hits so far (including those not yet written to the index).
    pub fn hit_count(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Last access, seconds since the epoch.
    pub fn last_access_secs(&self) -> u64 {
        self.last_access.load(Ordering::Relaxed)
    }
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// An upstream metadata document as fetched (packument, simple page, index file).
#[derive(Debug, Clone)]
pub struct Document {
    /// The upstream body, unmodified.
    pub body: Bytes,
    /// The upstream ETag, for revalidation.
    pub etag: Option<String>,
    /// The upstream Last-Modified, for revalidation.
    pub last_modified: Option<String>,
    /// Upstream content type.
    pub content_type: Option<String>,
    /// When it was fetched or last revalidated.
    pub fetched_at: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ArtifactEntry {
        ArtifactEntry {
            key: ObjectKey::new("npm/a/-/a-1.0.0.tgz").unwrap(),
            ecosystem: "npm".into(),
            name: "a".into(),
            version: "1.0.0".into(),
            filename: "a-1.0.0.tgz".into(),
            size: 3,
            sha256: [0; 32],
            content_type: "application/octet-stream".into(),
            upstream_url: "http://127.0.0.1:1/a-1.0.0.tgz".into(),
            fetched_at: UNIX_EPOCH,
            etag: "\"00\"".into(),
            hits: AtomicU64::new(0),
            pending_hits: AtomicU64::new(0),
            last_access: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            rendered: OnceLock::new(),
            counters: OnceLock::new(),
        }
    }

    #[test]
    fn rendered_once_and_only_for_the_first_type() {
        let entry = entry();
        let mut calls = 0;
        let first = entry.rendered(|e| {
            calls += 1;
            e.filename.len()
        });
        assert_eq!(first, Some(&11));
        assert_eq!(
            entry.rendered(|_| unreachable!("rendered twice")),
            Some(&11usize)
        );
        assert_eq!(calls, 1);
        assert_eq!(entry.rendered(|_| "another type"), None);
    }
}
