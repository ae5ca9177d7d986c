//! Runs the proxyd binary for end-to-end tests, on a free 127.0.0.1 port with its files in a
//! temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;

/// A running proxyd. Killed when dropped; [`ProxydProcess::stop`] shuts it down gracefully.
pub struct ProxydProcess {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    bin: String,
    env: Vec<(String, String)>,
}

impl ProxydProcess {
    /// Start `bin` (pass `env!("CARGO_BIN_EXE_proxyd")`) with `config` (YAML) and extra
    /// environment. `listen`, `base_url` and `database.path` are added; `storage.url`
    /// defaults to a directory in the temp dir when the YAML has no `storage:` section.
    pub fn start(bin: &str, config: &str, env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut yaml = format!(
            "listen: 127.0.0.1:{port}\nbase_url: http://127.0.0.1:{port}\ndatabase:\n  path: {}\n",
            dir.path().join("proxyd.db").display()
        );
        if !config.contains("storage:") {
            yaml.push_str(&format!(
                "storage:\n  url: file://{}\n",
                dir.path().join("artifacts").display()
            ));
        }
        yaml.push_str(config);
        let config_path = dir.path().join("proxyd.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let mut process = Self {
            child: None,
            port,
            dir,
            bin: bin.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        process.spawn();
        process
    }

    /// Start the binary on this process's settings and data, and wait until it listens.
    fn spawn(&mut self) {
        let config_path = self.dir.path().join("proxyd.yaml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("proxyd.log"))
            .unwrap();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("PROXYD_LOG_LEVEL", "info,proxyd_http_front=debug")
            // Keep the AWS chain away from the developer's own files and from instance metadata.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-aws-credentials"),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start proxyd ({}): {e}", self.bin));
        self.child = Some(child);
        self.wait_ready();
    }

    /// SIGKILL, as a crash would: nothing is flushed or cleaned up. The data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same settings, data and port (after [`ProxydProcess::kill`] or
    /// [`ProxydProcess::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill it first");
        self.spawn();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("proxyd exited at start ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxyd did not listen in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory holding its database and (by default) artifacts.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The default artifact directory.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxyd.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("proxyd did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/stats` as JSON.
    pub async fn stats(&self) -> serde_json::Value {
        let body = reqwest::get(format!("{}/stats", self.url()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Wait (at most 5 s) until `/stats` counts `n` cached artifacts: a client that knows the
    /// length has its last byte before storage and the index have committed the artifact.
    pub async fn wait_cached(&self, n: u64) {
        for _ in 0..100 {
            if self.stats().await["cached_artifacts"] == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "never {n} cached artifacts: {}\n{}",
            self.stats().await,
            self.log()
        );
    }

    /// A corrupt upstream file was refused: nothing cached, and the log says which digest
    /// failed.
    pub async fn assert_refused_as_corrupt(&self, algorithm: &str) {
        assert_eq!(
            self.stats().await["cached_artifacts"],
            0,
            "nothing may be cached"
        );
        let needle = format!("does not match its declared {algorithm} digest");
        assert!(
            self.log().contains(&needle),
            "log lacks {needle:?}:\n{}",
            self.log()
        );
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for ProxydProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of the sample `name{labels}` in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, rest) = match series.split_once('{') {
                Some((n, r)) => (n, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            if all { value.parse::<f64>().ok() } else { None }
        })
        .sum()
}
