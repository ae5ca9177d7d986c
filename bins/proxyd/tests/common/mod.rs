//! Storage set-ups shared by the end-to-end tests: filesystem, S3 on s3s-fs and Azure on
//! Azurite, the last two with direct-serve on and optionally a public base URL reached through a
//! TCP forwarder.
#![allow(dead_code, unreachable_pub)]

use std::any::Any;

use proxyd_testkit::emulators::{Azurite, S3sFs};
use proxyd_testkit::forward::TcpForwarder;
use proxyd_testkit::npm_registry::Package;
use std::process::Command;

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
    /// The directory s3s-fs keeps its buckets in (S3 only).
    pub s3_data: Option<std::path::PathBuf>,
    _guards: Vec<Box<dyn Any + Send>>,
}

pub async fn storage(backend: Backend, with_public_base: bool) -> StorageFixture {
    match backend {
        Backend::Fs => StorageFixture {
            yaml: String::new(),
            env: vec![],
            redirects: false,
            public_base: None,
            s3_data: None,
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
            let data = server.data_dir();
            let mut fixture =
                signing_fixture(&url, env, port, with_public_base, Box::new(server)).await;
            fixture.s3_data = Some(data);
            fixture
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
        s3_data: None,
        _guards: guards,
    }
}

/// The packages the npm tests install: plain, scoped, and one with a dependency.
pub fn packages() -> Vec<Package> {
    vec![
        Package::new("plain-pkg", "1.0.0"),
        Package::new("@fixture/scoped-pkg", "2.1.0"),
        Package::new("leaf-pkg", "1.2.3"),
        Package::new("with-deps", "1.0.0").depends_on("leaf-pkg", "^1.0.0"),
    ]
}

/// `npm install` of the test packages ([`packages`]) into a new project with an empty npm cache.
pub fn npm_install(registry: &str) {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("package.json"),
        r#"{"name":"consumer","version":"0.0.0","private":true}"#,
    )
    .unwrap();
    let output = Command::new("npm")
        .current_dir(&project)
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--loglevel",
            "http",
        ])
        .arg("--registry")
        .arg(registry)
        .arg("--cache")
        .arg(work.path().join("npm-cache"))
        .args(["plain-pkg", "@fixture/scoped-pkg", "with-deps"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm ({e}); install Node.js and npm"));
    assert!(
        output.status.success(),
        "npm install failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["plain-pkg", "@fixture/scoped-pkg", "with-deps", "leaf-pkg"] {
        assert!(
            project
                .join("node_modules")
                .join(name)
                .join("package.json")
                .exists(),
            "{name} was not installed"
        );
    }
    let run = Command::new("node")
        .current_dir(&project)
        .args(["-e", "process.stdout.write(require('with-deps')())"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "with-deps@1.0.0");
}
