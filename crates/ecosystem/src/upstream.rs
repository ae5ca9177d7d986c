use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http::HeaderMap;
use proxyd_cache::metric_names as m;
use proxyd_cache::{FetchFailure, UpstreamBody};

/// Metadata documents larger than this are refused rather than held in memory.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024 * 1024;

/// Why an upstream metadata request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// Upstream says there is no such document.
    #[error("upstream has no {0}")]
    NotFound(String),
    /// Upstream answered with an unexpected status.
    #[error("upstream answered {status} for {url}")]
    Status {
        /// The status.
        status: u16,
        /// The URL asked for.
        url: String,
    },
    /// Upstream could not be reached or the response could not be read.
    #[error("upstream {url} unreachable: {reason}")]
    Unreachable {
        /// The URL asked for.
        url: String,
        /// Why.
        reason: String,
    },
}

impl From<&UpstreamError> for FetchFailure {
    /// What a client is told: 404 when upstream has no such thing, 502 otherwise.
    fn from(err: &UpstreamError) -> Self {
        let status = if matches!(err, UpstreamError::NotFound(_)) {
            404
        } else {
            502
        };
        FetchFailure::new(status, err.to_string())
    }
}

/// A metadata response.
#[derive(Debug, Clone)]
pub enum UpstreamResponse {
    /// `304 Not Modified` to a conditional request.
    NotModified,
    /// A new body.
    Body {
        /// The body.
        body: Bytes,
        /// `ETag`.
        etag: Option<String>,
        /// `Last-Modified`.
        last_modified: Option<String>,
        /// `Content-Type`.
        content_type: Option<String>,
    },
}

/// The HTTP client for upstream registries.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    metadata_timeout: Duration,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The URL without query and fragment, for logs (a query may carry a token).
fn loggable(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

impl Upstream {
    /// A client with proxyd's user agent, connect timeout `connect_timeout`, and a per-read
    /// timeout `read_timeout` (a stalled download fails instead of hanging).
    pub fn new(connect_timeout: Duration, read_timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("proxyd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            metadata_timeout: Duration::from_secs(60),
        })
    }

    /// GET a metadata document, conditionally when `etag` / `last_modified` are given.
    pub async fn document(
        &self,
        ecosystem: &'static str,
        url: &str,
        accept: &str,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        metrics::counter!(m::UPSTREAM_REQUESTS_TOTAL, "ecosystem" => ecosystem, "kind" => "metadata")
            .increment(1);
        let result = self.document_inner(url, accept, etag, last_modified).await;
        if matches!(
            result,
            Err(UpstreamError::Status { .. } | UpstreamError::Unreachable { .. })
        ) {
            metrics::counter!(m::UPSTREAM_ERRORS_TOTAL, "ecosystem" => ecosystem, "kind" => "metadata")
                .increment(1);
        }
        result
    }

    async fn document_inner(
        &self,
        url: &str,
        accept: &str,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let unreachable = |e: &dyn std::fmt::Display| UpstreamError::Unreachable {
            url: loggable(url).to_owned(),
            reason: e.to_string(),
        };
        let mut request = self
            .client
            .get(url)
            .header("accept", accept)
            .timeout(self.metadata_timeout);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        if let Some(lm) = last_modified {
            request = request.header("if-modified-since", lm);
        }
        let response = request.send().await.map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        match status {
            304 => return Ok(UpstreamResponse::NotModified),
            200 => {}
            404 | 410 => return Err(UpstreamError::NotFound(loggable(url).to_owned())),
            _ => {
                return Err(UpstreamError::Status {
                    status,
                    url: loggable(url).to_owned(),
                });
            }
        }
        let headers = response.headers().clone();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(unreachable(&"document is larger than 256 MiB"));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.try_next().await.map_err(|e| unreachable(&e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(unreachable(&"document is larger than 256 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(UpstreamResponse::Body {
            body: body.into(),
            etag: header(&headers, "etag"),
            last_modified: header(&headers, "last-modified"),
            content_type: header(&headers, "content-type"),
        })
    }

    /// Start downloading an artifact; the body streams.
    pub async fn artifact(&self, url: &str) -> Result<UpstreamBody, FetchFailure> {
        let response = self.client.get(url).send().await.map_err(|e| {
            let status = if e.is_timeout() { 504 } else { 502 };
            FetchFailure::new(
                status,
                format!("upstream {} unreachable: {e}", loggable(url)),
            )
        })?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            404 | 410 => {
                return Err(FetchFailure::new(
                    404,
                    format!("upstream has no file at {}", loggable(url)),
                ));
            }
            _ => {
                return Err(FetchFailure::new(
                    502,
                    format!("upstream answered {status} for {}", loggable(url)),
                ));
            }
        }
        let content_length = response.content_length();
        let body = response.bytes_stream().map_err(std::io::Error::other);
        Ok(UpstreamBody {
            content_length,
            body: Box::pin(body),
        })
    }
}
