//! Cache behaviour on a real filesystem backend: single-flight, integrity at ingest, broken
//! downloads, eviction, hit accounting and reconciliation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use proxyd_cache::{
    AccessUpdate, ArtifactIndex, DocumentIndex, EvictionLease, FetchLeases, IndexError,
    IndexErrorKind, IndexRecord, IndexTotals, Lease, Victim,
};
use proxyd_cache::{
    ArtifactSpec, Cache, CacheError, CacheSettings, ExpectedDigest, FailureKind, FetchFailure,
    Fetched, UpstreamBody,
};
use proxyd_index_sqlite::SqliteIndex;
use proxyd_storage_core::{ObjectKey, Storage};
use proxyd_storage_fs::FsStorage;
use proxyd_testkit::conformance::{body, failing_body, pattern, read_all};
use sha2::{Digest, Sha512};

struct Setup {
    cache: Arc<Cache>,
    storage: Arc<dyn Storage>,
    index: Arc<SqliteIndex>,
    _dir: tempfile::TempDir,
}

async fn setup(settings: CacheSettings) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path().join("a")).await.unwrap());
    let index = Arc::new(SqliteIndex::open(&dir.path().join("db/index.db")).unwrap());
    let cache = Cache::open(storage.clone(), index.clone(), settings)
        .await
        .unwrap();
    Setup {
        cache,
        storage,
        index,
        _dir: dir,
    }
}

fn spec(name: &str, data: &[u8]) -> ArtifactSpec {
    use base64::Engine;
    let sri = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(data))
    );
    ArtifactSpec {
        key: ObjectKey::new(format!("npm/{name}/-/{name}-1.0.0.tgz")).unwrap(),
        ecosystem: "npm",
        name: name.into(),
        version: "1.0.0".into(),
        filename: format!("{name}-1.0.0.tgz"),
        content_type: "application/octet-stream".into(),
        upstream_url: format!("http://127.0.0.1:1/{name}.tgz"),
        verifier: ExpectedDigest::from_sri(&sri).map(|d| d.boxed_verifier()),
    }
}

/// An upstream answering `data` in chunks of `chunk` bytes, announcing its length or not.
fn upstream(
    data: &[u8],
    chunk: usize,
    announce_length: bool,
) -> impl Future<Output = Result<UpstreamBody, FetchFailure>> + Send + 'static {
    let data = data.to_vec();
    async move {
        Ok(UpstreamBody {
            content_length: announce_length.then_some(data.len() as u64),
            body: body(data, chunk),
        })
    }
}

