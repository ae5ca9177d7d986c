//! Helpers shared by the S3 integration tests.

use proxyd_storage_s3::{S3Config, StaticCredentials};
use proxyd_testkit::emulators::S3sFs;

/// A path-style configuration for `bucket` on `server` with its fixed credentials.
pub(crate) fn test_config(server: &S3sFs, bucket: &str) -> S3Config {
    let url = format!(
        "s3://{bucket}?region={}&endpoint={}&s3ForcePathStyle=true",
        S3sFs::REGION,
        server.endpoint()
    );
    let mut config = S3Config::from_url(&url).unwrap();
    config.credentials = Some(StaticCredentials {
        access_key_id: S3sFs::ACCESS_KEY.into(),
        secret_access_key: S3sFs::SECRET_KEY.into(),
        session_token: None,
        expires_at: None,
    });
    config
}
