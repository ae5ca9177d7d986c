//! The shared storage conformance suite against s3s-fs, which validates SigV4.

mod common;

use std::sync::Arc;

use common::test_config;
use proxyd_storage_s3::S3Storage;
use proxyd_testkit::conformance::Fixture;
use proxyd_testkit::emulators::S3sFs;

async fn setup() -> Fixture {
    let server = S3sFs::start();
    server.create_bucket("conformance");
    let store = S3Storage::connect(test_config(&server, "conformance"))
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        guard: Box::new(server),
    }
}

proxyd_testkit::conformance_tests!(setup);

/// A multipart put notes its upload while it runs and removes the note when it completes;
/// start-up's cleanup then finds nothing to abort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_multipart_puts_leave_no_note() {
    use proxyd_storage_core::{ObjectKey, Storage};
    let server = S3sFs::start();
    server.create_bucket("notes");
    let store = S3Storage::connect(test_config(&server, "notes"))
        .await
        .unwrap();
    let key = ObjectKey::new("oci/blobs/sha256/big").unwrap();
    let body = vec![7u8; 20 << 20]; // three parts of 8 MiB at most
    store
        .put(
            &key,
            proxyd_testkit::conformance::body(body.clone(), 1 << 20),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(store.head(&key).await.unwrap().size, body.len() as u64);
    let notes = server.data_dir().join("notes/.proxyd-uploads");
    let left = std::fs::read_dir(&notes).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the note went with the completed upload");
    assert_eq!(
        store
            .remove_interrupted(std::time::Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    let listed: Vec<_> = futures::StreamExt::collect::<Vec<_>>(store.list("")).await;
    assert_eq!(listed.len(), 1, "listings show artifacts only");
}
