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
