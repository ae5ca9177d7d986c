//! What a handler answers: a document, a file kept in storage, a redirect, or a refusal whose
//! HTTP status is decided here and nowhere else.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use proxyd_cache::{ArtifactSpec, FailureKind, FetchFailure, UpstreamBody};
use proxyd_storage_core::ObjectKey;

/// Starts the upstream request for an artifact; run only by the request that fetches it.
pub type SourceFuture =
    Pin<Box<dyn Future<Output = Result<UpstreamBody, FetchFailure>> + Send + 'static>>;

/// What a miss needs: the artifact's description (key, digest, names) and its upstream request.
pub struct Fetch {
    /// The artifact as the index will record it, with its verifier.
    pub spec: ArtifactSpec,
    /// The upstream request, started only if this request leads the fetch.
    pub source: SourceFuture,
}

impl std::fmt::Debug for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetch")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Finds out, on a miss, where upstream has an artifact and how to check it.
pub type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<Fetch, FetchFailure>> + Send + 'static>>;

/// Makes the [`ResolveFuture`] only when it is needed: on a hit nothing is built. It is
/// called with the reply's key, so it need not keep a copy of its own.
pub type Resolver = Box<dyn FnOnce(ObjectKey) -> ResolveFuture + Send + 'static>;

/// What kind of refusal: the one thing that decides the status a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The request is malformed (a bad path, name or version): 400.
    BadRequest,
    /// No such route, package or file: 404.
    NotFound,
    /// The route exists but not for this method: 405 with `Allow`.
    MethodNotAllowed,
    /// No representation the client accepts: 406.
    NotAcceptable,
    /// The ecosystem is not configured: 503.
    Disabled,
    /// The upstream failed or sent something unusable: 502.
    Upstream,
    /// The upstream took too long: 504.
    UpstreamTimeout,
    /// A URL from upstream metadata points where proxyd may not go: 502.
    EgressRefused,
    /// Storage failed: 503.
    Storage,
}

impl RefusalKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::NotAcceptable => 406,
            Self::Disabled | Self::Storage => 503,
            Self::Upstream | Self::EgressRefused => 502,
            Self::UpstreamTimeout => 504,
        }
    }
}

/// A refusal: its kind and a one-line reason for the client and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// What kind.
    pub kind: RefusalKind,
    /// One line: control characters a client sent (a path quoted back) are escaped, and it is
    /// cut at [`Refusal::MAX_MESSAGE`] characters.
    pub message: String,
    /// For [`RefusalKind::MethodNotAllowed`]: the methods the route takes.
    pub allow: Option<&'static str>,
}

impl Refusal {
    /// The longest message, in characters (a quoted path can be as long as a URI).
    pub const MAX_MESSAGE: usize = 300;

    /// A refusal of `kind`.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: one_line(message.into()),
            allow: None,
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::BadRequest, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::NotFound, message)
    }

    /// 405 naming the methods allowed.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            kind: RefusalKind::MethodNotAllowed,
            message: format!("only {allow} are supported here"),
            allow: Some(allow),
        }
    }

    /// 502.
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(RefusalKind::Upstream, message)
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}

impl From<FetchFailure> for Refusal {
    fn from(failure: FetchFailure) -> Self {
        let kind = match failure.kind {
            FailureKind::NotFound => RefusalKind::NotFound,
            FailureKind::Timeout => RefusalKind::UpstreamTimeout,
            FailureKind::Refused => RefusalKind::EgressRefused,
            FailureKind::Storage => RefusalKind::Storage,
            _ => RefusalKind::Upstream,
        };
        Self::new(kind, failure.message)
    }
}

/// A document to send (generated or rewritten: a packument, a simple page, an index file).
#[derive(Debug, Clone)]
pub struct DocumentReply {
    /// Content type.
    pub content_type: HeaderValue,
    /// Body.
    pub body: Bytes,
    /// Strong ETag of the body, for `If-None-Match`.
    pub etag: String,
    /// Seconds a client may reuse it.
    pub max_age: u64,
    /// The upstream could not be reached and this is the last copy seen.
    pub stale: bool,
    /// `Last-Modified` as upstream gave it, for `If-Modified-Since`.
    pub last_modified: Option<String>,
    /// Further response headers (`Vary`, `Docker-Content-Digest`, ...).
    pub headers: HeaderMap,
}

impl DocumentReply {
    /// A fresh reply whose strong ETag is derived from `body`.
    pub fn new(content_type: HeaderValue, body: Bytes, max_age: u64) -> Self {
        use sha2::Digest;
        let etag = format!("\"{}\"", hex::encode(&sha2::Sha256::digest(&body)[..16]));
        Self {
            content_type,
            body,
            etag,
            max_age,
            stale: false,
            last_modified: None,
            headers: HeaderMap::new(),
        }
    }

