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

/// What a put interrupted before its block list was committed leaves (staged blocks only) is
/// removed once it is older than the limit; committed blobs and recent uploads are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_uploads_are_removed_and_nothing_else() {
    use azure_storage_blobs::prelude::{BlockId, BlockListType};
    use proxyd_storage_core::Storage;
    let emulator = Azurite::start();
    common::create_container(&emulator, "leftovers").await;
    let container = common::admin(&emulator).container_client("leftovers");
    let store = AzureStorage::connect(common::key_config(&emulator, "leftovers"))
        .await
        .unwrap();
    let staged = container.blob_client("npm/x/-/x-1.0.0.tgz");
    staged
        .put_block(BlockId::new(b"0000".to_vec()), vec![7u8; 1000])
        .await
        .unwrap();
    let kept = proxyd_storage_core::ObjectKey::new("npm/y/-/y-1.0.0.tgz").unwrap();
    store
        .put(
            &kept,
            proxyd_testkit::conformance::body(vec![1u8; 100], 10),
            Default::default(),
        )
        .await
        .unwrap();
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(
        store.remove_interrupted(hour).await.unwrap(),
        0,
        "a recent upload may still be running"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let second = std::time::Duration::from_secs(1);
    assert_eq!(store.remove_interrupted(second).await.unwrap(), 1);
    let blocks = staged
        .get_block_list()
        .block_list_type(BlockListType::All)
        .await;
    assert!(
        blocks.is_err() || blocks.unwrap().block_with_size_list.blocks.is_empty(),
        "the staged blocks are gone"
    );
    assert!(store.head(&kept).await.is_ok(), "committed blobs stay");
    assert_eq!(store.remove_interrupted(second).await.unwrap(), 0);
}
