use std::collections::HashMap;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use proxyd_storage_core::{ByteStream, ObjectKey, PutOptions, Storage};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::entry::{ArtifactEntry, ArtifactSpec, Document, from_unix_secs, unix_secs};
use backon::{ExponentialBuilder, Retryable};

use crate::evict::{EvictionPolicy, LruPolicy};
use crate::metric_names as m;
use crate::{CacheError, FailureKind, FetchFailure, Index, IndexRecord};

/// Chunks buffered between the upstream reader and storage.
const CHANNEL_DEPTH: usize = 4;

/// Chunks a live reader may fall behind before it is left to continue from storage.
const LIVE_CHUNKS: usize = 64;

/// What a fetch publishes to its live readers.
#[derive(Debug, Clone)]
enum Piece {
    /// The next bytes.
    Data(Bytes),
    /// Verified and committed: the stream is complete.
    Done,
    /// Refused or broken: the stream must fail, never end cleanly.
    Failed(String),
}

/// Tunables of the cache.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Evict least recently used artifacts above this many bytes.
    pub max_size: Option<u64>,
    /// How long a request waits for another request's fetch of the same artifact.
    pub fetch_wait: Duration,
    /// How often hit counts and access times are written to the index.
    pub flush_interval: Duration,
    /// How often storage is listed to drop index entries whose objects vanished.
    pub verify_interval: Duration,
    /// How long an evicted object stays in storage after it left the index, so a presigned
    /// URL or a stream already handed out stays good (the direct-serve TTL).
    pub eviction_grace: Duration,
    /// Memory for small artifacts served from memory (0: none).
    pub hot_bytes: u64,
    /// The largest artifact kept in that memory.
    pub hot_max_object: u64,
    /// First key segments that are proxyd's (its instances' names): reconciliation deletes
    /// objects under them that no entry knows.
    pub owned_prefixes: Vec<String>,
    /// How old an unknown object must be before reconciliation deletes it.
    pub orphan_age: Duration,
    /// How old a leftover of an interrupted put (of whatever process) must be before it is
    /// removed; those of processes gone are removed at once where the backend can tell.
    pub interrupted_age: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_size: None,
            fetch_wait: Duration::from_secs(300),
            flush_interval: Duration::from_secs(10),
            verify_interval: Duration::from_secs(600),
            eviction_grace: Duration::ZERO,
            hot_bytes: 64 * 1024 * 1024,
            hot_max_object: 64 * 1024,
            owned_prefixes: Vec::new(),
            orphan_age: Duration::from_secs(600),
            interrupted_age: Duration::from_secs(3600),
        }
    }
}

/// An upstream response body about to be cached.
pub struct UpstreamBody {
    /// `Content-Length` upstream announced, checked against what arrives.
    pub content_length: Option<u64>,
    /// The bytes.
    pub body: ByteStream,
}

/// What [`Cache::fetch`] gives a request.
pub enum Fetched {
    /// This request started the fetch: the bytes as they arrive. The stream fails (rather than
    /// ending early) if the download is short, broken or does not match its digest.
    Streaming {
        /// Size, when upstream announced it.
        content_length: Option<u64>,
        /// Content type that will be stored.
        content_type: String,
        /// The bytes.
        body: ByteStream,
    },
    /// Another request fetched it; it is now cached.
    Cached(Arc<ArtifactEntry>),
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Streaming {
                content_length,
                content_type,
                ..
            } => f
                .debug_struct("Streaming")
                .field("content_length", content_length)
                .field("content_type", content_type)
                .finish_non_exhaustive(),
            Self::Cached(entry) => f.debug_tuple("Cached").field(&entry.key).finish(),
        }
    }
}

/// Per-ecosystem counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EcosystemStats {
    /// Cached artifacts.
    pub cached_artifacts: u64,
    /// Bytes of cached artifacts.
    pub bytes: u64,
    /// Hits since start.
    pub hits: u64,
    /// Misses since start.
    pub misses: u64,
}

/// Totals and per-ecosystem counters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Cached artifacts.
    pub cached_artifacts: u64,
    /// Bytes of cached artifacts.
    pub bytes: u64,
    /// Hits since start.
    pub hits: u64,
    /// Misses since start.
    pub misses: u64,
    /// Bytes evicted since start.
    pub evicted_bytes: u64,
    /// Per ecosystem.
    pub ecosystems: HashMap<String, EcosystemStats>,
}

type FlightResult = Option<Result<Arc<ArtifactEntry>, FetchFailure>>;

struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    // Registered once: a registry lookup with a label per hit showed up in profiles.
    hits_metric: metrics::Counter,
    misses_metric: metrics::Counter,
}

impl Counters {
    fn new(ecosystem: &str) -> Self {
        let label = ecosystem.to_owned();
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            hits_metric: metrics::counter!(m::CACHE_HITS_TOTAL, "ecosystem" => label.clone()),
            misses_metric: metrics::counter!(m::CACHE_MISSES_TOTAL, "ecosystem" => label),
        }
    }
}

