use std::collections::HashMap;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use proxyd_storage_core::{ByteStream, ObjectKey, PutMode, PutOptions, Storage};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::entry::{ArtifactEntry, ArtifactSpec, Document, from_unix_secs, unix_secs};
use backon::{ExponentialBuilder, Retryable};

use crate::clock;
use crate::metric_names as m;
use crate::{
    AccessUpdate, CacheError, FailureKind, FetchFailure, Index, IndexRecord, IndexTotals, Lease,
};

/// Rows a pass of the evictor or of reconciliation handles at a time.
const BATCH: usize = 256;

/// Hits waiting for the index that make the flush run before its interval.
const DIRTY_FLUSH_AT: usize = 1024;

/// Chunks buffered between the upstream reader and storage.
const CHANNEL_DEPTH: usize = 4;

/// Chunks a live reader may fall behind before it is left to continue from storage.
const LIVE_CHUNKS: usize = 64;

/// A fetch in progress, as requests for the same key find it.
#[derive(Clone)]
struct Flight {
    /// The committed entry or the failure, at the end.
    result: watch::Receiver<FlightResult>,
    /// How the upstream answered (or that another node had it).
    started: watch::Receiver<Option<Result<Started, FetchFailure>>>,
    /// The live bytes, to subscribe to until the first of them is published (a reader that
    /// subscribes then misses nothing); `None` after that, when joiners wait for the commit.
    joinable: Arc<Mutex<Option<broadcast::Sender<Piece>>>>,
}

/// Where a fetch publishes its bytes: the live readers, and the window in which more may join.
struct LiveOut {
    pieces: broadcast::Sender<Piece>,
    joinable: Arc<Mutex<Option<broadcast::Sender<Piece>>>>,
    /// Whether `joinable` was emptied (once, at the first piece: no lock per chunk after it).
    window_closed: bool,
}

impl LiveOut {
    /// Publish `piece` (no reader left is fine: the fetch completes for the cache). The first
    /// piece closes the window for joining live: later joiners wait for the commit.
    fn send(&mut self, piece: Piece) {
        if !self.window_closed {
            self.joinable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            self.window_closed = true;
        }
        let _ = self.pieces.send(piece);
    }
}

/// How the task that runs a fetch starts.
#[derive(Clone)]
enum Started {
    /// The upstream answered: the bytes follow, of this length when announced.
    Streaming(Option<u64>),
    /// Another node fetched it meanwhile.
    Cached(Arc<ArtifactEntry>),
}

/// What the fetch lease said.
enum LeaseOutcome {
    /// Fetch it (holding the lease, or without one when the index failed).
    Fetch { leased: bool },
    /// Another node committed it.
    Cached(Arc<ArtifactEntry>),
}

/// A name for this cache among lease holders: the process and a random part, so two caches in
/// one process (and a restarted process) differ.
fn node_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = foldhash::fast::RandomState::default().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{}-{:016x}", std::process::id(), hasher.finish())
}

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
    /// Memory for index entries kept in front of the index (the index is read on a miss).
    pub entry_cache_bytes: u64,
    /// How long a fetch lease lasts unless renewed (renewed every third of it while the fetch
    /// runs); a node that dies holding one delays others' fetch of that artifact this long.
    pub fetch_lease: Duration,
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
            entry_cache_bytes: 4 * 1024 * 1024,
            fetch_lease: Duration::from_secs(30),
            fetch_wait: Duration::from_secs(300),
            flush_interval: Duration::from_secs(10),
            verify_interval: Duration::from_secs(600),
            eviction_grace: Duration::ZERO,
            hot_bytes: 8 * 1024 * 1024,
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

