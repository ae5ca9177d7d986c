//! Helpers shared by the Azure integration tests.
#![allow(dead_code, unreachable_pub)]

use azure_storage::StorageCredentials;
use azure_storage_blobs::prelude::ClientBuilder;
use proxyd_storage_azure::AzureConfig;
use proxyd_testkit::emulators::Azurite;

/// A configuration for `container` on `emulator` from an `azblob://` URL and a key.
pub fn key_config(emulator: &Azurite, container: &str) -> AzureConfig {
    let url = format!(
        "azblob://{container}?protocol=http&domain={}&localemu=true",
        emulator.domain()
    );
    let env = |name: &str| match name {
        "AZURE_STORAGE_ACCOUNT" => Some(Azurite::ACCOUNT.to_owned()),
        "AZURE_STORAGE_KEY" => Some(Azurite::KEY.to_owned()),
        _ => None,
    };
    AzureConfig::from_url(&url, &env).unwrap()
}

pub fn admin(emulator: &Azurite) -> ClientBuilder {
    let location = azure_storage::CloudLocation::Custom {
        account: Azurite::ACCOUNT.into(),
        uri: emulator.account_endpoint(),
    };
    ClientBuilder::with_location(
        location,
        StorageCredentials::access_key(Azurite::ACCOUNT, Azurite::KEY),
    )
}

/// Create a container with the SDK (not part of the storage trait: proxyd never creates one).
pub async fn create_container(emulator: &Azurite, name: &str) {
    admin(emulator)
        .container_client(name)
        .create()
        .await
        .unwrap();
}

/// A container SAS token with read, write, delete and list permissions.
pub async fn container_sas(emulator: &Azurite, name: &str) -> String {
    use azure_storage::shared_access_signature::SasToken;
    use azure_storage::shared_access_signature::service_sas::BlobSasPermissions;
    let client = admin(emulator).container_client(name);
    let permissions = BlobSasPermissions {
        read: true,
        add: true,
        create: true,
        write: true,
        delete: true,
        list: true,
        ..Default::default()
    };
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    client
        .shared_access_signature(permissions, expiry)
        .await
        .unwrap()
        .token()
        .unwrap()
}
