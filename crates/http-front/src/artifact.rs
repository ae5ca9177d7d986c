//! Serving an artifact: hit (redirect or stream), miss (fetch and stream through).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use proxyd_cache::{ArtifactEntry, CacheError, Fetched, clock};
use proxyd_ecosystem::{
    ArtifactSpec, Fetch, FreshnessRule, Refusal, Resolver, SourceFuture, StoredReply,
};
use proxyd_storage_core::{ErrorKind, ObjectKey, ResponseOverrides};

use crate::body::{self, Body};
use crate::front::{Front, not_modified, refusal_response};

fn disposition(filename: &str) -> String {
    format!("attachment; filename=\"{filename}\"")
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// The response headers of one cached artifact, rendered once and kept with its entry: a hit
/// only clones them (a reference count each).
struct Rendered {
    content_type: Option<HeaderValue>,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    disposition_text: String,
    disposition: Option<HeaderValue>,
    length: HeaderValue,
    /// The last presigned URL, handed out again while it is young (see [`REUSE_SIGNED_FOR`]).
    signed: std::sync::Mutex<Option<Signed>>,
}

impl Clone for Rendered {
    fn clone(&self) -> Self {
        Self {
            content_type: self.content_type.clone(),
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            disposition_text: self.disposition_text.clone(),
            disposition: self.disposition.clone(),
            length: self.length.clone(),
            signed: std::sync::Mutex::new(None),
        }
    }
}

/// A presigned URL as a `Location` value, with until when it is handed out again and when it
/// expires, in [`clock::monotonic_millis`] (a redirect reads the coarse clock once).
#[derive(Clone)]
struct Signed {
    location: HeaderValue,
    reuse_until_ms: u64,
    expires_ms: u64,
}

/// How long one presigned URL is handed out again, at most: an eighth of its lifetime, and
/// never more than a minute. Every URL handed out thus has at least seven eighths of its
/// lifetime left (and clients are told to reuse it for half of what is left), while a redirect
/// costs a signature at most once a minute per artifact instead of once per request: with
/// signing per request, redirects ran at 0.67-0.72 of nginx's fixed 302 (docs/performance.md).
const REUSE_SIGNED_FOR: Duration = Duration::from_secs(60);

impl Rendered {
    fn of(entry: &ArtifactEntry) -> Self {
        let value = |v: &str| HeaderValue::from_str(v).ok();
        let disposition_text = disposition(&entry.filename);
        Self {
            content_type: value(&entry.content_type),
            etag: value(entry.etag()),
            last_modified: value(&httpdate::fmt_http_date(entry.last_modified())),
            disposition: value(&disposition_text),
            disposition_text,
            length: HeaderValue::from(entry.size),
            signed: std::sync::Mutex::new(None),
        }
    }
}

/// The entry's rendered headers (rendered now if something else took the entry's slot).
fn rendered(entry: &ArtifactEntry) -> Cow<'_, Rendered> {
    match entry.rendered(Rendered::of) {
        Some(rendered) => Cow::Borrowed(rendered),
        None => Cow::Owned(Rendered::of(entry)),
    }
}

