use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use proxyd_cache::Cache;
use proxyd_cache::metric_names as m;
use proxyd_ecosystem::{DocumentReply, EcosystemRequest, Handler, MountedInstance, Refusal, Reply};

use crate::body::{self, Body};

/// A request body as the front reads it.
pub(crate) type RequestBody =
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::io::Error>;

/// Direct-serve settings.
#[derive(Debug, Clone)]
pub struct DirectServeSettings {
    /// `storage.direct_serve`.
    pub enabled: bool,
    /// `storage.direct_serve_ttl`.
    pub ttl: Duration,
}

/// Settings of the front.
#[derive(Debug, Clone)]
pub struct FrontSettings {
    /// Direct-serve.
    pub direct_serve: DirectServeSettings,
}

/// A mount whose instance is not configured, and the setting that would enable it.
#[derive(Debug, Clone)]
pub struct DisabledMount {
    /// First path segment.
    pub mount: &'static str,
    /// Instance name (metrics label).
    pub name: &'static str,
    /// The setting to set.
    pub setting: String,
}

/// Maps looked up on every request, keyed by proxyd's own labels: a fast hasher.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Metric handles registered once per label set: a registry lookup with freshly built labels
/// on every request showed in profiles.
struct Handles<K, V>(std::sync::RwLock<FastMap<K, V>>);

impl<K: std::hash::Hash + Eq, V: Clone> Handles<K, V> {
    fn new() -> Self {
        Self(std::sync::RwLock::new(FastMap::default()))
    }

    fn get(&self, key: K, register: impl FnOnce() -> V) -> V {
        if let Some(found) = self.0.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return found.clone();
        }
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(register)
            .clone()
    }
}

/// Renders the Prometheus text for `/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// One mounted instance.
struct Mount {
    name: &'static str,
    handler: Arc<dyn Handler>,
    /// Direct-serve is wanted for it (whether or not the backend can sign).
    wants_redirects: bool,
    metrics: MountMetrics,
}

/// The metric handles nearly every request of an instance touches, registered when it is
/// mounted: the hot path looks nothing up and counts no references (the lookups took 2 % of a
/// redirect's CPU time in scenario 3).
struct MountMetrics {
    duration: metrics::Histogram,
    ok: metrics::Counter,
    found: metrics::Counter,
    redirects: metrics::Counter,
}

impl MountMetrics {
    fn new(ecosystem: &'static str) -> Self {
        Self {
            duration: metrics::histogram!(m::REQUEST_DURATION_SECONDS, "ecosystem" => ecosystem),
            ok: metrics::counter!(m::REQUESTS_TOTAL, "ecosystem" => ecosystem, "status" => "200"),
            found: metrics::counter!(m::REQUESTS_TOTAL, "ecosystem" => ecosystem, "status" => "302"),
            redirects: metrics::counter!(m::DIRECT_SERVE_TOTAL, "ecosystem" => ecosystem, "outcome" => "redirect"),
        }
    }

    /// The request counter for `status` and the duration histogram, when `status` is one of
    /// those registered here.
    fn requests(&self, status: u16) -> Option<(&metrics::Counter, &metrics::Histogram)> {
        match status {
            200 => Some((&self.ok, &self.duration)),
            302 => Some((&self.found, &self.duration)),
            _ => None,
        }
    }
}

