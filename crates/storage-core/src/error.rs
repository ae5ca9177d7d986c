use std::fmt;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object (or bucket/container) does not exist.
    NotFound,
    /// The backend cannot do this at all (for example presigning on local disk).
    Unsupported,
    /// Credentials are missing, refused or lack a permission.
    PermissionDenied,
    /// The request itself is wrong (bad key, bad range, bad TTL, bad configuration value).
    InvalidInput,
    /// A create-only put found the key already there.
    AlreadyExists,
    /// A failure that may succeed when retried (network, throttling, 5xx).
    Temporary,
    /// Anything else; a bug or an answer the backend did not expect.
    Unexpected,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::Unsupported => "unsupported",
            Self::PermissionDenied => "permission denied",
            Self::InvalidInput => "invalid input",
            Self::AlreadyExists => "already exists",
            Self::Temporary => "temporary failure",
            Self::Unexpected => "unexpected failure",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A storage error: a [`ErrorKind`], the operation, the key if any, and a one-line message.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    op: &'static str,
    key: Option<String>,
    message: String,
    #[source]
    source: Option<Source>,
}

/// Result alias for storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` raised by operation `op`.
    pub fn new(kind: ErrorKind, op: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            op,
            key: None,
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(op: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, op, message)
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, op, message)
    }

    /// Shorthand for an [`ErrorKind::NotFound`] error.
    pub fn not_found(op: &'static str, key: &str) -> Self {
        Self::new(ErrorKind::NotFound, op, "no such object").with_key(key)
    }

    /// A `get` range that does not fit the object.
    pub fn range_outside(key: &str, range: &std::ops::Range<u64>, size: u64) -> Self {
        Self::invalid(
            "get",
            format!(
                "range {}..{} is outside the object of {size} bytes",
                range.start, range.end
            ),
        )
        .with_key(key)
    }

    /// Attach the key the operation was about.
    #[must_use]
    pub fn with_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    /// Attach the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed (`put`, `get`, `presign_get`, ...).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The key involved, when there is one.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The one-line message, without kind, operation or key.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same call may succeed.
    pub fn is_temporary(&self) -> bool {
        self.kind == ErrorKind::Temporary
    }

    /// Whether the object was simply absent.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Whether the backend refused because it cannot do this at all.
    pub fn is_unsupported(&self) -> bool {
        self.kind == ErrorKind::Unsupported
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.op)?;
        if let Some(key) = &self.key {
            write!(f, "{key:?} ")?;
        }
        write!(f, "failed ({}): {}", self.kind, self.message)?;
        // One line with the root cause: callers log errors once, where they are handled.
        let mut cause = self
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let kind = match err.kind() {
            Io::NotFound => ErrorKind::NotFound,
            Io::PermissionDenied => ErrorKind::PermissionDenied,
            Io::InvalidInput | Io::InvalidData => ErrorKind::InvalidInput,
            Io::Interrupted
            | Io::TimedOut
            | Io::WouldBlock
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::BrokenPipe
            | Io::UnexpectedEof => ErrorKind::Temporary,
            _ => ErrorKind::Unexpected,
        };
        Error::new(kind, "io", err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_cause() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::new(ErrorKind::Temporary, "put", "write failed")
            .with_key("npm/a.tgz")
            .with_source(io);
        let text = err.to_string();
        assert_eq!(
            text,
            "put \"npm/a.tgz\" failed (temporary failure): write failed: disk on fire"
        );
        assert!(err.is_temporary());
    }
}