/// The headers every 200/206/HEAD answer for a cached artifact carries.
fn entity_headers(headers: &mut HeaderMap, rendered: &Rendered) {
    for (name, value) in [
        (header::CONTENT_TYPE, &rendered.content_type),
        (header::ETAG, &rendered.etag),
        (header::LAST_MODIFIED, &rendered.last_modified),
        (header::CONTENT_DISPOSITION, &rendered.disposition),
    ] {
        if let Some(value) = value {
            headers.insert(name, value.clone());
        }
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

pub(crate) enum RangeRequest {
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

/// One `bytes=` range (several ranges are answered with the whole body, as RFC 9110 allows).
pub(crate) fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let range = match (start.trim(), end.trim()) {
        ("", suffix) => match suffix.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(n) => size.saturating_sub(n)..size,
            Err(_) => return RangeRequest::Whole,
        },
        (start, "") => match start.parse::<u64>() {
            Ok(s) => s..size,
            Err(_) => return RangeRequest::Whole,
        },
        (start, end) => match (start.parse::<u64>(), end.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => s..e.saturating_add(1).min(size),
            _ => return RangeRequest::Whole,
        },
    };
    if range.start >= size || range.start >= range.end {
        RangeRequest::Unsatisfiable
    } else if range == (0..size) {
        RangeRequest::Whole
    } else {
        RangeRequest::Part(range)
    }
}

fn fetch_error(err: &CacheError) -> Response<Body> {
    match err {
        CacheError::Fetch(f) => refusal_response(&Refusal::from(f.clone())),
        other => body::error(502, &other.to_string()),
    }
}

/// Whether a kept file may be served without asking the upstream again.
fn is_fresh(entry: &ArtifactEntry, rule: FreshnessRule) -> bool {
    match rule {
        FreshnessRule::Immutable | FreshnessRule::ContentAddressed => true,
        FreshnessRule::RevalidateAfter(ttl) => {
            entry.fetched_at.elapsed().is_ok_and(|age| age < ttl)
        }
    }
}

/// Run the resolver of a miss and hand its fetch to `start`, with the file name the response
/// names.
/// What a miss needs: the key and the handler's resolver for it.
struct Miss {
    key: ObjectKey,
    resolve: Resolver,
}

async fn resolved<Fut>(
    miss: Miss,
    start: impl FnOnce(ArtifactSpec, SourceFuture) -> Fut,
) -> (Result<Fetched, CacheError>, String)
where
    Fut: Future<Output = Result<Fetched, CacheError>>,
{
    match (miss.resolve)(miss.key).await {
        Ok(Fetch { spec, source }) => {
            let filename = spec.filename.clone();
            (start(spec, source).await, filename)
        }
        Err(failure) => (Err(CacheError::Fetch(failure)), String::new()),
    }
}

/// The response for bytes that arrive as they are fetched (a miss, or storage bypassed).
fn streaming_response(asker: Asker<'_>, fetched: Fetched, filename: &str) -> Response<Body> {
    let Fetched::Streaming {
        content_length,
        content_type,
        body: stream,
    } = fetched
    else {
        return body::error(502, "expected a download in progress");
    };
    let mut response = Response::new(if asker.method == Method::HEAD {
        // The download goes on in the background (and is cached when storage allows).
        body::empty()
    } else {
        body::stream(stream)
    });
    let h = response.headers_mut();
    set(h, header::CONTENT_TYPE, &content_type);
    set(h, header::CONTENT_DISPOSITION, &disposition(filename));
    if let Some(len) = content_length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    response
}

/// Who is asking: the instance's label and whether it wants redirects.
#[derive(Clone, Copy)]
pub(crate) struct Asker<'a> {
    pub(crate) ecosystem: &'static str,
    /// The instance's count of redirects to storage.
    pub(crate) redirects: &'a metrics::Counter,
    pub(crate) wants_redirects: bool,
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
}

