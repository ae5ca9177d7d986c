//! The HTTP client for upstream registries: the system's trust store plus `upstream.ca_file`,
//! credentials by URL prefix, per-instance timeouts, retries, a concurrency limit and a deadline
//! per download, and the egress rule for URLs that came from upstream metadata.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use proxyd_cache::metric_names as m;
use proxyd_cache::{ArtifactSpec, FailureKind, FetchFailure, UpstreamBody};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use url::Url;

use crate::Fetch;
use crate::egress::{EgressRule, PublicOnlyResolver, Route};

/// Metadata documents larger than this are refused rather than held in memory.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024 * 1024;

/// Redirects an upstream may answer with before proxyd gives up.
const MAX_REDIRECTS: usize = 5;

/// Why an upstream request failed.
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
        /// Why, naming the cause (refused connection, unknown TLS issuer, ...).
        reason: String,
    },
    /// Upstream did not answer in time.
    #[error("upstream {url} timed out: {reason}")]
    Timeout {
        /// The URL asked for.
        url: String,
        /// Which limit.
        reason: String,
    },
    /// The URL is not one proxyd may fetch.
    #[error("refused to fetch {url}: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The body arrived but is not a whole, well-formed document.
    #[error("upstream document {url} is unusable: {reason}")]
    Invalid {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl UpstreamError {
    /// The kind of failure this is for a client.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::NotFound(_) => FailureKind::NotFound,
            Self::Timeout { .. } => FailureKind::Timeout,
            Self::Refused { .. } => FailureKind::Refused,
            _ => FailureKind::Upstream,
        }
    }
}

impl From<&UpstreamError> for FetchFailure {
    fn from(err: &UpstreamError) -> Self {
        FetchFailure::new(err.kind(), err.to_string())
    }
}

impl From<UpstreamError> for FetchFailure {
    fn from(err: UpstreamError) -> Self {
        Self::from(&err)
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

/// How upstream credentials are presented.
#[derive(Clone)]
pub enum Credential {
    /// `Authorization: Basic`.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer`.
    Bearer {
        /// The token.
        token: String,
    },
    /// Any header (`X-JFrog-Art-Api`, `Private-Token`, ...).
    Header {
        /// Header name.
        name: HeaderName,
        /// Header value (sensitive).
        value: HeaderValue,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}:<redacted>)"),
            Self::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
            Self::Header { name, .. } => write!(f, "Header({name}: <redacted>)"),
        }
    }
}

/// Credentials for every upstream URL that starts with `url_prefix` (the longest prefix wins).
#[derive(Debug, Clone)]
pub struct UpstreamAuth {
    /// The setting's name (`upstream.auth.<name>`).
    pub name: String,
    /// URLs it applies to.
    pub url_prefix: String,
    /// What is sent.
    pub credential: Credential,
}

impl UpstreamAuth {
    fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        use base64::Engine;
        let (name, value) = match &self.credential {
            Credential::Basic { username, password } => {
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                (
                    header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Basic {token}")).ok()?,
                )
            }
            Credential::Bearer { token } => (
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).ok()?,
            ),
            Credential::Header { name, value } => (name.clone(), value.clone()),
        };
        let mut value = value;
        value.set_sensitive(true);
        Some((name, value))
    }
}

/// Settings shared by every upstream client.
#[derive(Debug, Clone, Default)]
pub struct UpstreamSettings {
    /// PEM file of CAs trusted in addition to the system's store.
    pub ca_file: Option<PathBuf>,
    /// Hosts (`host` or `host:port`) that URLs from upstream metadata may point to, whatever
    /// their address.
    pub allowed_hosts: Vec<String>,
    /// Credentials by URL prefix.
    pub auth: Vec<UpstreamAuth>,
}

