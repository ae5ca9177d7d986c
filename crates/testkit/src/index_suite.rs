//! The index conformance suite: every implementation of the cache's index traits (SQLite
//! today, a shared database next) runs these checks, each on a fresh, empty index.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxyd_cache::{AccessUpdate, Document, Index, IndexRecord, IndexTotals, Lease, Victim};

fn record(key: &str, ecosystem: &str, size: u64, last_access_ms: u64) -> IndexRecord {
    IndexRecord {
        key: key.into(),
        ecosystem: ecosystem.into(),
        name: "pkg".into(),
        version: "1.0.0".into(),
        filename: "pkg-1.0.0.tgz".into(),
        size,
        sha256: "00".repeat(32),
        content_type: "application/octet-stream".into(),
        upstream_url: "http://127.0.0.1:1/pkg-1.0.0.tgz".into(),
        fetched_at: 1_000,
        hit_count: 0,
        last_access_ms,
    }
}

async fn totals(index: &dyn Index) -> Vec<(String, u64, u64)> {
    let mut totals: Vec<_> = index
        .totals()
        .await
        .unwrap()
        .into_iter()
        .map(
            |IndexTotals {
                 ecosystem,
                 artifacts,
                 bytes,
             }| (ecosystem, artifacts, bytes),
        )
        .collect();
    totals.sort();
    totals
}

fn t(ecosystem: &str, artifacts: u64, bytes: u64) -> (String, u64, u64) {
    (ecosystem.into(), artifacts, bytes)
}

/// Run every check, each on an index `fresh` makes.
pub async fn run<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Index>>,
{
    records_are_put_read_and_replaced(fresh().await).await;
    totals_follow_every_change(fresh().await).await;
    least_recently_used_follows_access(fresh().await).await;
    eviction_is_two_phase(fresh().await).await;
    reconciliation_sightings(fresh().await).await;
    documents_keep_their_validators(fresh().await).await;
    fetch_leases_admit_one_owner(fresh().await).await;
    the_eviction_lease_admits_one_owner(fresh().await).await;
}

async fn records_are_put_read_and_replaced(index: Arc<dyn Index>) {
    assert_eq!(index.artifact("npm/a").await.unwrap(), None);
    let a = record("npm/a", "npm", 10, 5);
    index.put_artifact(a.clone()).await.unwrap();
    assert_eq!(index.artifact("npm/a").await.unwrap(), Some(a.clone()));
    let replaced = IndexRecord {
        size: 20,
        sha256: "11".repeat(32),
        ..a
    };
    index.put_artifact(replaced.clone()).await.unwrap();
    assert_eq!(index.artifact("npm/a").await.unwrap(), Some(replaced));
    index
        .record_access(vec![AccessUpdate {
            key: "npm/a".into(),
            hits: 3,
            last_access_ms: 2,
        }])
        .await
        .unwrap();
    let read = index.artifact("npm/a").await.unwrap().unwrap();
    assert_eq!(
        (read.hit_count, read.last_access_ms),
        (3, 5),
        "hits add up; last access never moves back"
    );
    index.remove_artifacts(vec!["npm/a".into()]).await.unwrap();
    assert_eq!(index.artifact("npm/a").await.unwrap(), None);
}

async fn totals_follow_every_change(index: Arc<dyn Index>) {
    assert!(totals(&*index).await.is_empty());
    index
        .put_artifact(record("npm/a", "npm", 10, 1))
        .await
        .unwrap();
    index
        .put_artifact(record("npm/b", "npm", 5, 2))
        .await
        .unwrap();
    index
        .put_artifact(record("pypi/c", "pypi", 7, 3))
        .await
        .unwrap();
    assert_eq!(
        totals(&*index).await,
        vec![t("npm", 2, 15), t("pypi", 1, 7)]
    );
    index
        .put_artifact(record("npm/a", "npm", 100, 4))
        .await
        .unwrap();
    assert_eq!(
        totals(&*index).await,
        vec![t("npm", 2, 105), t("pypi", 1, 7)],
        "a replaced row counts once, at its new size"
    );
    index.mark_evicted(vec!["npm/a".into()], 9).await.unwrap();
    assert_eq!(
        totals(&*index).await,
        vec![t("npm", 1, 5), t("pypi", 1, 7)],
        "a marked row no longer counts"
    );
    index
        .put_artifact(record("npm/a", "npm", 50, 10))
        .await
        .unwrap();
    assert_eq!(
        totals(&*index).await,
        vec![t("npm", 2, 55), t("pypi", 1, 7)],
        "a marked row put again counts again"
    );
    index.mark_evicted(vec!["npm/a".into()], 11).await.unwrap();
    assert!(index.remove_marked("npm/a").await.unwrap());
    index.remove_artifacts(vec!["pypi/c".into()]).await.unwrap();
    assert_eq!(totals(&*index).await, vec![t("npm", 1, 5)]);
}

