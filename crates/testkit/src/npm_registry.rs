//! A small npm registry on 127.0.0.1 for tests: real packuments and real tarballs, request
//! counting, and faults (corrupt bytes, a connection dropped mid-body, delays).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest, Sha512};

pub use crate::static_server::Fault;
use crate::static_server::StaticServer;

/// A package to publish.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub dependencies: Vec<(String, String)>,
    /// Extra bytes in the tarball (to make it larger).
    pub padding: usize,
}

impl Package {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            dependencies: Vec::new(),
            padding: 0,
        }
    }

    pub fn depends_on(mut self, name: &str, range: &str) -> Self {
        self.dependencies.push((name.into(), range.into()));
        self
    }

    pub fn padded(mut self, bytes: usize) -> Self {
        self.padding = bytes;
        self
    }

    /// `name-1.0.0.tgz` (the part after the scope).
    pub fn file_name(&self) -> String {
        let base = self.name.rsplit('/').next().unwrap_or(&self.name);
        format!("{base}-{}.tgz", self.version)
    }

    /// A real npm tarball: `package/package.json` and `package/index.js`.
    pub fn tarball(&self) -> Vec<u8> {
        let deps: serde_json::Map<String, serde_json::Value> = self
            .dependencies
            .iter()
            .map(|(n, r)| (n.clone(), r.clone().into()))
            .collect();
        let manifest = serde_json::json!({
            "name": self.name, "version": self.version, "main": "index.js", "license": "MIT",
            "dependencies": deps,
        });
        let index = format!(
            "module.exports = () => {:?};\n/*{}*/\n",
            format!("{}@{}", self.name, self.version),
            crate::conformance::pattern(self.padding, 7)
                .iter()
                .map(|b| char::from(b'a' + b % 26))
                .collect::<String>()
        );
        crate::tar_gz(&[
            (
                "package/package.json".into(),
                manifest.to_string().into_bytes(),
            ),
            ("package/index.js".into(), index.into_bytes()),
        ])
    }
}

/// The registry. Stops when dropped.
pub struct NpmRegistry {
    server: StaticServer,
    packuments: Mutex<HashMap<String, serde_json::Value>>,
}

impl NpmRegistry {
    /// Start with `packages` published.
    pub async fn start(packages: &[Package]) -> Self {
        let registry = Self {
            server: StaticServer::start().await,
            packuments: Mutex::new(HashMap::new()),
        };
        for p in packages {
            registry.publish(p);
        }
        registry
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Add a version of a package.
    pub fn publish(&self, package: &Package) {
        let tarball = Bytes::from(package.tarball());
        let path = Self::tarball_path(package);
        let integrity = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&tarball))
        );
        let shasum = hex::encode(Sha1::digest(&tarball));
        let deps: serde_json::Map<String, serde_json::Value> = package
            .dependencies
            .iter()
            .map(|(n, r)| (n.clone(), r.clone().into()))
            .collect();
        let mut packuments = self.packuments.lock().unwrap();
        let doc = packuments.entry(package.name.clone()).or_insert_with(
            || serde_json::json!({"name": package.name, "dist-tags": {}, "versions": {}}),
        );
        doc["versions"][&package.version] = serde_json::json!({
            "name": package.name, "version": package.version, "dependencies": deps,
            "dist": {"tarball": format!("{}{path}", self.url()), "integrity": integrity, "shasum": shasum},
        });
        doc["dist-tags"]["latest"] = package.version.clone().into();
        self.server.put(
            &format!("/{}", package.name),
            doc.to_string(),
            "application/json",
        );
        self.server.put(&path, tarball, "application/octet-stream");
    }

    /// The bytes of a published tarball.
    pub fn tarball(&self, package: &Package) -> Bytes {
        self.server.get(&Self::tarball_path(package)).unwrap()
    }

    /// The path of a package's tarball on this registry and on proxyd (`/name/-/file`).
    pub fn tarball_path(package: &Package) -> String {
        format!("/{}/-/{}", package.name, package.file_name())
    }

    /// Misbehave on `path` from now on.
    pub fn set_fault(&self, path: &str, fault: Fault) {
        self.server.set_fault(path, fault);
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.server.hits(path)
    }

    /// Every request received.
    pub fn total_hits(&self) -> usize {
        self.server.total_hits()
    }

    /// The server underneath (faults, hits).
    pub fn server(&self) -> &StaticServer {
        &self.server
    }

    /// Stop answering.
    pub fn stop(&self) {
        self.server.stop();
    }
}