impl Front {
    /// A file kept in storage: a fresh hit is served from here; a miss (or a stale file) is
    /// fetched first.
    pub(crate) async fn serve_stored(
        self: &Arc<Self>,
        ecosystem: &'static str,
        wants_redirects: bool,
        redirects: &metrics::Counter,
        method: &Method,
        headers: &HeaderMap,
        stored: StoredReply,
    ) -> Response<Body> {
        let StoredReply {
            key,
            freshness,
            headers: extra,
            never_redirect,
            resolve,
        } = stored;
        let asker = Asker {
            ecosystem,
            redirects,
            wants_redirects: wants_redirects && !never_redirect,
            method,
            headers,
        };
        let found = self.cache.lookup(&key).await;
        let miss = Miss { key, resolve };
        let mut response = match found {
            Some(entry) if is_fresh(&entry, freshness) => self.serve_hit(asker, entry, miss).await,
            Some(stale) => self.serve_miss(asker, miss, Some(stale)).await,
            None => self.serve_miss(asker, miss, None).await,
        };
        if !extra.is_empty() && response.status().as_u16() < 400 {
            for (name, value) in &extra {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    }

    /// Fetch through the cache; with `stale`, the copy to serve if the upstream fails.
    async fn serve_miss(
        self: &Arc<Self>,
        asker: Asker<'_>,
        miss: Miss,
        stale: Option<Arc<ArtifactEntry>>,
    ) -> Response<Body> {
        let newer_than = stale.as_ref().map(|s| s.fetched_at);
        let fetched = resolved(miss, |spec, source| {
            self.cache.fetch_newer(spec, source, newer_than)
        })
        .await;
        match fetched {
            (Ok(fetched @ Fetched::Streaming { .. }), filename) => {
                streaming_response(asker, fetched, &filename)
            }
            (Ok(Fetched::Cached(entry)), _) => match self.serve_cached(asker, &entry).await {
                Ok(response) => response,
                Err(err) => body::error(503, &format!("storage failed: {err}")),
            },
            (Err(err), _) => match stale {
                Some(entry) => {
                    tracing::warn!(key = %entry.key, error = %err, "upstream failed; serving the kept copy");
                    match self.serve_cached(asker, &entry).await {
                        Ok(response) => response,
                        Err(_) => fetch_error(&err),
                    }
                }
                None => fetch_error(&err),
            },
        }
    }

    async fn serve_hit(
        self: &Arc<Self>,
        asker: Asker<'_>,
        entry: Arc<ArtifactEntry>,
        miss: Miss,
    ) -> Response<Body> {
        match self.serve_cached(asker, &entry).await {
            Ok(response) => response,
            Err(err) if err.is_not_found() => {
                // Deleted behind proxyd's back: forget it and fetch it again.
                self.cache.forget(&entry.key).await;
                Box::pin(self.serve_miss(asker, miss, None)).await
            }
            Err(err) => {
                // Storage is failing: this one comes from the upstream, verified, uncached.
                self.cache.note_storage_failure();
                tracing::debug!(key = %entry.key, error = %err, "cached object unreadable; serving from the upstream");
                let fetched =
                    resolved(miss, |spec, source| self.cache.pass_through(spec, source)).await;
                match fetched {
                    (Ok(fetched), filename) => streaming_response(asker, fetched, &filename),
                    (Err(_), _) => body::error(503, &format!("storage failed: {err}")),
                }
            }
        }
    }

    /// The one path for a cached artifact: HEAD from the index, else count the hit, then
    /// redirect or stream.
    async fn serve_cached(
        self: &Arc<Self>,
        asker: Asker<'_>,
        entry: &Arc<ArtifactEntry>,
    ) -> Result<Response<Body>, proxyd_storage_core::Error> {
        if asker.method == Method::HEAD {
            // Never redirected: answered from the index, without touching storage.
            let mut response = Response::new(body::empty());
            let rendered = rendered(entry);
            let h = response.headers_mut();
            entity_headers(h, &rendered);
            h.insert(header::CONTENT_LENGTH, rendered.length.clone());
            return Ok(response);
        }
        self.cache.record_hit(entry);
        if !self.cache.storage_ok() {
            // Storage is known not to answer: neither a presigned URL to it nor a read from it
            // (which would wait out the backend's retries) helps; the upstream serves it.
            if self.redirect_plan(asker.wants_redirects) == Some(true) {
                self.direct_serve_counter(asker.ecosystem, "fallback_error")
                    .increment(1);
            }
            return Err(proxyd_storage_core::Error::new(
                ErrorKind::Temporary,
                "get",
                "storage is not answering",
            ));
        }
        match self.redirect_plan(asker.wants_redirects) {
            Some(true) => {
                if let Some(response) = self.redirect(asker.ecosystem, asker.redirects, entry).await
                {
                    return Ok(response);
                }
            }
            Some(false) => self.count_unsigned_fallback(asker.ecosystem),
            None => {}
        }
        self.open_and_stream(asker.method, asker.headers, entry)
            .await
    }

    async fn redirect(
        &self,
        ecosystem: &'static str,
        redirects: &metrics::Counter,
        entry: &ArtifactEntry,
    ) -> Option<Response<Body>> {
        let ttl = self.direct_serve_ttl();
        let rendered = rendered(entry);
        let mut now_ms = clock::monotonic_millis();
        let young = rendered
            .signed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|s| now_ms < s.reuse_until_ms);
        let signed = match young {
            Some(signed) => signed,
            None => {
                let signed = self.sign(ecosystem, entry, &rendered, ttl).await?;
                now_ms = clock::monotonic_millis();
                signed
            }
        };
        redirects.increment(1);
        let lifetime = Duration::from_millis(signed.expires_ms.saturating_sub(now_ms)).min(ttl);
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::FOUND;
        let h = response.headers_mut();
        h.insert(header::LOCATION, signed.location);
        // Shared caches must not keep it; a client may reuse it for half of what is left.
        h.insert(
            header::CACHE_CONTROL,
            Self::redirect_cache_control(lifetime.as_secs() / 2),
        );
        // hyper writes `content-length: 0` for the empty body.
        Some(response)
    }

    /// A new presigned URL for `entry`, kept for reuse; `None` (counted and logged once) when
    /// the backend cannot sign.
    async fn sign(
        &self,
        ecosystem: &'static str,
        entry: &ArtifactEntry,
        rendered: &Rendered,
        ttl: Duration,
    ) -> Option<Signed> {
        let overrides =
            ResponseOverrides::new(Some(&entry.content_type), Some(&rendered.disposition_text));
        let signed_at_ms = clock::monotonic_millis();
        match self
            .cache
            .storage()
            .presign_get(&entry.key, ttl, &overrides)
            .await
        {
            Ok(url) => {
                tracing::debug!(key = %entry.key, location = %url.redacted(), "redirecting to storage");
                // The URL's wall-clock expiry on the monotonic clock.
                let left = url
                    .expires_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                let expires_ms = clock::monotonic_millis()
                    .saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
                // Emitted byte for byte as signed (moved, not copied, into the header).
                let location =
                    HeaderValue::from_maybe_shared(bytes::Bytes::from(url.into_string())).ok()?;
                let reuse_for = (ttl / 8).min(REUSE_SIGNED_FOR);
                let signed = Signed {
                    location,
                    reuse_until_ms: signed_at_ms
                        .saturating_add(u64::try_from(reuse_for.as_millis()).unwrap_or(u64::MAX)),
                    expires_ms,
                };
                *rendered.signed.lock().unwrap_or_else(|p| p.into_inner()) = Some(signed.clone());
                Some(signed)
            }
            Err(err) => {
                let outcome = if err.kind() == ErrorKind::Unsupported {
                    "fallback_unsupported"
                } else {
                    "fallback_error"
                };
                self.direct_serve_counter(ecosystem, outcome).increment(1);
                self.log_once(
                    &format!("{outcome}: {:?}: {}", err.kind(), err.message()),
                    "presigning failed; streaming cached downloads instead",
                );
                None
            }
        }
    }

    async fn open_and_stream(
        &self,
        method: &Method,
        headers: &HeaderMap,
        entry: &ArtifactEntry,
    ) -> Result<Response<Body>, proxyd_storage_core::Error> {
        if not_modified(headers, entry.etag()) || unmodified_since(headers, entry) {
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            set(response.headers_mut(), header::ETAG, entry.etag());
            return Ok(response);
        }
        let if_range_ok = headers
            .get(header::IF_RANGE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v == entry.etag());
        let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
            Some(value) if if_range_ok => parse_range(value, entry.size),
            _ => RangeRequest::Whole,
        };
        let range = match range {
            RangeRequest::Unsatisfiable => {
                let mut response = body::error(416, "requested range not satisfiable");
                set(
                    response.headers_mut(),
                    header::CONTENT_RANGE,
                    &format!("bytes */{}", entry.size),
                );
                return Ok(response);
            }
            RangeRequest::Whole => None,
            RangeRequest::Part(r) => Some(r),
        };
        let (length, body) = match self.cache.small_body(entry).await? {
            // A small artifact, from memory: no file opened, no storage request.
            Some(bytes) => {
                let part = match &range {
                    Some(r) => bytes.slice(
                        usize::try_from(r.start).unwrap_or(0)
                            ..usize::try_from(r.end).unwrap_or(0).min(bytes.len()),
                    ),
                    None => bytes,
                };
                (part.len() as u64, body::full(part))
            }
            None => {
                let got = self.cache.storage().get(&entry.key, range.clone()).await?;
                (got.range.end - got.range.start, body::stream(got.body))
            }
        };
        let mut response = Response::new(if method == Method::HEAD {
            body::empty()
        } else {
            body
        });
        let h = response.headers_mut();
        let rendered = rendered(entry);
        entity_headers(h, &rendered);
        h.insert(
            header::CONTENT_LENGTH,
            if length == entry.size {
                rendered.length.clone()
            } else {
                HeaderValue::from(length)
            },
        );
        if let Some(r) = range {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                response.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{}", r.start, r.end - 1, entry.size),
            );
        }
        Ok(response)
    }
}

