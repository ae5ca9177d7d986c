//! The real cargo against proxyd in front of a local sparse index, by source replacement, for
//! each storage backend: `cargo fetch` and `cargo build` with a fresh CARGO_HOME, then again
//! with a second fresh CARGO_HOME after the upstream is stopped.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, Backend, storage};
use proxyd_testkit::cargo_registry::{CargoRegistry, Crate};
use proxyd_testkit::proxyd::{ProxydProcess, metric};
use proxyd_testkit::static_server::Fault;

fn crates() -> Vec<Crate> {
    vec![
        Crate::new("tinycrate", "0.0.9").yanked(),
        Crate::new("tinycrate", "0.1.0"),
        Crate::new("tinydep", "0.1.0").depends_on("tinycrate", "0.1"),
    ]
}

/// `cargo fetch` then `cargo run` of a project depending on `tinydep`, with a new CARGO_HOME
/// whose crates-io source is replaced by proxyd.
fn cargo_build(proxyd_url: &str) {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("cargo-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[source.crates-io]\nreplace-with = \"proxyd\"\n\n[source.proxyd]\nregistry = \"sparse+{proxyd_url}/cargo/\"\n\n[net]\nretry = 0\n"
        ),
    )
    .unwrap();
    let project = work.path().join("app");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\ntinydep = \"0.1\"\n",
    )
    .unwrap();
    std::fs::write(
        project.join("src/main.rs"),
        "fn main() { print!(\"{} {}\", tinydep::id(), tinydep::tinycrate::id()); }\n",
    )
    .unwrap();
    let cargo = |args: &[&str]| {
        let out = Command::new("cargo")
            .current_dir(&project)
            .args(args)
            .env("CARGO_HOME", &home)
            .env("CARGO_TARGET_DIR", work.path().join("target"))
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .output()
            .expect("cargo");
        assert!(
            out.status.success(),
            "cargo {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cargo(&["fetch"]);
    cargo(&["build", "--offline"]);
    let printed = cargo(&["run", "--quiet", "--offline"]);
    assert_eq!(printed, "tinydep@0.1.0 tinycrate@0.1.0");
    assert!(lockfile_has(
        &project.join("Cargo.lock"),
        "tinycrate",
        "0.1.0"
    ));
}

fn lockfile_has(lock: &Path, name: &str, version: &str) -> bool {
    let text = std::fs::read_to_string(lock).unwrap();
    text.contains(&format!("name = \"{name}\"\nversion = \"{version}\""))
}

async fn cargo_build_async(url: String) {
    tokio::task::spawn_blocking(move || cargo_build(&url))
        .await
        .unwrap();
}

async fn cargo_cycle(backend: Backend) {
    let upstream = CargoRegistry::start(&crates()).await;
    let fixture = storage(backend, false).await;
    let config = format!(
        "{}metadata_ttl: 1s\nupstream:\n  cargo: {}\n",
        fixture.yaml,
        upstream.index_url()
    );
    let proxyd = ProxydProcess::start(BIN, &config, &fixture.env);

    cargo_build_async(proxyd.url()).await;
    let m = proxyd.metrics().await;
    assert_eq!(
        metric(&m, "proxyd_cache_misses_total", &[("ecosystem", "cargo")]),
        2.0,
        "{m}"
    );
    for (name, version) in [("tinycrate", "0.1.0"), ("tinydep", "0.1.0")] {
        assert_eq!(
            upstream
                .server
                .hits(&CargoRegistry::crate_path(name, version)),
            1
        );
    }

    // Index files pass through byte for byte (the yanked line included) and revalidate.
    let client = reqwest::Client::new();
    let index_url = format!("{}/cargo/ti/ny/tinycrate", proxyd.url());
    let resp = client.get(&index_url).send().await.unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(
        resp.bytes().await.unwrap(),
        upstream.index_file("tinycrate")
    );
    let again = client
        .get(&index_url)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let since = client
        .get(&index_url)
        .header(
            "if-modified-since",
            proxyd_testkit::static_server::LAST_MODIFIED,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        since.status(),
        304,
        "If-Modified-Since against upstream's Last-Modified"
    );
    let older = client
        .get(&index_url)
        .header("if-modified-since", "Mon, 13 Nov 2023 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(older.status(), 200);
    let config: serde_json::Value = client
        .get(format!("{}/cargo/config.json", proxyd.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config["dl"],
        format!(
            "{}/cargo/crates/{{crate}}/{{version}}/download",
            proxyd.url()
        )
    );

    upstream.server.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    cargo_build_async(proxyd.url()).await;
    let m = proxyd.metrics().await;
    assert!(
        metric(&m, "proxyd_cache_hits_total", &[("ecosystem", "cargo")]) >= 2.0,
        "{m}"
    );
    let redirects = metric(
        &m,
        "proxyd_direct_serve_total",
        &[("ecosystem", "cargo"), ("outcome", "redirect")],
    );
    assert_eq!(redirects >= 2.0, fixture.redirects, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_builds_through_filesystem_storage() {
    cargo_cycle(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_builds_through_s3_with_direct_serve() {
    cargo_cycle(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_builds_through_azure_with_direct_serve() {
    cargo_cycle(Backend::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_crate_is_refused_and_not_cached() {
    let upstream = CargoRegistry::start(&crates()).await;
    upstream.server.set_fault(
        &CargoRegistry::crate_path("tinycrate", "0.1.0"),
        Fault::Corrupt,
    );
    let proxyd = ProxydProcess::start(
        BIN,
        &format!("upstream:\n  cargo: {}\n", upstream.index_url()),
        &[],
    );
    let url = format!("{}/cargo/crates/tinycrate/0.1.0/download", proxyd.url());
    let body = reqwest::get(&url).await.unwrap().bytes().await;
    let archive = Crate::new("tinycrate", "0.1.0").archive();
    assert!(
        body.is_err() || body.unwrap() != archive,
        "a corrupt crate is never served whole"
    );
    proxyd.assert_refused_as_corrupt("sha256").await;
    // Bad paths never reach upstream.
    let before = upstream.server.total_hits();
    for path in [
        "/cargo/ti/ny/TinyCrate",
        "/cargo/xx/yy/tinycrate",
        "/cargo/crates/../x/1/download",
        "/cargo/crates/tinycrate/..%2f/download",
    ] {
        let status = reqwest::get(format!("{}{path}", proxyd.url()))
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
    }
    assert_eq!(upstream.server.total_hits(), before);
}
