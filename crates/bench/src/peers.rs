//! Starting proxyd and the reference servers for one scenario.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::procs::{Proc, free_port};

pub(crate) struct Env {
    pub(crate) proxyd: PathBuf,
    pub(crate) tools: PathBuf,
    pub s3s_fs: PathBuf,
    pub(crate) work: tempfile::TempDir,
}

pub(crate) struct Server {
    pub(crate) proc: Proc,
    pub(crate) port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Start `program` on `port` with its files in `dir`, and wait until it listens.
fn serve(
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(&str, String)],
    dir: tempfile::TempDir,
    port: u16,
    patience: Duration,
) -> anyhow::Result<Server> {
    let mut proc = Proc::start(name, program, args, envs, dir.path().join("out.log"), None)?;
    proc.wait_port(port, patience)?;
    Ok(Server {
        proc,
        port,
        _dir: Some(dir),
    })
}

impl Env {
    fn dir(&self, name: &str) -> anyhow::Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix(name)
            .tempdir_in(self.work.path())?)
    }

    /// proxyd with `yaml` appended to a config that binds a free port; files in a temp dir.
    pub(crate) fn proxyd(&self, yaml: &str, envs: &[(&str, String)]) -> anyhow::Result<Server> {
        self.proxyd_prepared(yaml, envs, |_| Ok(()))
    }

    /// [`Env::proxyd`], with `prepare` run on its directory (its index is `proxyd.db`, its
    /// filesystem storage `artifacts/`) before it starts.
    pub(crate) fn proxyd_prepared(
        &self,
        yaml: &str,
        envs: &[(&str, String)],
        prepare: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Server> {
        let dir = self.dir("proxyd")?;
        prepare(dir.path())?;
        let port = free_port();
        let mut config = format!(
            "listen: 127.0.0.1:{port}\nlog:\n  level: warn\ndatabase:\n  path: {}\n",
            dir.path().join("proxyd.db").display()
        );
        if !yaml.contains("storage:") {
            config.push_str(&format!(
                "storage:\n  url: file://{}\n",
                dir.path().join("artifacts").display()
            ));
        }
        config.push_str(yaml);
        let path = dir.path().join("proxyd.yaml");
        std::fs::write(&path, config)?;
        let mut envs = envs.to_vec();
        envs.push(("AWS_EC2_METADATA_DISABLED", "true".into()));
        let args = vec![
            "serve".into(),
            "--config".into(),
            path.display().to_string(),
        ];
        serve(
            "proxyd",
            &self.proxyd,
            &args,
            &envs,
            dir,
            port,
            Duration::from_secs(20),
        )
    }

    /// nginx serving `root` (sendfile on, one worker), plus `extra` inside the server block.
    pub(crate) fn nginx(&self, root: &Path, extra: &str) -> anyhow::Result<Server> {
        let dir = self.dir("nginx")?;
        let port = free_port();
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let d = dir.path().display();
        let conf = format!(
            "worker_processes 1;\npid {d}/logs/nginx.pid;\nerror_log {d}/logs/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  types {{ application/octet-stream tgz; }}\n  server {{\n    listen 127.0.0.1:{port};\n    root {};\n{extra}\n  }}\n}}\n",
            root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let args = vec![
            "-p".into(),
            d.to_string(),
            "-c".into(),
            conf_path.display().to_string(),
            "-g".into(),
            "daemon off;".into(),
        ];
        serve(
            "nginx",
            Path::new("nginx"),
            &args,
            &[],
            dir,
            port,
            Duration::from_secs(10),
        )
    }

    /// verdaccio as a caching proxy of `upstream`; `maxage` is how long it trusts metadata.
    pub(crate) fn verdaccio(&self, upstream: &str, maxage: &str) -> anyhow::Result<Server> {
        let bin = self.tools.join("verdaccio/node_modules/.bin/verdaccio");
        if !bin.exists() {
            bail!(
                "verdaccio is not installed in {}; run scripts/bench",
                bin.display()
            );
        }
        let dir = self.dir("verdaccio")?;
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "storage: {d}/storage\nauth:\n  htpasswd:\n    file: {d}/htpasswd\n    max_users: -1\nuplinks:\n  upstream:\n    url: {upstream}/\n    cache: true\n    maxage: {maxage}\npackages:\n  '@*/*':\n    access: $all\n    proxy: upstream\n  '**':\n    access: $all\n    proxy: upstream\nmiddlewares: {{}}\nweb:\n  enable: false\nserver:\n  keepAliveTimeout: 60\nlog: {{ type: stdout, format: pretty, level: error }}\n"
        );
        let conf_path = dir.path().join("config.yaml");
        std::fs::write(&conf_path, conf)?;
        let args = vec![
            "--config".into(),
            conf_path.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        serve(
            "verdaccio",
            &bin,
            &args,
            &[],
            dir,
            port,
            Duration::from_secs(30),
        )
    }

    /// devpi-server with a mirror index `root/upstream` of `simple_url`.
    pub(crate) fn devpi(&self, simple_url: &str, cache_expiry: u32) -> anyhow::Result<Server> {
        let venv = self.tools.join("devpi/bin");
        if !venv.join("devpi-server").exists() {
            bail!(
                "devpi-server is not installed in {}; run scripts/bench",
                venv.display()
            );
        }
        let dir = self.dir("devpi")?;
        let server_dir = dir.path().join("server");
        let status = Command::new(venv.join("devpi-init"))
            .arg("--serverdir")
            .arg(&server_dir)
            .arg("--no-root-pypi")
            .output()
            .context("devpi-init")?;
        if !status.status.success() {
            bail!("devpi-init: {}", String::from_utf8_lossy(&status.stderr));
        }
        let port = free_port();
        let args = vec![
            "--serverdir".into(),
            server_dir.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
        ];
        let client_dir = dir.path().join("client");
        let devpi_server = &venv.join("devpi-server");
        let server = serve(
            "devpi-server",
            devpi_server,
            &args,
            &[],
            dir,
            port,
            Duration::from_secs(60),
        )?;
        let devpi = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new(venv.join("devpi"))
                .args(args)
                .env("DEVPI_CLIENTDIR", &client_dir)
                .output()?;
            if !out.status.success() {
                bail!(
                    "devpi {args:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        devpi(&["use", &format!("http://127.0.0.1:{port}")])?;
        devpi(&["login", "root", "--password", ""])?;
        devpi(&[
            "index",
            "-c",
            "root/upstream",
            "type=mirror",
            &format!("mirror_url={simple_url}/"),
            &format!("mirror_cache_expiry={cache_expiry}"),
        ])?;
        Ok(server)
    }

    /// s3s-fs with a bucket `bench`.
    pub(crate) fn s3s(&self) -> anyhow::Result<Server> {
        let dir = self.dir("s3s")?;
        std::fs::create_dir_all(dir.path().join("data/bench"))?;
        let port = free_port();
        let args = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            "AKIDBENCH".into(),
            "--secret-key".into(),
            "bench-secret".into(),
            dir.path().join("data").display().to_string(),
        ];
        serve(
            "s3s-fs",
            &self.s3s_fs,
            &args,
            &[],
            dir,
            port,
            Duration::from_secs(10),
        )
    }
}
