use std::sync::Arc;

/// Why an upstream fetch failed, shared by every request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FetchFailure {
    /// HTTP status to answer with (404 when upstream has no such file, 502 otherwise, 504 on a
    /// timeout).
    pub status: u16,
    /// One line for the client and the log.
    pub message: String,
}

impl FetchFailure {
    /// A failure answered with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
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
    Index(String),
}

impl From<proxyd_storage_core::Error> for CacheError {
    fn from(err: proxyd_storage_core::Error) -> Self {
        Self::Storage(Arc::new(err))
    }
}

impl From<rusqlite::Error> for CacheError {
    fn from(err: rusqlite::Error) -> Self {
        Self::Index(err.to_string())
    }
}