/// The cache: index in memory, accounting, single-flight fetches and eviction.
pub struct Cache {
    storage: Arc<dyn Storage>,
    index: Arc<dyn Index>,
    settings: CacheSettings,
    /// Looked up on every request: a fast hasher (keys are only inserted once upstream has
    /// served them, so clients cannot flood it with colliding keys).
    entries: RwLock<FastMap<ObjectKey, Arc<ArtifactEntry>>>,
    flights: Mutex<HashMap<ObjectKey, watch::Receiver<FlightResult>>>,
    dirty: Mutex<Vec<Arc<ArtifactEntry>>>,
    counters: RwLock<FastMap<String, Arc<Counters>>>,
    total_bytes: AtomicU64,
    evicted_bytes: AtomicU64,
    policy: Box<dyn EvictionPolicy>,
    /// Committed entries whose index row could not be written yet.
    unrecorded: Mutex<Vec<Arc<ArtifactEntry>>>,
    /// Whether serving around a storage failure was logged already.
    bypass_logged: AtomicBool,
    /// Whether storage answered its last call (a put, a read, or the background probe).
    storage_ok: AtomicBool,
    /// Small artifacts' bytes, with the digest of the entry they belong to.
    hot: moka::sync::Cache<ObjectKey, ([u8; 32], Bytes)>,
    /// Evicted entries whose objects are deleted after the grace period.
    evicted: mpsc::UnboundedSender<(Arc<ArtifactEntry>, tokio::time::Instant)>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("storage", &self.storage)
            .field("index", &self.index)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn record_to_entry(r: IndexRecord) -> Option<ArtifactEntry> {
    let key = ObjectKey::new(r.key).ok()?;
    let sha: [u8; 32] = hex::decode(&r.sha256).ok()?.try_into().ok()?;
    Some(ArtifactEntry {
        key,
        ecosystem: r.ecosystem,
        name: r.name,
        version: r.version,
        filename: r.filename,
        size: r.size,
        sha256: sha,
        content_type: r.content_type,
        upstream_url: r.upstream_url,
        fetched_at: from_unix_secs(r.fetched_at),
        etag: format!("\"{}\"", r.sha256.to_ascii_lowercase()),
        hits: AtomicU64::new(r.hit_count),
        pending_hits: AtomicU64::new(0),
        last_access: AtomicU64::new(r.last_access),
        dirty: AtomicBool::new(false),
        rendered: OnceLock::new(),
    })
}

fn entry_to_record(e: &ArtifactEntry) -> IndexRecord {
    IndexRecord {
        key: e.key.as_str().to_owned(),
        ecosystem: e.ecosystem.clone(),
        name: e.name.clone(),
        version: e.version.clone(),
        filename: e.filename.clone(),
        size: e.size,
        sha256: hex::encode(e.sha256),
        content_type: e.content_type.clone(),
        upstream_url: e.upstream_url.clone(),
        fetched_at: unix_secs(e.fetched_at),
        hit_count: e.hits.load(Ordering::Relaxed),
        last_access: e.last_access.load(Ordering::Relaxed),
    }
}

impl Cache {
    /// Load the index into memory and start accounting.
    pub async fn open(
        storage: Arc<dyn Storage>,
        index: Arc<dyn Index>,
        settings: CacheSettings,
    ) -> Result<Arc<Self>, CacheError> {
        let records = index.load_all().await?;
        let mut entries = FastMap::with_capacity_and_hasher(records.len(), Default::default());
        let mut total = 0;
        for record in records {
            if let Some(entry) = record_to_entry(record) {
                total += entry.size;
                entries.insert(entry.key.clone(), Arc::new(entry));
            }
        }
        let max_size = settings.max_size;
        let grace = settings.eviction_grace;
        let hot_bytes = settings.hot_bytes;
        let (evicted_tx, evicted_rx) = mpsc::unbounded_channel();
        let cache = Arc::new(Self {
            storage,
            index,
            settings,
            entries: RwLock::new(entries),
            flights: Mutex::new(HashMap::new()),
            dirty: Mutex::new(Vec::new()),
            counters: RwLock::new(FastMap::default()),
            total_bytes: AtomicU64::new(total),
            evicted_bytes: AtomicU64::new(0),
            policy: Box::new(LruPolicy::new(max_size)),
            unrecorded: Mutex::new(Vec::new()),
            bypass_logged: AtomicBool::new(false),
            storage_ok: AtomicBool::new(true),
            hot: moka::sync::Cache::builder()
                .max_capacity(hot_bytes.max(1))
                .weigher(|_: &ObjectKey, (_, bytes): &([u8; 32], Bytes)| {
                    u32::try_from(bytes.len() + 128).unwrap_or(u32::MAX)
                })
                .build(),
            evicted: evicted_tx,
        });
        // The policy learns the kept entries oldest first; what does not fit goes now. Without
        // a size limit there is nothing to learn.
        let mut by_age: Vec<Arc<ArtifactEntry>> = if max_size.is_none() {
            Vec::new()
        } else {
            cache
                .entries
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect()
        };
        by_age.sort_by_key(|e| e.last_access.load(Ordering::Relaxed));
        for entry in by_age {
            let victims = cache.policy.admit(&entry.key, entry.size);
            cache.evict(victims);
        }
        tokio::spawn(delete_evicted(Arc::downgrade(&cache), evicted_rx, grace));
        // What a crash left behind goes in the background: a walk of a large directory must
        // not delay start-up.
        let cleaner = Arc::downgrade(&cache);
        tokio::spawn(async move {
            if let Some(cache) = cleaner.upgrade() {
                cache.remove_interrupted().await;
            }
        });
        cache.publish_gauges();
        Ok(cache)
    }