async fn drain(fetched: Fetched, storage: &Arc<dyn Storage>) -> Result<Vec<u8>, std::io::Error> {
    match fetched {
        Fetched::Streaming { mut body, .. } => {
            let mut out = Vec::new();
            while let Some(chunk) = body.next().await {
                out.extend_from_slice(&chunk?);
            }
            Ok(out)
        }
        Fetched::Cached(entry) => {
            Ok(read_all(storage.get(&entry.key, None).await.unwrap().body).await)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_make_one_upstream_fetch() {
    let s = setup(CacheSettings::default()).await;
    let data = pattern(300_000, 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, storage, calls, data) = (
                s.cache.clone(),
                s.storage.clone(),
                calls.clone(),
                data.clone(),
            );
            tokio::spawn(async move {
                let source = {
                    let data = data.clone();
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(UpstreamBody {
                            content_length: Some(data.len() as u64),
                            body: body(data.clone(), 4096),
                        })
                    }
                };
                let fetched = cache.fetch(spec("pkg", &data), source).await.unwrap();
                drain(fetched, &storage).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap() == data);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "exactly one upstream fetch"
    );
    assert!(s.cache.lookup(&spec("pkg", &data).key).await.is_some());
}

#[tokio::test]
async fn digest_mismatch_commits_nothing_and_fails_the_body() {
    let s = setup(CacheSettings::default()).await;
    let data = pattern(50_000, 2);
    let mut corrupt = data.clone();
    corrupt[100] ^= 0xff;
    let source = async move {
        Ok(UpstreamBody {
            content_length: None,
            body: body(corrupt, 1000),
        })
    };
    let fetched = s.cache.fetch(spec("bad", &data), source).await.unwrap();
    let err = drain(fetched, &s.storage).await.unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(s.cache.lookup(&spec("bad", &data).key).await.is_none());
    assert!(
        proxyd_storage_core::list_all(&*s.storage, "")
            .await
            .unwrap()
            .is_empty(),
        "nothing stored"
    );
    assert!(
        s.index.totals().await.unwrap().is_empty(),
        "nothing indexed"
    );
}

#[tokio::test]
async fn broken_and_short_downloads_commit_nothing() {
    let s = setup(CacheSettings::default()).await;
    let data = pattern(50_000, 3);
    let source = {
        async move {
            Ok(UpstreamBody {
                content_length: None,
                body: failing_body(pattern(1000, 3)),
            })
        }
    };
    let fetched = s.cache.fetch(spec("cut", &data), source).await.unwrap();
    assert!(drain(fetched, &s.storage).await.is_err());
    let short = data[..40_000].to_vec();
    let source = {
        async move {
            Ok(UpstreamBody {
                content_length: Some(50_000),
                body: body(short, 1000),
            })
        }
    };
    let mut s2 = spec("short", &data);
    s2.verifier = None; // only the length can catch this one
    let short_key = s2.key.clone();
    let fetched = s.cache.fetch(s2, source).await.unwrap();
    let err = drain(fetched, &s.storage).await.unwrap_err();
    assert!(
        err.to_string().contains("40000 bytes of the 50000"),
        "{err}"
    );
    assert!(
        proxyd_storage_core::list_all(&*s.storage, "")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.cache.lookup(&short_key).await.is_none());
}

#[tokio::test]
async fn upstream_failure_reaches_every_waiter_and_frees_the_key() {
    let s = setup(CacheSettings::default()).await;
    let data = b"x".to_vec();
    let err = s
        .cache
        .fetch(spec("gone", &data), async {
            Err(FetchFailure::not_found("not upstream"))
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CacheError::Fetch(FetchFailure {
            kind: FailureKind::NotFound,
            ..
        })
    ));
    // The key is free again: a later fetch runs.
    let source = upstream(&data, 1, false);
    let fetched = s.cache.fetch(spec("gone", &data), source).await.unwrap();
    assert_eq!(drain(fetched, &s.storage).await.unwrap(), data);
}

#[tokio::test]
async fn eviction_removes_least_recently_used() {
    let s = setup(CacheSettings {
        max_size: Some(250),
        ..CacheSettings::default()
    })
    .await;
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let data = pattern(100, i as u8);
        let source = upstream(&data, 10, false);
        let fetched = s.cache.fetch(spec(name, &data), source).await.unwrap();
        drain(fetched, &s.storage).await.unwrap();
        if name == "b" {
            // Access times are in milliseconds: no tie with b's commit.
            tokio::time::sleep(Duration::from_millis(5)).await;
            // "a" is used after "b": hits reach the policy in batches, with the flush.
            let a = s
                .cache
                .lookup(&spec("a", &pattern(100, 0)).key)
                .await
                .unwrap();
            s.cache.record_hit(&a);
            s.cache.flush().await.unwrap();
        }
    }
    s.cache.evict().await.unwrap();
    let stats = s.cache.stats().await;
    assert!(stats.bytes <= 250, "{stats:?}");
    assert_eq!(stats.evicted_bytes, 100);
    assert!(
        s.cache
            .lookup(&spec("b", &pattern(100, 1)).key)
            .await
            .is_none(),
        "b was evicted"
    );
    assert!(
        s.cache
            .lookup(&spec("a", &pattern(100, 0)).key)
            .await
            .is_some()
    );
    // The object goes on a background task, after the grace period (none here).
    assert_eq!(stored_keys(&s.storage, 2).await.len(), 2);
}

/// The keys in storage once there are `expected` of them (or after 5 s).
async fn stored_keys(storage: &Arc<dyn Storage>, expected: usize) -> Vec<String> {
    for _ in 0..100 {
        let keys: Vec<String> = proxyd_storage_core::list_all(&**storage, "")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key.to_string())
            .collect();
        if keys.len() == expected {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("storage never held {expected} objects");
}

/// A cache limited to 150 bytes holding two 100-byte artifacts, `old` then `new`.
async fn old_and_new(eviction_grace: Duration) -> Setup {
    let s = setup(CacheSettings {
        max_size: Some(150),
        eviction_grace,
        ..CacheSettings::default()
    })
    .await;
    fetch_old_and_new(&s).await;
    s
}

/// Fetch two 100-byte artifacts through `s.cache`, `old` then `new`.
async fn fetch_old_and_new(s: &Setup) {
    for (i, name) in ["old", "new"].into_iter().enumerate() {
        let data = pattern(100, i as u8);
        let fetched = s
            .cache
            .fetch(spec(name, &data), upstream(&data, 10, false))
            .await
            .unwrap();
        drain(fetched, &s.storage).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_object_outlives_the_grace_period_of_what_was_handed_out() {
    let s = old_and_new(Duration::from_millis(800)).await;
    s.cache.evict().await.unwrap();
    let old = spec("old", &pattern(100, 0)).key;
    assert!(
        s.cache.lookup(&old).await.is_none(),
        "no new hit or redirect for it"
    );
    assert!(
        s.storage.head(&old).await.is_ok(),
        "but a URL handed out before still works"
    );
    assert_eq!(
        stored_keys(&s.storage, 1).await.len(),
        1,
        "then it is deleted"
    );
    assert_eq!(s.cache.stats().await.evicted_bytes, 100);
}

#[tokio::test]
async fn hits_are_batched_into_the_index_and_missing_objects_are_forgotten() {
    let s = setup(CacheSettings::default()).await;
    let data = pattern(10, 9);
    let source = upstream(&data, 3, false);
    drain(
        s.cache.fetch(spec("h", &data), source).await.unwrap(),
        &s.storage,
    )
    .await
    .unwrap();
    let entry = s.cache.lookup(&spec("h", &data).key).await.unwrap();
    for _ in 0..3 {
        s.cache.record_hit(&entry);
    }
    let hits = || async {
        s.index
            .artifact(entry.key.as_str())
            .await
            .unwrap()
            .unwrap()
            .hit_count
    };
    assert_eq!(hits().await, 0, "no write on the hot path");
    s.cache.flush().await.unwrap();
    assert_eq!(hits().await, 3);
    let stats = s.cache.stats().await;
    assert_eq!((stats.hits, stats.misses), (3, 1));

    s.storage.delete(&entry.key).await.unwrap();
    assert_eq!(s.cache.verify_storage().await.unwrap(), (1, 0));
    assert!(s.cache.lookup(&entry.key).await.is_none());
    assert!(
        s.index
            .artifact(entry.key.as_str())
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.index.totals().await.unwrap().is_empty());
}

#[tokio::test]
async fn index_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path().join("a")).await.unwrap());
    let data = pattern(64, 4);
    {
        let index = Arc::new(SqliteIndex::open(&dir.path().join("i.db")).unwrap());
        let cache = Cache::open(storage.clone(), index, CacheSettings::default())
            .await
            .unwrap();
        let source = upstream(&data, 8, false);
        drain(
            cache.fetch(spec("r", &data), source).await.unwrap(),
            &storage,
        )
        .await
        .unwrap();
    }
    let index = Arc::new(SqliteIndex::open(&dir.path().join("i.db")).unwrap());
    let cache = Cache::open(storage, index, CacheSettings::default())
        .await
        .unwrap();
    let entry = cache
        .lookup(&spec("r", &data).key)
        .await
        .expect("entry reloaded");
    assert_eq!(entry.size, 64);
    let _ = Bytes::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stops_reading_stalls_neither_the_fill_nor_the_waiters() {
    // A wait of 3 s: before the fill ran on its own, the waiter below got a 504 after it.
    let s = setup(CacheSettings {
        fetch_wait: Duration::from_secs(3),
        ..CacheSettings::default()
    })
    .await;
    let data = pattern(2_000_000, 4);
    let source = upstream(&data, 4096, true);
    let leader = s.cache.fetch(spec("stalled", &data), source).await.unwrap();
    let Fetched::Streaming { mut body, .. } = leader else {
        panic!("the first request leads");
    };
    // The leader reads one chunk, then stops reading.
    let first = body.next().await.unwrap().unwrap();
    let waiter = s.cache.fetch(spec("stalled", &data), async {
        unreachable!("a second request joins the flight")
    });
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is answered")
        .unwrap();
    assert!(matches!(waited, Fetched::Cached(_)), "served as a hit");
    assert_eq!(drain(waited, &s.storage).await.unwrap(), data);
    // The stalled leader, reading again, still gets every byte (from storage, where it left).
    let mut all = first.to_vec();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(all, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_gone_before_upstream_answers_leaves_the_fetch_to_the_waiters() {
    let s = setup(CacheSettings::default()).await;
    let data = pattern(100_000, 5);
    let source = {
        let data = data.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(UpstreamBody {
                content_length: Some(data.len() as u64),
                body: body(data, 4096),
            })
        }
    };
    let cache = s.cache.clone();
    let leader_spec = spec("abandoned", &data);
    let leader = tokio::spawn(async move { cache.fetch(leader_spec, source).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cache = s.cache.clone();
    let waiter_spec = spec("abandoned", &data);
    let waiter = tokio::spawn(async move {
        cache
            .fetch(waiter_spec, async { unreachable!("joins the flight") })
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort(); // the client hung up before upstream answered
    let waited = waiter.await.unwrap().expect("not a 502 for the waiter");
    assert_eq!(drain(waited, &s.storage).await.unwrap(), data);
    assert!(
        s.cache
            .lookup(&spec("abandoned", &data).key)
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_artifacts_are_served_from_memory_after_the_first_hit() {
    let s = setup(CacheSettings {
        hot_max_object: 1_000,
        ..CacheSettings::default()
    })
    .await;
    for (name, size) in [("small", 500), ("large", 5_000)] {
        let data = pattern(size, 7);
        let source = upstream(&data, 100, false);
        let fetched = s.cache.fetch(spec(name, &data), source).await.unwrap();
        drain(fetched, &s.storage).await.unwrap();
    }
    let small = s
        .cache
        .lookup(&spec("small", &pattern(500, 7)).key)
        .await
        .unwrap();
    let large = s
        .cache
        .lookup(&spec("large", &pattern(5_000, 7)).key)
        .await
        .unwrap();
    assert_eq!(
        s.cache.small_body(&small).await.unwrap().unwrap(),
        pattern(500, 7),
        "read from storage once"
    );
    assert!(
        s.cache.small_body(&large).await.unwrap().is_none(),
        "too large to keep"
    );
    // With the object gone from storage, the kept bytes still serve: no storage request.
    s.storage.delete(&small.key).await.unwrap();
    assert_eq!(
        s.cache.small_body(&small).await.unwrap().unwrap(),
        pattern(500, 7)
    );
    // Once the entry is forgotten, nothing is served from memory for it.
    s.cache.forget(&small.key).await;
    assert!(s.cache.small_body(&small).await.unwrap_err().is_not_found());
}

/// An index whose writes fail while `failing` is set.
#[derive(Debug)]
struct FlakyIndex {
    inner: SqliteIndex,
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl ArtifactIndex for FlakyIndex {
    async fn artifact(&self, key: &str) -> Result<Option<IndexRecord>, IndexError> {
        self.inner.artifact(key).await
    }
    async fn put_artifact(&self, record: IndexRecord) -> Result<(), IndexError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(IndexError::new(
                IndexErrorKind::Temporary,
                "database is locked",
            ));
        }
        self.inner.put_artifact(record).await
    }
    async fn remove_artifacts(&self, keys: Vec<String>) -> Result<(), IndexError> {
        self.inner.remove_artifacts(keys).await
    }
    async fn record_access(&self, batch: Vec<AccessUpdate>) -> Result<(), IndexError> {
        self.inner.record_access(batch).await
    }
    async fn totals(&self) -> Result<Vec<IndexTotals>, IndexError> {
        self.inner.totals().await
    }
    async fn least_recently_used(&self, limit: usize) -> Result<Vec<Victim>, IndexError> {
        self.inner.least_recently_used(limit).await
    }
    async fn mark_evicted(&self, keys: Vec<String>, at: u64) -> Result<Vec<String>, IndexError> {
        self.inner.mark_evicted(keys, at).await
    }
    async fn marked_before(&self, at: u64, limit: usize) -> Result<Vec<String>, IndexError> {
        self.inner.marked_before(at, limit).await
    }
    async fn remove_marked(&self, key: &str) -> Result<bool, IndexError> {
        self.inner.remove_marked(key).await
    }
    async fn sighted(&self, keys: Vec<String>, at: u64) -> Result<Vec<String>, IndexError> {
        self.inner.sighted(keys, at).await
    }
    async fn unsighted(&self, before: u64, limit: usize) -> Result<Vec<String>, IndexError> {
        self.inner.unsighted(before, limit).await
    }
}

#[async_trait::async_trait]
impl DocumentIndex for FlakyIndex {
    async fn document(&self, key: &str) -> Result<Option<proxyd_cache::Document>, IndexError> {
        self.inner.document(key).await
    }
    async fn put_document(
        &self,
        key: &str,
        document: proxyd_cache::Document,
    ) -> Result<(), IndexError> {
        self.inner.put_document(key, document).await
    }
}

#[async_trait::async_trait]
impl FetchLeases for FlakyIndex {
    async fn acquire_fetch(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Lease, IndexError> {
        self.inner.acquire_fetch(key, owner, ttl).await
    }
    async fn renew_fetch(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, IndexError> {
        self.inner.renew_fetch(key, owner, ttl).await
    }
    async fn release_fetch(&self, key: &str, owner: &str) -> Result<(), IndexError> {
        self.inner.release_fetch(key, owner).await
    }
}

#[async_trait::async_trait]
impl EvictionLease for FlakyIndex {
    async fn acquire_eviction(&self, owner: &str, ttl: Duration) -> Result<Lease, IndexError> {
        self.inner.acquire_eviction(owner, ttl).await
    }
    async fn release_eviction(&self, owner: &str) -> Result<(), IndexError> {
        self.inner.release_eviction(owner).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_index_write_is_retried_until_the_index_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path().join("a")).await.unwrap());
    let index = Arc::new(FlakyIndex {
        inner: SqliteIndex::open(&dir.path().join("index.db")).unwrap(),
        failing: std::sync::atomic::AtomicBool::new(true),
    });
    let cache = Cache::open(storage.clone(), index.clone(), CacheSettings::default())
        .await
        .unwrap();
    let data = pattern(1_000, 8);
    let source = upstream(&data, 100, false);
    let fetched = cache
        .fetch(spec("unrecorded", &data), source)
        .await
        .unwrap();
    assert_eq!(drain(fetched, &storage).await.unwrap(), data);
    assert!(
        cache.lookup(&spec("unrecorded", &data).key).await.is_some(),
        "served and counted"
    );
    assert_eq!(cache.stats().await.cached_artifacts, 1);
    let key = spec("unrecorded", &data).key;
    assert!(index.artifact(key.as_str()).await.unwrap().is_none());
    assert!(
        cache.flush().await.is_err(),
        "still failing: kept for the next flush"
    );
    index.failing.store(false, Ordering::SeqCst);
    cache.flush().await.unwrap();
    assert!(
        index.artifact(key.as_str()).await.unwrap().is_some(),
        "the row is written once the index takes it"
    );
    assert_eq!(cache.stats().await.cached_artifacts, 1, "and counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_deletes_objects_no_entry_knows_under_proxyds_prefixes() {
    let s = setup(CacheSettings {
        owned_prefixes: vec!["npm".into()],
        orphan_age: Duration::ZERO,
        ..CacheSettings::default()
    })
    .await;
    let known = pattern(100, 1);
    let source = upstream(&known, 10, false);
    drain(
        s.cache.fetch(spec("known", &known), source).await.unwrap(),
        &s.storage,
    )
    .await
    .unwrap();
    for key in ["npm/orphan/-/orphan-1.0.0.tgz", "operator/notes.txt"] {
        s.storage
            .put(
                &ObjectKey::new(key).unwrap(),
                body(pattern(50, 2), 10),
                proxyd_storage_core::PutOptions::default(),
            )
            .await
            .unwrap();
    }
    assert_eq!(s.cache.verify_storage().await.unwrap(), (0, 1));
    let mut keys: Vec<String> = proxyd_storage_core::list_all(&*s.storage, "")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key.to_string())
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["npm/known/-/known-1.0.0.tgz", "operator/notes.txt"],
        "the orphan under npm/ went; the known object and a key outside proxyd's stayed"
    );
}

/// Two caches over one index and one store, as two nodes would be.
async fn two_nodes(settings: CacheSettings) -> (Setup, Arc<Cache>) {
    let s = setup(settings.clone()).await;
    let other = Cache::open(s.storage.clone(), s.index.clone(), settings)
        .await
        .unwrap();
    (s, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_another_node_evicts_leaves_this_nodes_memory_after_its_time_to_live() {
    // A grace period of 2 s keeps entries in memory for 1 s (half of it, one second at least).
    let grace = Duration::from_secs(2);
    let s = setup(CacheSettings {
        eviction_grace: grace,
        ..CacheSettings::default()
    })
    .await;
    let evicting = Cache::open(
        s.storage.clone(),
        s.index.clone(),
        CacheSettings {
            max_size: Some(150),
            eviction_grace: grace,
            ..CacheSettings::default()
        },
    )
    .await
    .unwrap();
    fetch_old_and_new(&s).await;
    let old = spec("old", &pattern(100, 0)).key;
    assert!(s.cache.lookup(&old).await.is_some(), "kept in memory");
    assert_eq!(
        evicting.evict().await.unwrap(),
        100,
        "the other node evicts it"
    );
    assert!(
        s.cache.lookup(&old).await.is_some(),
        "still served from memory within its time-to-live (the grace period covers it)"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        s.cache.lookup(&old).await.is_none(),
        "after its time-to-live the index is asked again, and it is gone"
    );
    let new = spec("new", &pattern(100, 1)).key;
    assert!(
        s.cache.lookup(&new).await.is_some(),
        "the other entry stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_spread_over_two_nodes_make_one_upstream_fetch() {
    let (s, other) = two_nodes(CacheSettings::default()).await;
    let data = pattern(500_000, 3);
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|n| {
            let cache = if n % 2 == 0 {
                s.cache.clone()
            } else {
                other.clone()
            };
            let (storage, calls, data) = (s.storage.clone(), calls.clone(), data.clone());
            tokio::spawn(async move {
                let source = {
                    let data = data.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok(UpstreamBody {
                            content_length: Some(data.len() as u64),
                            body: body(data, 8192),
                        })
                    }
                };
                let fetched = cache.fetch(spec("shared", &data), source).await.unwrap();
                drain(fetched, &storage).await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), data);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream request");
    // Each node sees what the other cached, without a restart.
    let key = spec("shared", &data).key;
    assert!(s.cache.lookup(&key).await.is_some());
    assert!(other.lookup(&key).await.is_some());
    assert_eq!(other.stats().await.cached_artifacts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_owner_died_is_taken_over_when_it_expires() {
    let s = setup(CacheSettings::default()).await;
    let data = pattern(1_000, 6);
    let key = spec("orphaned", &data).key;
    // A node took the lease and died: nobody renews it.
    s.index
        .acquire_fetch(key.as_str(), "dead-node", Duration::from_millis(400))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let fetched = s
        .cache
        .fetch(spec("orphaned", &data), upstream(&data, 100, false))
        .await
        .unwrap();
    assert_eq!(drain(fetched, &s.storage).await.unwrap(), data);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited for the lease to expire first"
    );
    assert!(s.cache.lookup(&key).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waiting_on_a_lease_serves_what_the_holder_commits() {
    let (s, other) = two_nodes(CacheSettings::default()).await;
    let data = pattern(200_000, 2);
    let slow = {
        let data = data.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(UpstreamBody {
                content_length: Some(data.len() as u64),
                body: body(data, 4096),
            })
        }
    };
    let first = s.cache.fetch(spec("waited", &data), slow).await.unwrap();
    let storage = s.storage.clone();
    let reader = tokio::spawn(async move { drain(first, &storage).await });
    let second = other
        .fetch(spec("waited", &data), async {
            unreachable!("the other node holds the lease")
        })
        .await
        .unwrap();
    assert!(
        matches!(second, Fetched::Cached(_)),
        "a hit on the second node"
    );
    assert_eq!(drain(second, &s.storage).await.unwrap(), data);
    assert_eq!(reader.await.unwrap().unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_memory_stay_within_their_size_and_the_rest_reads_through() {
    let s = setup(CacheSettings {
        entry_cache_bytes: 64 * 1024,
        ..CacheSettings::default()
    })
    .await;
    let mut keys = Vec::new();
    for n in 0..400 {
        let data = pattern(64, n as u8);
        let name = format!("many{n}");
        let fetched = s
            .cache
            .fetch(spec(&name, &data), upstream(&data, 64, false))
            .await
            .unwrap();
        drain(fetched, &s.storage).await.unwrap();
        keys.push(spec(&name, &data).key);
    }
    let (count, bytes) = s.cache.entries_in_memory();
    assert!(bytes <= 64 * 1024, "{bytes} bytes in memory");
    assert!(count < 400, "{count} entries in memory");
    for key in &keys {
        assert!(s.cache.lookup(key).await.is_some(), "{key} reads through");
    }
    let (_, bytes) = s.cache.entries_in_memory();
    assert!(
        bytes <= 64 * 1024,
        "{bytes} bytes in memory after reading all"
    );
    assert_eq!(s.cache.stats().await.cached_artifacts, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_marked_before_a_restart_are_finished_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(dir.path().join("a")).await.unwrap());
    let settings = CacheSettings {
        max_size: Some(150),
        eviction_grace: Duration::from_secs(3600),
        ..CacheSettings::default()
    };
    {
        let index = Arc::new(SqliteIndex::open(&dir.path().join("i.db")).unwrap());
        let cache = Cache::open(storage.clone(), index, settings.clone())
            .await
            .unwrap();
        for (i, name) in ["old", "new"].into_iter().enumerate() {
            let data = pattern(100, i as u8);
            let fetched = cache
                .fetch(spec(name, &data), upstream(&data, 10, false))
                .await
                .unwrap();
            drain(fetched, &storage).await.unwrap();
        }
        cache.evict().await.unwrap();
        assert_eq!(cache.stats().await.bytes, 100);
        assert_eq!(cache.delete_evicted().await.unwrap(), 0, "within its grace");
    }
    assert_eq!(stored_keys(&storage, 2).await.len(), 2);
    // Restarted with no grace left: the marked object goes, the row with it.
    let index = Arc::new(SqliteIndex::open(&dir.path().join("i.db")).unwrap());
    let cache = Cache::open(
        storage.clone(),
        index.clone(),
        CacheSettings {
            eviction_grace: Duration::ZERO,
            ..settings
        },
    )
    .await
    .unwrap();
    cache.delete_evicted().await.unwrap(); // (the background pass may have been first)
    assert_eq!(stored_keys(&storage, 1).await, ["npm/new/-/new-1.0.0.tgz"]);
    assert!(index.marked_before(u64::MAX, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_joins_before_the_first_byte_follows_the_bytes_as_they_arrive() {
    let s = setup(CacheSettings::default()).await;
    let data = pattern(64 * 1024, 9);
    let gate = Arc::new(tokio::sync::Notify::new());
    // The upstream answers after 100 ms, sends the first half, and the rest only when the gate
    // opens: nothing can be committed before then.
    let source = {
        let (data, gate) = (data.clone(), gate.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (first, rest) = data.split_at(data.len() / 2);
            let rest = Bytes::copy_from_slice(rest);
            // In four chunks: the last chunk before the gate is held back until verification,
            // the three before it are published.
            let first: Vec<std::io::Result<Bytes>> = first
                .chunks(first.len() / 4)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let body = futures::stream::iter(first)
                .chain(futures::stream::once(async move {
                    gate.notified().await;
                    Ok(rest)
                }))
                .boxed();
            Ok(UpstreamBody {
                content_length: Some(data.len() as u64),
                body,
            })
        }
    };
    let cache = s.cache.clone();
    let leader_spec = spec("gated", &data);
    // The leader never reads a byte.
    let leader = tokio::spawn(async move { cache.fetch(leader_spec, source).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let joined = s
        .cache
        .fetch(spec("gated", &data), async {
            unreachable!("joins the flight")
        })
        .await
        .unwrap();
    let Fetched::Streaming { mut body, .. } = joined else {
        panic!("joined before the first byte: follows live, does not wait for the commit");
    };
    let first = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the first bytes arrive while the rest is held upstream")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    gate.notify_one();
    let mut all = first.to_vec();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(all, data);
    drop(leader.await.unwrap().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_another_node_stored_is_adopted_and_a_stale_one_removed() {
    let s = setup(CacheSettings::default()).await;
    let data = pattern(40_000, 7);
    // Another node stored it (while the index was unreachable): this node's create-only put
    // finds it, and commits the object that is there.
    let key = spec("shared", &data).key;
    s.storage
        .put(&key, body(data.clone(), 4096), Default::default())
        .await
        .unwrap();
    let fetched = s
        .cache
        .fetch(spec("shared", &data), upstream(&data, 1000, true))
        .await
        .unwrap();
    assert_eq!(drain(fetched, &s.storage).await.unwrap(), data);
    let entry = s.cache.lookup(&key).await.expect("committed");
    assert_eq!(entry.sha256, <[u8; 32]>::from(sha2::Sha256::digest(&data)));
    assert_eq!(entry.size, data.len() as u64);

    // Something else of another length under a key: removed, not adopted; fetched again next.
    let other = pattern(30_000, 8);
    let stale = spec("stale", &other).key;
    s.storage
        .put(&stale, body(vec![1; 10], 10), Default::default())
        .await
        .unwrap();
    let fetched = s
        .cache
        .fetch(spec("stale", &other), upstream(&other, 1000, true))
        .await
        .unwrap();
    // The client still gets the verified upstream bytes.
    assert_eq!(drain(fetched, &s.storage).await.unwrap(), other);
    assert!(s.cache.lookup(&stale).await.is_none(), "not committed");
    assert!(
        s.storage.head(&stale).await.unwrap_err().is_not_found(),
        "the stale object is gone"
    );
    let fetched = s
        .cache
        .fetch(spec("stale", &other), upstream(&other, 1000, true))
        .await
        .unwrap();
    assert_eq!(drain(fetched, &s.storage).await.unwrap(), other);
    assert!(
        s.cache.lookup(&stale).await.is_some(),
        "stored the next time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_artifact_fetched_again_before_its_object_went_keeps_it() {
    let s = old_and_new(Duration::from_millis(300)).await;
    s.cache.evict().await.unwrap();
    let old = spec("old", &pattern(100, 0));
    assert!(s.cache.lookup(&old.key).await.is_none(), "marked");
    // Asked again within the grace: the object is still there, so it is adopted, and the row
    // is live again; the deletion that follows keeps it.
    let fetched = s
        .cache
        .fetch(
            spec("old", &pattern(100, 0)),
            upstream(&pattern(100, 0), 10, false),
        )
        .await
        .unwrap();
    drain(fetched, &s.storage).await.unwrap();
    assert!(s.cache.lookup(&old.key).await.is_some(), "live again");
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.cache.delete_evicted().await.unwrap();
    assert!(s.storage.head(&old.key).await.is_ok(), "its object stays");
}