async fn least_recently_used_follows_access(index: Arc<dyn Index>) {
    for (key, last) in [("npm/a", 1), ("npm/b", 2), ("npm/c", 3)] {
        index
            .put_artifact(record(key, "npm", 1, last))
            .await
            .unwrap();
    }
    index
        .record_access(vec![AccessUpdate {
            key: "npm/a".into(),
            hits: 1,
            last_access_ms: 4,
        }])
        .await
        .unwrap();
    let order = |v: Vec<Victim>| v.into_iter().map(|v| v.key).collect::<Vec<_>>();
    assert_eq!(
        order(index.least_recently_used(10).await.unwrap()),
        ["npm/b", "npm/c", "npm/a"]
    );
    assert_eq!(
        order(index.least_recently_used(1).await.unwrap()),
        ["npm/b"]
    );
    index.mark_evicted(vec!["npm/b".into()], 5).await.unwrap();
    assert_eq!(
        order(index.least_recently_used(10).await.unwrap()),
        ["npm/c", "npm/a"],
        "marked rows are not candidates again"
    );
}

async fn eviction_is_two_phase(index: Arc<dyn Index>) {
    for key in ["npm/a", "npm/b"] {
        index.put_artifact(record(key, "npm", 1, 1)).await.unwrap();
    }
    assert!(
        !index.remove_marked("npm/a").await.unwrap(),
        "a live row is never removed as marked"
    );
    assert_eq!(
        index
            .mark_evicted(vec!["npm/a".into(), "npm/missing".into()], 100)
            .await
            .unwrap(),
        ["npm/a"]
    );
    assert_eq!(
        index.mark_evicted(vec!["npm/a".into()], 200).await.unwrap(),
        Vec::<String>::new(),
        "marked once"
    );
    assert_eq!(
        index.artifact("npm/a").await.unwrap(),
        None,
        "lookups do not see it"
    );
    assert!(index.marked_before(99, 10).await.unwrap().is_empty());
    assert_eq!(index.marked_before(100, 10).await.unwrap(), ["npm/a"]);
    // Fetched again before its object went: live again, and not removed.
    index
        .put_artifact(record("npm/a", "npm", 1, 300))
        .await
        .unwrap();
    assert!(index.marked_before(1_000, 10).await.unwrap().is_empty());
    assert!(!index.remove_marked("npm/a").await.unwrap());
    assert!(index.artifact("npm/a").await.unwrap().is_some());
    index.mark_evicted(vec!["npm/b".into()], 400).await.unwrap();
    assert!(index.remove_marked("npm/b").await.unwrap());
    assert!(index.marked_before(1_000, 10).await.unwrap().is_empty());
}

async fn reconciliation_sightings(index: Arc<dyn Index>) {
    // Fetched at 1,000 s.
    for key in ["npm/a", "npm/b", "npm/c"] {
        index.put_artifact(record(key, "npm", 1, 1)).await.unwrap();
    }
    index.mark_evicted(vec!["npm/c".into()], 5).await.unwrap();
    let run = 2_000_000;
    let unknown = index
        .sighted(
            vec!["npm/a".into(), "npm/c".into(), "npm/stray".into()],
            run,
        )
        .await
        .unwrap();
    assert_eq!(unknown, ["npm/stray"], "marked rows are known");
    assert_eq!(index.unsighted(run, 10).await.unwrap(), ["npm/b"]);
    assert!(
        index.unsighted(999_000, 10).await.unwrap().is_empty(),
        "rows fetched after the run started are not suspects"
    );
    index.sighted(vec!["npm/b".into()], run).await.unwrap();
    assert!(index.unsighted(run, 10).await.unwrap().is_empty());
    let many: Vec<String> = (0..1_200).map(|n| format!("npm/stray{n}")).collect();
    assert_eq!(
        index.sighted(many.clone(), run).await.unwrap().len(),
        many.len(),
        "large pages work"
    );
}