/// Limits of one instance's upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// Longest wait to connect and for response headers, and longest pause between two reads.
    pub timeout: Duration,
    /// Longest one download (or document) may take in all.
    pub deadline: Duration,
    /// Retries of a request that failed before any byte of its body (connection errors,
    /// timeouts, 429, 502, 503, 504), with exponential backoff.
    pub retries: u32,
    /// Requests in flight to this upstream at once; more wait (up to `timeout`).
    pub concurrency: usize,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(30 * 60),
            retries: 2,
            concurrency: 64,
        }
    }
}

/// Failure to build the upstream clients.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamConfigError(String);

/// The HTTP clients every instance shares (one connection pool).
#[derive(Debug)]
pub struct UpstreamClients {
    trusted: reqwest::Client,
    public_only: reqwest::Client,
    egress: EgressRule,
    auth: Vec<UpstreamAuth>,
}

/// The certificates proxyd trusts: the system's store (`SSL_CERT_FILE` and `SSL_CERT_DIR`
/// honoured) plus `ca_file`; the bundled roots only when the system has none.
fn trust(ca_file: Option<&PathBuf>) -> Result<(Vec<reqwest::Certificate>, bool), String> {
    let native = rustls_native_certs::load_native_certs();
    let mut certs: Vec<reqwest::Certificate> = native
        .certs
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
        .collect();
    let system_has_none = certs.is_empty();
    if system_has_none {
        tracing::warn!(errors = ?native.errors, "no CA certificates in the system store; using proxyd's bundled roots");
    }
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
        let extra = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
        if extra.is_empty() {
            return Err(format!(
                "upstream.ca_file {}: no PEM certificate in it",
                path.display()
            ));
        }
        certs.extend(extra);
    }
    Ok((certs, system_has_none))
}

impl UpstreamClients {
    /// Build the clients.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, UpstreamConfigError> {
        let egress = EgressRule::new(&settings.allowed_hosts)
            .map_err(|e| UpstreamConfigError(format!("upstream.allowed_hosts: {e}")))?;
        let (certs, bundled) = trust(settings.ca_file.as_ref()).map_err(UpstreamConfigError)?;
        let build = |public_only: bool| {
            let mut builder = reqwest::Client::builder()
                .user_agent(concat!("proxyd/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(60))
                .tls_built_in_root_certs(bundled);
            for cert in &certs {
                builder = builder.add_root_certificate(cert.clone());
            }
            if public_only {
                builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
            }
            builder
                .build()
                .map_err(|e| UpstreamConfigError(format!("upstream client: {e}")))
        };
        Ok(Self {
            trusted: build(false)?,
            public_only: build(true)?,
            egress,
            auth: settings.auth.clone(),
        })
    }

    /// The client of one instance, whose configured upstream (if it has one) is `origin`.
    pub fn for_instance(
        self: &Arc<Self>,
        label: &'static str,
        origin: Option<Url>,
        limits: UpstreamLimits,
    ) -> Upstream {
        Upstream {
            clients: self.clone(),
            label,
            origin,
            more_origins: Arc::from(Vec::new()),
            limits,
            slots: Arc::new(Semaphore::new(limits.concurrency.max(1))),
        }
    }
}

/// The URL without query and fragment, for logs (a query may carry a token).
pub(crate) fn loggable(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The cause of a transport error in a few words: the innermost error, and a hint for the
/// one operators meet most (a TLS-inspecting proxy's CA missing from the trust store).
fn cause(err: &reqwest::Error) -> String {
    let mut root = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        root = s.to_string();
        source = s.source();
    }
    let what = if err.is_connect() {
        "could not connect: "
    } else {
        ""
    };
    let hint = if root.contains("UnknownIssuer") || root.contains("unknown issuer") {
        " (the certificate's issuer is not trusted: add its CA to the system store or upstream.ca_file)"
    } else {
        ""
    };
    format!("{what}{root}{hint}")
}

/// One attempt's failure, and whether another attempt may help.
struct Attempt {
    error: UpstreamError,
    retryable: bool,
}

/// An upstream response with the concurrency slot it holds.
struct Answer {
    response: reqwest::Response,
    slot: OwnedSemaphorePermit,
}

/// The upstream of one instance.
#[derive(Debug, Clone)]
pub struct Upstream {
    clients: Arc<UpstreamClients>,
    label: &'static str,
    origin: Option<Url>,
    /// Further configured upstreams (tried after the first), trusted like it.
    more_origins: Arc<[Url]>,
    limits: UpstreamLimits,
    slots: Arc<Semaphore>,
}

impl Upstream {
    /// The instance label (metrics).
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// The configured upstream URL.
    pub fn url(&self) -> Option<&Url> {
        self.origin.as_ref()
    }