    /// The same reply with one more response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The same reply marked as chosen by the request's `Accept` (`Vary: Accept`), so a shared
    /// cache in front keeps the variants apart.
    pub fn varies_by_accept(self) -> Self {
        self.with_header(http::header::VARY, HeaderValue::from_static("Accept"))
    }
}

/// How long a file kept in storage may be served without asking the upstream again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshnessRule {
    /// Never changes once published (a tarball, a `.crate`, a wheel).
    Immutable,
    /// Named by its own digest (an OCI blob, a `by-hash` file): immutable, and the name is the
    /// proof.
    ContentAddressed,
    /// Changes upstream (an index file): fetched again when older than this; the kept copy is
    /// served when the upstream fails.
    RevalidateAfter(Duration),
}

/// A file served from storage, fetched first on a miss.
pub struct StoredReply {
    /// Storage key (under the instance's prefix).
    pub key: ObjectKey,
    /// When it must be fetched again.
    pub freshness: FreshnessRule,
    /// Further response headers for GET and HEAD.
    pub headers: HeaderMap,
    /// Always streamed, never redirected to storage whatever `direct_serve` says (an OCI
    /// manifest, whose client needs its exact headers from the registry itself).
    pub never_redirect: bool,
    /// Run only on a miss (or when a revalidated file has gone stale).
    pub resolve: Resolver,
}

impl StoredReply {
    /// An immutable file under `key`, resolved by `resolve` on a miss.
    pub fn immutable(key: ObjectKey, resolve: Resolver) -> Self {
        Self {
            key,
            freshness: FreshnessRule::Immutable,
            headers: HeaderMap::new(),
            never_redirect: false,
            resolve,
        }
    }
}

impl std::fmt::Debug for StoredReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredReply")
            .field("key", &self.key)
            .field("freshness", &self.freshness)
            .finish_non_exhaustive()
    }
}

/// A file a client sends (PUT) to be kept in storage under `key`: counted and evicted like
/// artifacts.
#[derive(Debug, Clone)]
pub struct UploadReply {
    /// Storage key (under the instance's prefix).
    pub key: ObjectKey,
    /// The name the entry is counted under.
    pub name: String,
    /// Content type it is served with.
    pub content_type: String,
    /// The largest body accepted: a larger one is answered 413 (as soon as it is seen, from
    /// `Content-Length` or while streaming) and nothing is stored.
    pub max_size: u64,
}

/// What a handler answers.
#[derive(Debug)]
pub enum Reply {
    /// A document built in memory.
    Document(DocumentReply),
    /// A file kept in storage.
    Stored(StoredReply),
    /// A body to store (a PUT).
    Upload(UploadReply),
    /// A redirect to a canonical URL (absolute or a path).
    Redirect {
        /// Where to.
        location: String,
        /// 301 when true, 302 otherwise.
        permanent: bool,
    },
    /// A refusal.
    Error(Refusal),
}

impl From<Refusal> for Reply {
    fn from(refusal: Refusal) -> Self {
        Self::Error(refusal)
    }
}

impl From<FetchFailure> for Reply {
    fn from(failure: FetchFailure) -> Self {
        Self::Error(failure.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_status() {
        for (kind, status) in [
            (RefusalKind::BadRequest, 400),
            (RefusalKind::NotFound, 404),
            (RefusalKind::MethodNotAllowed, 405),
            (RefusalKind::NotAcceptable, 406),
            (RefusalKind::Disabled, 503),
            (RefusalKind::Upstream, 502),
            (RefusalKind::UpstreamTimeout, 504),
            (RefusalKind::EgressRefused, 502),
            (RefusalKind::Storage, 503),
        ] {
            assert_eq!(kind.status(), status, "{kind:?}");
        }
        let from_fetch = Refusal::from(FetchFailure::timeout("slow"));
        assert_eq!(from_fetch.status(), 504);
        assert_eq!(Refusal::from(FetchFailure::not_found("x")).status(), 404);
    }
}

/// `message` as one line of at most [`Refusal::MAX_MESSAGE`] characters, control characters
/// escaped (found by the `routes` fuzz target: a path with a newline, quoted back, made two).
fn one_line(message: String) -> String {
    if message.len() <= Refusal::MAX_MESSAGE && !message.chars().any(char::is_control) {
        return message;
    }
    let mut out = String::with_capacity(Refusal::MAX_MESSAGE + 3);
    for c in message.chars() {
        if out.chars().count() >= Refusal::MAX_MESSAGE {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod one_line_tests {
    use super::*;

    #[test]
    fn refusals_are_one_short_line() {
        let r = Refusal::not_found("no route for /a\nb\r\0c");
        assert_eq!(r.message, "no route for /a\\nb\\r\\u{0}c");
        let long = Refusal::bad_request("x".repeat(10_000));
        assert_eq!(long.message.lines().count(), 1);
        assert!(long.message.chars().count() <= Refusal::MAX_MESSAGE + 3);
        assert_eq!(Refusal::bad_request("plain").message, "plain");
    }
}