/// What the first path segment names.
enum Route<'a> {
    Instance(&'a Mount),
    Disabled(&'a DisabledMount),
    Unknown,
}

/// The request router and artifact server.
pub struct Front {
    pub(crate) cache: Arc<Cache>,
    mounts: FastMap<&'static str, Mount>,
    disabled: FastMap<&'static str, DisabledMount>,
    settings: FrontSettings,
    can_sign: bool,
    metrics: Option<MetricsRender>,
    logged_causes: Mutex<HashSet<String>>,
    request_metrics: Handles<(&'static str, u16), (metrics::Counter, metrics::Histogram)>,
    direct_serve_metrics: Handles<(&'static str, &'static str), metrics::Counter>,
    /// Why the backend cannot sign, when it cannot.
    unsigned_reason: Option<String>,
    health: Mutex<Option<(Instant, bool, serde_json::Value)>>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("mounts", &self.mounts.keys().collect::<Vec<_>>())
            .field("settings", &self.settings)
            .field("can_sign", &self.can_sign)
            .finish_non_exhaustive()
    }
}

impl Front {
    /// Build the front over `instances` (and the mounts of `disabled` ones, which answer 503).
    /// Whether the storage backend can sign is asked here, once, and logged.
    pub fn new(
        cache: Arc<Cache>,
        instances: Vec<MountedInstance>,
        disabled: Vec<DisabledMount>,
        settings: FrontSettings,
        metrics: Option<MetricsRender>,
    ) -> Arc<Self> {
        let support = cache.storage().presign_support();
        let can_sign = support.is_supported();
        let mounts: FastMap<&'static str, Mount> = instances
            .into_iter()
            .map(|i| {
                let wants_redirects = i.direct_serve.unwrap_or(settings.direct_serve.enabled);
                (
                    i.mount,
                    Mount {
                        name: i.name,
                        handler: i.handler,
                        wants_redirects,
                        metrics: MountMetrics::new(i.name),
                    },
                )
            })
            .collect();
        let wanted = mounts.values().any(|m| m.wants_redirects);
        let unsigned_reason = match (&support, wanted) {
            (proxyd_storage_core::PresignSupport::Supported { .. }, true) => {
                tracing::info!(ttl = ?settings.direct_serve.ttl, "direct-serve is active: cached downloads are redirected to presigned storage URLs");
                None
            }
            (proxyd_storage_core::PresignSupport::Unsupported { reason }, true) => {
                tracing::warn!(reason = %reason, "direct-serve is on but the storage backend cannot sign; cached downloads are streamed");
                Some(reason.to_string())
            }
            (_, false) => {
                tracing::info!("direct-serve is off; cached downloads are streamed");
                None
            }
        };
        metrics::gauge!(m::DIRECT_SERVE_ACTIVE).set(if wanted && can_sign { 1.0 } else { 0.0 });
        // quanta calibrates its clock on first use: here, not in the first request.
        let _ = quanta::Instant::now();
        Arc::new(Self {
            cache,
            mounts,
            disabled: disabled.into_iter().map(|d| (d.mount, d)).collect(),
            settings,
            can_sign,
            metrics,
            logged_causes: Mutex::new(HashSet::new()),
            request_metrics: Handles::new(),
            direct_serve_metrics: Handles::new(),
            unsigned_reason,
            health: Mutex::new(None),
        })
    }

    /// The request counter and duration histogram of one ecosystem and status.
    fn request_metrics(
        &self,
        ecosystem: &'static str,
        status: u16,
    ) -> (metrics::Counter, metrics::Histogram) {
        self.request_metrics.get((ecosystem, status), || {
            (
                metrics::counter!(m::REQUESTS_TOTAL, "ecosystem" => ecosystem, "status" => status.to_string()),
                metrics::histogram!(m::REQUEST_DURATION_SECONDS, "ecosystem" => ecosystem),
            )
        })
    }

    /// The direct-serve counter of one ecosystem and outcome.
    pub(crate) fn direct_serve_counter(
        &self,
        ecosystem: &'static str,
        outcome: &'static str,
    ) -> metrics::Counter {
        self.direct_serve_metrics.get((ecosystem, outcome), || {
            metrics::counter!(m::DIRECT_SERVE_TOTAL, "ecosystem" => ecosystem, "outcome" => outcome)
        })
    }

    /// `private, max-age=<max_age>` for a redirect.
    pub(crate) fn redirect_cache_control(max_age: u64) -> HeaderValue {
        // Redirects made in the same second share a value. Each worker thread keeps its own
        // last one: a process-wide one sat behind a lock (0.5 % of a redirect on one core),
        // and one shared copy would bounce its reference count between cores.
        thread_local! {
            static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> =
                const { std::cell::RefCell::new(None) };
        }
        LAST.with_borrow_mut(|last| match last {
            Some((secs, value)) if *secs == max_age => value.clone(),
            _ => {
                let value = HeaderValue::from_str(&format!("private, max-age={max_age}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("private, max-age=0"));
                *last = Some((max_age, value.clone()));
                value
            }
        })
    }

    /// Whether a cached GET of `instance` is redirected: `Some(true)` yes, `Some(false)` it
    /// would be but the backend cannot sign (the caller counts the fallback), `None` direct-serve
    /// is off for it.
    pub(crate) fn redirect_plan(&self, wants_redirects: bool) -> Option<bool> {
        wants_redirects.then_some(self.can_sign)
    }

    /// Count and log (once) a download that direct-serve would have redirected but streamed
    /// because the backend cannot sign.
    pub(crate) fn count_unsigned_fallback(&self, ecosystem: &'static str) {
        self.direct_serve_counter(ecosystem, "fallback_unsupported")
            .increment(1);
        let reason = self.unsigned_reason.as_deref().unwrap_or("unsupported");
        self.log_once(
            &format!("fallback_unsupported: {reason}"),
            "the storage backend cannot sign; cached downloads are streamed",
        );
    }

    pub(crate) fn direct_serve_ttl(&self) -> Duration {
        self.settings.direct_serve.ttl
    }

    /// Log `message` the first time `cause` is seen.
    pub(crate) fn log_once(&self, cause: &str, message: &str) {
        let mut seen = self.logged_causes.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(cause.to_owned()) {
            tracing::warn!(cause = %cause, "{message}");
        }
    }

    /// The mount the first segment of `path` names (the untrimmed path: `//npm/x` names
    /// nothing), and the rest of the path after it.
    fn route<'a>(&self, path: &'a str) -> (Route<'_>, &'a str) {
        let after_slash = path.strip_prefix('/').unwrap_or(path);
        let segment = after_slash.split('/').next().unwrap_or("");
        let rest = &after_slash[segment.len()..];
        let rest = if rest.is_empty() { "/" } else { rest };
        if let Some(mount) = self.mounts.get(segment) {
            (Route::Instance(mount), rest)
        } else if let Some(disabled) = self.disabled.get(segment) {
            (Route::Disabled(disabled), rest)
        } else {
            (Route::Unknown, rest)
        }
    }

    /// Answer one request whose body is not read (enough for every GET and HEAD).
    pub async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Response<Body> {
        let (parts, _body) = request.into_parts();
        self.serve_parts(parts, None).await
    }

    /// Answer one request, reading its body where a route keeps it (a PUT to the build
    /// cache).
    pub async fn handle_with_body<B>(self: Arc<Self>, request: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        use http_body_util::BodyExt;
        let (parts, body) = request.into_parts();
        if parts.method == Method::GET || parts.method == Method::HEAD {
            // The hot path reads no body: nothing is boxed for it.
            return self.serve_parts(parts, None).await;
        }
        let body = body
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed_unsync();
        self.serve_parts(parts, Some(body)).await
    }

    async fn serve_parts(
        self: Arc<Self>,
        parts: http::request::Parts,
        mut request_body: Option<RequestBody>,
    ) -> Response<Body> {
        // The time-stamp counter where the CPU has a steady one: a third of `Instant::now`'s
        // cost, and a request reads it twice.
        let started = quanta::Instant::now();
        if parts.headers.contains_key(http::header::TRANSFER_ENCODING)
            && (parts.method == http::Method::GET || parts.method == http::Method::HEAD)
        {
            // A GET or HEAD has no body to frame: a Transfer-Encoding there (hyper drops a
            // Content-Length beside it, as RFC 9112 says) is what request smuggling through a
            // proxy in front looks like. Refused, and the connection closed, so nothing after
            // it is read as a request.
            let mut response = body::error(400, "a GET or HEAD with Transfer-Encoding is refused");
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return response;
        }
        let path = parts.uri.path();
        let (response, label, mount_metrics) = match path {
            "/health" => (self.health().await, None, None),
            "/metrics" => (self.metrics_text(), None, None),
            "/stats" => (self.stats().await, None, None),
            _ => match self.route(path) {
                (Route::Instance(mount), rest) => {
                    let request = EcosystemRequest {
                        method: &parts.method,
                        path: rest,
                        query: parts.uri.query(),
                        headers: &parts.headers,
                    };
                    let reply = mount.handler.clone().serve(request).await;
                    let mut response = self
                        .respond(
                            mount,
                            &parts.method,
                            &parts.headers,
                            reply,
                            &mut request_body,
                        )
                        .await;
                    if let Some(body::ErrorReason(reason)) = response.extensions().get()
                        && let Some((content_type, bytes)) =
                            mount
                                .handler
                                .error_body(rest, response.status().as_u16(), reason)
                    {
                        response
                            .headers_mut()
                            .insert(http::header::CONTENT_TYPE, content_type);
                        response.headers_mut().remove(http::header::CONTENT_LENGTH);
                        *response.body_mut() = body::full(bytes);
                    }
                    (response, Some(mount.name), Some(&mount.metrics))
                }
                (Route::Disabled(disabled), _) => (
                    body::error(
                        503,
                        &format!(
                            "the {} ecosystem is disabled: set {} to its upstream registry URL",
                            disabled.name, disabled.setting
                        ),
                    ),
                    Some(disabled.name),
                    None,
                ),
                (Route::Unknown, _) => (
                    body::error(404, &format!("no route for {path}")),
                    Some("other"),
                    None,
                ),
            },
        };
        if let Some(unread) = request_body {
            // Answered without reading the body (a refusal, an upload too large by its
            // Content-Length): read what the client still sends before answering.
            crate::upload::linger(&mut http_body_util::BodyDataStream::new(unread)).await;
        }
        let status = response.status().as_u16();
        if let Some(label) = label {
            let seconds = started.elapsed().as_secs_f64();
            match mount_metrics.and_then(|mounted| mounted.requests(status)) {
                Some((requests, duration)) => {
                    requests.increment(1);
                    duration.record(seconds);
                }
                None => {
                    let (requests, duration) = self.request_metrics(label, status);
                    requests.increment(1);
                    duration.record(seconds);
                }
            }
        }
        tracing::debug!(path = %path, status, duration_ms = started.elapsed().as_millis() as u64, "request");
        response
    }

    async fn respond(
        self: &Arc<Self>,
        mount: &Mount,
        method: &Method,
        headers: &HeaderMap,
        reply: Reply,
        request_body: &mut Option<RequestBody>,
    ) -> Response<Body> {
        match reply {
            Reply::Upload(upload) => {
                self.store_upload(mount.name, headers, upload, request_body.take())
                    .await
            }
            Reply::Document(doc) => document(method, headers, doc),
            Reply::Stored(stored) => {
                self.serve_stored(
                    mount.name,
                    mount.wants_redirects,
                    &mount.metrics.redirects,
                    method,
                    headers,
                    stored,
                )
                .await
            }
            Reply::Redirect {
                location,
                permanent,
            } => {
                let mut response = Response::new(body::empty());
                *response.status_mut() = if permanent {
                    StatusCode::MOVED_PERMANENTLY
                } else {
                    StatusCode::FOUND
                };
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
            }
            Reply::Error(refusal) => refusal_response(&refusal),
        }
    }

    fn metrics_text(&self) -> Response<Body> {
        let text = self
            .metrics
            .as_ref()
            .map(|render| render())
            .unwrap_or_default();
        let mut response = Response::new(body::full(text));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    async fn stats(&self) -> Response<Body> {
        let stats = self.cache.stats().await;
        let ecosystems: serde_json::Map<String, serde_json::Value> = stats
            .ecosystems
            .iter()
            .map(|(name, e)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "cached_artifacts": e.cached_artifacts,
                        "bytes": e.bytes,
                        "hits": e.hits,
                        "misses": e.misses,
                    }),
                )
            })
            .collect();
        body::json(
            StatusCode::OK,
            &serde_json::json!({
                "cached_artifacts": stats.cached_artifacts,
                "bytes": stats.bytes,
                "hits": stats.hits,
                "misses": stats.misses,
                "evicted_bytes": stats.evicted_bytes,
                "ecosystems": ecosystems,
            }),
        )
    }

    async fn health(&self) -> Response<Body> {
        const PROBE_INTERVAL: Duration = Duration::from_secs(1);
        const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
        if let Some((at, ok, value)) = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            && at.elapsed() < PROBE_INTERVAL
        {
            return health_response(ok, &value);
        }
        let probe = proxyd_storage_core::ObjectKey::new("health/probe").ok();
        let storage = match probe {
            Some(key) => {
                match tokio::time::timeout(PROBE_TIMEOUT, self.cache.storage().head(&key)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) if e.is_not_found() => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer within 3s".into()),
                }
            }
            None => Err("probe key".into()),
        };
        let database =
            match tokio::time::timeout(PROBE_TIMEOUT, self.cache.document("health/probe")).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 3s".into()),
            };
        if storage.is_ok() {
            self.cache.note_storage_success();
        } else {
            self.cache.note_storage_failure();
        }
        let ok = storage.is_ok() && database.is_ok();
        let check = |r: &Result<(), String>| match r {
            Ok(()) => serde_json::json!({"status": "ok"}),
            Err(e) => serde_json::json!({"status": "error", "error": e}),
        };
        // A failing check degrades proxyd, it does not stop it: it still serves what it can
        // (from the upstream when storage is gone), so a load balancer keeps it in.
        let value = serde_json::json!({
            "status": if ok { "ok" } else { "degraded" },
            "checks": { "storage": check(&storage), "database": check(&database) },
        });
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), ok, value.clone()));
        health_response(ok, &value)
    }
}

