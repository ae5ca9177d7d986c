//! The handler contract: a pure router from method and path to an operation, and a handler
//! that answers an operation.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use crate::{Refusal, Reply};

/// A request as a handler sees it, borrowed from the front's own (a handler that must keep
/// any of it copies that part).
#[derive(Debug, Clone, Copy)]
pub struct EcosystemRequest<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path after the instance's mount, still percent-encoded: `/` or starting with `/`.
    pub path: &'a str,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// One ecosystem's protocol. `route` is pure (no I/O, no state that changes): it turns a method
/// and a path into an operation or a refusal, so it can be table-tested and fuzzed, and a path
/// it refuses never reaches `handle`, the upstream or storage.
pub trait Ecosystem: Send + Sync + std::fmt::Debug + 'static {
    /// A parsed, validated request.
    type Op: Send + std::fmt::Debug + 'static;

    /// Parse `path` (as in [`EcosystemRequest::path`]) for `method`.
    fn route(&self, method: &Method, path: &str) -> Result<Self::Op, Refusal>;

    /// Answer an operation `route` produced.
    fn handle(
        self: Arc<Self>,
        op: Self::Op,
        request: EcosystemRequest<'_>,
    ) -> impl Future<Output = Reply> + Send;

    /// The body (and its content type) of an error answer with `status` and one-line
    /// `reason` for `path`, where the protocol defines one (OCI's JSON errors); `None` keeps
    /// proxyd's one line of text.
    fn error_body(&self, path: &str, status: u16, reason: &str) -> Option<(HeaderValue, Bytes)> {
        let _ = (path, status, reason);
        None
    }
}

/// An ecosystem as the front holds it: route, then handle.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + std::fmt::Debug + 'static {
    /// Route the request and, when the route accepts it, handle it.
    async fn serve(self: Arc<Self>, request: EcosystemRequest<'_>) -> Reply;

    /// See [`Ecosystem::error_body`].
    fn error_body(&self, path: &str, status: u16, reason: &str) -> Option<(HeaderValue, Bytes)>;
}

#[async_trait::async_trait]
impl<E: Ecosystem> Handler for E {
    async fn serve(self: Arc<Self>, request: EcosystemRequest<'_>) -> Reply {
        match self.route(request.method, request.path) {
            Ok(op) => self.handle(op, request).await,
            Err(refusal) => Reply::Error(refusal),
        }
    }

    fn error_body(&self, path: &str, status: u16, reason: &str) -> Option<(HeaderValue, Bytes)> {
        Ecosystem::error_body(self, path, status, reason)
    }
}

/// `Ok` for GET and HEAD, the 405 refusal otherwise: the rule of every read-only route.
pub fn read_only(method: &Method) -> Result<(), Refusal> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(Refusal::method_not_allowed("GET, HEAD"))
    }
}
