//! Presigning against s3s-fs: public-host signing through a forwarder, credential lifetimes,
//! and start-up checks.

use std::time::{Duration, SystemTime};

use proxyd_storage_core::{ErrorKind, ObjectKey, PutOptions, ResponseOverrides, Signer, Storage};
use proxyd_storage_s3::{S3Config, S3Storage, StaticCredentials};
use proxyd_testkit::conformance::{body, fetch, pattern};
use proxyd_testkit::emulators::S3sFs;
use proxyd_testkit::forward::TcpForwarder;

mod common;
use common::test_config;

#[tokio::test]
async fn url_signed_for_public_host_validates_through_forwarder() {
    let server = S3sFs::start();
    server.create_bucket("public");
    let forwarder = TcpForwarder::start(([127, 0, 0, 1], server.port()).into()).await;
    let config = test_config(&server, "public")
        .with_public_base_url(&forwarder.base_url())
        .unwrap();
    let store = S3Storage::connect(config).await.unwrap();
    let key = ObjectKey::new("npm/pkg/-/pkg-1.0.0.tgz").unwrap();
    let data = pattern(4096, 9);
    store
        .put(
            &key,
            body(data.clone(), 1000),
            PutOptions::with_content_type("application/octet-stream"),
        )
        .await
        .unwrap();

    let url = store
        .presign_get(
            &key,
            Duration::from_secs(600),
            &ResponseOverrides::default(),
        )
        .await
        .unwrap();
    assert!(
        url.as_str().starts_with(&forwarder.base_url()),
        "Location starts with the public base URL: {}",
        url.redacted()
    );
    let (status, _, _, bytes) = fetch(url.as_str()).await;
    assert_eq!(
        status, 200,
        "the URL validates when its Host is the public one"
    );
    assert!(bytes == data);

    // The same signature sent to storage's own address (another Host) must fail: the URL was
    // signed for the public host, not rewritten after signing.
    let internal = url
        .as_str()
        .replacen(&forwarder.base_url(), &server.endpoint(), 1);
    let (status, ..) = fetch(&internal).await;
    assert_eq!(
        status, 403,
        "a URL signed for the public host is refused under another Host"
    );
}

#[tokio::test]
async fn url_never_outlives_temporary_credentials() {
    let server = S3sFs::start();
    server.create_bucket("tmpcreds");
    let mut config = test_config(&server, "tmpcreds");
    let expires_at = SystemTime::now() + Duration::from_secs(120);
    config.credentials = Some(StaticCredentials {
        access_key_id: S3sFs::ACCESS_KEY.into(),
        secret_access_key: S3sFs::SECRET_KEY.into(),
        session_token: None,
        expires_at: Some(expires_at),
    });
    let store = S3Storage::connect(config).await.unwrap();
    let key = ObjectKey::new("a/b.tgz").unwrap();
    store
        .put(&key, body(b"x".to_vec(), 1), PutOptions::default())
        .await
        .unwrap();
    let url = store
        .presign_get(
            &key,
            Duration::from_secs(3600),
            &ResponseOverrides::default(),
        )
        .await
        .unwrap();
    assert!(
        url.expires_at() <= expires_at,
        "expiry clamped to the credentials' lifetime"
    );
    let expires: u64 = url
        .as_str()
        .split("X-Amz-Expires=")
        .nth(1)
        .and_then(|v| v.split('&').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        expires <= 120,
        "X-Amz-Expires={expires} must not exceed the credentials' lifetime"
    );
    let (status, ..) = fetch(url.as_str()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn missing_bucket_and_refused_credentials_stop_startup() {
    let server = S3sFs::start();
    let err = S3Storage::connect(test_config(&server, "nosuchbucket"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    server.create_bucket("locked");
    let mut config = test_config(&server, "locked");
    config.credentials = Some(StaticCredentials {
        access_key_id: S3sFs::ACCESS_KEY.into(),
        secret_access_key: "wrong-secret".into(),
        session_token: None,
        expires_at: None,
    });
    let err = S3Storage::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("refused the credentials"), "{err}");
}

#[tokio::test]
async fn bad_public_base_url_is_refused() {
    let config = S3Config::new("b");
    assert!(
        config
            .clone()
            .with_public_base_url("https://cdn.example.test/storage")
            .is_err()
    );
    assert!(config.with_public_base_url("not a url").is_err());
}
