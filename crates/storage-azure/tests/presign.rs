//! Azure presigning against Azurite: public host swap through a forwarder, SAS-only
//! credentials, clock-skew backdating, and start-up checks.

mod common;

use std::time::Duration;

use proxyd_storage_azure::{AzureConfig, AzureCredentials, AzureStorage};
use proxyd_storage_core::{
    ErrorKind, ObjectKey, PresignSupport, PutOptions, ResponseOverrides, Signer, Storage,
};
use proxyd_testkit::conformance::{body, fetch, pattern, read_all};
use proxyd_testkit::emulators::Azurite;
use proxyd_testkit::forward::TcpForwarder;

#[tokio::test]
async fn sas_url_with_public_host_works_through_forwarder() {
    let emulator = Azurite::start();
    common::create_container(&emulator, "public").await;
    let forwarder = TcpForwarder::start(([127, 0, 0, 1], emulator.port()).into()).await;
    let config = common::key_config(&emulator, "public")
        .with_public_base_url(&forwarder.base_url())
        .unwrap();
    let store = AzureStorage::connect(config).await.unwrap();
    let key = ObjectKey::new("pypi/packages/x/pkg-1.0-py3-none-any.whl").unwrap();
    let data = pattern(3000, 1);
    store
        .put(
            &key,
            body(data.clone(), 512),
            PutOptions::with_content_type("application/zip"),
        )
        .await
        .unwrap();
    let overrides = ResponseOverrides::new(Some("application/octet-stream"), None);
    let url = store
        .presign_get(&key, Duration::from_secs(600), &overrides)
        .await
        .unwrap();
    assert!(
        url.as_str().starts_with(&forwarder.base_url()),
        "{}",
        url.redacted()
    );
    assert!(
        url.as_str().contains("st="),
        "start time is set (backdated)"
    );
    let (status, ct, _, bytes) = fetch(url.as_str()).await;
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("application/octet-stream"));
    assert!(bytes == data);
    assert!(!url.redacted().contains("sig=") || url.redacted().contains("sig=REDACTED"));
}

#[tokio::test]
async fn sas_token_credentials_store_but_cannot_presign() {
    let emulator = Azurite::start();
    common::create_container(&emulator, "sasonly").await;
    let token = common::container_sas(&emulator, "sasonly").await;
    let config = AzureConfig::new(
        Azurite::ACCOUNT,
        "sasonly",
        emulator.account_endpoint(),
        AzureCredentials::SasToken(token),
    );
    let store = AzureStorage::connect(config).await.unwrap();
    let key = ObjectKey::new("a/b.tgz").unwrap();
    store
        .put(&key, body(b"hello".to_vec(), 2), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        read_all(store.get(&key, None).await.unwrap().body).await,
        b"hello"
    );
    assert!(matches!(
        store.presign_support(),
        PresignSupport::Unsupported { .. }
    ));
    let err = store
        .presign_get(&key, Duration::from_secs(60), &ResponseOverrides::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[tokio::test]
async fn connection_string_credentials_work() {
    let emulator = Azurite::start();
    common::create_container(&emulator, "connstr").await;
    let conn = emulator.connection_string();
    let env = move |name: &str| (name == "AZURE_STORAGE_CONNECTION_STRING").then(|| conn.clone());
    let config = AzureConfig::from_url("azblob://connstr", &env).unwrap();
    let store = AzureStorage::connect(config).await.unwrap();
    assert!(store.presign_support().is_supported());
}

#[tokio::test]
async fn missing_container_and_wrong_key_stop_startup() {
    let emulator = Azurite::start();
    let err = AzureStorage::connect(common::key_config(&emulator, "nosuchcontainer"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");

    common::create_container(&emulator, "locked").await;
    let mut config = common::key_config(&emulator, "locked");
    config.credentials = AzureCredentials::AccountKey("A".repeat(86) + "==");
    let err = AzureStorage::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}
