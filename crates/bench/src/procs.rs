//! Processes under test: started pinned to a CPU on 127.0.0.1, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The CPU servers run on; the load generator gets the other one.
pub(crate) const SERVER_CPU: &str = "1";
pub(crate) const LOAD_CPU: &str = "0";

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Start `program args` pinned to the server CPU, output to `log`.
    pub(crate) fn start(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: PathBuf,
        cwd: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(SERVER_CPU).arg(program).args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn wait_port(&mut self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                bail!("{} exited ({status}):\n{log}", self.name);
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {port}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Resident memory now (VmRSS) in bytes.
    pub(crate) fn rss(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Reset the peak to the current resident size.
    pub(crate) fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole group: nginx's workers, node's children.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// wrk's figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkResult {
    pub(crate) requests_per_sec: f64,
    pub(crate) bytes_per_sec: f64,
    pub non_2xx_3xx: u64,
    /// Connect, read, write errors and timeouts, summed.
    pub(crate) socket_errors: u64,
    /// 99th percentile latency, milliseconds.
    pub(crate) p99_ms: f64,
}

/// A wrk latency such as `12.34ms`, `1.20s` or `850.00us`, in milliseconds.
fn parse_latency(text: &str) -> f64 {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (t, 1.0)
    };
    num.trim().parse::<f64>().unwrap_or(f64::NAN) * mult
}

fn parse_size(text: &str) -> f64 {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("GB") {
        (n, 1024.0 * 1024.0 * 1024.0)
    } else if let Some(n) = t.strip_suffix("MB") {
        (n, 1024.0 * 1024.0)
    } else if let Some(n) = t.strip_suffix("KB") {
        (n, 1024.0)
    } else if let Some(n) = t.strip_suffix('B') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    num.trim().parse::<f64>().unwrap_or(0.0) * mult
}

/// Run wrk pinned to the load CPU.
pub(crate) fn wrk(
    url: &str,
    connections: u32,
    seconds: u32,
    headers: &[&str],
) -> anyhow::Result<WrkResult> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CPU, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("30s")
        .arg("--latency");
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::to_owned))
    };
    let requests_per_sec = field("Requests/sec:").map_or(0.0, |v| v.trim().parse().unwrap_or(0.0));
    let bytes_per_sec = field("Transfer/sec:").map_or(0.0, |v| parse_size(&v));
    let non_2xx_3xx =
        field("Non-2xx or 3xx responses:").map_or(0, |v| v.trim().parse().unwrap_or(0));
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket_errors = field("Socket errors:").map_or(0, |v| {
        v.split(',')
            .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    });
    let p99_ms = field("99%").map_or(f64::NAN, |v| parse_latency(&v));
    Ok(WrkResult {
        requests_per_sec,
        bytes_per_sec,
        non_2xx_3xx,
        socket_errors,
        p99_ms,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("1.50MB"), 1.5 * 1024.0 * 1024.0);
        assert_eq!(super::parse_size("512.00KB"), 512.0 * 1024.0);
        assert_eq!(super::parse_latency("12.50ms"), 12.5);
        assert_eq!(super::parse_latency("1.50s"), 1500.0);
        assert_eq!(super::parse_latency("850.00us"), 0.85);
    }
}