#[derive(Debug)]
pub(crate) struct Counters {
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

/// The cache: accounting, single-flight fetches and eviction over an index that is the
/// source of truth, with a bounded memory of entries in front of it.
pub struct Cache {
    storage: Arc<dyn Storage>,
    index: Arc<dyn Index>,
    settings: CacheSettings,
    /// This cache's name among the holders of leases.
    owner: String,
    /// Entries recently looked up or committed, weighted by their size in memory; a miss
    /// reads through to the index.
    entries: EntryMemory,
    /// How long an entry stays in `entries` before the index is asked again.
    entry_ttl: Duration,
    /// Bumped whenever entries leave (eviction, a missing object) or are replaced, so a lookup
    /// that read the index before does not put back what left.
    generation: AtomicU64,
    flights: Mutex<HashMap<ObjectKey, Flight>>,
    dirty: Mutex<Vec<Arc<ArtifactEntry>>>,
    counters: RwLock<FastMap<String, Arc<Counters>>>,
    /// The index's totals as last read (the gauges and `/stats`).
    totals: RwLock<Vec<IndexTotals>>,
    evicted_bytes: AtomicU64,
    /// The key committed last: never evicted, however large.
    newest: Mutex<Option<ObjectKey>>,
    /// One eviction pass at a time in this process (the lease orders the nodes).
    evicting: tokio::sync::Mutex<()>,
    /// Wakes the evictor: the total went over `max_size`.
    evict_wake: tokio::sync::Notify,
    /// Wakes the flush: hits piled up.
    flush_wake: tokio::sync::Notify,
    /// Committed entries whose index row could not be written yet.
    unrecorded: Mutex<Vec<Arc<ArtifactEntry>>>,
    /// Whether serving around a storage failure was logged already.
    bypass_logged: AtomicBool,
    /// Whether storage answered its last call (a put, a read, or the background probe).
    storage_ok: AtomicBool,
    /// Small artifacts' bytes, with the digest of the entry they belong to (quick_cache, as
    /// `entries`: read on every small hit).
    hot: quick_cache::sync::Cache<
        ObjectKey,
        ([u8; 32], Bytes),
        HotWeigher,
        foldhash::fast::RandomState,
    >,
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

/// The entries kept in memory in front of the index. quick_cache, not moka as for proxyd's
/// other caches: this read is on every hit, and a get took 36 ns against moka's 176 ns (with
/// its time-to-live) on the project's machine, 1.5 % of a redirect's CPU time (scenario 3).
/// Its time-to-live is kept with the entry and checked on the read.
type EntryMemory =
    quick_cache::sync::Cache<ObjectKey, MemoryEntry, EntryWeigher, foldhash::fast::RandomState>;

/// An entry in memory and the moment it must be read from the index again (on
/// [`clock::monotonic_millis`]).
#[derive(Clone)]
struct MemoryEntry {
    entry: Arc<ArtifactEntry>,
    expires_ms: u64,
}

/// Weighs [`MemoryEntry`]s by [`entry_weight`].
#[derive(Clone, Copy)]
struct EntryWeigher;

impl quick_cache::Weighter<ObjectKey, MemoryEntry> for EntryWeigher {
    fn weight(&self, _: &ObjectKey, memory: &MemoryEntry) -> u64 {
        entry_weight(&memory.entry)
    }
}

/// Weighs a small artifact's bytes in memory: the bytes, the key, and about 450 bytes of
/// allocations and bookkeeping per item (measured: 100,000 bodies of 16 bytes took 52 MiB).
#[derive(Clone, Copy)]
struct HotWeigher;

impl quick_cache::Weighter<ObjectKey, ([u8; 32], Bytes)> for HotWeigher {
    fn weight(&self, key: &ObjectKey, (_, bytes): &([u8; 32], Bytes)) -> u64 {
        (bytes.len() + 2 * key.as_str().len() + 448) as u64
    }
}

/// About what an entry weighs, to size the memory's table.
const TYPICAL_ENTRY_WEIGHT: u64 = 2048;

/// Entries kept in memory, `bytes` of them at most by [`entry_weight`].
fn entry_memory(bytes: u64) -> EntryMemory {
    weighed_memory(
        bytes,
        TYPICAL_ENTRY_WEIGHT,
        TYPICAL_ENTRY_WEIGHT,
        EntryWeigher,
    )
}

/// A quick_cache of `bytes` by `weigher`, whose items weigh about `typical` and at most
/// `largest`.
fn weighed_memory<K, V, W>(
    bytes: u64,
    typical: u64,
    largest: u64,
    weigher: W,
) -> quick_cache::sync::Cache<K, V, W, foldhash::fast::RandomState>
where
    K: Eq + std::hash::Hash,
    V: Clone,
    W: quick_cache::Weighter<K, V> + Clone,
{
    let bytes = bytes.max(1);
    let items = usize::try_from(bytes / typical.max(1))
        .unwrap_or(usize::MAX)
        .max(1);
    // quick_cache splits its capacity among shards, and an item heavier than one shard's
    // share is not kept: each shard holds eight of the largest items.
    let shards = usize::try_from(bytes / largest.max(1).saturating_mul(8))
        .unwrap_or(usize::MAX)
        .clamp(1, 64)
        .next_power_of_two();
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(items)
        .weight_capacity(bytes)
        .shards(shards)
        .build();
    match options {
        Ok(options) => quick_cache::sync::Cache::with_options(
            options,
            weigher,
            foldhash::fast::RandomState::default(),
            Default::default(),
        ),
        // Only an impossible combination of the numbers above fails; a plain cache then.
        Err(_) => quick_cache::sync::Cache::with(
            items,
            bytes,
            weigher,
            foldhash::fast::RandomState::default(),
            Default::default(),
        ),
    }
}

/// Memory an entry takes, as measured (bench scenario 7a: entries of short names took about
/// 2.5 KiB each in resident memory): its strings, copied into what a server renders and
/// keeps with it, the fixed parts, and the cache's own bookkeeping.
fn entry_weight(e: &ArtifactEntry) -> u64 {
    let strings = e.key.as_str().len()
        + e.ecosystem.len()
        + e.name.len()
        + e.version.len()
        + e.filename.len()
        + e.content_type.len()
        + e.upstream_url.len()
        + e.etag.len();
    6 * strings as u64 + 1536
}

fn unix_millis(t: SystemTime) -> u64 {
    u64::try_from(
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
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
        last_access: AtomicU64::new(r.last_access_ms),
        dirty: AtomicBool::new(false),
        rendered: OnceLock::new(),
        counters: OnceLock::new(),
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
        last_access_ms: e.last_access.load(Ordering::Relaxed),
    }
}

impl Cache {
    /// Open the cache over `index` (read on demand: nothing is loaded at start) and `storage`.
    pub async fn open(
        storage: Arc<dyn Storage>,
        index: Arc<dyn Index>,
        settings: CacheSettings,
    ) -> Result<Arc<Self>, CacheError> {
        let totals = index.totals().await?;
        let (hot_bytes, hot_max_object) = (settings.hot_bytes, settings.hot_max_object);
        // Another node may evict an entry this one keeps in memory: keep entries for less than
        // the grace period the evictor waits before deleting an object.
        let entry_ttl = if settings.eviction_grace.is_zero() {
            Duration::from_secs(60)
        } else {
            (settings.eviction_grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
        };
        let cache = Arc::new(Self {
            storage,
            index,
            owner: node_name(),
            entries: entry_memory(settings.entry_cache_bytes),
            entry_ttl,
            settings,
            generation: AtomicU64::new(0),
            flights: Mutex::new(HashMap::new()),
            dirty: Mutex::new(Vec::new()),
            counters: RwLock::new(FastMap::default()),
            totals: RwLock::new(totals),
            evicted_bytes: AtomicU64::new(0),
            newest: Mutex::new(None),
            evicting: tokio::sync::Mutex::new(()),
            evict_wake: tokio::sync::Notify::new(),
            flush_wake: tokio::sync::Notify::new(),
            unrecorded: Mutex::new(Vec::new()),
            bypass_logged: AtomicBool::new(false),
            storage_ok: AtomicBool::new(true),
            hot: weighed_memory(
                hot_bytes,
                16 * 1024,
                hot_max_object.saturating_add(2 * 1024 + 448),
                HotWeigher,
            ),
        });
        tokio::spawn(evict_in_background(Arc::downgrade(&cache)));
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

    /// Index entries kept in memory now, and the memory they are weighed at (bounded by
    /// `entry_cache_bytes`).
    pub fn entries_in_memory(&self) -> (u64, u64) {
        (self.entries.len() as u64, self.entries.weight())
    }

    /// The entry kept in memory under `key`, unless its time-to-live has passed (it is then
    /// dropped, and the caller asks the index).
    fn remembered(&self, key: &ObjectKey) -> Option<Arc<ArtifactEntry>> {
        let memory = self.entries.get(key)?;
        if memory.expires_ms > clock::monotonic_millis() {
            return Some(memory.entry);
        }
        self.entries.remove(key);
        None
    }

    /// Keep `entry` in memory for the entry time-to-live.
    fn remember(&self, entry: Arc<ArtifactEntry>) {
        let ttl_ms = u64::try_from(self.entry_ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = clock::monotonic_millis().saturating_add(ttl_ms);
        self.entries
            .insert(entry.key.clone(), MemoryEntry { entry, expires_ms });
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The cached artifact under `key`, if any: from memory, else read through to the index
    /// (and kept in memory). An index that fails counts as a miss (logged and counted): the
    /// artifact is then served from the upstream.
    pub async fn lookup(&self, key: &ObjectKey) -> Option<Arc<ArtifactEntry>> {
        if let Some(entry) = self.remembered(key) {
            return Some(entry);
        }
        let generation = self.generation.load(Ordering::Acquire);
        match self.index.artifact(key.as_str()).await {
            Ok(Some(record)) => {
                let entry = Arc::new(record_to_entry(record)?);
                if self.generation.load(Ordering::Acquire) == generation {
                    self.remember(entry.clone());
                }
                Some(entry)
            }
            Ok(None) => self
                .unrecorded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|e| &e.key == key)
                .cloned(),
            Err(err) => {
                self.index_failed("lookup", &err);
                None
            }
        }
    }

    /// Count and log an index call that failed.
    fn index_failed(&self, operation: &'static str, err: &crate::IndexError) {
        metrics::counter!(m::INDEX_ERRORS_TOTAL, "operation" => operation).increment(1);
        tracing::warn!(operation, error = %err, temporary = err.is_temporary(), "index call failed");
    }

    /// Entries whose memory copies must go: bump the generation first, so no lookup that read
    /// the index before puts them back.
    fn drop_from_memory(&self, keys: impl IntoIterator<Item = ObjectKey>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for key in keys {
            self.entries.remove(&key);
            self.hot.remove(&key);
        }
    }

    /// Read the index's totals again and publish them.
    async fn refresh_totals(&self) {
        match self.index.totals().await {
            Ok(totals) => {
                *self.totals.write().unwrap_or_else(|p| p.into_inner()) = totals;
                self.publish_gauges();
            }
            Err(err) => self.index_failed("totals", &err),
        }
    }

    /// Cached bytes in total, as the index last said.
    fn total_bytes(&self) -> u64 {
        self.totals
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| t.bytes)
            .sum()
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
            .store(clock::unix_millis(), Ordering::Relaxed);
        // Read first: a hot entry is already marked, and a load is cheaper than a swap.
        if !entry.dirty.load(Ordering::Acquire) && !entry.dirty.swap(true, Ordering::AcqRel) {
            let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            dirty.push(entry.clone());
            if dirty.len() == DIRTY_FLUSH_AT {
                self.flush_wake.notify_one();
            }
        }
        let counters = entry
            .counters
            .get_or_init(|| self.counters(&entry.ecosystem));
        counters.hits.fetch_add(1, Ordering::Relaxed);
        counters.hits_metric.increment(1);
    }

    fn record_miss(&self, ecosystem: &'static str) {
        let counters = self.counters(ecosystem);
        counters.misses.fetch_add(1, Ordering::Relaxed);
        counters.misses_metric.increment(1);
    }

    /// Write pending hit counts and access times to the index, and the rows of committed
    /// entries the index could not take before.
    pub async fn flush(&self) -> Result<(), CacheError> {
        let unrecorded =
            std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|p| p.into_inner()));
        for (n, entry) in unrecorded.iter().enumerate() {
            if let Err(err) = self.index.put_artifact(entry_to_record(entry)).await {
                self.unrecorded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(unrecorded[n..].iter().cloned());
                return Err(err.into());
            }
        }
        if !unrecorded.is_empty() {
            self.refresh_totals().await;
        }
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        if dirty.is_empty() {
            return Ok(());
        }
        let batch = dirty
            .iter()
            .map(|e| {
                e.dirty.store(false, Ordering::Release);
                AccessUpdate {
                    key: e.key.as_str().to_owned(),
                    hits: e.pending_hits.swap(0, Ordering::AcqRel),
                    last_access_ms: e.last_access.load(Ordering::Relaxed),
                }
            })
            .collect();
        Ok(self.index.record_access(batch).await?)
    }

