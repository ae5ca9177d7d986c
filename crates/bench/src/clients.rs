//! Scenario 10: the real clients of the newer ecosystems, through proxyd against directly from
//! the upstream: `go mod download` of genuine modules (checksum database on) and a skopeo image
//! pull from Debian's docker-registry, each cold (a fresh proxyd) and warm (fresh client state,
//! proxyd holding everything). The figure is a speed ratio: the direct time over proxyd's.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use proxyd_testkit::go_proxy::{GoModule, GoProxyServer, SumDbProcess, write_dir};
use proxyd_testkit::oci_registry::{DistributionRegistry, Image, skopeo_copy};

use crate::peers::Env;
use crate::{Row, median};

const ROUNDS: usize = 3;

fn timed(command: &mut Command) -> anyhow::Result<f64> {
    let start = Instant::now();
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// `go mod download` of the demo module's requirements with a fresh module cache.
fn go_mod_download(goproxy: &str, gosumdb: &str) -> anyhow::Result<f64> {
    let work = tempfile::tempdir()?;
    std::fs::write(
        work.path().join("go.mod"),
        "module example.com/app\n\ngo 1.19\n\nrequire (\n\tgithub.com/google/uuid v1.3.0\n\tgithub.com/pkg/errors v0.9.1\n)\n",
    )?;
    timed(
        Command::new("go")
            .current_dir(work.path())
            .args(["mod", "download"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", work.path())
            .env("GOPATH", work.path().join("gopath"))
            .env("GOCACHE", work.path().join("gocache"))
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", goproxy)
            .env("GOSUMDB", gosumdb),
    )
}

/// skopeo copying `reference` into a fresh OCI layout.
fn skopeo_pull(reference: &str) -> anyhow::Result<f64> {
    let work = tempfile::tempdir()?;
    let start = Instant::now();
    skopeo_copy(reference, &work.path().join("layout")).map_err(anyhow::Error::msg)?;
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

fn speed_row(name: &str, rounds: &[(f64, f64)]) -> Row {
    let proxyd = median(&rounds.iter().map(|r| r.0).collect::<Vec<_>>());
    let direct = median(&rounds.iter().map(|r| r.1).collect::<Vec<_>>());
    let ratio = median(&rounds.iter().map(|(p, d)| d / p).collect::<Vec<_>>());
    Row {
        scenario: name.into(),
        proxyd: format!("{proxyd:.0} ms"),
        reference: format!("{direct:.0} ms (direct)"),
        ratio: Some(ratio),
        target: "report".into(),
        pass: None,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// A timed client run: against the upstream (`None`) or through the proxyd at this URL.
type Pull = Arc<dyn Fn(Option<&str>) -> anyhow::Result<f64> + Send + Sync>;

/// `ROUNDS` rounds, each with a fresh proxyd on `yaml`: `pull` directly, then twice through
/// proxyd (cold, warm); the (proxyd, direct) times of the cold pulls and of the warm ones.
async fn rounds(env: &Env, yaml: &str, pull: Pull) -> anyhow::Result<[Vec<(f64, f64)>; 2]> {
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let proxyd = env.proxyd(yaml, &[])?;
        let (url, pull) = (proxyd.url(), pull.clone());
        let (c, w, d) = blocking(move || {
            let direct = pull(None)?;
            let cold = pull(Some(&url))?;
            let warm = pull(Some(&url))?;
            Ok((cold, warm, direct))
        })
        .await?;
        cold.push((c, d));
        warm.push((w, d));
    }
    Ok([cold, warm])
}

async fn go_rows(env: &Env) -> anyhow::Result<Vec<Row>> {
    let modules = GoModule::genuine();
    let dir = tempfile::tempdir()?;
    write_dir(&modules, dir.path());
    let sumdb = SumDbProcess::start(dir.path(), "sum.proxyd.test");
    let upstream = GoProxyServer::start(&modules).await;
    let yaml = format!(
        "upstream:\n  go: {}\n  go_sumdb: {}\n  go_sumdb_name: {}\n  go_sumdb_key: {}\n",
        upstream.url(),
        sumdb.url,
        sumdb.name,
        sumdb.key
    );
    let (up, key, db) = (upstream.url(), sumdb.key.clone(), sumdb.url.clone());
    // Direct: the database named with its URL; through proxyd: by its key alone, so the go
    // command reaches it through proxyd's /go/sumdb/.
    let pull: Pull = Arc::new(move |proxyd| match proxyd {
        None => go_mod_download(&up, &format!("{key} {db}")),
        Some(proxyd) => go_mod_download(&format!("{proxyd}/go"), &key),
    });
    let [cold, warm] = rounds(env, &yaml, pull).await?;
    Ok(vec![
        speed_row(
            "10a. go mod download, cold through proxyd (speed vs direct)",
            &cold,
        ),
        speed_row("10b. go mod download, warm (fresh module cache)", &warm),
    ])
}

async fn oci_rows(env: &Env) -> anyhow::Result<Vec<Row>> {
    let registry = DistributionRegistry::start().await;
    let image = Image::demo("bench", 24 << 20);
    registry.push("demo/hello", "1.0", &image).await;
    let yaml = format!("upstream:\n  oci:\n    local: {}\n", registry.url());
    let host = registry.host();
    let pull: Pull = Arc::new(move |proxyd| match proxyd {
        None => skopeo_pull(&format!("{host}/demo/hello:1.0")),
        Some(proxyd) => skopeo_pull(&format!(
            "{}/local/demo/hello:1.0",
            proxyd.trim_start_matches("http://")
        )),
    });
    let [cold, warm] = rounds(env, &yaml, pull).await?;
    Ok(vec![
        speed_row(
            "10c. image pull (skopeo, 3 layers, 24 MiB), cold through proxyd",
            &cold,
        ),
        speed_row("10d. image pull, warm (fresh layout)", &warm),
    ])
}

/// Scenario 10.
pub(crate) async fn real_clients(env: &Env) -> anyhow::Result<Vec<Row>> {
    let mut rows = go_rows(env).await?;
    rows.extend(oci_rows(env).await?);
    Ok(rows)
}
