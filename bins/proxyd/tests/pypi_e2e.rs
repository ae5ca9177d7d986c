//! The real pip against proxyd in front of a local simple index, for each storage backend:
//! wheels, an sdist built in isolation (its build requirements come through proxyd too), and a
//! dependency; once with a modern pip asking for PEP 691 JSON from an HTML-only upstream, once
//! with pip 22.0.4 asking for PEP 503 HTML from a JSON-only upstream. Then again from the cache,
//! and again with the upstream stopped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{BIN, Backend, storage};
use proxyd_testkit::proxyd::{ProxydProcess, metric};
use proxyd_testkit::pypi_registry::{Dist, PageFormat, PyPiRegistry, build, wheel_from_disk};
use proxyd_testkit::static_server::Fault;

fn wheels_dir() -> PathBuf {
    let dir = proxyd_testkit::tools_dir().join("pypi-wheels");
    assert!(
        dir.join(".complete").exists(),
        "{} is missing: run scripts/test once (it downloads setuptools, wheel and pip 22.0.4)",
        dir.display()
    );
    dir
}

fn wheel(prefix: &str) -> PathBuf {
    std::fs::read_dir(wheels_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} wheel in the tools directory; run scripts/test"))
}

fn dists() -> Vec<Dist> {
    vec![
        Dist::wheel("demo-wheel", "1.0"),
        Dist::sdist("demo-sdist", "2.0"),
        Dist::wheel("Demo_App", "1.0").requires("demo-dep>=0.5"),
        Dist::wheel("demo-dep", "0.5"),
    ]
}

fn pip_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("PIP_FIND_LINKS")
        .env_remove("PIP_INDEX_URL")
        .env_remove("PIP_EXTRA_INDEX_URL")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
}

