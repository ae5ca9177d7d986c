//! The real npm client against proxyd in front of a local registry, for each storage backend:
//! install, install again from an empty npm cache (hits, redirects), then install with the
//! upstream stopped.

use std::time::Duration;

mod common;

use common::{BIN, Backend, npm_install, packages, storage};
use proxyd_testkit::npm_registry::NpmRegistry;
use proxyd_testkit::proxyd::{ProxydProcess, metric};

async fn npm_install_async(registry: String) {
    tokio::task::spawn_blocking(move || npm_install(&registry))
        .await
        .unwrap();
}

async fn install_cycle(backend: Backend, with_public_base: bool) {
    let case = storage(backend, with_public_base).await;
    let registry = NpmRegistry::start(&packages()).await;
    let config = format!(
        "{}metadata_ttl: 1s\nupstream:\n  npm: {}\n",
        case.yaml,
        registry.url()
    );
    let proxyd = ProxydProcess::start(BIN, &config, &case.env);
    let npm_registry = format!("{}/npm/", proxyd.url());

    npm_install_async(npm_registry.clone()).await;
    let m = proxyd.metrics().await;
    assert_eq!(
        metric(&m, "proxyd_cache_misses_total", &[("ecosystem", "npm")]),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "proxyd_cache_hits_total", &[("ecosystem", "npm")]),
        0.0
    );

    npm_install_async(npm_registry.clone()).await;
    let m = proxyd.metrics().await;
    assert_eq!(
        metric(&m, "proxyd_cache_misses_total", &[("ecosystem", "npm")]),
        4.0,
        "no new misses"
    );
    assert!(
        metric(&m, "proxyd_cache_hits_total", &[("ecosystem", "npm")]) >= 4.0,
        "{m}"
    );
    let redirects = metric(
        &m,
        "proxyd_direct_serve_total",
        &[("ecosystem", "npm"), ("outcome", "redirect")],
    );
    let active = metric(&m, "proxyd_direct_serve_active", &[]);
    if case.redirects {
        assert!(
            redirects >= 4.0,
            "cached tarballs are redirected:\n{m}\n{}",
            proxyd.log()
        );
        assert_eq!(active, 1.0);
    } else {
        assert_eq!(redirects, 0.0);
        assert_eq!(active, 0.0);
    }
    for (i, p) in packages().iter().enumerate() {
        assert_eq!(
            registry.hits(&NpmRegistry::tarball_path(p)),
            1,
            "tarball {i} fetched once upstream"
        );
    }

    // A GET of a cached tarball: redirect (pointing at the public base when set) or stream;
    // HEAD never redirects.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!(
        "{}/npm{}",
        proxyd.url(),
        NpmRegistry::tarball_path(&packages()[1])
    );
    let resp = client.get(&url).send().await.unwrap();
    if case.redirects {
        assert_eq!(resp.status(), 302);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let cc = resp.headers()["cache-control"].to_str().unwrap();
        assert!(cc.starts_with("private, max-age="), "{cc}");
        let max_age: u64 = cc.rsplit('=').next().unwrap().parse().unwrap();
        assert!(max_age <= 450, "at most half of the 15m lifetime: {cc}");
        // A signature a few seconds old is handed out again (no signing per request).
        let again = client.get(&url).send().await.unwrap();
        assert_eq!(again.headers()["location"].to_str().unwrap(), location);
        if let Some(base) = &case.public_base {
            assert!(
                location.starts_with(base.as_str()),
                "{location} should start with {base}"
            );
        }
        let fetched = reqwest::get(&location).await.unwrap();
        assert_eq!(fetched.status(), 200);
        assert_eq!(
            fetched.headers()["content-type"],
            "application/octet-stream"
        );
        assert_eq!(
            fetched.bytes().await.unwrap(),
            registry.tarball(&packages()[1])
        );
    } else {
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.bytes().await.unwrap(),
            registry.tarball(&packages()[1])
        );
    }
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200, "HEAD is answered locally");
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        registry.tarball(&packages()[1]).len().to_string()
    );

    // Upstream gone: metadata is stale (TTL 1s) and served anyway; tarballs come from the cache.
    registry.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    npm_install_async(npm_registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_installs_through_filesystem_storage() {
    install_cycle(Backend::Fs, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_installs_through_s3_with_direct_serve() {
    install_cycle(Backend::S3, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_installs_through_s3_with_public_base_url() {
    install_cycle(Backend::S3, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_installs_through_azure_with_direct_serve() {
    install_cycle(Backend::Azure, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_installs_through_azure_with_public_base_url() {
    install_cycle(Backend::Azure, true).await;
}