    /// Drop the entry for `key` (its object is gone); the next request fetches it again.
    pub async fn forget(&self, key: &ObjectKey) {
        self.drop_from_memory([key.clone()]);
        tracing::warn!(key = %key, "cached object is missing from storage; it will be fetched again");
        if let Err(err) = self
            .index
            .remove_artifacts(vec![key.as_str().to_owned()])
            .await
        {
            self.index_failed("remove", &err);
        }
        self.refresh_totals().await;
    }

    /// Reconcile the index with storage, streaming both, holding neither in memory: note every
    /// object the listing shows on its row; delete objects under proxyd's own prefixes that no
    /// row knows (an index write lost to a crash), once they are older than `orphan_age`
    /// (younger ones may be commits in progress); then drop the rows whose objects the listing
    /// did not show and a HEAD confirms gone. Returns the rows dropped and the orphans deleted.
    pub async fn verify_storage(&self) -> Result<(usize, usize), CacheError> {
        self.remove_interrupted().await;
        let started = SystemTime::now();
        let started_ms = unix_millis(started);
        let owned = |key: &ObjectKey| {
            let first = key.as_str().split('/').next().unwrap_or("");
            self.settings.owned_prefixes.iter().any(|p| p == first)
        };
        let mut listing = self.storage.list("");
        let mut orphans = 0;
        let mut page: Vec<proxyd_storage_core::ObjectMeta> = Vec::with_capacity(BATCH);
        loop {
            let next = listing.next().await;
            let end = next.is_none();
            if let Some(meta) = next {
                page.push(meta?);
            }
            if page.len() < BATCH && !end {
                continue;
            }
            let keys = page.iter().map(|m| m.key.as_str().to_owned()).collect();
            let unknown: std::collections::HashSet<String> = self
                .index
                .sighted(keys, started_ms)
                .await?
                .into_iter()
                .collect();
            for meta in page.drain(..) {
                if !unknown.contains(meta.key.as_str()) {
                    continue;
                }
                let old_enough = meta
                    .last_modified
                    .and_then(|t| started.duration_since(t).ok())
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
            if end {
                break;
            }
        }
        // Rows the listing did not show: each is checked on its own (it may have been committed
        // after the listing passed its key), then dropped or noted as seen.
        let mut dropped = 0;
        loop {
            let unseen = self.index.unsighted(started_ms, BATCH).await?;
            if unseen.is_empty() {
                break;
            }
            let mut present = Vec::new();
            for key in unseen {
                let Ok(key) = ObjectKey::new(key.clone()) else {
                    // Not a key proxyd could have written: the row cannot be served.
                    self.index.remove_artifacts(vec![key]).await?;
                    continue;
                };
                match self.storage.head(&key).await {
                    Err(e) if e.is_not_found() => {
                        self.forget(&key).await;
                        dropped += 1;
                    }
                    Ok(_) => present.push(key.as_str().to_owned()),
                    Err(e) => return Err(e.into()),
                }
            }
            if !present.is_empty() {
                self.index.sighted(present, started_ms).await?;
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
            // Every 2 s, bounded by 1.5 s: a storage outage stops redirects within about 4 s
            // (bench scenario 8d measured 8.9 s with a probe every 5 s bounded by 3 s).
            let mut probe = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = flush.tick() => {
                        if let Err(err) = cache.flush().await {
                            tracing::error!(error = %err, "could not write hit counts to the index");
                        }
                        // Totals another node changed reach this node's gauges here.
                        cache.refresh_totals().await;
                    }
                    _ = cache.flush_wake.notified() => {
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

    /// Totals (from the index: every node's, when several share it) and this node's
    /// per-ecosystem counters.
    pub async fn stats(&self) -> Stats {
        self.refresh_totals().await;
        let mut stats = Stats::default();
        for totals in self.totals.read().unwrap_or_else(|p| p.into_inner()).iter() {
            let eco = stats
                .ecosystems
                .entry(totals.ecosystem.clone())
                .or_default();
            eco.cached_artifacts += totals.artifacts;
            eco.bytes += totals.bytes;
            stats.cached_artifacts += totals.artifacts;
            stats.bytes += totals.bytes;
        }
        // Committed entries the index has not taken yet are cached all the same.
        for entry in self
            .unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
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
        let totals = self.totals.read().unwrap_or_else(|p| p.into_inner());
        let count: u64 = totals.iter().map(|t| t.artifacts).sum();
        let bytes: u64 = totals.iter().map(|t| t.bytes).sum();
        metrics::gauge!(m::CACHED_ARTIFACTS).set(count as f64);
        metrics::gauge!(m::CACHE_SIZE_BYTES).set(bytes as f64);
    }

    /// A stored upstream metadata document.
    pub async fn document(&self, key: &str) -> Result<Option<Document>, CacheError> {
        Ok(self.index.document(key).await?)
    }

    /// Store an upstream metadata document.
    pub async fn put_document(&self, key: &str, document: Document) -> Result<(), CacheError> {
        Ok(self.index.put_document(key, document).await?)
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
        let (pieces, leader) = broadcast::channel(LIVE_CHUNKS);
        let (started_tx, started_rx) = watch::channel(None);
        let joinable = Arc::new(Mutex::new(Some(pieces.clone())));
        let joined = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(flight) = flights.get(&spec.key) {
                Err(flight.clone())
            } else if let Some(entry) = self
                .remembered(&spec.key)
                .filter(|e| newer_than.is_none_or(|t| e.fetched_at > t))
            {
                // Committed between the caller's lookup and now (a commit is in memory before
                // its flight ends).
                return Ok(Fetched::Cached(entry));
            } else {
                let (tx, rx) = watch::channel(None);
                let flight = Flight {
                    result: rx,
                    started: started_rx.clone(),
                    joinable: joinable.clone(),
                };
                flights.insert(spec.key.clone(), flight);
                Ok(tx)
            }
        };
        let done = match joined {
            Err(flight) => {
                let live = flight
                    .joinable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(broadcast::Sender::subscribe);
                let waited = match live {
                    // Joined before the first byte: this request follows the bytes as they
                    // arrive, like the one that started the fetch.
                    Some(live) => self.follow_flight(&spec, flight, live).await,
                    None => self.wait_for(spec.ecosystem, flight.result).await,
                };
                return match waited {
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
        let key = spec.key.clone();
        let content_type = spec.content_type.clone();
        // The fetch runs on its own: the request that started it may go away, or stop reading,
        // and neither the fill nor the requests waiting for it notice.
        let cache = self.clone();
        tokio::spawn(async move {
            let live = LiveOut {
                pieces,
                joinable,
                window_closed: false,
            };
            cache
                .run_fetch(spec, source, newer_than, done, live, started_tx)
                .await;
        });
        let mut started = started_rx;
        let outcome = started.wait_for(Option::is_some).await.map(|s| s.clone());
        let content_length = match outcome {
            Ok(Some(Ok(Started::Streaming(content_length)))) => content_length,
            Ok(Some(Ok(Started::Cached(entry)))) => return Ok(Fetched::Cached(entry)),
            Ok(Some(Err(failure))) => return Err(failure.into()),
            Ok(None) | Err(_) => {
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

    /// Follow a fetch another request started, from its first byte on (`live` subscribed
    /// before any was published), within `fetch_wait` for the upstream to answer.
    async fn follow_flight(
        self: &Arc<Self>,
        spec: &ArtifactSpec,
        mut flight: Flight,
        live: broadcast::Receiver<Piece>,
    ) -> Result<Fetched, CacheError> {
        metrics::counter!(m::COALESCED_FETCHES_TOTAL, "ecosystem" => spec.ecosystem).increment(1);
        let waited = tokio::time::timeout(
            self.settings.fetch_wait,
            flight.started.wait_for(Option::is_some),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        let (outcome, result) = match waited {
            Ok(Ok(Some(Ok(Started::Streaming(content_length))))) => (
                "live",
                Ok(Fetched::Streaming {
                    content_length,
                    content_type: spec.content_type.clone(),
                    body: self.follow_live(spec.key.clone(), live, flight.result),
                }),
            ),
            Ok(Ok(Some(Ok(Started::Cached(entry))))) => ("hit", Ok(Fetched::Cached(entry))),
            Ok(Ok(Some(Err(failure)))) => ("failed", Err(failure.into())),
            Ok(Ok(None) | Err(_)) => (
                "failed",
                Err(FetchFailure::upstream("the upstream fetch ended without a result").into()),
            ),
            Err(_) => (
                "timeout",
                Err(FetchFailure::timeout("timed out waiting for the upstream fetch").into()),
            ),
        };
        metrics::counter!(m::FETCH_WAITS_TOTAL, "ecosystem" => spec.ecosystem, "outcome" => outcome)
            .increment(1);
        result
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

    /// The upstream request and the ingest, on their own task: take the artifact's fetch
    /// lease (or wait for the node that holds it), report the response's length (or its
    /// failure) to the request that started the fetch, then fill storage.
    async fn run_fetch<F>(
        self: Arc<Self>,
        spec: ArtifactSpec,
        source: F,
        newer_than: Option<SystemTime>,
        done: FlightGuard,
        live: LiveOut,
        headers: watch::Sender<Option<Result<Started, FetchFailure>>>,
    ) where
        F: Future<Output = Result<UpstreamBody, FetchFailure>> + Send,
    {
        let leased = match self.take_fetch_lease(&spec, newer_than).await {
            Ok(LeaseOutcome::Fetch { leased }) => leased,
            Ok(LeaseOutcome::Cached(entry)) => {
                let _ = headers.send(Some(Ok(Started::Cached(entry.clone()))));
                done.finish(Ok(entry));
                return;
            }
            Err(failure) => {
                let _ = headers.send(Some(Err(failure.clone())));
                done.finish(Err(failure));
                return;
            }
        };
        let renewing = leased.then(|| self.keep_fetch_lease(&spec.key));
        metrics::counter!(m::UPSTREAM_REQUESTS_TOTAL, "ecosystem" => spec.ecosystem, "kind" => "artifact")
            .increment(1);
        let key = spec.key.clone();
        match source.await {
            Ok(upstream) => {
                let _ = headers.send(Some(Ok(Started::Streaming(upstream.content_length))));
                let put_mode = if newer_than.is_some() {
                    PutMode::Overwrite // a revalidated file replaces the copy it refreshes
                } else {
                    PutMode::Create
                };
                self.clone()
                    .ingest(spec, upstream, put_mode, live, done)
                    .await;
            }
            Err(failure) => {
                if failure.kind != FailureKind::NotFound {
                    metrics::counter!(m::UPSTREAM_ERRORS_TOTAL, "ecosystem" => spec.ecosystem, "kind" => "artifact")
                        .increment(1);
                }
                let _ = headers.send(Some(Err(failure.clone())));
                done.finish(Err(failure));
            }
        }
        if let Some(renewing) = renewing {
            renewing.abort();
            // After the commit: a node waiting for the lease finds the row first.
            if let Err(err) = self.index.release_fetch(key.as_str(), &self.owner).await {
                self.index_failed("release_fetch", &err);
            }
        }
    }

    /// Take the fetch lease of `spec`'s key. While another node holds it, wait (polling, within
    /// `fetch_wait`) for that node's row, or for the lease to be free (its owner failed or
    /// died) and take it over. An index that fails does not stop the download: the fetch runs
    /// unleased.
    async fn take_fetch_lease(
        &self,
        spec: &ArtifactSpec,
        newer_than: Option<SystemTime>,
    ) -> Result<LeaseOutcome, FetchFailure> {
        let key = spec.key.as_str();
        let deadline = tokio::time::Instant::now() + self.settings.fetch_wait;
        let mut pause = Duration::from_millis(20);
        let mut waited = false;
        loop {
            match self
                .index
                .acquire_fetch(key, &self.owner, self.settings.fetch_lease)
                .await
            {
                Ok(Lease::Acquired) => {
                    // Another node may have committed it before this one asked.
                    if let Some(entry) = self.committed_elsewhere(&spec.key, newer_than).await {
                        let _ = self.index.release_fetch(key, &self.owner).await;
                        metrics::counter!(m::FETCH_LEASES_TOTAL, "outcome" => "other_node")
                            .increment(1);
                        return Ok(LeaseOutcome::Cached(entry));
                    }
                    let outcome = if waited { "took_over" } else { "fetched" };
                    metrics::counter!(m::FETCH_LEASES_TOTAL, "outcome" => outcome).increment(1);
                    return Ok(LeaseOutcome::Fetch { leased: true });
                }
                Ok(Lease::HeldElsewhere { .. }) => {
                    waited = true;
                    if tokio::time::Instant::now() + pause > deadline {
                        metrics::counter!(m::FETCH_LEASES_TOTAL, "outcome" => "timeout")
                            .increment(1);
                        return Err(FetchFailure::timeout(
                            "timed out waiting for another node's fetch of this artifact",
                        ));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                    if let Some(entry) = self.committed_elsewhere(&spec.key, newer_than).await {
                        metrics::counter!(m::FETCH_LEASES_TOTAL, "outcome" => "other_node")
                            .increment(1);
                        return Ok(LeaseOutcome::Cached(entry));
                    }
                }
                Err(err) => {
                    self.index_failed("acquire_fetch", &err);
                    metrics::counter!(m::FETCH_LEASES_TOTAL, "outcome" => "index_error")
                        .increment(1);
                    return Ok(LeaseOutcome::Fetch { leased: false });
                }
            }
        }
    }

    /// The row another node committed for `key` (newer than `newer_than`), kept in memory.
    async fn committed_elsewhere(
        &self,
        key: &ObjectKey,
        newer_than: Option<SystemTime>,
    ) -> Option<Arc<ArtifactEntry>> {
        let record = match self.index.artifact(key.as_str()).await {
            Ok(record) => record?,
            Err(err) => {
                self.index_failed("lookup", &err);
                return None;
            }
        };
        let entry = Arc::new(record_to_entry(record)?);
        if newer_than.is_some_and(|t| entry.fetched_at <= t) {
            return None;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.remember(entry.clone());
        Some(entry)
    }

    /// Renew the fetch lease on `key` every third of its length until aborted.
    fn keep_fetch_lease(self: &Arc<Self>, key: &ObjectKey) -> tokio::task::JoinHandle<()> {
        let cache = Arc::downgrade(self);
        let key = key.clone();
        let every = self.settings.fetch_lease / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cache) = cache.upgrade() else { return };
                match cache
                    .index
                    .renew_fetch(key.as_str(), &cache.owner, cache.settings.fetch_lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(key = %key, "lost the fetch lease; another node may fetch this artifact too");
                        return;
                    }
                    Err(err) => cache.index_failed("renew_fetch", &err),
                }
            }
        })
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
        put_mode: PutMode,
        mut live: LiveOut,
        done: FlightGuard,
    ) {
        let (store_tx, store_rx) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_DEPTH);
        let storage = self.storage.clone();
        let key = spec.key.clone();
        // Create-only for what is fetched for the first time: two nodes never overwrite one
        // object (one wins; the other adopts it).
        let mut put_options = PutOptions::with_content_type(spec.content_type.clone());
        if put_mode == PutMode::Create {
            put_options = put_options.create_only();
        }
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
                live.send(Piece::Data(previous));
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
                // Verified: live readers get their last bytes now, not after storage has made
                // the object durable (a client that knows the length is then complete); the
                // end of the stream follows the commit.
                if let Some(last) = held.take() {
                    live.send(Piece::Data(last));
                }
                match put.await {
                    Ok(Ok(put)) => {
                        self.note_storage_success();
                        Ok(self.commit(&spec, put.size, put.sha256).await)
                    }
                    Ok(Err(err)) if err.kind() == proxyd_storage_core::ErrorKind::AlreadyExists => {
                        self.note_storage_success();
                        self.adopt_existing(&spec, received).await
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
            Ok(_) => live.send(Piece::Done),
            Err(f) if f.kind == FailureKind::Storage => {
                // Verified, not stored: the live readers got it whole all the same.
                self.note_storage_failure();
                self.count_bypass(spec.ecosystem, &f.message);
                live.send(Piece::Done);
            }
            Err(f) => {
                tracing::warn!(key = %spec.key, url = %spec.upstream_url, error = %f.message, "artifact not cached");
                live.send(Piece::Failed(f.message.clone()));
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

    /// Ask storage for a probe key (bounded by 1.5 s) and note whether it answered.
    pub async fn probe_storage(&self) -> bool {
        let Ok(key) = ObjectKey::new("health/probe") else {
            return false;
        };
        let answered = match tokio::time::timeout(
            Duration::from_millis(1500),
            self.storage.head(&key),
        )
        .await
        {
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

    /// Keep `body`, which a client sent, under `spec.key` (replacing what is there), and count
    /// it like a fetched artifact (hits, totals, eviction). Nothing is kept when the body fails
    /// (a client gone, or over a size limit the caller enforces by failing the stream).
    pub async fn store(
        &self,
        spec: &ArtifactSpec,
        body: ByteStream,
    ) -> Result<Arc<ArtifactEntry>, proxyd_storage_core::Error> {
        let put = self
            .storage
            .put(
                &spec.key,
                body,
                PutOptions::with_content_type(spec.content_type.clone()),
            )
            .await?;
        self.note_storage_success();
        self.drop_from_memory([spec.key.clone()]);
        Ok(self.commit(spec, put.size, put.sha256).await)
    }

    /// A create-only put found the key already in storage: another node stored it (its fetch
    /// lease was lost or the index was unreachable), or a row marked for eviction is fetched
    /// again before its object went. The object there is read once to learn its digest; one of
    /// the length just downloaded is committed as it is, any other is removed (this node holds
    /// the fetch lease) and fetched again by the next request.
    async fn adopt_existing(
        &self,
        spec: &ArtifactSpec,
        received: u64,
    ) -> Result<Arc<ArtifactEntry>, FetchFailure> {
        use sha2::Digest as _;
        let storage_failure = |what: String| FetchFailure::new(FailureKind::Storage, what);
        let existing = self
            .storage
            .get(&spec.key, None)
            .await
            .map_err(|e| storage_failure(format!("could not read the stored artifact: {e}")))?;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut body = existing.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| storage_failure(format!("could not read the stored artifact: {e}")))?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        if size != received {
            tracing::warn!(key = %spec.key, stored = size, downloaded = received, "storage held a different object under this key; removed");
            if let Err(err) = self.storage.delete(&spec.key).await {
                tracing::error!(key = %spec.key, error = %err, "could not remove the stale object");
            }
            return Err(storage_failure(
                "storage held a different object under this key".into(),
            ));
        }
        tracing::debug!(key = %spec.key, "adopted the object already in storage");
        Ok(self.commit(spec, size, hasher.finalize().into()).await)
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
            last_access: AtomicU64::new(unix_millis(now)),
            dirty: AtomicBool::new(false),
            rendered: OnceLock::new(),
            counters: OnceLock::new(),
        });
        let record = || entry_to_record(&entry);
        let written = (|| async { self.index.put_artifact(record()).await })
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_times(2),
            )
            .when(crate::IndexError::is_temporary)
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
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.hot.remove(&entry.key);
        self.remember(entry.clone());
        *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry.key.clone());
        self.refresh_totals().await;
        if self
            .settings
            .max_size
            .is_some_and(|max| self.total_bytes() > max)
        {
            self.evict_wake.notify_one();
        }
        entry
    }

    /// One pass of eviction, while `storage.max_size` is exceeded: take the eviction lease,
    /// write pending hits (the order depends on them), choose the least recently used rows from
    /// the index and mark them. Marked entries leave memory at once, so no new hit or redirect
    /// is handed out for them; their objects go after the grace period
    /// ([`Cache::delete_evicted`]). Returns the bytes marked.
    pub async fn evict(&self) -> Result<u64, CacheError> {
        let Some(max) = self.settings.max_size else {
            return Ok(0);
        };
        let _one_pass = self.evicting.lock().await;
        let lease = Duration::from_secs(60);
        if let Lease::HeldElsewhere { .. } = self.index.acquire_eviction(&self.owner, lease).await?
        {
            return Ok(0); // another node evicts for everyone
        }
        let marked = self.evict_while_over(max).await;
        if let Err(err) = self.index.release_eviction(&self.owner).await {
            self.index_failed("release_eviction", &err);
        }
        let marked = marked?;
        if marked > 0 {
            self.evicted_bytes.fetch_add(marked, Ordering::Relaxed);
            metrics::counter!(m::EVICTED_BYTES_TOTAL).increment(marked);
            self.refresh_totals().await;
        }
        Ok(marked)
    }

    async fn evict_while_over(&self, max: u64) -> Result<u64, CacheError> {
        if let Err(err) = self.flush().await {
            tracing::warn!(error = %err, "evicting with hits not yet written to the index");
        }
        let mut marked_bytes = 0;
        loop {
            let totals = self.index.totals().await?;
            let total: u64 = totals.iter().map(|t| t.bytes).sum();
            if total <= max {
                return Ok(marked_bytes);
            }
            let mut excess = total - max;
            let newest = self
                .newest
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let candidates = self.index.least_recently_used(BATCH).await?;
            let mut victims = Vec::new();
            for candidate in candidates {
                if excess == 0 {
                    break;
                }
                let in_flight = ObjectKey::new(candidate.key.clone()).is_ok_and(|k| {
                    self.flights
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains_key(&k)
                });
                if newest.as_ref().is_some_and(|n| n.as_str() == candidate.key) || in_flight {
                    continue;
                }
                excess = excess.saturating_sub(candidate.size);
                victims.push(candidate);
            }
            if victims.is_empty() {
                // Only the newest entry is left: it stays, however large.
                return Ok(marked_bytes);
            }
            let sizes: HashMap<String, u64> =
                victims.into_iter().map(|v| (v.key, v.size)).collect();
            let marked = self
                .index
                .mark_evicted(
                    sizes.keys().cloned().collect(),
                    unix_millis(SystemTime::now()),
                )
                .await?;
            self.drop_from_memory(marked.iter().filter_map(|k| ObjectKey::new(k.clone()).ok()));
            for key in &marked {
                marked_bytes += sizes.get(key).copied().unwrap_or(0);
                tracing::debug!(key = %key, "marked for eviction");
            }
        }
    }

    /// Delete the objects of rows marked for eviction longer ago than the grace period, then
    /// their rows. A key fetched again since its mark is live again and keeps its object.
    /// Returns the objects deleted.
    pub async fn delete_evicted(&self) -> Result<usize, CacheError> {
        let before = unix_millis(SystemTime::now()).saturating_sub(
            u64::try_from(self.settings.eviction_grace.as_millis()).unwrap_or(u64::MAX),
        );
        let mut deleted = 0;
        loop {
            let marked = self.index.marked_before(before, BATCH).await?;
            if marked.is_empty() {
                return Ok(deleted);
            }
            for key in marked {
                let Ok(object) = ObjectKey::new(key.clone()) else {
                    self.index.remove_marked(&key).await?;
                    continue;
                };
                // A fetch of the key running here will put a new object and revive the row
                // (a fetch on another node holds its lease, which the shared index checks).
                let in_flight = self
                    .flights
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&object);
                if in_flight {
                    return Ok(deleted); // try again on the next pass
                }
                // The key's fetch lease keeps every node from storing it again while its object
                // goes; under it, a row that is live again (fetched since its mark) keeps it.
                let evictor = format!("{}/evictor", self.owner);
                let lease = self
                    .index
                    .acquire_fetch(&key, &evictor, self.settings.fetch_lease)
                    .await?;
                if lease != Lease::Acquired {
                    return Ok(deleted); // being fetched: try again on the next pass
                }
                let outcome = self.delete_marked_object(&key, &object).await;
                if let Err(err) = self.index.release_fetch(&key, &evictor).await {
                    self.index_failed("release_fetch", &err);
                }
                match outcome? {
                    Some(true) => {
                        deleted += 1;
                        tracing::debug!(key = %key, "evicted");
                    }
                    Some(false) => {}
                    None => return Ok(deleted),
                }
            }
        }
    }
}

impl Cache {
    /// Under the key's fetch lease: delete the object of a row that is still marked, then the
    /// row. `Some(true)` when both went, `Some(false)` when the row is live again or gone,
    /// `None` when storage refused the delete.
    async fn delete_marked_object(
        &self,
        key: &str,
        object: &ObjectKey,
    ) -> Result<Option<bool>, CacheError> {
        if self.index.artifact(key).await?.is_some() {
            return Ok(Some(false)); // fetched again since its mark: the object stays
        }
        match self.storage.delete(object).await {
            Ok(()) => {}
            Err(err) if err.is_not_found() => {}
            Err(err) => {
                tracing::error!(key = %key, error = %err, "could not delete an evicted object");
                return Ok(None);
            }
        }
        Ok(Some(self.index.remove_marked(key).await?))
    }
}

/// How often the totals are read again from the index (the contract allows 10 s).
const TOTALS_EVERY: Duration = Duration::from_secs(5);

/// Evict and delete on a schedule (and when a commit goes over the limit) for as long as the
/// cache lives.
async fn evict_in_background(cache: std::sync::Weak<Cache>) {
    let mut last_totals = tokio::time::Instant::now();
    loop {
        let Some(strong) = cache.upgrade() else {
            return;
        };
        if let Err(err) = strong.evict().await {
            tracing::error!(error = %err, "eviction failed");
        }
        if let Err(err) = strong.delete_evicted().await {
            tracing::error!(error = %err, "could not delete evicted objects");
        }
        if last_totals.elapsed() >= TOTALS_EVERY {
            // Other nodes commit and evict too: the gauges follow the shared index.
            strong.refresh_totals().await;
            last_totals = tokio::time::Instant::now();
        }
        let pause = strong
            .settings
            .eviction_grace
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        // Held for at most the pause: a cache dropped meanwhile ends this task at the next turn.
        let _ = tokio::time::timeout(pause, strong.evict_wake.notified()).await;
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
