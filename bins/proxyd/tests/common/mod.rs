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
            let mut guards: Vec<Box<dyn Any + Send>> = Vec::new();
            let mut yaml = format!(
                "storage:\n  url: \"s3://artifacts?region=us-east-1&endpoint={}&s3ForcePathStyle=true\"\n  direct_serve: true\n",
                server.endpoint()
            );
            let mut public_base = None;
            if with_public_base {
                let forwarder = TcpForwarder::start(([127, 0, 0, 1], server.port()).into()).await;
                yaml.push_str(&format!(
                    "  direct_serve_base_url: {}\n",
                    forwarder.base_url()
                ));
                public_base = Some(forwarder.base_url());
                guards.push(Box::new(forwarder));
            }
            guards.push(Box::new(server));
            let env = vec![
                ("AWS_ACCESS_KEY_ID", S3sFs::ACCESS_KEY.to_owned()),
                ("AWS_SECRET_ACCESS_KEY", S3sFs::SECRET_KEY.to_owned()),
            ];
            StorageFixture {
                yaml,
                env,
                redirects: true,
                public_base,
                _guards: guards,
            }
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
            let mut guards: Vec<Box<dyn Any + Send>> = Vec::new();
            let mut yaml = format!(
                "storage:\n  url: \"azblob://artifacts?protocol=http&domain={}&localemu=true\"\n  direct_serve: true\n",
                emulator.domain()
            );
            let mut public_base = None;
            if with_public_base {
                let forwarder = TcpForwarder::start(([127, 0, 0, 1], emulator.port()).into()).await;
                yaml.push_str(&format!(
                    "  direct_serve_base_url: {}\n",
                    forwarder.base_url()
                ));
                public_base = Some(forwarder.base_url());
                guards.push(Box::new(forwarder));
            }
            guards.push(Box::new(emulator));
            let env = vec![
                ("AZURE_STORAGE_ACCOUNT", Azurite::ACCOUNT.to_owned()),
                ("AZURE_STORAGE_KEY", Azurite::KEY.to_owned()),
            ];
            StorageFixture {
                yaml,
                env,
                redirects: true,
                public_base,
                _guards: guards,
            }
        }
    }
}
