//! Upstream metadata documents: fresh for the TTL, then revalidated; persisted in the cache
//! index; served stale when the upstream fails; never kept when they are cut short or do not
//! parse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use proxyd_cache::{Cache, Document, FetchFailure};

use crate::{DocumentReply, Refusal, Reply, Upstream, UpstreamError, UpstreamResponse};

/// Negative entries (names and files the upstream does not have) kept at most: a bound on what
/// clients that make up names can cost. Each is a 128-bit fingerprint of its key (no copy of
/// the name is kept) and its expiry, in a cache without per-entry allocations (quick_cache):
/// about 60 bytes each, 6 MiB when full. In moka, with its time-to-live bookkeeping, 20,000
/// of them took 10 MiB (bench scenario 7b).
const MISSING_ENTRIES: usize = 100_000;

/// What one kept entry costs beyond its bytes (key, allocation, the cache's own bookkeeping).
const ENTRY_OVERHEAD: usize = 256;

/// What the upstream does not have, remembered for the TTL.
struct Missing {
    entries: quick_cache::sync::Cache<u128, std::time::Instant>,
    ttl: Duration,
}

impl Missing {
    /// Whether `fingerprint` was found missing within the TTL.
    fn contains_key(&self, fingerprint: &u128) -> bool {
        match self.entries.get(fingerprint) {
            Some(until) if until > std::time::Instant::now() => true,
            Some(_) => {
                self.entries.remove(fingerprint);
                false
            }
            None => false,
        }
    }

    fn insert(&self, fingerprint: u128, (): ()) {
        self.entries
            .insert(fingerprint, std::time::Instant::now() + self.ttl);
    }
}

/// A key's fingerprint: the first 128 bits of its SHA-256 (no collision to fear, none to craft),
/// for bounded maps keyed by what clients or upstreams name.
pub fn fingerprint(key: &str) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes.saturating_add(ENTRY_OVERHEAD)).unwrap_or(u32::MAX)
}

type Rendered = Arc<(Arc<Document>, DocumentReply)>;

/// How a document was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within the TTL; upstream was not asked.
    Fresh,
    /// Upstream confirmed it unchanged (304).
    Revalidated,
    /// Upstream sent a new body.
    Fetched,
    /// Upstream failed; this is the last copy seen.
    Stale,
}

/// Checks that a body is a whole, well-formed document of its kind (JSON that parses, an index
/// whose last line is complete, ...); a body that fails is never served or kept.
pub type DocumentCheck = fn(&[u8]) -> Result<(), String>;

/// A check that accepts anything (for documents whose format has no end to look for).
pub fn any_body(_: &[u8]) -> Result<(), String> {
    Ok(())
}

/// A check that the body is one JSON value.
pub fn json_body(body: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| format!("not valid JSON ({e})"))
}

/// The documents of every instance, keyed `{instance}/{key}`: upstream bodies and the replies
/// rendered from them in memory, bounded by bytes (least recently used leave first; the bodies
/// stay in the index and come back from there), and negative entries for what the upstream
/// does not have, kept for the TTL.
pub struct MetadataCache {
    cache: Arc<Cache>,
    ttl: Duration,
    memory: moka::sync::Cache<String, Arc<Document>>,
    rendered: moka::sync::Cache<String, Rendered>,
    missing: Missing,
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for MetadataCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataCache")
            .field("ttl", &self.ttl)
            .field("documents", &self.memory.entry_count())
            .field("rendered", &self.rendered.entry_count())
            .field("missing", &self.missing.entries.len())
            .finish_non_exhaustive()
    }
}

/// What the metadata cache holds in memory now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataMemory {
    /// Upstream bodies.
    pub documents: u64,
    /// Rendered replies.
    pub rendered: u64,
    /// Negative entries.
    pub missing: u64,
    /// Bytes weighed, bodies and replies together.
    pub bytes: u64,
}

/// One document to get.
#[derive(Debug, Clone, Copy)]
pub struct DocumentRequest<'a> {
    /// Key under the instance (`full/lodash`).
    pub key: &'a str,
    /// Upstream URL.
    pub url: &'a str,
    /// `Accept` sent upstream.
    pub accept: &'a str,
    /// What makes a body whole.
    pub check: DocumentCheck,
    /// Further request headers (none for most ecosystems).
    pub headers: Option<&'a http::HeaderMap>,
}

impl MetadataCache {
    /// Documents kept fresh for `ttl`, with at most `max_bytes` of bodies and rendered replies
    /// in memory (`metadata_cache_size`; half for each).
    pub fn new(cache: Arc<Cache>, ttl: Duration, max_bytes: u64) -> Self {
        let half = (max_bytes / 2).max(1);
        Self {
            cache,
            ttl,
            memory: moka::sync::Cache::builder()
                .max_capacity(half)
                .weigher(|key: &String, doc: &Arc<Document>| weight(key.len() + doc.body.len()))
                .build(),
            rendered: moka::sync::Cache::builder()
                .max_capacity(half)
                .weigher(|key: &String, r: &Rendered| {
                    weight(key.len() + r.0.body.len() + r.1.body.len())
                })
                .build(),
            missing: Missing {
                entries: quick_cache::sync::Cache::new(MISSING_ENTRIES),
                ttl,
            },
            refreshing: Mutex::new(HashMap::new()),
        }
    }