async fn documents_keep_their_validators(index: Arc<dyn Index>) {
    assert!(index.document("npm/doc").await.unwrap().is_none());
    let fetched_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let doc = Document {
        body: bytes::Bytes::from_static(b"{\"name\":\"pkg\"}"),
        etag: Some("\"v1\"".into()),
        last_modified: Some("Tue, 14 Nov 2023 22:13:20 GMT".into()),
        content_type: Some("application/json".into()),
        fetched_at,
    };
    index.put_document("npm/doc", doc.clone()).await.unwrap();
    let read = index.document("npm/doc").await.unwrap().unwrap();
    assert_eq!(read.body, doc.body);
    assert_eq!(read.etag, doc.etag);
    assert_eq!(read.last_modified, doc.last_modified);
    assert_eq!(read.content_type, doc.content_type);
    assert_eq!(read.fetched_at, fetched_at);
    let newer = Document {
        body: bytes::Bytes::from_static(b"{}"),
        etag: None,
        fetched_at: SystemTime::now(),
        ..doc
    };
    index.put_document("npm/doc", newer).await.unwrap();
    let read = index.document("npm/doc").await.unwrap().unwrap();
    assert_eq!((read.body.as_ref(), read.etag), (&b"{}"[..], None));
}

async fn fetch_leases_admit_one_owner(index: Arc<dyn Index>) {
    let long = Duration::from_secs(60);
    assert_eq!(
        index.acquire_fetch("npm/a", "node-1", long).await.unwrap(),
        Lease::Acquired
    );
    assert_eq!(
        index.acquire_fetch("npm/a", "node-2", long).await.unwrap(),
        Lease::HeldElsewhere {
            owner: "node-1".into()
        }
    );
    assert_eq!(
        index.acquire_fetch("npm/b", "node-2", long).await.unwrap(),
        Lease::Acquired,
        "leases are per key"
    );
    assert!(index.renew_fetch("npm/a", "node-1", long).await.unwrap());
    assert!(!index.renew_fetch("npm/a", "node-2", long).await.unwrap());
    index.release_fetch("npm/a", "node-2").await.unwrap();
    assert!(matches!(
        index.acquire_fetch("npm/a", "node-2", long).await.unwrap(),
        Lease::HeldElsewhere { .. }
    ));
    index.release_fetch("npm/a", "node-1").await.unwrap();
    assert_eq!(
        index
            .acquire_fetch("npm/a", "node-2", Duration::from_millis(50))
            .await
            .unwrap(),
        Lease::Acquired
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        index.acquire_fetch("npm/a", "node-3", long).await.unwrap(),
        Lease::Acquired,
        "an expired lease is taken over"
    );
    assert!(!index.renew_fetch("npm/a", "node-2", long).await.unwrap());
}

async fn the_eviction_lease_admits_one_owner(index: Arc<dyn Index>) {
    let long = Duration::from_secs(60);
    assert_eq!(
        index.acquire_eviction("node-1", long).await.unwrap(),
        Lease::Acquired
    );
    assert_eq!(
        index.acquire_eviction("node-1", long).await.unwrap(),
        Lease::Acquired,
        "its holder extends it"
    );
    assert!(matches!(
        index.acquire_eviction("node-2", long).await.unwrap(),
        Lease::HeldElsewhere { .. }
    ));
    index.release_eviction("node-1").await.unwrap();
    assert_eq!(
        index.acquire_eviction("node-2", long).await.unwrap(),
        Lease::Acquired
    );
}
