//! A Cargo sparse index on 127.0.0.1 for tests, with real `.crate` files.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::static_server::StaticServer;

/// A crate to publish.
#[derive(Debug, Clone)]
pub struct Crate {
    pub name: String,
    pub version: String,
    pub deps: Vec<(String, String)>,
    pub yanked: bool,
    /// Extra bytes in the archive (to make it larger).
    pub padding: usize,
}

impl Crate {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            deps: Vec::new(),
            yanked: false,
            padding: 0,
        }
    }

    pub fn padded(mut self, bytes: usize) -> Self {
        self.padding = bytes;
        self
    }

    pub fn depends_on(mut self, name: &str, req: &str) -> Self {
        self.deps.push((name.into(), req.into()));
        self
    }

    pub fn yanked(mut self) -> Self {
        self.yanked = true;
        self
    }

    /// A real `.crate`: `NAME-VERSION/Cargo.toml` and `src/lib.rs`.
    pub fn archive(&self) -> Vec<u8> {
        let root = format!("{}-{}", self.name, self.version);
        let deps: String = self
            .deps
            .iter()
            .map(|(n, r)| format!("{n} = \"{r}\"\n"))
            .collect();
        let manifest = format!(
            "[package]\nname = \"{}\"\nversion = \"{}\"\nedition = \"2021\"\nlicense = \"MIT\"\ndescription = \"test crate\"\n\n[dependencies]\n{deps}",
            self.name, self.version
        );
        let uses: String = self
            .deps
            .iter()
            .map(|(n, _)| format!("pub use {};\n", n.replace('-', "_")))
            .collect();
        let lib = format!(
            "{uses}pub fn id() -> &'static str {{ \"{}@{}\" }}\n",
            self.name, self.version
        );
        let mut files = vec![
            (format!("{root}/Cargo.toml"), manifest.into_bytes()),
            (format!("{root}/src/lib.rs"), lib.into_bytes()),
        ];
        if self.padding > 0 {
            files.push((
                format!("{root}/padding.bin"),
                crate::conformance::pattern(self.padding, 11),
            ));
        }
        crate::tar_gz(&files)
    }
}

fn index_path(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    match n.len() {
        1 => format!("1/{n}"),
        2 => format!("2/{n}"),
        3 => format!("3/{}/{n}", &n[..1]),
        _ => format!("{}/{}/{n}", &n[..2], &n[2..4]),
    }
}

/// The sparse index. Stops when dropped.
pub struct CargoRegistry {
    pub server: StaticServer,
}

impl CargoRegistry {
    /// Start with `crates` published (index under `/index/`, files under `/crates/`).
    pub async fn start(crates: &[Crate]) -> Self {
        let server = StaticServer::start().await;
        let dl = format!(
            "{}/crates/{{crate}}/{{crate}}-{{version}}.crate",
            server.url()
        );
        server.put(
            "/index/config.json",
            serde_json::json!({ "dl": dl }).to_string(),
            "application/json",
        );
        let mut files: std::collections::BTreeMap<String, String> = Default::default();
        for c in crates {
            let archive = Bytes::from(c.archive());
            let cksum = hex::encode(Sha256::digest(&archive));
            let deps: Vec<_> = c
                .deps
                .iter()
                .map(|(n, r)| serde_json::json!({"name": n, "req": r, "features": [], "optional": false, "default_features": true, "target": null, "kind": "normal"}))
                .collect();
            let line = serde_json::json!({"name": c.name, "vers": c.version, "deps": deps, "cksum": cksum, "features": {}, "yanked": c.yanked});
            files
                .entry(index_path(&c.name))
                .or_default()
                .push_str(&format!("{line}\n"));
            server.put(
                &format!("/crates/{0}/{0}-{1}.crate", c.name, c.version),
                archive,
                "application/gzip",
            );
        }
        for (path, body) in files {
            server.put(&format!("/index/{path}"), body, "text/plain");
        }
        Self { server }
    }

    /// `sparse+http://127.0.0.1:PORT/index/`.
    pub fn index_url(&self) -> String {
        format!("sparse+{}/index/", self.server.url())
    }

    /// The index file of `name` as served.
    pub fn index_file(&self, name: &str) -> Bytes {
        self.server
            .get(&format!("/index/{}", index_path(name)))
            .unwrap()
    }

    /// The path of a `.crate` on this registry.
    pub fn crate_path(name: &str, version: &str) -> String {
        format!("/crates/{name}/{name}-{version}.crate")
    }
}