    /// This client, trusting `more` configured upstreams like the first (URLs at their
    /// origins are fetched whatever their address).
    #[must_use]
    pub fn also_trusting(mut self, more: Vec<Url>) -> Self {
        self.more_origins = Arc::from(more);
        self
    }

    /// The limits.
    pub fn limits(&self) -> UpstreamLimits {
        self.limits
    }

    fn auth_for(&self, url: &str) -> Option<&UpstreamAuth> {
        self.clients
            .auth
            .iter()
            .filter(|a| url.starts_with(&a.url_prefix))
            .max_by_key(|a| a.url_prefix.len())
    }

    /// Send a GET, following redirects under the egress rule, retrying what may be retried.
    async fn send(&self, url: &str, headers: &HeaderMap) -> Result<Answer, UpstreamError> {
        let attempt = || async { self.send_once(url, headers).await };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(self.limits.retries as usize)
                    .with_jitter(),
            )
            .when(|a: &Attempt| a.retryable)
            .await
            .map_err(|a| a.error)
    }

    async fn send_once(&self, start: &str, headers: &HeaderMap) -> Result<Answer, Attempt> {
        let fail = |error, retryable| Attempt { error, retryable };
        let timeout = self.limits.timeout;
        let slot = tokio::time::timeout(timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                fail(
                    UpstreamError::Timeout {
                        url: loggable(start).to_owned(),
                        reason: format!(
                            "all {} connections to this upstream stayed busy",
                            self.limits.concurrency
                        ),
                    },
                    false,
                )
            })?
            .map_err(|_| {
                fail(
                    UpstreamError::Unreachable {
                        url: loggable(start).to_owned(),
                        reason: "the client is shutting down".into(),
                    },
                    false,
                )
            })?;
        let mut url = Url::parse(start).map_err(|e| {
            fail(
                UpstreamError::Refused {
                    url: loggable(start).to_owned(),
                    reason: format!("not a URL: {e}"),
                },
                false,
            )
        })?;
        let mut headers = std::borrow::Cow::Borrowed(headers);
        for _ in 0..=MAX_REDIRECTS {
            let shown = loggable(url.as_str()).to_owned();
            let route = self
                .clients
                .egress
                .classify(
                    &url,
                    self.origin
                        .iter()
                        .chain(self.more_origins.iter())
                        .find(|o| o.origin() == url.origin())
                        .or(self.origin.as_ref()),
                )
                .map_err(|reason| {
                    fail(
                        UpstreamError::Refused {
                            url: shown.clone(),
                            reason,
                        },
                        false,
                    )
                })?;
            let client = match route {
                Route::Trusted => &self.clients.trusted,
                Route::PublicOnly => &self.clients.public_only,
            };
            let mut request = client.get(url.clone()).headers(headers.as_ref().clone());
            if let Some((name, value)) = self.auth_for(url.as_str()).and_then(UpstreamAuth::header)
            {
                request = request.header(name, value);
            }
            let response = match tokio::time::timeout(timeout, request.send()).await {
                Err(_) => {
                    return Err(fail(
                        UpstreamError::Timeout {
                            url: shown,
                            reason: format!("no response within {}s", timeout.as_secs()),
                        },
                        true,
                    ));
                }
                Ok(Err(err)) if err.is_timeout() => {
                    return Err(fail(
                        UpstreamError::Timeout {
                            url: shown,
                            reason: cause(&err),
                        },
                        true,
                    ));
                }
                Ok(Err(err)) => {
                    let retryable = err.is_connect() || err.is_request();
                    return Err(fail(
                        UpstreamError::Unreachable {
                            url: shown,
                            reason: cause(&err),
                        },
                        retryable,
                    ));
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let target = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|loc| url.join(loc).ok());
                if let Some(target) = target {
                    // An ecosystem's own Authorization (an OCI bearer token) is for the
                    // upstream, not for where it redirects (a presigned storage URL, which
                    // refuses a second credential).
                    if target.origin() != url.origin()
                        && headers.contains_key(header::AUTHORIZATION)
                    {
                        headers.to_mut().remove(header::AUTHORIZATION);
                    }
                    url = target;
                    continue;
                }
            }
            if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                return Err(fail(
                    UpstreamError::Status {
                        status: status.as_u16(),
                        url: shown,
                    },
                    true,
                ));
            }
            return Ok(Answer { response, slot });
        }
        Err(fail(
            UpstreamError::Unreachable {
                url: loggable(start).to_owned(),
                reason: format!("more than {MAX_REDIRECTS} redirects"),
            },
            false,
        ))
    }

    fn body(&self, answer: Answer, url: &str) -> GuardedBody {
        GuardedBody {
            inner: answer.response.bytes_stream().boxed(),
            deadline: Box::pin(tokio::time::sleep(self.limits.deadline)),
            pause: Box::pin(tokio::time::sleep(self.limits.timeout)),
            limits: self.limits,
            url: loggable(url).to_owned(),
            done: false,
            _slot: answer.slot,
        }
    }

    /// GET `url` with `headers` and give the status and the response headers, the body left
    /// unread: for answers that are all in the headers (an OCI registry's `/v2/` answers 401
    /// with the `WWW-Authenticate` challenge a client must answer).
    pub async fn probe(
        &self,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<(u16, HeaderMap), UpstreamError> {
        let answer = self.send(url, headers).await?;
        Ok((
            answer.response.status().as_u16(),
            answer.response.headers().clone(),
        ))
    }

    /// GET a metadata document, conditionally when `etag` / `last_modified` are given.
    pub async fn document(
        &self,
        url: &str,
        accept: &str,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.document_with(url, accept, &HeaderMap::new(), etag, last_modified)
            .await
    }

    /// [`Upstream::document`] with further request headers the ecosystem sets.
    pub async fn document_with(
        &self,
        url: &str,
        accept: &str,
        extra: &HeaderMap,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let ecosystem = self.label;
        metrics::counter!(m::UPSTREAM_REQUESTS_TOTAL, "ecosystem" => ecosystem, "kind" => "metadata")
            .increment(1);
        let result = self
            .document_inner(url, accept, extra, etag, last_modified)
            .await;
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, UpstreamError::NotFound(_)))
        {
            metrics::counter!(m::UPSTREAM_ERRORS_TOTAL, "ecosystem" => ecosystem, "kind" => "metadata")
                .increment(1);
        }
        result
    }

    async fn document_inner(
        &self,
        url: &str,
        accept: &str,
        extra: &HeaderMap,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut headers = extra.clone();
        let mut put = |name: HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        put(header::ACCEPT, accept);
        if let Some(etag) = etag {
            put(header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = last_modified {
            put(header::IF_MODIFIED_SINCE, lm);
        }
        let answer = self.send(url, &headers).await?;
        let status = answer.response.status().as_u16();
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
        let too_large = || UpstreamError::Invalid {
            url: loggable(url).to_owned(),
            reason: "larger than 256 MiB".into(),
        };
        let response_headers = answer.response.headers().clone();
        if answer
            .response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = self.body(answer, url);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let reason = e.to_string();
                if e.kind() == std::io::ErrorKind::TimedOut {
                    UpstreamError::Timeout {
                        url: loggable(url).to_owned(),
                        reason,
                    }
                } else {
                    UpstreamError::Unreachable {
                        url: loggable(url).to_owned(),
                        reason,
                    }
                }
            })?;
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(UpstreamResponse::Body {
            body: body.into(),
            etag: header_text(&response_headers, header::ETAG),
            last_modified: header_text(&response_headers, header::LAST_MODIFIED),
            content_type: header_text(&response_headers, header::CONTENT_TYPE),
        })
    }

    /// Start downloading an artifact; the body streams, bounded by the instance's deadline.
    pub async fn artifact(&self, url: &str) -> Result<UpstreamBody, FetchFailure> {
        self.artifact_with(url, &HeaderMap::new()).await
    }

    /// [`Upstream::artifact`] with request headers the ecosystem sets (an `Accept` for a
    /// media type, a protocol version header); credentials are added by URL as always.
    pub async fn artifact_with(
        &self,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<UpstreamBody, FetchFailure> {
        let answer = self.send(url, headers).await.map_err(FetchFailure::from)?;
        let status = answer.response.status().as_u16();
        match status {
            200 => {}
            404 | 410 => {
                return Err(FetchFailure::not_found(format!(
                    "upstream has no file at {}",
                    loggable(url)
                )));
            }
            _ => {
                return Err(FetchFailure::upstream(format!(
                    "upstream answered {status} for {}",
                    loggable(url)
                )));
            }
        }
        let content_length = answer.response.content_length();
        Ok(UpstreamBody {
            content_length,
            body: Box::pin(self.body(answer, url)),
        })
    }

    /// The miss path of `spec`: its upstream request starts only if this request leads.
    pub fn fetch(&self, spec: ArtifactSpec) -> Fetch {
        self.fetch_with(spec, HeaderMap::new())
    }

    /// [`Upstream::fetch`] with request headers the ecosystem sets.
    pub fn fetch_with(&self, spec: ArtifactSpec, headers: HeaderMap) -> Fetch {
        let upstream = self.clone();
        let url = spec.upstream_url.clone();
        Fetch {
            spec,
            source: Box::pin(async move { upstream.artifact_with(&url, &headers).await }),
        }
    }
}