fn health_response(_ok: bool, value: &serde_json::Value) -> Response<Body> {
    // 200 for ok and degraded alike; a process that cannot serve at all is not listening.
    body::json(StatusCode::OK, value)
}

fn if_none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
        })
}

pub(crate) fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    if_none_match_hits(headers, etag)
}

/// `If-Modified-Since` against the upstream's `Last-Modified` (ignored when `If-None-Match` is
/// present, as HTTP says).
fn document_unmodified(headers: &HeaderMap, doc: &DocumentReply) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return false;
    }
    let parse = |v: &str| httpdate::parse_http_date(v).ok();
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse);
    let modified = doc.last_modified.as_deref().and_then(parse);
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

fn document(method: &Method, headers: &HeaderMap, doc: DocumentReply) -> Response<Body> {
    let cache_control = if doc.stale {
        "no-cache".to_owned()
    } else {
        format!("public, max-age={}", doc.max_age)
    };
    let mut response = if not_modified(headers, &doc.etag) || document_unmodified(headers, &doc) {
        let mut r = Response::new(body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let len = doc.body.len();
        let mut r = Response::new(if method == Method::HEAD {
            body::empty()
        } else {
            body::full(doc.body)
        });
        r.headers_mut()
            .insert(header::CONTENT_TYPE, doc.content_type.clone());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&doc.etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cache_control) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Some(v) = doc
        .last_modified
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    if doc.stale {
        h.insert(
            header::WARNING,
            HeaderValue::from_static("110 proxyd \"Response is Stale\""),
        );
    }
    for (name, value) in &doc.headers {
        h.insert(name.clone(), value.clone());
    }
    response
}

/// A refusal as a response: its status, and its one-line reason (with `Allow` for 405).
pub(crate) fn refusal_response(refusal: &Refusal) -> Response<Body> {
    let mut response = body::error(refusal.status(), &refusal.message);
    if let Some(allow) = refusal.allow {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}