fn unmodified_since(headers: &HeaderMap, entry: &ArtifactEntry) -> bool {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return false; // If-None-Match takes precedence
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| entry.last_modified() <= since)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(v: &str, size: u64) -> Option<Range<u64>> {
        match parse_range(v, size) {
            RangeRequest::Part(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(part("bytes=0-9", 100), Some(0..10));
        assert_eq!(part("bytes=90-", 100), Some(90..100));
        assert_eq!(part("bytes=-10", 100), Some(90..100));
        assert_eq!(part("bytes=90-200", 100), Some(90..100));
        assert!(matches!(
            parse_range("bytes=100-", 100),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(parse_range("bytes=0-", 100), RangeRequest::Whole));
        assert!(matches!(
            parse_range("bytes=0-1,5-6", 100),
            RangeRequest::Whole
        ));
        assert!(matches!(parse_range("items=0-1", 100), RangeRequest::Whole));
        assert!(matches!(
            parse_range("bytes=-0", 100),
            RangeRequest::Unsatisfiable
        ));
        // The largest end a client can write: the rest of the file, never an overflow.
        assert!(matches!(
            parse_range("bytes=0-18446744073709551615", 100),
            RangeRequest::Whole
        ));
        assert_eq!(part("bytes=5-18446744073709551615", 100), Some(5..100));
        assert!(matches!(
            parse_range("bytes=18446744073709551615-", 100),
            RangeRequest::Unsatisfiable
        ));
    }
}
