//! The shared storage conformance suite against Azurite, which validates SAS signatures.

mod common;

use std::sync::Arc;

use proxyd_storage_azure::AzureStorage;
use proxyd_testkit::conformance::Fixture;
use proxyd_testkit::emulators::Azurite;

async fn setup() -> Fixture {
    let emulator = Azurite::start();
    common::create_container(&emulator, "conformance").await;
    let store = AzureStorage::connect(common::key_config(&emulator, "conformance"))
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        guard: Box::new(emulator),
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
