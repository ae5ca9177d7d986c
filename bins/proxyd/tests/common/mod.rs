//! Storage set-ups shared by the end-to-end tests: filesystem, S3 on s3s-fs and Azure on
//! Azurite, the last two with direct-serve on and optionally a public base URL reached through a
//! TCP forwarder.
#![allow(dead_code, unreachable_pub)]

use std::any::Any;

use proxyd_testkit::emulators::{Azurite, S3sFs};
use proxyd_testkit::forward::TcpForwarder;

pub const BIN: &str = env!("CARGO_BIN_EXE_proxyd");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Fs,
    S3,
    Azure,
}

/// A storage section for proxyd's YAML, the environment it needs, and what keeps it alive.
pub struct StorageFixture {
    pub yaml: String,
    pub env: Vec<(&'static str, String)>,
    pub redirects: bool,
    pub public_base: Option<String>,
    _guards: Vec<Box<dyn Any + Send>>,
}

pub async fn storage(backend: Backend, with_public_base: bool) -> StorageFixture {
    match backend {
        Backend::Fs => StorageFixture {
            yaml: String::new(),
            env: vec![],
            redirects: false,
            public_base: None,
            _guards: vec![],
        },
        Backend::S3 => {
            let server = S3sFs::start();
            server.create_bucket("artifacts");
            let url = format!(
                "s3://artifacts?region=us-east-1&endpoint={}&s3ForcePathStyle=true",
                server.endpoint()
            );
            let env = vec![
                ("AWS_ACCESS_KEY_ID", S3sFs::ACCESS_KEY.to_owned()),
                ("AWS_SECRET_ACCESS_KEY", S3sFs::SECRET_KEY.to_owned()),
            ];
            let port = server.port();
            signing_fixture(&url, env, port, with_public_base, Box::new(server)).await
        }
        Backend::Azure => {
            let emulator = Azurite::start();
            let location = azure_storage::CloudLocation::Custom {
                account: Azurite::ACCOUNT.into(),
                uri: emulator.account_endpoint(),
            };
            let creds =
                azure_storage::StorageCredentials::access_key(Azurite::ACCOUNT, Azurite::KEY);
            azure_storage_blobs::prelude::ClientBuilder::with_location(location, creds)
                .container_client("artifacts")
                .create()
                .await
                .unwrap();
            let url = format!(
                "azblob://artifacts?protocol=http&domain={}&localemu=true",
                emulator.domain()
            );
            let env = vec![
                ("AZURE_STORAGE_ACCOUNT", Azurite::ACCOUNT.to_owned()),
                ("AZURE_STORAGE_KEY", Azurite::KEY.to_owned()),
            ];
            let port = emulator.port();
            signing_fixture(&url, env, port, with_public_base, Box::new(emulator)).await
        }
    }
}

/// Direct-serve on `url`, optionally with a public base URL: a forwarder to `port`.
async fn signing_fixture(
    url: &str,
    env: Vec<(&'static str, String)>,
    port: u16,
    with_public_base: bool,
    server: Box<dyn Any + Send>,
) -> StorageFixture {
    let mut yaml = format!("storage:\n  url: \"{url}\"\n  direct_serve: true\n");
    let mut guards = vec![server];
    let mut public_base = None;
    if with_public_base {
        let forwarder = TcpForwarder::start(([127, 0, 0, 1], port).into()).await;
        yaml.push_str(&format!(
            "  direct_serve_base_url: {}\n",
            forwarder.base_url()
        ));
        public_base = Some(forwarder.base_url());
        guards.push(Box::new(forwarder));
    }
    StorageFixture {
        yaml,
        env,
        redirects: true,
        public_base,
        _guards: guards,
    }
}