/// A new virtual environment; with `html_pip`, downgraded (from a local wheel) to pip 22.0.4.
fn venv(dir: &Path, html_pip: bool) -> PathBuf {
    let venv = dir.join("venv");
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .expect("python3 -m venv");
    assert!(
        out.status.success(),
        "venv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if html_pip {
        let out = pip_env(&mut Command::new(venv.join("bin/pip")))
            .args(["install", "--no-index", "--quiet"])
            .arg(wheel("pip-22.0.4"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip downgrade: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    venv
}

fn pip_install(index: &str, html_pip: bool) {
    let dir = tempfile::tempdir().unwrap();
    let venv = venv(dir.path(), html_pip);
    let out = pip_env(&mut Command::new(venv.join("bin/pip")))
        .args(["install", "--no-cache-dir", "--index-url", index])
        .args(["demo-wheel", "demo-sdist", "demo-app"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new(venv.join("bin/python"))
        .args(["-c", "import demo_wheel, demo_sdist, demo_app, demo_dep; print(demo_sdist.VALUE, demo_dep.VALUE)"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "demo-sdist 2.0 demo-dep 0.5",
        "import failed: {}\npip said:\n{}",
        String::from_utf8_lossy(&check.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

async fn pip_install_async(index: String, html_pip: bool) {
    tokio::task::spawn_blocking(move || pip_install(&index, html_pip))
        .await
        .unwrap();
}

async fn pip_cycle(backend: Backend, upstream_format: PageFormat, html_pip: bool) {
    let mut files = build(&dists());
    files.push(wheel_from_disk(&wheel("setuptools-")));
    files.push(wheel_from_disk(&wheel("wheel-")));
    let upstream = PyPiRegistry::start(upstream_format, files).await;
    let fixture = storage(backend, false).await;
    let config = format!(
        "{}metadata_ttl: 1s\nupstream:\n  pypi: {}\n",
        fixture.yaml,
        upstream.index_url()
    );
    let proxyd = ProxydProcess::start(BIN, &config, &fixture.env);
    let index = format!("{}/pypi/simple/", proxyd.url());

    pip_install_async(index.clone(), html_pip).await;
    let m = proxyd.metrics().await;
    let misses = metric(&m, "proxyd_cache_misses_total", &[("ecosystem", "pypi")]);
    // Modern pip reads PEP 658 metadata of the three demo wheels first and builds the sdist in
    // isolation, fetching setuptools and wheel through proxyd: 4 + 3 + 2. pip 22.0.4 reads no
    // metadata files and, without `wheel`, installs the sdist the legacy way: 4.
    let expected = if html_pip { 4.0 } else { 9.0 };
    assert_eq!(
        misses, expected,
        "distributions (and build requirements) fetched once: {m}"
    );
    for f in upstream
        .files()
        .iter()
        .filter(|f| f.project.starts_with("demo"))
    {
        assert_eq!(
            upstream.server.hits(&format!("/files/{}", f.filename)),
            1,
            "{} fetched once",
            f.filename
        );
        if !html_pip && f.metadata.is_some() {
            let path = format!("/files/{}.metadata", f.filename);
            assert_eq!(
                upstream.server.hits(&path),
                1,
                "PEP 658 metadata of {} came through proxyd",
                f.filename
            );
        }
    }

    pip_install_async(index.clone(), html_pip).await;
    let m = proxyd.metrics().await;
    assert_eq!(
        metric(&m, "proxyd_cache_misses_total", &[("ecosystem", "pypi")]),
        misses,
        "no new misses"
    );
    assert!(metric(&m, "proxyd_cache_hits_total", &[("ecosystem", "pypi")]) >= 4.0);
    let redirects = metric(
        &m,
        "proxyd_direct_serve_total",
        &[("ecosystem", "pypi"), ("outcome", "redirect")],
    );
    assert_eq!(
        redirects > 0.0,
        fixture.redirects,
        "redirects: {redirects}\n{m}"
    );

    upstream.server.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    pip_install_async(index, html_pip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_json_from_html_upstream_on_filesystem() {
    pip_cycle(Backend::Fs, PageFormat::Html, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_html_from_json_upstream_on_filesystem() {
    pip_cycle(Backend::Fs, PageFormat::Json, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_json_on_s3_with_direct_serve() {
    pip_cycle(Backend::S3, PageFormat::Html, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_html_on_azure_with_direct_serve() {
    pip_cycle(Backend::Azure, PageFormat::Json, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_pages_keep_hashes_metadata_and_normalise_names() {
    let files = build(&dists());
    let upstream = PyPiRegistry::start(PageFormat::Html, files.clone()).await;
    let proxyd = ProxydProcess::start(
        BIN,
        &format!("upstream:\n  pypi: {}\n", upstream.index_url()),
        &[],
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let redirect = client
        .get(format!("{}/pypi/simple/Demo_App/", proxyd.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 301);
    assert_eq!(
        redirect.headers()["location"],
        format!("{}/pypi/simple/demo-app/", proxyd.url())
    );
    let no_slash = client
        .get(format!("{}/pypi/simple/demo-app", proxyd.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(no_slash.status(), 301);

    let json: serde_json::Value = client
        .get(format!("{}/pypi/simple/demo-wheel/", proxyd.url()))
        .header("accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file = &json["files"][0];
    let built = &files[0];
    assert_eq!(
        file["url"],
        format!(
            "{}/pypi/packages/demo-wheel/{}",
            proxyd.url(),
            built.filename
        )
    );
    assert_eq!(file["hashes"]["sha256"], hex_sha256(&built.bytes));
    assert_eq!(file["requires-python"], ">=3.7");
    assert_eq!(
        file["core-metadata"]["sha256"],
        hex_sha256(built.metadata.as_ref().unwrap())
    );

    let html = client
        .get(format!("{}/pypi/simple/demo-wheel/", proxyd.url()))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(html.headers()["content-type"], "text/html");
    let html = html.text().await.unwrap();
    assert!(
        html.contains(&format!("#sha256={}", hex_sha256(&built.bytes))),
        "{html}"
    );
    assert!(html.contains("data-requires-python=\"&gt;=3.7\""));

    // PEP 658 metadata through proxyd, verified and cached.
    let meta_url = format!(
        "{}/pypi/packages/demo-wheel/{}.metadata",
        proxyd.url(),
        built.filename
    );
    let meta = client.get(&meta_url).send().await.unwrap();
    assert_eq!(meta.status(), 200);
    assert_eq!(meta.bytes().await.unwrap(), built.metadata.clone().unwrap());
    client
        .get(&meta_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        upstream
            .server
            .hits(&format!("/files/{}.metadata", built.filename)),
        1
    );

    // A file name that is not on the upstream page is a 404 and nothing is fetched.
    let resp = client
        .get(format!(
            "{}/pypi/packages/demo-wheel/evil.whl",
            proxyd.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(upstream.server.hits("/files/evil.whl"), 0);
    let resp = client
        .get(format!(
            "{}/pypi/packages/demo-wheel/..%2f..%2fx.whl",
            proxyd.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_distribution_is_refused_and_not_cached() {
    let files = build(&dists()[..1]);
    let upstream = PyPiRegistry::start(PageFormat::Html, files.clone()).await;
    upstream
        .server
        .set_fault(&format!("/files/{}", files[0].filename), Fault::Corrupt);
    let proxyd = ProxydProcess::start(
        BIN,
        &format!("upstream:\n  pypi: {}\n", upstream.index_url()),
        &[],
    );
    let url = format!(
        "{}/pypi/packages/demo-wheel/{}",
        proxyd.url(),
        files[0].filename
    );
    let body = reqwest::get(&url).await.unwrap().bytes().await;
    assert!(
        body.is_err() || body.unwrap() != files[0].bytes,
        "a corrupt file is never served whole"
    );
    proxyd.assert_refused_as_corrupt("sha256").await;
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
