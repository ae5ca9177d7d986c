//! An OCI upstream for the tests: Debian's `docker-registry` (CNCF distribution 2.8) on
//! 127.0.0.1 with its own storage, started and stopped (by PID) by the test, images pushed to it
//! over the distribution API; and images made from real files (tar layers, an OCI config and
//! manifest).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

const SETUP_HINT: &str = "install Debian's docker-registry, skopeo, podman and docker.io \
     (scripts/test does)";

/// skopeo copying `reference` (`HOST/repository:tag`, plain http allowed) into a new OCI
/// layout at `layout`, with its own configuration (no system registries, any signature
/// accepted); the error names skopeo's output.
pub fn skopeo_copy(reference: &str, layout: &std::path::Path) -> Result<(), String> {
    let conf = layout.with_extension("registries.conf");
    std::fs::write(&conf, "unqualified-search-registries = []\n").map_err(|e| e.to_string())?;
    let output = Command::new("skopeo")
        .env("HOME", layout.parent().unwrap_or(layout))
        .arg("--insecure-policy")
        .arg("--registries-conf")
        .arg(&conf)
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:pulled", layout.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run skopeo ({e}): {SETUP_HINT}"));
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "skopeo copy {reference} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `sha256:` and the hex digest of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An image: its layers (gzip-compressed tars), config and OCI manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Bytes>,
    pub config: Bytes,
    pub manifest: Bytes,
}

impl Image {
    /// An image whose layers hold `files` (one layer per entry: path in the image, bytes,
    /// mode), its command `/bin/sh`.
    pub fn new(layers: &[Vec<(&str, Bytes, u32)>]) -> Self {
        let mut blobs = Vec::new();
        let mut diff_ids = Vec::new();
        for files in layers {
            let mut tar = tar::Builder::new(Vec::new());
            for (path, body, mode) in files {
                let mut header = tar::Header::new_gnu();
                header.set_size(body.len() as u64);
                header.set_mode(*mode);
                header.set_mtime(1_700_000_000);
                header.set_cksum();
                tar.append_data(&mut header, path.trim_start_matches('/'), &body[..])
                    .unwrap();
            }
            let tar = tar.into_inner().unwrap();
            diff_ids.push(digest(&tar));
            // Stored blocks: a layer of random bytes stays as large as they are, fast to make.
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
            gz.write_all(&tar).unwrap();
            blobs.push(Bytes::from(gz.finish().unwrap()));
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = Bytes::from(config.to_string());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(&config),
                "size": config.len(),
            },
            "layers": blobs.iter().map(|b| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest(b),
                "size": b.len(),
            })).collect::<Vec<_>>(),
        });
        Self {
            layers: blobs,
            config,
            manifest: Bytes::from(manifest.to_string()),
        }
    }

    /// A small image of real files: Debian's `dash` as `/bin/sh`, a message in `/etc/motd`,
    /// and a layer of `big` bytes (`/data/blob`).
    pub fn demo(message: &str, big: usize) -> Self {
        let sh = Bytes::from(std::fs::read("/usr/bin/dash").expect("Debian's dash"));
        Self::new(&[
            vec![("bin/sh", sh, 0o755)],
            vec![("etc/motd", Bytes::from(format!("{message}\n")), 0o644)],
            vec![(
                "data/blob",
                Bytes::from(crate::conformance::pattern(big, 7)),
                0o644,
            )],
        ])
    }

    /// Every blob: config and layers.
    pub fn blobs(&self) -> Vec<Bytes> {
        let mut all = vec![self.config.clone()];
        all.extend(self.layers.iter().cloned());
        all
    }

    /// The manifest's digest.
    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }
}

/// Debian's `docker-registry` on 127.0.0.1, killed (by PID) when dropped.
pub struct DistributionRegistry {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl DistributionRegistry {
    /// Start a registry with empty storage.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut this = Self {
            child: None,
            port,
            _dir: dir,
            config,
        };
        this.run().await;
        this
    }

    async fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.access_log())
            .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry ({e}): {SETUP_HINT}"));
        self.child = Some(child);
        for _ in 0..200 {
            if reqwest::get(format!("{}/v2/", self.url())).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("docker-registry did not answer on 127.0.0.1:{}", self.port);
    }

    fn access_log(&self) -> PathBuf {
        self.config.with_file_name("access.log")
    }

    /// How many GET requests the registry answered whose path starts with `prefix`
    /// (`/v2/demo/hello/blobs/`), from its access log.
    pub fn gets(&self, prefix: &str) -> usize {
        let needle = format!("\"GET {prefix}");
        std::fs::read_to_string(self.access_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Change one byte of the stored blob `digest` (`sha256:…`): the registry serves it as it
    /// is, so a client gets bytes that do not match their digest.
    pub fn corrupt_blob(&self, digest: &str) {
        let hex = digest.trim_start_matches("sha256:");
        let path = self
            .config
            .with_file_name("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push `image` as `repository:tag` over the distribution API (monolithic uploads).
    pub async fn push(&self, repository: &str, tag: &str, image: &Image) {
        let client = reqwest::Client::new();
        for blob in image.blobs() {
            let start = client
                .post(format!("{}/v2/{repository}/blobs/uploads/", self.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(start.status(), 202, "upload start");
            let location = start.headers()["location"].to_str().unwrap().to_owned();
            let location = if location.starts_with("http") {
                location
            } else {
                format!("{}{location}", self.url())
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let put = client
                .put(format!("{location}{sep}digest={}", digest(&blob)))
                .header("content-type", "application/octet-stream")
                .body(blob)
                .send()
                .await
                .unwrap();
            assert_eq!(put.status(), 201, "blob upload");
        }
        let put = client
            .put(format!("{}/v2/{repository}/manifests/{tag}", self.url()))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(image.manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "manifest upload");
    }

    /// Kill it (by PID).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DistributionRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
