use std::sync::Arc;

/// What kind of failure a fetch met, so the layer that answers clients can pick its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The upstream has no such file.
    NotFound,
    /// The upstream failed, answered with an error, or sent bytes that were refused.
    Upstream,
    /// The upstream (or the fetch this request waited for) took too long.
    Timeout,
    /// The URL is not one proxyd may fetch (an address the egress rule refuses).
    Refused,
    /// Storage could not take or give the bytes.
    Storage,
}

/// Why an upstream fetch failed, shared by every request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// One line for the client and the log.
    pub message: String,
}

impl FetchFailure {
    /// A failure of `kind`.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The upstream has no such file.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(FailureKind::NotFound, message)
    }

    /// The upstream failed or sent something unusable.
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Upstream, message)
    }

    /// Too slow.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Timeout, message)
    }
}

/// Errors of cache operations.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The upstream fetch failed (or another request's fetch this one waited for).
    #[error(transparent)]
    Fetch(#[from] FetchFailure),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(Arc<proxyd_storage_core::Error>),
    /// The index database failed.
    #[error("index: {0}")]
    Index(#[from] crate::IndexError),
}

impl From<proxyd_storage_core::Error> for CacheError {
    fn from(err: proxyd_storage_core::Error) -> Self {
        Self::Storage(Arc::new(err))
    }
}
