//! The shared storage conformance suite against the filesystem backend.

use std::sync::Arc;

use proxyd_storage_fs::FsStorage;
use proxyd_testkit::conformance::Fixture;

async fn setup() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStorage::open(dir.path().join("artifacts")).await.unwrap();
    Fixture {
        store: Arc::new(store),
        guard: Box::new(dir),
    }
}

proxyd_testkit::conformance_tests!(setup);

/// Atomic create-only puts (not part of the shared list: s3s-fs cannot prove it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_one_wins() {
    let fixture = setup().await;
    proxyd_testkit::conformance::concurrent_creates_one_wins(&*fixture.store).await;
    drop(fixture.guard);
}