    /// Remove what puts interrupted by a crash left in storage (logged, never fatal).
    async fn remove_interrupted(&self) {
        match self
            .storage
            .remove_interrupted(self.settings.interrupted_age)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                removed = n,
                "removed what interrupted writes left in storage"
            ),
            Err(err) => {
                tracing::error!(error = %err, "could not remove what interrupted writes left")
            }
        }
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The cached artifact under `key`, if any: a memory lookup.
    pub fn lookup(&self, key: &ObjectKey) -> Option<Arc<ArtifactEntry>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The bytes of a small cached artifact, from memory when they are there, else read from
    /// storage and kept (bounded by `hot_bytes`); `None` for artifacts above `hot_max_object`.
    /// A hit served from here opens no file and makes no storage request.
    pub async fn small_body(
        &self,
        entry: &ArtifactEntry,
    ) -> Result<Option<Bytes>, proxyd_storage_core::Error> {
        if self.settings.hot_bytes == 0 || entry.size > self.settings.hot_max_object {
            return Ok(None);
        }
        if let Some((sha256, bytes)) = self.hot.get(&entry.key)
            && sha256 == entry.sha256
        {
            return Ok(Some(bytes));
        }
        let got = self.storage.get(&entry.key, None).await?;
        let mut body = got.body;
        let mut bytes = bytes::BytesMut::with_capacity(usize::try_from(entry.size).unwrap_or(0));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                proxyd_storage_core::Error::new(
                    proxyd_storage_core::ErrorKind::Unexpected,
                    "get",
                    e.to_string(),
                )
            })?;
            bytes.extend_from_slice(&chunk);
        }
        let bytes = bytes.freeze();
        if bytes.len() as u64 != entry.size {
            // Replaced or cut behind proxyd's back: serve it, keep nothing.
            return Ok(Some(bytes));
        }
        self.hot
            .insert(entry.key.clone(), (entry.sha256, bytes.clone()));
        Ok(Some(bytes))
    }

    fn counters(&self, ecosystem: &str) -> Arc<Counters> {
        if let Some(c) = self
            .counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(ecosystem)
        {
            return c.clone();
        }
        let mut map = self.counters.write().unwrap_or_else(|p| p.into_inner());
        map.entry(ecosystem.to_owned())
            .or_insert_with(|| Arc::new(Counters::new(ecosystem)))
            .clone()
    }

    /// Count a hit: the one place hits are recorded, whether the artifact is then redirected
    /// to or streamed. No database write happens here.
    pub fn record_hit(&self, entry: &Arc<ArtifactEntry>) {
        entry.hits.fetch_add(1, Ordering::Relaxed);
        entry.pending_hits.fetch_add(1, Ordering::Relaxed);
        entry
            .last_access
            .store(unix_secs(SystemTime::now()), Ordering::Relaxed);
        if !entry.dirty.swap(true, Ordering::AcqRel) {
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.clone());
        }
        let counters = self.counters(&entry.ecosystem);
        counters.hits.fetch_add(1, Ordering::Relaxed);
        counters.hits_metric.increment(1);
    }

    fn record_miss(&self, ecosystem: &'static str) {
        let counters = self.counters(ecosystem);
        counters.misses.fetch_add(1, Ordering::Relaxed);
        counters.misses_metric.increment(1);
    }

    /// Write pending hit counts and access times to the index.
    pub async fn flush(&self) -> Result<(), CacheError> {
        let unrecorded =
            std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()));
        for (n, entry) in unrecorded.iter().enumerate() {
            // Evicted or forgotten meanwhile: nothing to record.
            if self
                .lookup(&entry.key)
                .is_none_or(|e| !Arc::ptr_eq(&e, entry))
            {
                continue;
            }
            if let Err(err) = self.index.upsert(entry_to_record(entry)).await {
                self.unrecorded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(unrecorded[n..].iter().cloned());
                return Err(err);
            }
        }
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        if dirty.is_empty() {
            return Ok(());
        }
        let batch = dirty
            .iter()
            .map(|e| {
                self.policy.touch(&e.key);
                e.dirty.store(false, Ordering::Release);
                let hits = e.pending_hits.swap(0, Ordering::AcqRel);
                (
                    e.key.as_str().to_owned(),
                    hits,
                    e.last_access.load(Ordering::Relaxed),
                )
            })
            .collect();
        self.index.record_access(batch).await
    }

    /// Drop the entry for `key` (its object is gone); the next request fetches it again.
    pub async fn forget(&self, key: &ObjectKey) {
        let removed = self
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.hot.invalidate(key);
        if let Some(entry) = removed {
            self.policy.remove(key);
            self.total_bytes.fetch_sub(entry.size, Ordering::Relaxed);
            tracing::warn!(key = %key, "cached object is missing from storage; it will be fetched again");
            if let Err(err) = self.index.remove(vec![key.as_str().to_owned()]).await {
                tracing::error!(error = %err, "could not remove an index entry");
            }
            self.publish_gauges();
        }
    }

    /// List storage: drop every index entry whose object is gone, and delete objects under
    /// proxyd's own prefixes that no entry knows (an index write lost to a crash), once they are
    /// older than `orphan_age` (younger ones may be commits in progress). Returns the entries
    /// dropped and the orphans deleted.
    pub async fn verify_storage(&self) -> Result<(usize, usize), CacheError> {
        self.remove_interrupted().await;
        let now = SystemTime::now();
        let owned = |key: &ObjectKey| {
            let first = key.as_str().split('/').next().unwrap_or("");
            self.settings.owned_prefixes.iter().any(|p| p == first)
        };
        // The listing streams page by page; only the keys of known entries are remembered.
        let mut listing = self.storage.list("");
        let mut present: std::collections::HashSet<ObjectKey> = std::collections::HashSet::new();
        let mut orphans = 0;
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if self.lookup(&meta.key).is_some() {
                present.insert(meta.key);
                continue;
            }
            let old_enough = meta
                .last_modified
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= self.settings.orphan_age);
            let in_flight = self
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&meta.key);
            if !owned(&meta.key) || !old_enough || in_flight {
                continue;
            }
            match self.storage.delete(&meta.key).await {
                Ok(()) => {
                    orphans += 1;
                    tracing::warn!(key = %meta.key, size = meta.size, "deleted an object no index entry knows");
                }
                Err(err) => {
                    tracing::error!(key = %meta.key, error = %err, "could not delete an orphan object")
                }
            }
        }
        let missing: Vec<ObjectKey> = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        // An entry committed after the listing started is not missing; check each one.
        let mut dropped = 0;
        for key in missing {
            if self
                .storage
                .head(&key)
                .await
                .is_err_and(|e| e.is_not_found())
            {
                self.forget(&key).await;
                dropped += 1;
            }
        }
        Ok((dropped, orphans))
    }

    /// Run flushing and verification in the background until `shutdown` fires; flush once
    /// more at the end.
    pub fn spawn_background(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut flush = tokio::time::interval(cache.settings.flush_interval);
            let mut verify = tokio::time::interval(cache.settings.verify_interval);
            verify.tick().await; // not at start-up
            let mut probe = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = flush.tick() => {
                        if let Err(err) = cache.flush().await {
                            tracing::error!(error = %err, "could not write hit counts to the index");
                        }
                    }
                    _ = verify.tick() => match cache.verify_storage().await {
                        Ok((0, 0)) => {}
                        Ok((dropped, orphans)) => tracing::warn!(dropped, orphans, "reconciled the index with storage"),
                        Err(err) => tracing::error!(error = %err, "could not verify storage"),
                    },
                    _ = probe.tick() => {
                        cache.probe_storage().await;
                    }
                    _ = shutdown.changed() => break,
                }
            }
            if let Err(err) = cache.flush().await {
                tracing::error!(error = %err, "could not write hit counts to the index at shutdown");
            }
        })
    }

    /// Totals and per-ecosystem counters.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for entry in self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let eco = stats.ecosystems.entry(entry.ecosystem.clone()).or_default();
            eco.cached_artifacts += 1;
            eco.bytes += entry.size;
            stats.cached_artifacts += 1;
            stats.bytes += entry.size;
        }
        for (name, c) in self
            .counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let eco = stats.ecosystems.entry(name.clone()).or_default();
            eco.hits = c.hits.load(Ordering::Relaxed);
            eco.misses = c.misses.load(Ordering::Relaxed);
            stats.hits += eco.hits;
            stats.misses += eco.misses;
        }
        stats.evicted_bytes = self.evicted_bytes.load(Ordering::Relaxed);
        stats
    }

    fn publish_gauges(&self) {
        let count = self.entries.read().unwrap_or_else(|p| p.into_inner()).len();
        metrics::gauge!(m::CACHED_ARTIFACTS).set(count as f64);
        metrics::gauge!(m::CACHE_SIZE_BYTES).set(self.total_bytes.load(Ordering::Relaxed) as f64);
    }

    /// A stored upstream metadata document.
    pub async fn document(&self, key: &str) -> Result<Option<Document>, CacheError> {
        self.index.document(key.to_owned()).await
    }

    /// Store an upstream metadata document.
    pub async fn put_document(&self, key: &str, document: Document) -> Result<(), CacheError> {
        self.index.put_document(key.to_owned(), document).await
    }

    /// Get an uncached artifact into the cache. One call per key starts `source` (the upstream
    /// request) and streams; concurrent calls for the same key wait for it to commit.
    pub async fn fetch<F>(
        self: &Arc<Self>,
        spec: ArtifactSpec,
        source: F,
    ) -> Result<Fetched, CacheError>
    where
        F: Future<Output = Result<UpstreamBody, FetchFailure>> + Send + 'static,
    {
        self.fetch_newer(spec, source, None).await
    }

    /// [`Cache::fetch`], where a cached entry fetched at or before `newer_than` does not count
    /// (a file that must be revalidated is fetched again and replaced).
    pub async fn fetch_newer<F>(
        self: &Arc<Self>,
        spec: ArtifactSpec,
        source: F,
        newer_than: Option<SystemTime>,
    ) -> Result<Fetched, CacheError>
    where
        F: Future<Output = Result<UpstreamBody, FetchFailure>> + Send + 'static,
    {
        let joined = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(rx) = flights.get(&spec.key) {
                Err(rx.clone())
            } else if let Some(entry) = self
                .lookup(&spec.key)
                .filter(|e| newer_than.is_none_or(|t| e.fetched_at > t))
            {
                // Committed between the caller's lookup and now.
                return Ok(Fetched::Cached(entry));
            } else {
                let (tx, rx) = watch::channel(None);
                flights.insert(spec.key.clone(), rx);
                Ok(tx)
            }
        };
        let done = match joined {
            Err(rx) => {
                return match self.wait_for(spec.ecosystem, rx).await {
                    // The fetch could not be stored: this request fetches for itself, uncached.
                    Err(CacheError::Fetch(f)) if f.kind == FailureKind::Storage => {
                        self.pass_through(spec, source).await
                    }
                    other => other,
                };
            }
            Ok(tx) => FlightGuard {
                cache: self.clone(),
                key: spec.key.clone(),
                tx: Some(tx),
            },
        };
        self.record_miss(spec.ecosystem);
        let result_rx = done.subscribe();
        let (pieces, leader) = broadcast::channel(LIVE_CHUNKS);
        let (headers_tx, headers_rx) = oneshot::channel();
        let key = spec.key.clone();
        let content_type = spec.content_type.clone();
        // The fetch runs on its own: the request that started it may go away, or stop reading,
        // and neither the fill nor the requests waiting for it notice.
        let cache = self.clone();
        tokio::spawn(async move {
            cache
                .run_fetch(spec, source, done, pieces, headers_tx)
                .await;
        });
        let content_length = match headers_rx.await {
            Ok(Ok(content_length)) => content_length,
            Ok(Err(failure)) => return Err(failure.into()),
            Err(_) => {
                return Err(
                    FetchFailure::upstream("the upstream fetch ended without a result").into(),
                );
            }
        };
        Ok(Fetched::Streaming {
            content_length,
            content_type,
            body: self.follow_live(key, leader, result_rx),
        })
    }

    /// The bytes of a fetch as they arrive. A reader that falls more than [`LIVE_CHUNKS`] behind
    /// is not waited for: it continues from storage, at its own pace, once the fetch commits.
    fn follow_live(
        self: &Arc<Self>,
        key: ObjectKey,
        live: broadcast::Receiver<Piece>,
        result: watch::Receiver<FlightResult>,
    ) -> ByteStream {
        struct Follow {
            cache: Arc<Cache>,
            key: ObjectKey,
            result: watch::Receiver<FlightResult>,
            position: u64,
            state: FollowState,
        }
        enum FollowState {
            Live(broadcast::Receiver<Piece>),
            Stored(ByteStream),
            Ended,
        }
        let start = Follow {
            cache: self.clone(),
            key,
            result,
            position: 0,
            state: FollowState::Live(live),
        };
        futures::stream::unfold(start, |mut f| async move {
            loop {
                match std::mem::replace(&mut f.state, FollowState::Ended) {
                    FollowState::Ended => return None,
                    FollowState::Stored(mut stream) => {
                        let item = stream.next().await?;
                        f.state = FollowState::Stored(stream);
                        return Some((item, f));
                    }
                    FollowState::Live(mut live) => match live.recv().await {
                        Ok(Piece::Data(chunk)) => {
                            f.position += chunk.len() as u64;
                            f.state = FollowState::Live(live);
                            return Some((Ok(chunk), f));
                        }
                        Ok(Piece::Done) => return None,
                        Ok(Piece::Failed(message)) => {
                            return Some((Err(std::io::Error::other(message)), f));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            metrics::counter!(m::SLOW_READERS_TOTAL).increment(1);
                            match f
                                .cache
                                .rest_from_storage(&f.key, &mut f.result, f.position)
                                .await
                            {
                                Ok(Some(stream)) => f.state = FollowState::Stored(stream),
                                Ok(None) => return None,
                                Err(err) => return Some((Err(err), f)),
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            let err =
                                std::io::Error::other("the upstream fetch ended without a result");
                            return Some((Err(err), f));
                        }
                    },
                }
            }
        })
        .boxed()
    }

    /// What a reader that fell behind still needs, from storage once the fetch has committed
    /// (`None` when it already has everything).
    async fn rest_from_storage(
        &self,
        key: &ObjectKey,
        result: &mut watch::Receiver<FlightResult>,
        position: u64,
    ) -> std::io::Result<Option<ByteStream>> {
        let waited =
            tokio::time::timeout(self.settings.fetch_wait, result.wait_for(Option::is_some))
                .await
                .map(|r| r.map(|seen| seen.clone()));
        let entry = match waited {
            Ok(Ok(result)) => match result {
                Some(Ok(entry)) => entry,
                Some(Err(failure)) => return Err(std::io::Error::other(failure.message)),
                None => {
                    return Err(std::io::Error::other(
                        "the upstream fetch ended without a result",
                    ));
                }
            },
            Ok(Err(_)) => return Err(std::io::Error::other("the upstream fetch was abandoned")),
            Err(_) => {
                return Err(std::io::Error::other(
                    "timed out waiting for the upstream fetch",
                ));
            }
        };
        if position >= entry.size {
            return Ok(None);
        }
        let got = self
            .storage
            .get(key, Some(position..entry.size))
            .await
            .map_err(std::io::Error::other)?;
        Ok(Some(got.body))
    }

    /// The upstream request and the ingest, on their own task: report the response's length
    /// (or its failure) to the request that started the fetch, then fill storage.
    async fn run_fetch<F>(
        self: Arc<Self>,
        spec: ArtifactSpec,
        source: F,
        done: FlightGuard,
        pieces: broadcast::Sender<Piece>,
        headers: oneshot::Sender<Result<Option<u64>, FetchFailure>>,
    ) where
        F: Future<Output = Result<UpstreamBody, FetchFailure>> + Send,
    {
        metrics::counter!(m::UPSTREAM_REQUESTS_TOTAL, "ecosystem" => spec.ecosystem, "kind" => "artifact")
            .increment(1);
        let upstream = match source.await {
            Ok(upstream) => upstream,
            Err(failure) => {
                if failure.kind != FailureKind::NotFound {
                    metrics::counter!(m::UPSTREAM_ERRORS_TOTAL, "ecosystem" => spec.ecosystem, "kind" => "artifact")
                        .increment(1);
                }
                let _ = headers.send(Err(failure.clone()));
                done.finish(Err(failure));
                return;
            }
        };
        let _ = headers.send(Ok(upstream.content_length));
        self.ingest(spec, upstream, pieces, done).await;
    }

    async fn wait_for(
        &self,
        ecosystem: &'static str,
        mut rx: watch::Receiver<FlightResult>,
    ) -> Result<Fetched, CacheError> {
        metrics::counter!(m::COALESCED_FETCHES_TOTAL, "ecosystem" => ecosystem).increment(1);
        let waited =
            tokio::time::timeout(self.settings.fetch_wait, rx.wait_for(Option::is_some)).await;
        let (outcome, result) = match waited {
            Ok(Ok(result)) => match result.clone() {
                Some(Ok(entry)) => ("hit", Ok(Fetched::Cached(entry))),
                Some(Err(failure)) => ("failed", Err(failure.into())),
                None => (
                    "failed",
                    Err(FetchFailure::upstream("the upstream fetch ended without a result").into()),
                ),
            },
            Ok(Err(_)) => (
                "failed",
                Err(FetchFailure::upstream("the upstream fetch was abandoned").into()),
            ),
            Err(_) => (
                "timeout",
                Err(FetchFailure::timeout("timed out waiting for the upstream fetch").into()),
            ),
        };
        metrics::counter!(m::FETCH_WAITS_TOTAL, "ecosystem" => ecosystem, "outcome" => outcome)
            .increment(1);
        result
    }

    /// Read upstream, write storage, publish the bytes to whoever follows them live, verify,
    /// commit. Paced by the upstream and storage only: publishing never waits for a reader.
    async fn ingest(
        self: Arc<Self>,
        mut spec: ArtifactSpec,
        mut upstream: UpstreamBody,
        live: broadcast::Sender<Piece>,
        done: FlightGuard,
    ) {
        let (store_tx, store_rx) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_DEPTH);
        let storage = self.storage.clone();
        let key = spec.key.clone();
        let put_options = PutOptions::with_content_type(spec.content_type.clone());
        let put = tokio::spawn(async move {
            storage
                .put(&key, ReceiverStream::new(store_rx).boxed(), put_options)
                .await
        });

        let mut verifier = spec.verifier.take();
        let mut received: u64 = 0;
        // The last chunk is held back from live readers until the download is verified and
        // committed, so a bad download never looks complete.
        let mut held: Option<Bytes> = None;
        let mut failure: Option<FetchFailure> = None;
        // Storage that cannot take the bytes stops only the storing: live readers still get
        // the verified upstream bytes (proxyd as a plain proxy while storage is down).
        let mut storing = true;
        while let Some(chunk) = upstream.body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    failure = Some(FetchFailure::upstream(format!(
                        "upstream download broke off: {err}"
                    )));
                    break;
                }
            };
            received += chunk.len() as u64;
            if let Some(v) = verifier.as_mut() {
                v.update(&chunk);
            }
            if storing && store_tx.send(Ok(chunk.clone())).await.is_err() {
                storing = false; // storage gave up; its error is reported below
            }
            if let Some(previous) = held.replace(chunk) {
                // No reader left is fine: the fetch completes for the cache.
                let _ = live.send(Piece::Data(previous));
            }
        }
        if failure.is_none()
            && let Some(expected) = upstream.content_length
            && expected != received
        {
            failure = Some(FetchFailure::upstream(format!(
                "upstream sent {received} bytes of the {expected} it announced"
            )));
        }
        if failure.is_none()
            && let Some(v) = verifier.take()
            && let Err(reason) = v.finish()
        {
            failure = Some(FetchFailure::upstream(format!(
                "upstream file {} {reason}",
                spec.filename
            )));
        }

        let result = match failure {
            Some(f) => {
                // Failing the body makes storage discard the object.
                let _ = store_tx
                    .send(Err(std::io::Error::other(f.message.clone())))
                    .await;
                drop(store_tx);
                let _ = put.await;
                metrics::counter!(m::UPSTREAM_ERRORS_TOTAL, "ecosystem" => spec.ecosystem, "kind" => "artifact")
                    .increment(1);
                Err(f)
            }
            None => {
                drop(store_tx);
                match put.await {
                    Ok(Ok(put)) => {
                        self.note_storage_success();
                        Ok(self.commit(&spec, put.size, put.sha256).await)
                    }
                    Ok(Err(err)) => Err(FetchFailure::new(
                        FailureKind::Storage,
                        format!("could not store the artifact: {err}"),
                    )),
                    Err(err) => Err(FetchFailure::new(
                        FailureKind::Storage,
                        format!("storage task failed: {err}"),
                    )),
                }
            }
        };
        match &result {
            Ok(_) => {
                if let Some(last) = held {
                    let _ = live.send(Piece::Data(last));
                }
                let _ = live.send(Piece::Done);
            }
            Err(f) if f.kind == FailureKind::Storage => {
                // Verified, not stored: the live readers get it whole all the same.
                self.note_storage_failure();
                self.count_bypass(spec.ecosystem, &f.message);
                if let Some(last) = held {
                    let _ = live.send(Piece::Data(last));
                }
                let _ = live.send(Piece::Done);
            }
            Err(f) => {
                tracing::warn!(key = %spec.key, url = %spec.upstream_url, error = %f.message, "artifact not cached");
                let _ = live.send(Piece::Failed(f.message.clone()));
            }
        }
        done.finish(result);
    }

    /// Whether storage answered its last call. While it does not, cached downloads should not
    /// be redirected to it.
    pub fn storage_ok(&self) -> bool {
        self.storage_ok.load(Ordering::Relaxed)
    }

    /// A storage call failed (other than for a missing object).
    pub fn note_storage_failure(&self) {
        if self.storage_ok.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "storage is not answering: downloads are served from the upstream and not redirected until it does"
            );
        }
    }

    /// A storage call succeeded.
    pub fn note_storage_success(&self) {
        if !self.storage_ok.swap(true, Ordering::Relaxed) {
            tracing::info!("storage answers again");
        }
    }

    /// Ask storage for a probe key (bounded by 3 s) and note whether it answered.
    pub async fn probe_storage(&self) -> bool {
        let Ok(key) = ObjectKey::new("health/probe") else {
            return false;
        };
        let answered =
            match tokio::time::timeout(Duration::from_secs(3), self.storage.head(&key)).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => e.is_not_found(),
                Err(_) => false,
            };
        if answered {
            self.note_storage_success();
        } else {
            self.note_storage_failure();
        }
        answered
    }

    /// Count (and log once per cause) a download served without storing it.
    fn count_bypass(&self, ecosystem: &'static str, cause: &str) {
        metrics::counter!(m::STORAGE_BYPASS_TOTAL, "ecosystem" => ecosystem).increment(1);
        if !self.bypass_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cause,
                "storage is failing: downloads are served from the upstream without caching (logged once)"
            );
        }
    }

    /// Serve an artifact straight from the upstream without storing it, for when storage is
    /// down: still verified, its last chunk held back until it is, never a clean short body.
    pub async fn pass_through<F>(
        &self,
        mut spec: ArtifactSpec,
        source: F,
    ) -> Result<Fetched, CacheError>
    where
        F: Future<Output = Result<UpstreamBody, FetchFailure>> + Send + 'static,
    {
        self.count_bypass(spec.ecosystem, "pass-through");
        metrics::counter!(m::UPSTREAM_REQUESTS_TOTAL, "ecosystem" => spec.ecosystem, "kind" => "artifact")
            .increment(1);
        let upstream = source.await?;
        struct Pass {
            body: ByteStream,
            verifier: Option<Box<dyn crate::Verifier>>,
            expected: Option<u64>,
            received: u64,
            held: Option<Bytes>,
            filename: String,
            ended: bool,
        }
        let start = Pass {
            body: upstream.body,
            verifier: spec.verifier.take(),
            expected: upstream.content_length,
            received: 0,
            held: None,
            filename: spec.filename.clone(),
            ended: false,
        };
        let body = futures::stream::unfold(start, |mut p| async move {
            if p.ended {
                return None;
            }
            loop {
                match p.body.next().await {
                    Some(Ok(chunk)) => {
                        p.received += chunk.len() as u64;
                        if let Some(v) = p.verifier.as_mut() {
                            v.update(&chunk);
                        }
                        if let Some(previous) = p.held.replace(chunk) {
                            return Some((Ok(previous), p));
                        }
                    }
                    Some(Err(err)) => {
                        p.ended = true;
                        let err =
                            std::io::Error::other(format!("upstream download broke off: {err}"));
                        return Some((Err(err), p));
                    }
                    None => {
                        p.ended = true;
                        let short = p.expected.is_some_and(|e| e != p.received);
                        let verdict = p.verifier.take().map_or(Ok(()), |v| v.finish());
                        return match (short, verdict) {
                            (true, _) => Some((
                                Err(std::io::Error::other(
                                    "upstream sent fewer bytes than it announced",
                                )),
                                p,
                            )),
                            (false, Err(reason)) => {
                                let err = std::io::Error::other(format!(
                                    "upstream file {} {reason}",
                                    p.filename
                                ));
                                Some((Err(err), p))
                            }
                            (false, Ok(())) => {
                                let last = p.held.take()?;
                                Some((Ok(last), p))
                            }
                        };
                    }
                }
            }
        });
        Ok(Fetched::Streaming {
            content_length: upstream.content_length,
            content_type: spec.content_type.clone(),
            body: body.boxed(),
        })
    }

    async fn commit(&self, spec: &ArtifactSpec, size: u64, sha256: [u8; 32]) -> Arc<ArtifactEntry> {
        let now = SystemTime::now();
        let entry = Arc::new(ArtifactEntry {
            key: spec.key.clone(),
            ecosystem: spec.ecosystem.to_owned(),
            name: spec.name.clone(),
            version: spec.version.clone(),
            filename: spec.filename.clone(),
            size,
            sha256,
            content_type: spec.content_type.clone(),
            upstream_url: spec.upstream_url.clone(),
            fetched_at: now,
            etag: format!("\"{}\"", hex::encode(sha256)),
            hits: AtomicU64::new(0),
            pending_hits: AtomicU64::new(0),
            last_access: AtomicU64::new(unix_secs(now)),
            dirty: AtomicBool::new(false),
            rendered: OnceLock::new(),
        });
        let record = || entry_to_record(&entry);
        let written = (|| async { self.index.upsert(record()).await })
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_times(2),
            )
            .await;
        if let Err(err) = written {
            // Storage has the object and memory counts it; the row is written again at each
            // flush until the index takes it, so the object is never left uncounted.
            tracing::error!(key = %spec.key, error = %err, "could not write the index entry; it is retried at each flush");
            self.unrecorded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.clone());
        }
        let old = self
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.key.clone(), entry.clone());
        if let Some(old) = old {
            self.total_bytes.fetch_sub(old.size, Ordering::Relaxed);
        }
        self.total_bytes.fetch_add(size, Ordering::Relaxed);
        let victims = self.policy.admit(&entry.key, size);
        self.evict(victims);
        self.publish_gauges();
        entry
    }

    /// Take `victims` out of the index in memory now (no new hit or redirect is handed out
    /// for them) and queue their objects for deletion after the grace period.
    fn evict(&self, victims: Vec<(ObjectKey, u64)>) {
        if victims.is_empty() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        for (key, _) in victims {
            self.hot.invalidate(&key);
            if let Some(entry) = entries.remove(&key) {
                self.total_bytes.fetch_sub(entry.size, Ordering::Relaxed);
                self.evicted_bytes.fetch_add(entry.size, Ordering::Relaxed);
                metrics::counter!(m::EVICTED_BYTES_TOTAL).increment(entry.size);
                let _ = self.evicted.send((entry, now));
            }
        }
    }
}

