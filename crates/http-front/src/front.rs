use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use proxyd_cache::Cache;
use proxyd_cache::metric_names as m;
use proxyd_ecosystem::{DocumentReply, Ecosystem, EcosystemRequest, Reply, Upstream};

use crate::body::{self, Body};

/// Direct-serve settings.
#[derive(Debug, Clone)]
pub struct DirectServeSettings {
    /// `storage.direct_serve`.
    pub enabled: bool,
    /// `storage.direct_serve_ttl`.
    pub ttl: Duration,
    /// `ecosystems.<name>.direct_serve` overrides.
    pub per_ecosystem: HashMap<String, bool>,
}

/// Settings of the front.
#[derive(Debug, Clone)]
pub struct FrontSettings {
    /// Direct-serve.
    pub direct_serve: DirectServeSettings,
    /// Ecosystems without an upstream, with the setting that would enable each.
    pub disabled: HashMap<String, String>,
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

/// The request router and artifact server.
pub struct Front {
    pub(crate) cache: Arc<Cache>,
    pub(crate) upstream: Upstream,
    ecosystems: FastMap<&'static str, Arc<dyn Ecosystem>>,
    settings: FrontSettings,
    can_sign: bool,
    metrics: Option<MetricsRender>,
    logged_causes: Mutex<HashSet<String>>,
    request_metrics: Handles<(&'static str, u16), (metrics::Counter, metrics::Histogram)>,
    direct_serve_metrics: Handles<(&'static str, &'static str), metrics::Counter>,
    /// The last `Cache-Control` of a redirect, with its max-age: a run of redirects shares it.
    redirect_cache_control: Mutex<Option<(u64, HeaderValue)>>,
    health: Mutex<Option<(Instant, bool, serde_json::Value)>>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("ecosystems", &self.ecosystems.keys().collect::<Vec<_>>())
            .field("settings", &self.settings)
            .field("can_sign", &self.can_sign)
            .finish_non_exhaustive()
    }
}

impl Front {
    /// Build the front. Whether the storage backend can sign is asked here, once, and logged.
    pub fn new(
        cache: Arc<Cache>,
        upstream: Upstream,
        ecosystems: Vec<Arc<dyn Ecosystem>>,
        settings: FrontSettings,
        metrics: Option<MetricsRender>,
    ) -> Arc<Self> {
        let support = cache.storage().presign_support();
        let can_sign = support.is_supported();
        let wanted = settings.direct_serve.enabled
            || settings.direct_serve.per_ecosystem.values().any(|on| *on);
        match (&support, wanted) {
            (proxyd_storage_core::PresignSupport::Supported { .. }, true) => {
                tracing::info!(ttl = ?settings.direct_serve.ttl, "direct-serve is active: cached downloads are redirected to presigned storage URLs");
            }
            (proxyd_storage_core::PresignSupport::Unsupported { reason }, true) => {
                tracing::warn!(reason = %reason, "direct-serve is on but the storage backend cannot sign; cached downloads are streamed");
            }
            (_, false) => tracing::info!("direct-serve is off; cached downloads are streamed"),
        }
        let front = Arc::new(Self {
            cache,
            upstream,
            ecosystems: ecosystems.into_iter().map(|e| (e.name(), e)).collect(),
            settings,
            can_sign,
            metrics,
            logged_causes: Mutex::new(HashSet::new()),
            request_metrics: Handles::new(),
            direct_serve_metrics: Handles::new(),
            redirect_cache_control: Mutex::new(None),
            health: Mutex::new(None),
        });
        let active = front
            .ecosystems
            .keys()
            .any(|name| front.redirects_for(name));
        metrics::gauge!(m::DIRECT_SERVE_ACTIVE).set(if active { 1.0 } else { 0.0 });
        front
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
    pub(crate) fn redirect_cache_control(&self, max_age: u64) -> HeaderValue {
        let mut last = self
            .redirect_cache_control
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some((secs, value)) if *secs == max_age => value.clone(),
            _ => {
                let value = HeaderValue::from_str(&format!("private, max-age={max_age}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("private, max-age=0"));
                *last = Some((max_age, value.clone()));
                value
            }
        }
    }

    /// Whether cached GETs of `ecosystem` are redirected.
    pub(crate) fn redirects_for(&self, ecosystem: &str) -> bool {
        let ds = &self.settings.direct_serve;
        self.can_sign
            && ds
                .per_ecosystem
                .get(ecosystem)
                .copied()
                .unwrap_or(ds.enabled)
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

    /// Answer one request.
    pub async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Response<Body> {
        let started = Instant::now();
        let (parts, _body) = request.into_parts();
        let path = parts.uri.path();
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let label: &'static str = match first {
            "health" | "metrics" | "stats" => "admin",
            other => self.ecosystems.get(other).map_or("other", |e| e.name()),
        };
        let response = match path {
            "/health" => self.health().await,
            "/metrics" => self.metrics_text(),
            "/stats" => self.stats(),
            _ => {
                self.ecosystem_request(
                    first,
                    &parts.method,
                    path,
                    parts.uri.query(),
                    &parts.headers,
                )
                .await
            }
        };
        let status = response.status().as_u16();
        if label != "admin" {
            let (requests, duration) = self.request_metrics(label, status);
            requests.increment(1);
            duration.record(started.elapsed().as_secs_f64());
        }
        tracing::debug!(path = %path, status, duration_ms = started.elapsed().as_millis() as u64, "request");
        response
    }

    async fn ecosystem_request(
        self: &Arc<Self>,
        prefix: &str,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Response<Body> {
        let Some(ecosystem) = self.ecosystems.get(prefix).cloned() else {
            if let Some(setting) = self.settings.disabled.get(prefix) {
                return body::error(
                    503,
                    &format!(
                        "the {prefix} ecosystem is disabled: set {setting} to its upstream registry URL"
                    ),
                );
            }
            return body::error(404, &format!("no route for {path}"));
        };
        if method != Method::GET && method != Method::HEAD {
            let mut response = body::error(405, "only GET and HEAD are supported");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let rest = &path[prefix.len() + 1..];
        let request = EcosystemRequest {
            method,
            path: if rest.is_empty() { "/" } else { rest },
            query,
            headers,
        };
        match ecosystem.clone().handle(request).await {
            Reply::Document(doc) => document(method, headers, doc),
            Reply::Artifact(artifact) => {
                self.serve_artifact(ecosystem.name(), method, headers, artifact)
                    .await
            }
            Reply::Redirect(location) => {
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
            }
            Reply::Error(status, reason) => body::error(status, &reason),
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

    fn stats(&self) -> Response<Body> {
        let stats = self.cache.stats();
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
        const PROBE_INTERVAL: Duration = Duration::from_secs(5);
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
            Some(key) => match self.cache.storage().head(&key).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            None => Err("probe key".into()),
        };
        let database = self
            .cache
            .document("health/probe")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        let ok = storage.is_ok() && database.is_ok();
        let check = |r: &Result<(), String>| match r {
            Ok(()) => serde_json::json!({"status": "ok"}),
            Err(e) => serde_json::json!({"status": "error", "error": e}),
        };
        let value = serde_json::json!({
            "status": if ok { "ok" } else { "error" },
            "checks": { "storage": check(&storage), "database": check(&database) },
        });
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), ok, value.clone()));
        health_response(ok, &value)
    }
}

fn health_response(ok: bool, value: &serde_json::Value) -> Response<Body> {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    body::json(status, value)
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
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(doc.content_type),
        );
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
    response
}
