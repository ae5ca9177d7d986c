//! Real storage servers for tests, each on a free 127.0.0.1 port with its own temporary
//! directory, stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, tools_dir};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The set-up line printed when an emulator is missing.
pub const SETUP_HINT: &str = "run `scripts/test` once (it installs s3s-fs and Azurite into \
     ~/.cache/proxyd-dev/tools), or set PROXYD_S3S_FS / PROXYD_AZURITE to the binaries";

fn find_tool(env: &str, relative: &str, name: &str, install: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let path = tools_dir().join(relative);
    if path.exists() {
        return path;
    }
    panic!(
        "{name} is not installed (looked for ${env} and {}). Fix: {SETUP_HINT}; \
         by hand: {install}",
        path.display()
    );
}

struct Process {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Process {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}. {SETUP_HINT}"));
        Self { child, log, name }
    }

    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!(
                    "{} exited at start ({status}); its output:\n{log}",
                    self.name
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on port {port} in time",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// s3s-fs: an S3 server over a directory that really validates SigV4 signatures and expiry.
pub struct S3sFs {
    process: Process,
    dir: TempDir,
    port: u16,
}

impl S3sFs {
    /// Access key id the server accepts.
    pub const ACCESS_KEY: &'static str = "AKIDPROXYDTEST";
    /// Secret key the server accepts.
    pub const SECRET_KEY: &'static str = "proxyd-test-secret-key";
    /// Region the tests sign for.
    pub const REGION: &'static str = "us-east-1";

    /// Start on a free port (path-style addressing only).
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Start with virtual-hosted addressing under `domain` as well (`BUCKET.domain`).
    pub fn start_with_domain(domain: &str) -> Self {
        Self::start_inner(Some(domain))
    }

    fn start_inner(domain: Option<&str>) -> Self {
        let bin = find_tool(
            "PROXYD_S3S_FS",
            "s3s-fs/bin/s3s-fs",
            "s3s-fs",
            "cargo install s3s-fs@0.14.1 --features binary --locked --root ~/.cache/proxyd-dev/tools/s3s-fs",
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                Self::ACCESS_KEY,
                "--secret-key",
                Self::SECRET_KEY,
            ]);
        if let Some(domain) = domain {
            cmd.args(["--domain", domain]);
        }
        cmd.arg(&data);
        let mut process = Process::spawn("s3s-fs", cmd, dir.path().join("s3s-fs.log"));
        process.wait_for_port(port);
        Self { process, dir, port }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Create a bucket (s3s-fs keeps one directory per bucket).
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.data_dir().join(bucket)).unwrap();
    }

    /// The directory holding the buckets.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }
}

/// Azurite's blob service, in memory, validating SAS signatures, expiry and permissions.
pub struct Azurite {
    _process: Process,
    _dir: TempDir,
    port: u16,
}

impl Azurite {
    /// The emulator's well-known account.
    pub const ACCOUNT: &'static str = "devstoreaccount1";
    /// The emulator's published development key (not a secret).
    pub const KEY: &'static str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// Start on a free port.
    pub fn start() -> Self {
        let bin = find_tool(
            "PROXYD_AZURITE",
            "npm/node_modules/.bin/azurite-blob",
            "Azurite",
            "cd ~/.cache/proxyd-dev/tools/npm && npm install azurite@3.35.0",
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args([
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ])
            .args(["--disableProductStyleUrl", "--loose"])
            .current_dir(dir.path()); // anything it writes lands in the temp dir
        let mut process = Process::spawn("azurite-blob", cmd, dir.path().join("azurite.log"));
        process.wait_for_port(port);
        Self {
            _process: process,
            _dir: dir,
            port,
        }
    }

    /// `127.0.0.1:PORT`, the `domain` of an `azblob://` URL.
    pub fn domain(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn account_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, Self::ACCOUNT)
    }

    /// A connection string for the emulator.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
            Self::ACCOUNT,
            Self::KEY,
            self.account_endpoint()
        )
    }
}
