//! SQLite passes the index conformance suite, migrates databases of earlier versions and
//! refuses newer ones.

use std::sync::Arc;

use proxyd_cache::{ArtifactIndex, DocumentIndex, Index, IndexErrorKind};
use proxyd_index_sqlite::SqliteIndex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_index_suite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    proxyd_testkit::index_suite::run(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.path().join(format!("index-{n}.db"));
        async move { Arc::new(SqliteIndex::open(&path).unwrap()) as Arc<dyn Index> }
    })
    .await;
}

#[tokio::test]
async fn a_database_of_the_first_releases_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The schema the first releases wrote (version 0), with two rows and a document.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE artifacts (key TEXT PRIMARY KEY, ecosystem TEXT NOT NULL,
                name TEXT NOT NULL, version TEXT NOT NULL, filename TEXT NOT NULL,
                size INTEGER NOT NULL, sha256 TEXT NOT NULL, content_type TEXT NOT NULL,
                upstream_url TEXT NOT NULL, fetched_at INTEGER NOT NULL,
                hit_count INTEGER NOT NULL DEFAULT 0, last_access INTEGER NOT NULL);
             CREATE TABLE documents (key TEXT PRIMARY KEY, body BLOB NOT NULL, etag TEXT,
                last_modified TEXT, content_type TEXT, fetched_at INTEGER NOT NULL);
             INSERT INTO artifacts VALUES ('npm/a', 'npm', 'a', '1', 'a.tgz', 10, 'ab',
                'application/octet-stream', 'http://127.0.0.1:1/a.tgz', 100, 3, 200);
             INSERT INTO artifacts VALUES ('pypi/b', 'pypi', 'b', '1', 'b.whl', 5, 'cd',
                'application/octet-stream', 'http://127.0.0.1:1/b.whl', 100, 0, 150);
             INSERT INTO documents VALUES ('npm/a', x'7b7d', '\"e\"', NULL, NULL, 100);",
        )
        .unwrap();
    }
    let index = SqliteIndex::open(&path).unwrap();
    assert_eq!(index.schema_version().await.unwrap(), 2);
    let a = index.artifact("npm/a").await.unwrap().unwrap();
    assert_eq!((a.size, a.hit_count, a.last_access_ms), (10, 3, 200_000));
    let mut totals = index.totals().await.unwrap();
    totals.sort_by(|x, y| x.ecosystem.cmp(&y.ecosystem));
    let totals: Vec<_> = totals
        .into_iter()
        .map(|t| (t.ecosystem, t.artifacts, t.bytes))
        .collect();
    assert_eq!(totals, [("npm".into(), 1, 10), ("pypi".into(), 1, 5)]);
    let order: Vec<_> = index
        .least_recently_used(5)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.key)
        .collect();
    assert_eq!(order, ["pypi/b", "npm/a"]);
    assert_eq!(
        index
            .document("npm/a")
            .await
            .unwrap()
            .unwrap()
            .etag
            .as_deref(),
        Some("\"e\"")
    );
    drop(index);
    // Opening again applies nothing twice.
    let again = SqliteIndex::open(&path).unwrap();
    assert_eq!(again.schema_version().await.unwrap(), 2);
    assert_eq!(again.totals().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_its_own_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = SqliteIndex::open(&path).unwrap_err();
    assert_eq!(err.kind, IndexErrorKind::SchemaTooNew);
    assert!(!err.is_temporary());
    assert!(err.message.contains("upgrade proxyd"), "{err}");
}

#[tokio::test]
async fn a_locked_database_is_a_temporary_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let index = SqliteIndex::open(&path).unwrap();
    // Another process holds the write lock: the index's write waits its busy timeout, then
    // fails in a way a caller may retry.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = index
        .remove_artifacts(vec!["npm/a".into()])
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err:?}");
}
