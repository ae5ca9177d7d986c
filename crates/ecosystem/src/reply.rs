use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method};
use proxyd_cache::{ArtifactSpec, FetchFailure};
use proxyd_storage_core::ObjectKey;

/// Finds out, on a miss, where upstream has an artifact and what digest it declared.
pub type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<ArtifactSpec, FetchFailure>> + Send + 'static>>;

/// Makes the [`ResolveFuture`] only when it is needed: on a hit nothing is built.
pub type Resolver = Box<dyn FnOnce() -> ResolveFuture + Send + 'static>;

/// A request as a handler sees it, borrowed from the front's own (a handler that must keep
/// any of it copies that part).
#[derive(Debug, Clone, Copy)]
pub struct EcosystemRequest<'a> {
    /// GET or HEAD (the front refuses other methods).
    pub method: &'a Method,
    /// The path after the ecosystem prefix, still percent-encoded, starting with `/`.
    pub path: &'a str,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// A metadata document to send.
#[derive(Debug, Clone)]
pub struct DocumentReply {
    /// Content type.
    pub content_type: &'static str,
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
}

impl DocumentReply {
    /// A fresh reply whose strong ETag is derived from `body`.
    pub fn new(content_type: &'static str, body: Bytes, max_age: u64) -> Self {
        use sha2::Digest;
        let etag = format!("\"{}\"", hex::encode(&sha2::Sha256::digest(&body)[..16]));
        Self {
            content_type,
            body,
            etag,
            max_age,
            stale: false,
            last_modified: None,
        }
    }
}

/// An artifact to serve from the cache, fetched first on a miss.
pub struct ArtifactReply {
    /// Storage key.
    pub key: ObjectKey,
    /// Run only on a miss.
    pub resolve: Resolver,
}

impl std::fmt::Debug for ArtifactReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactReply")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// What a handler answers.
#[derive(Debug)]
pub enum Reply {
    /// A metadata document.
    Document(DocumentReply),
    /// A cached artifact.
    Artifact(ArtifactReply),
    /// A permanent redirect to a canonical URL (absolute or path).
    Redirect(String),
    /// An error with its status and a one-line reason.
    Error(u16, String),
}

impl Reply {
    /// `400 Bad Request` with a reason.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::Error(400, reason.into())
    }

    /// `404 Not Found` with a reason.
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::Error(404, reason.into())
    }
}

/// An ecosystem handler mounted under `/{name}/`.
#[async_trait::async_trait]
pub trait Ecosystem: Send + Sync + std::fmt::Debug + 'static {
    /// Route prefix and metrics label (`npm`).
    fn name(&self) -> &'static str;

    /// Answer a request.
    async fn handle(self: Arc<Self>, request: EcosystemRequest<'_>) -> Reply;
}