    /// What is held in memory now (after pending evictions are applied).
    pub fn memory(&self) -> MetadataMemory {
        self.memory.run_pending_tasks();
        self.rendered.run_pending_tasks();
        MetadataMemory {
            documents: self.memory.entry_count(),
            rendered: self.rendered.entry_count(),
            missing: self.missing.entries.len() as u64,
            bytes: self.memory.weighted_size() + self.rendered.weighted_size(),
        }
    }

    fn remembered(&self, key: &str) -> Option<Arc<Document>> {
        self.memory.get(key)
    }

    fn remember(&self, key: &str, doc: Arc<Document>) {
        self.memory.insert(key.to_owned(), doc);
    }

    fn is_fresh(&self, doc: &Document) -> bool {
        doc.fetched_at.elapsed().is_ok_and(|age| age < self.ttl)
    }

    async fn known(&self, key: &str) -> Option<Arc<Document>> {
        if let Some(doc) = self.remembered(key) {
            return Some(doc);
        }
        match self.cache.document(key).await {
            Ok(Some(doc)) => {
                let doc = Arc::new(doc);
                self.remember(key, doc.clone());
                Some(doc)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::error!(key, error = %err, "could not read a stored document");
                None
            }
        }
    }

    /// Per-key refresh locks, removed when the last holder is done (so names clients make up
    /// leave nothing behind).
    fn refresh_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.to_owned()).or_default().clone()
    }

    fn release_refresh_lock(&self, key: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits for this key.
        if Arc::strong_count(lock) <= 2 {
            map.remove(key);
        }
    }

    /// Refresh locks held now (a test hook for the bound on client-chosen keys).
    pub fn refresh_locks(&self) -> usize {
        self.refreshing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    async fn get(
        &self,
        upstream: &Upstream,
        key: &str,
        request: &DocumentRequest<'_>,
        force: bool,
    ) -> Result<(Arc<Document>, Freshness), UpstreamError> {
        if !force
            && let Some(doc) = self.remembered(key)
            && self.is_fresh(&doc)
        {
            return Ok((doc, Freshness::Fresh));
        }
        let known_missing =
            || UpstreamError::NotFound(crate::upstream::loggable(request.url).to_owned());
        let fingerprint = fingerprint(key);
        if self.missing.contains_key(&fingerprint) {
            return Err(known_missing());
        }
        let lock = self.refresh_lock(key);
        let result = {
            let _one_refresh = lock.lock().await;
            if self.missing.contains_key(&fingerprint) {
                // The request this one waited for found nothing.
                Err(known_missing())
            } else {
                self.refresh(upstream, key, request, force).await
            }
        };
        if matches!(result, Err(UpstreamError::NotFound(_))) {
            self.missing.insert(fingerprint, ());
        }
        self.release_refresh_lock(key, &lock);
        result
    }

    async fn refresh(
        &self,
        upstream: &Upstream,
        key: &str,
        request: &DocumentRequest<'_>,
        force: bool,
    ) -> Result<(Arc<Document>, Freshness), UpstreamError> {
        let started = SystemTime::now();
        let known = self.known(key).await;
        if let Some(doc) = &known {
            // Fresh, or refreshed by the request this one waited for.
            if (!force && self.is_fresh(doc)) || doc.fetched_at >= started {
                return Ok((doc.clone(), Freshness::Fresh));
            }
        }
        let etag = known.as_ref().and_then(|d| d.etag.as_deref());
        let last_modified = known.as_ref().and_then(|d| d.last_modified.as_deref());
        let no_headers = http::HeaderMap::new();
        let extra = request.headers.unwrap_or(&no_headers);
        let result = upstream
            .document_with(request.url, request.accept, extra, etag, last_modified)
            .await
            .and_then(|response| match response {
                UpstreamResponse::Body { ref body, .. } => match (request.check)(body) {
                    Ok(()) => Ok(response),
                    Err(reason) => Err(UpstreamError::Invalid {
                        url: crate::upstream::loggable(request.url).to_owned(),
                        reason,
                    }),
                },
                UpstreamResponse::NotModified => Ok(response),
            });
        let (doc, freshness) = match (result, known) {
            (Ok(UpstreamResponse::NotModified), Some(old)) => {
                let mut doc = (*old).clone();
                doc.fetched_at = SystemTime::now();
                (Arc::new(doc), Freshness::Revalidated)
            }
            (Ok(UpstreamResponse::NotModified), None) => {
                return Err(UpstreamError::Status {
                    status: 304,
                    url: request.url.to_owned(),
                });
            }
            (
                Ok(UpstreamResponse::Body {
                    body,
                    etag,
                    last_modified,
                    content_type,
                }),
                _,
            ) => {
                let doc = Document {
                    body,
                    etag,
                    last_modified,
                    content_type,
                    fetched_at: SystemTime::now(),
                };
                (Arc::new(doc), Freshness::Fetched)
            }
            (Err(err @ UpstreamError::NotFound(_)), _) => return Err(err),
            (Err(err), Some(old)) => {
                tracing::warn!(key, error = %err, "upstream failed; serving the last copy seen");
                return Ok((old, Freshness::Stale));
            }
            (Err(err), None) => {
                tracing::warn!(key, error = %err, "upstream failed and no copy is kept");
                return Err(err);
            }
        };
        if let Err(err) = self.cache.put_document(key, (*doc).clone()).await {
            tracing::error!(key, error = %err, "could not store a document");
        }
        self.remember(key, doc.clone());
        Ok((doc, freshness))
    }
}