/// Deletes evicted objects once their grace period is over, oldest first, unless the key was
/// fetched again meanwhile; then their index rows.
async fn delete_evicted(
    cache: std::sync::Weak<Cache>,
    mut evicted: mpsc::UnboundedReceiver<(Arc<ArtifactEntry>, tokio::time::Instant)>,
    grace: Duration,
) {
    while let Some((entry, at)) = evicted.recv().await {
        tokio::time::sleep_until(at + grace).await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        if cache.lookup(&entry.key).is_some() {
            continue; // fetched again: the object is the new one
        }
        match cache.storage.delete(&entry.key).await {
            Ok(()) => {
                if let Err(err) = cache
                    .index
                    .remove(vec![entry.key.as_str().to_owned()])
                    .await
                {
                    tracing::error!(key = %entry.key, error = %err, "could not remove an evicted entry from the index");
                }
                tracing::debug!(key = %entry.key, size = entry.size, "evicted");
            }
            Err(err) => {
                tracing::error!(key = %entry.key, error = %err, "could not delete an evicted object");
            }
        }
    }
}

/// The leader's hold on a flight: finishing it (or dropping it, when the request that started
/// the fetch goes away before upstream answered) releases the waiters and the key.
struct FlightGuard {
    cache: Arc<Cache>,
    key: ObjectKey,
    tx: Option<watch::Sender<FlightResult>>,
}

impl FlightGuard {
    fn subscribe(&self) -> watch::Receiver<FlightResult> {
        self.tx
            .as_ref()
            .map_or_else(|| watch::channel(None).1, watch::Sender::subscribe)
    }

    fn finish(mut self, result: Result<Arc<ArtifactEntry>, FetchFailure>) {
        self.release(result);
    }

    fn release(&mut self, result: Result<Arc<ArtifactEntry>, FetchFailure>) {
        if let Some(tx) = self.tx.take() {
            self.cache
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.key);
            let _ = tx.send(Some(result));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.release(Err(FetchFailure::upstream(
            "the request that started the fetch went away",
        )));
    }
}

impl ArtifactEntry {
    /// Seconds-resolution last-modified time for HTTP.
    pub fn last_modified(&self) -> SystemTime {
        from_unix_secs(unix_secs(self.fetched_at))
    }
}
