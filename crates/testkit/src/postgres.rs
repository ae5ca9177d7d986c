//! A real PostgreSQL server for tests: Debian's binaries, a fresh data directory in a temporary
//! directory, a free 127.0.0.1 port, password authentication, and optionally TLS. Run as
//! `nobody` when the tests run as root (PostgreSQL refuses to run as root). Stopped by PID when
//! dropped.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use tempfile::TempDir;

use crate::free_port;
use crate::tls::TestCa;

/// The set-up line printed when PostgreSQL is missing.
pub const SETUP_HINT: &str = "install PostgreSQL's server from Debian's packages \
     (`apt-get install postgresql`; `scripts/test` does), or set PROXYD_PG_BIN to the \
     directory holding initdb and postgres";

/// The user `nobody`, which runs the server when the tests run as root.
const NOBODY: u32 = 65534;

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PROXYD_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists() && bin.join("postgres").exists())
        .collect();
    // The newest major version (directories are named by it).
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb). Fix: {SETUP_HINT}"
        )
    })
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A PostgreSQL server with a superuser [`PostgresServer::USER`].
pub struct PostgresServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    bin: PathBuf,
    as_root: bool,
    databases: AtomicUsize,
}

impl PostgresServer {
    /// The superuser.
    pub const USER: &'static str = "proxyd";
    /// Its password (the server asks for it: scram-sha-256).
    pub const PASSWORD: &'static str = "proxyd-test-password";

    /// Start a server without TLS.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Start a server that offers TLS with a certificate for 127.0.0.1 issued by `ca`.
    pub fn start_with_tls(ca: &TestCa) -> Self {
        Self::start_inner(Some(ca))
    }

    fn start_inner(ca: Option<&TestCa>) -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let as_root = running_as_root();
        std::fs::write(dir.path().join("password"), Self::PASSWORD).unwrap();
        let server = Self {
            child: None,
            port: free_port(),
            bin,
            as_root,
            databases: AtomicUsize::new(0),
            dir,
        };
        server.give_to_server_user(server.dir.path());
        server.give_to_server_user(&server.dir.path().join("password"));
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(server.data_dir())
            .args(["-U", Self::USER, "--auth=scram-sha-256", "--pwfile"])
            .arg(server.dir.path().join("password"))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        let out = initdb
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}. Fix: {SETUP_HINT}"));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut extra = Vec::new();
        if let Some(ca) = ca {
            let (cert, key) = ca.server_pem();
            let cert_path = server.dir.path().join("server.crt");
            let key_path = server.dir.path().join("server.key");
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            std::fs::set_permissions(
                &key_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            server.give_to_server_user(&cert_path);
            server.give_to_server_user(&key_path);
            extra.push("ssl=on".to_owned());
            extra.push(format!("ssl_cert_file={}", cert_path.display()));
            extra.push(format!("ssl_key_file={}", key_path.display()));
        }
        std::fs::write(server.dir.path().join("extra-settings"), extra.join("\n")).unwrap();
        let mut server = server;
        server.spawn();
        server
    }

    fn give_to_server_user(&self, path: &Path) {
        if self.as_root {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.env("LC_ALL", "C").stdin(Stdio::null());
        if self.as_root {
            cmd.uid(NOBODY).gid(NOBODY).current_dir(self.dir.path());
        }
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let extra = std::fs::read_to_string(self.dir.path().join("extra-settings")).unwrap();
        for setting in extra.lines().filter(|l| !l.is_empty()) {
            cmd.args(["-c", setting]);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres: {e}. Fix: {SETUP_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited at start ({status}):\n{}", self.log());
            }
            if self
                .log()
                .contains("database system is ready to accept connections")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres was not ready in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://proxyd:PASSWORD@127.0.0.1:PORT/{database}`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{database}",
            Self::USER,
            Self::PASSWORD,
            self.port
        )
    }

    /// A new empty database; its URL.
    pub async fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("proxyd_{n}");
        let client = self.admin().await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        self.url(&name)
    }

    /// A connection to the `postgres` database, without TLS, for a test to look around.
    pub async fn admin(&self) -> tokio_postgres::Client {
        self.connect("postgres").await
    }

    /// A connection to `database`, without TLS.
    pub async fn connect(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &format!("{}?sslmode=disable", self.url(database)),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
        tokio::spawn(connection);
        client
    }

    /// Stop the server (SIGINT: fast shutdown, clients disconnected), keeping its data, as an
    /// outage would.
    pub fn stop(&mut self) {
        self.signal_and_wait("-INT", Duration::from_secs(30));
    }

    /// Send `signal` to the postmaster and wait for it to exit (SIGKILL after `patience`).
    fn signal_and_wait(&mut self, signal: &str, patience: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + patience;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Start again on the same data and port (after [`PostgresServer::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster takes its backends with it.
        self.signal_and_wait("-QUIT", Duration::from_secs(10));
    }
}

/// PEM of a DER blob.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