/// One instance's documents: its key prefix and its upstream.
#[derive(Debug, Clone)]
pub struct Documents {
    store: Arc<MetadataCache>,
    upstream: Upstream,
    prefix: &'static str,
}

impl Documents {
    /// The documents of the instance `prefix`, fetched through `upstream`.
    pub fn new(store: Arc<MetadataCache>, upstream: Upstream, prefix: &'static str) -> Self {
        Self {
            store,
            upstream,
            prefix,
        }
    }

    /// The instance's upstream client.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The freshness TTL.
    pub fn ttl(&self) -> Duration {
        self.store.ttl
    }

    fn full_key(&self, key: &str) -> String {
        let mut full = String::with_capacity(self.prefix.len() + 1 + key.len());
        full.push_str(self.prefix);
        full.push('/');
        full.push_str(key);
        full
    }

    /// Remember, for `metadata_ttl`, that the upstream does not have `thing` (a file this
    /// instance asked for itself, outside the documents), in the same bounded memory as the
    /// documents' own misses.
    pub fn note_missing(&self, thing: &str) {
        self.store
            .missing
            .insert(fingerprint(&self.full_key(thing)), ());
    }

    /// Whether `thing` was noted missing within `metadata_ttl`: asking again would only ask
    /// the upstream for what it just said it does not have.
    pub fn known_missing(&self, thing: &str) -> bool {
        self.store
            .missing
            .contains_key(&fingerprint(&self.full_key(thing)))
    }

    /// The document `key` if it is in memory and fresh; never asks upstream.
    pub fn fresh(&self, key: &str) -> Option<Arc<Document>> {
        self.store
            .remembered(&self.full_key(key))
            .filter(|doc| self.store.is_fresh(doc))
    }

    /// The document, fetched when missing or stale (or always, with `force`). Concurrent
    /// refreshes of one key make one upstream request.
    pub async fn get(
        &self,
        request: &DocumentRequest<'_>,
        force: bool,
    ) -> Result<(Arc<Document>, Freshness), UpstreamError> {
        let key = self.full_key(request.key);
        self.store.get(&self.upstream, &key, request, force).await
    }

    /// What `find` finds in the document, looking once more upstream when the kept copy does
    /// not have it (a version published after it was fetched). `None` when neither has it;
    /// then `thing` (a file name, a version) is remembered as missing for the TTL, so asking
    /// again costs no upstream request.
    pub async fn find<T>(
        &self,
        request: &DocumentRequest<'_>,
        thing: &str,
        mut find: impl FnMut(&crate::Document) -> Result<Option<T>, String>,
    ) -> Result<Option<T>, FetchFailure> {
        let missing_key = fingerprint(&format!("{}\u{0}{thing}", self.full_key(request.key)));
        if self.store.missing.contains_key(&missing_key) {
            // Known to be missing: look in the kept copy only, never forcing a refresh.
            let (doc, _) = self.get(request, false).await?;
            return find(&doc).map_err(FetchFailure::upstream);
        }
        for force in [false, true] {
            let (doc, freshness) = self.get(request, force).await?;
            if let Some(found) = find(&doc).map_err(FetchFailure::upstream)? {
                return Ok(Some(found));
            }
            if matches!(freshness, Freshness::Fetched | Freshness::Stale) {
                break;
            }
        }
        self.store.missing.insert(missing_key, ());
        Ok(None)
    }

    /// The reply rendered from `doc` for `key` and `variant` (a format, an `Accept` choice),
    /// rendered only when `doc` is not the document the kept reply came from; marked stale when
    /// `freshness` says the upstream failed, a 502 when rendering fails.
    pub fn reply(
        &self,
        key: &str,
        variant: &str,
        doc: &Arc<Document>,
        freshness: Freshness,
        render: impl FnOnce(&Document) -> Result<DocumentReply, String>,
    ) -> Reply {
        let mut full = self.full_key(key);
        full.push('\u{0}');
        full.push_str(variant);
        let kept = self
            .store
            .rendered
            .get(&full)
            .filter(|r| Arc::ptr_eq(&r.0, doc) || r.0.body == doc.body);
        let reply = match kept {
            Some(r) => r.1.clone(),
            None => match render(doc) {
                Ok(reply) => {
                    self.store
                        .rendered
                        .insert(full, Arc::new((doc.clone(), reply.clone())));
                    reply
                }
                Err(err) => return Reply::Error(Refusal::upstream(err)),
            },
        };
        let mut reply = reply;
        reply.stale = freshness == Freshness::Stale;
        Reply::Document(reply)
    }
}