/// An upstream body that fails (never ends early) when it pauses longer than the timeout or
/// runs past the deadline, and holds its concurrency slot until it is dropped.
struct GuardedBody {
    inner: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    deadline: Pin<Box<Sleep>>,
    pause: Pin<Box<Sleep>>,
    limits: UpstreamLimits,
    url: String,
    done: bool,
    _slot: OwnedSemaphorePermit,
}

impl Stream for GuardedBody {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = this.inner.poll_next_unpin(cx) {
            return Poll::Ready(match item {
                Some(Ok(chunk)) => {
                    let next = tokio::time::Instant::now() + this.limits.timeout;
                    this.pause.as_mut().reset(next);
                    Some(Ok(chunk))
                }
                Some(Err(err)) => {
                    this.done = true;
                    Some(Err(std::io::Error::other(cause(&err))))
                }
                None => {
                    this.done = true;
                    None
                }
            });
        }
        let expired = if this.deadline.as_mut().poll(cx).is_ready() {
            Some(format!(
                "{} took longer than the deadline of {}s",
                this.url,
                this.limits.deadline.as_secs()
            ))
        } else if this.pause.as_mut().poll(cx).is_ready() {
            Some(format!(
                "{} sent nothing for {}s",
                this.url,
                this.limits.timeout.as_secs()
            ))
        } else {
            None
        };
        match expired {
            Some(reason) => {
                this.done = true;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    reason,
                ))))
            }
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(name: &str, prefix: &str, credential: Credential) -> UpstreamAuth {
        UpstreamAuth {
            name: name.into(),
            url_prefix: prefix.into(),
            credential,
        }
    }

    #[test]
    fn credentials_go_to_the_longest_prefix_only_and_never_print() {
        let settings = UpstreamSettings {
            auth: vec![
                auth(
                    "wide",
                    "https://registry.example/",
                    Credential::Bearer {
                        token: "wide-token".into(),
                    },
                ),
                auth(
                    "narrow",
                    "https://registry.example/private/",
                    Credential::Basic {
                        username: "me".into(),
                        password: "hunter2".into(),
                    },
                ),
            ],
            ..UpstreamSettings::default()
        };
        let clients = Arc::new(UpstreamClients::new(&settings).unwrap());
        let upstream = clients.for_instance("npm", None, UpstreamLimits::default());
        let pick = |url: &str| upstream.auth_for(url).map(|a| a.name.as_str());
        assert_eq!(
            pick("https://registry.example/private/x.tgz"),
            Some("narrow")
        );
        assert_eq!(pick("https://registry.example/public/x.tgz"), Some("wide"));
        assert_eq!(
            pick("https://files.example/x.tgz"),
            None,
            "not sent elsewhere"
        );
        let (name, value) = upstream
            .auth_for("https://registry.example/private/x")
            .and_then(UpstreamAuth::header)
            .unwrap();
        assert_eq!(name, header::AUTHORIZATION);
        assert!(value.is_sensitive());
        let shown = format!("{:?}", settings.auth);
        assert!(
            !shown.contains("hunter2") && !shown.contains("wide-token"),
            "{shown}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("proxyd-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let settings = UpstreamSettings {
            ca_file: Some(dir.clone()),
            ..UpstreamSettings::default()
        };
        let err = UpstreamClients::new(&settings).unwrap_err().to_string();
        let _ = std::fs::remove_file(&dir);
        assert!(err.contains("upstream.ca_file"), "{err}");
    }

    /// A server on 127.0.0.1 that answers each request with headers announcing 1,000 bytes and
    /// then sends one byte every `every` (forever), until the test ends.
    async fn trickling_server(every: Duration) -> (String, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/file", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    loop {
                        tokio::time::sleep(every).await;
                        if stream.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, task)
    }

    fn upstream_for(url: &str, limits: UpstreamLimits) -> Upstream {
        let clients = Arc::new(UpstreamClients::new(&UpstreamSettings::default()).unwrap());
        clients.for_instance("test", Some(Url::parse(url).unwrap()), limits)
    }

    #[tokio::test]
    async fn a_busy_upstream_makes_further_requests_wait_then_time_out() {
        let (url, server) = trickling_server(Duration::from_millis(50)).await;
        let upstream = upstream_for(
            &url,
            UpstreamLimits {
                timeout: Duration::from_millis(300),
                concurrency: 1,
                retries: 0,
                ..UpstreamLimits::default()
            },
        );
        let first = upstream.artifact(&url).await.unwrap();
        let Err(second) = upstream.artifact(&url).await else {
            panic!("a second download while the only slot is busy");
        };
        assert_eq!(second.kind, FailureKind::Timeout);
        assert!(second.message.contains("stayed busy"), "{}", second.message);
        drop(first);
        assert!(upstream.artifact(&url).await.is_ok(), "the slot came back");
        server.abort();
    }

    #[tokio::test]
    async fn a_download_longer_than_its_deadline_fails() {
        let (url, server) = trickling_server(Duration::from_millis(20)).await;
        let upstream = upstream_for(
            &url,
            UpstreamLimits {
                deadline: Duration::from_millis(300),
                retries: 0,
                ..UpstreamLimits::default()
            },
        );
        let mut body = upstream.artifact(&url).await.unwrap().body;
        let mut received = 0;
        let failure = loop {
            match body.next().await {
                Some(Ok(chunk)) => received += chunk.len(),
                Some(Err(err)) => break err,
                None => panic!("ended cleanly after {received} bytes"),
            }
        };
        assert!(received > 0 && received < 1000, "{received}");
        assert!(failure.to_string().contains("deadline"), "{failure}");
        server.abort();
    }
}
