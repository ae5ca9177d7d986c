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
