//! proxyd's serving rules over HTTP, against a local registry: single-flight, integrity at
//! ingest, broken downloads, objects deleted behind its back, conditional and range requests,
//! bad input, disabled ecosystems, check-config and graceful shutdown.

use std::process::Command;
use std::time::Duration;

use proxyd_testkit::npm_registry::{Fault, NpmRegistry, Package};
use proxyd_testkit::proxyd::{ProxydProcess, metric};

const BIN: &str = env!("CARGO_BIN_EXE_proxyd");

async fn start(packages: &[Package], extra: &str) -> (NpmRegistry, ProxydProcess) {
    let registry = NpmRegistry::start(packages).await;
    let config = format!("{extra}upstream:\n  npm: {}\n", registry.url());
    let proxyd = ProxydProcess::start(BIN, &config, &[]);
    (registry, proxyd)
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The whole body of a GET of `url` (redirects not followed).
async fn get_bytes(url: impl reqwest::IntoUrl) -> proxyd_ecosystem::Bytes {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn tarball_url(proxyd: &ProxydProcess, p: &Package) -> String {
    format!("{}/npm{}", proxyd.url(), NpmRegistry::tarball_path(p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_make_one_upstream_request() {
    let pkg = Package::new("popular", "1.0.0").padded(2_000_000);
    let (registry, proxyd) = start(std::slice::from_ref(&pkg), "").await;
    // Slow upstream, so all fifty arrive while the fetch is in flight.
    registry.set_fault(
        &NpmRegistry::tarball_path(&pkg),
        Fault::Delay(Duration::from_millis(300)),
    );
    let expected = registry.tarball(&pkg);
    let url = tarball_url(&proxyd, &pkg);
    let client = client();
    let requests = (0..50).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap()
        })
    });
    for body in futures::future::join_all(requests).await {
        assert_eq!(body.unwrap(), expected);
    }
    assert_eq!(
        registry.hits(&NpmRegistry::tarball_path(&pkg)),
        1,
        "one upstream request for 50 clients"
    );
    let m = proxyd.metrics().await;
    assert_eq!(
        metric(&m, "proxyd_cache_misses_total", &[("ecosystem", "npm")]),
        1.0
    );
    // Every request is timed: the waits for the 300 ms upstream land past 0.25 s.
    let timed = |name: &str, le: Option<&str>| {
        let mut labels = vec![("ecosystem", "npm")];
        labels.extend(le.map(|le| ("le", le)));
        metric(&m, name, &labels)
    };
    assert_eq!(timed("proxyd_request_duration_seconds_count", None), 50.0);
    assert_eq!(
        timed("proxyd_request_duration_seconds_bucket", Some("+Inf")),
        50.0
    );
    assert_eq!(
        timed("proxyd_request_duration_seconds_bucket", Some("0.25")),
        0.0,
        "{m}"
    );
    assert!(timed("proxyd_request_duration_seconds_sum", None) >= 50.0 * 0.3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_mismatch_is_refused_and_not_cached() {
    let pkg = Package::new("tampered", "1.0.0").padded(200_000);
    let (registry, proxyd) = start(std::slice::from_ref(&pkg), "").await;
    registry.set_fault(&NpmRegistry::tarball_path(&pkg), Fault::Corrupt);
    let resp = client()
        .get(tarball_url(&proxyd, &pkg))
        .send()
        .await
        .unwrap();
    let body = resp.bytes().await;
    assert!(
        body.is_err() || body.unwrap().len() < registry.tarball(&pkg).len(),
        "never a clean full body"
    );
    proxyd.assert_refused_as_corrupt("sha512").await;
    assert!(
        files_under(&proxyd.artifacts_dir()).is_empty(),
        "nothing stored, not even a temporary file"
    );
    let m = proxyd.metrics().await;
    assert!(
        metric(
            &m,
            "proxyd_upstream_errors_total",
            &[("ecosystem", "npm"), ("kind", "artifact")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_upstream_connection_aborts_the_client_and_caches_nothing() {
    let pkg = Package::new("flaky", "1.0.0").padded(300_000);
    let (registry, proxyd) = start(std::slice::from_ref(&pkg), "").await;
    registry.set_fault(&NpmRegistry::tarball_path(&pkg), Fault::DropMidBody);
    let resp = client().get(tarball_url(&proxyd, &pkg)).send().await;
    let complete = match resp {
        Ok(r) => r
            .bytes()
            .await
            .map(|b| b.len() == registry.tarball(&pkg).len())
            .unwrap_or(false),
        Err(_) => false,
    };
    assert!(!complete, "a broken download must not look complete");
    assert_eq!(proxyd.stats().await["cached_artifacts"], 0);
    // Once upstream behaves, the artifact is fetched and cached.
    registry.set_fault(
        &NpmRegistry::tarball_path(&pkg),
        Fault::Delay(Duration::ZERO),
    );
    let body = get_bytes(tarball_url(&proxyd, &pkg)).await;
    assert_eq!(body, registry.tarball(&pkg));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_deleted_behind_proxyds_back_is_fetched_again() {
    let pkg = Package::new("vanishing", "1.0.0");
    let (registry, proxyd) = start(std::slice::from_ref(&pkg), "").await;
    let url = tarball_url(&proxyd, &pkg);
    assert_eq!(get_bytes(&url).await, registry.tarball(&pkg));
    proxyd.wait_cached(1).await;
    let stored = proxyd
        .artifacts_dir()
        .join("npm/vanishing/-/vanishing-1.0.0.tgz");
    std::fs::remove_file(&stored).unwrap();
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), registry.tarball(&pkg));
    assert_eq!(
        registry.hits(&NpmRegistry::tarball_path(&pkg)),
        2,
        "fetched again after the deletion"
    );
    proxyd.wait_cached(1).await;
    for _ in 0..100 {
        if stored.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stored.exists(), "stored again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_honours_range_and_conditionals() {
    let pkg = Package::new("ranged", "1.0.0").padded(50_000);
    let (registry, proxyd) = start(std::slice::from_ref(&pkg), "").await;
    let url = tarball_url(&proxyd, &pkg);
    let full = registry.tarball(&pkg);
    get_bytes(&url).await; // miss
    let hit = client().get(&url).send().await.unwrap();
    assert_eq!(hit.status(), 200);
    let etag = hit.headers()["etag"].to_str().unwrap().to_owned();
    let last_modified = hit.headers()["last-modified"].to_str().unwrap().to_owned();
    assert_eq!(
        hit.headers()["content-length"].to_str().unwrap(),
        full.len().to_string()
    );
    assert_eq!(hit.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        hit.headers()["content-disposition"],
        "attachment; filename=\"ranged-1.0.0.tgz\""
    );

    let part = client()
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{}", full.len())
    );
    assert_eq!(part.bytes().await.unwrap(), full.slice(10..20));
    let bad = client()
        .get(&url)
        .header("range", format!("bytes={}-", full.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 416);
    let cond = client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cond.status(), 304);
    let since = client()
        .get(&url)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(since.status(), 304);

    // Packuments honour If-None-Match too.
    let doc_url = format!("{}/npm/ranged", proxyd.url());
    let doc = client().get(&doc_url).send().await.unwrap();
    let doc_etag = doc.headers()["etag"].to_str().unwrap().to_owned();
    let json: serde_json::Value = doc.json().await.unwrap();
    assert_eq!(json["versions"]["1.0.0"]["dist"]["tarball"], url);
    let again = client()
        .get(&doc_url)
        .header("if-none-match", doc_etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_never_reach_upstream() {
    let pkg = Package::new("fine", "1.0.0");
    let (registry, proxyd) = start(std::slice::from_ref(&pkg), "").await;
    let c = client();
    for (path, status) in [
        ("/npm/..%2f..%2fetc%2fpasswd", 400),
        ("/npm/.hidden", 400),
        ("/npm/a%20b", 400),
        ("/npm/fine/-/..%2fx.tgz", 400),
        ("/npm/fine/-/fine-1.0.0.zip", 400),
        ("/npm/@a/b/c", 400),
        ("/npm/fine/-/.x.tgz", 400),
        ("/npm/a%2e%2eb", 400),
        ("/unknown/thing", 404),
    ] {
        let resp = c
            .get(format!("{}{path}", proxyd.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let text = resp.text().await.unwrap();
        assert_eq!(
            text.lines().count(),
            1,
            "one-line reason for {path}: {text:?}"
        );
    }
    let post = c
        .post(format!("{}/npm/fine", proxyd.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(registry.total_hits(), 0, "nothing reached upstream");
    // A tarball no version of the package has: 404 after one packument lookup, no download.
    let resp = c
        .get(format!("{}/npm/fine/-/fine-9.9.9.tgz", proxyd.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(registry.hits("/fine/-/fine-9.9.9.tgz"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecosystem_without_upstream_answers_503_naming_the_setting() {
    let proxyd = ProxydProcess::start(BIN, "", &[]);
    let resp = reqwest::get(format!("{}/npm/lodash", proxyd.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("upstream.npm"));
    let health: serde_json::Value = reqwest::get(format!("{}/health", proxyd.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_flushes_hits() {
    let pkg = Package::new("counted", "1.0.0");
    let (_registry, mut proxyd) = start(std::slice::from_ref(&pkg), "").await;
    let url = tarball_url(&proxyd, &pkg);
    for _ in 0..3 {
        get_bytes(&url).await;
    }
    let status = proxyd.stop();
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status}\n{}",
        proxyd.log()
    );
    use proxyd_cache::ArtifactIndex;
    let index = proxyd_index_sqlite::SqliteIndex::open(&proxyd.dir().join("proxyd.db")).unwrap();
    let totals = index.totals().await.unwrap();
    assert_eq!(totals.iter().map(|t| t.artifacts).sum::<u64>(), 1);
    let victim = index.least_recently_used(1).await.unwrap().remove(0);
    let record = index.artifact(&victim.key).await.unwrap().unwrap();
    assert_eq!(
        record.hit_count, 2,
        "hits flushed at shutdown (first request was the miss)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_closes_idle_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pkg = Package::new("draining", "1.0.0").padded(100_000);
    // Idle connections are not closed for idling during the test.
    let (registry, proxyd) = start(
        std::slice::from_ref(&pkg),
        "server:\n  header_read_timeout: 60s\n",
    )
    .await;
    registry.set_fault(
        &NpmRegistry::tarball_path(&pkg),
        Fault::Delay(Duration::from_millis(1500)),
    );
    // A kept-alive connection, idle after one request.
    let addr = proxyd.url().trim_start_matches("http://").to_owned();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: proxyd\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // A download waiting for the slow upstream when SIGTERM arrives.
    let url = tarball_url(&proxyd, &pkg);
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = tokio::task::spawn_blocking(move || {
        let mut proxyd = proxyd;
        let started = std::time::Instant::now();
        let status = proxyd.stop();
        (status, started.elapsed(), proxyd)
    });
    let response = in_flight.await.unwrap().expect("answered during the drain");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), registry.tarball(&pkg));
    // The idle connection is closed without waiting for the drain's 30 s limit.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was closed");
    let (status, took, proxyd) = stopping.await.unwrap();
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status}\n{}",
        proxyd.log()
    );
    assert!(
        took < Duration::from_secs(20),
        "exited when its last request finished, not at the drain limit: {took:?}"
    );
}

#[test]
fn check_config_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "lisen: x\nstorage:\n  direct_serve: maybe\n  max_size: lots\nupstream:\n  nmp: http://x\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "lisen",
        "storage.direct_serve",
        "storage.max_size",
        "upstream.nmp",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "upstream:\n  npm: http://u:secret@127.0.0.1:1/\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("upstream.npm = http://<redacted>@127.0.0.1:1"),
        "{text}"
    );
    assert!(!text.contains("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_from_metadata_to_private_addresses_are_refused() {
    let (registry, proxyd) = start(&[], "").await;
    // Another server on loopback, which is not the configured upstream's origin.
    let inside = proxyd_testkit::static_server::StaticServer::start().await;
    inside.put("/secret-1.0.0.tgz", "internal", "application/octet-stream");
    for (name, tarball) in [
        ("sneaky", format!("{}/secret-1.0.0.tgz", inside.url())),
        (
            "metadata",
            "http://169.254.169.254/latest/metadata-1.0.0.tgz".to_owned(),
        ),
    ] {
        let file = tarball.rsplit('/').next().unwrap().to_owned();
        let packument = serde_json::json!({
            "name": name,
            "versions": {"1.0.0": {"name": name, "version": "1.0.0", "dist": {"tarball": tarball}}},
        });
        registry.server().put(
            &format!("/{name}"),
            packument.to_string(),
            "application/json",
        );
        let resp = client()
            .get(format!("{}/npm/{name}/-/{file}", proxyd.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "{name}");
        let text = resp.text().await.unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("not a public address"), "{text}");
    }
    assert_eq!(inside.total_hits(), 0, "the private server was never asked");
    assert_eq!(proxyd.stats().await["cached_artifacts"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_npm_instances_have_their_own_mount_keys_and_label() {
    let public = NpmRegistry::start(&[Package::new("left", "1.0.0")]).await;
    let internal = NpmRegistry::start(&[Package::new("right", "1.0.0")]).await;
    let config = format!(
        "upstream:\n  npm: {}\necosystems:\n  npm-internal:\n    kind: npm\n    upstream: {}\n",
        public.url(),
        internal.url()
    );
    let proxyd = ProxydProcess::start(BIN, &config, &[]);
    let doc: serde_json::Value = client()
        .get(format!("{}/npm-internal/right", proxyd.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tarball = doc["versions"]["1.0.0"]["dist"]["tarball"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        tarball,
        format!("{}/npm-internal/right/-/right-1.0.0.tgz", proxyd.url())
    );
    let body = get_bytes(&tarball).await;
    assert_eq!(body, internal.tarball(&Package::new("right", "1.0.0")));
    proxyd.wait_cached(1).await;
    assert!(
        proxyd
            .artifacts_dir()
            .join("npm-internal/right/-/right-1.0.0.tgz")
            .exists(),
        "stored under the instance's prefix"
    );
    let missing = client()
        .get(format!("{}/npm/right", proxyd.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.status(),
        404,
        "the other instance's upstream has no such package"
    );
    let m = proxyd.metrics().await;
    assert_eq!(
        metric(
            &m,
            "proxyd_cache_misses_total",
            &[("ecosystem", "npm-internal")]
        ),
        1.0
    );
    assert_eq!(
        proxyd.stats().await["ecosystems"]["npm-internal"]["cached_artifacts"],
        1
    );
    assert_eq!(
        public.total_hits(),
        1,
        "only the packument lookup of /npm/right"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_downloads_streamed_for_want_of_signing_are_counted() {
    // Direct-serve on, but the filesystem cannot sign: each cached download is counted as a
    // fallback (the cause is logged once).
    let pkg = Package::new("unsigned", "1.0.0");
    let dir = tempfile::tempdir().unwrap();
    let storage = format!(
        "storage:\n  url: file://{}\n  direct_serve: true\n",
        dir.path().display()
    );
    let (_registry, proxyd) = start(std::slice::from_ref(&pkg), &storage).await;
    let url = tarball_url(&proxyd, &pkg);
    for _ in 0..3 {
        let resp = client().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let m = proxyd.metrics().await;
    assert_eq!(
        metric(
            &m,
            "proxyd_direct_serve_total",
            &[("ecosystem", "npm"), ("outcome", "fallback_unsupported")]
        ),
        2.0,
        "two hits after the miss"
    );
    assert_eq!(
        proxyd
            .log()
            .matches("cannot sign; cached downloads are streamed")
            .count(),
        2,
        "once at start-up, once at the first fallback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstreams_are_trusted_through_the_system_store_or_ca_file() {
    let ca = proxyd_testkit::tls::TestCa::new();
    let upstream = proxyd_testkit::static_server::StaticServer::start_tls(&ca).await;
    let tarball = proxyd_testkit::tar_gz(&[("package/index.js".into(), b"1".to_vec())]);
    let packument = serde_json::json!({
        "name": "secure",
        "versions": {"1.0.0": {"name": "secure", "version": "1.0.0",
            "dist": {"tarball": format!("{}/secure/-/secure-1.0.0.tgz", upstream.https_url())}}},
    });
    upstream.put("/secure", packument.to_string(), "application/json");
    upstream.put(
        "/secure/-/secure-1.0.0.tgz",
        tarball.clone(),
        "application/octet-stream",
    );
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.ca_pem()).unwrap();
    let settings = format!("upstream:\n  npm: {}\n", upstream.https_url());

    // Not trusted: the reason names the cause.
    let untrusted = ProxydProcess::start(BIN, &settings, &[]);
    let resp = client()
        .get(format!("{}/npm/secure", untrusted.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(text.contains("issuer"), "{text}");
    assert!(
        untrusted.log().contains("issuer"),
        "the log names the cause too"
    );

    // Trusted through upstream.ca_file, or through the system store (SSL_CERT_FILE).
    let with_file = format!("{settings}  ca_file: {}\n", ca_path.display());
    let with_env_var = [("SSL_CERT_FILE", ca_path.display().to_string())];
    for (config, env) in [
        (with_file.as_str(), &[][..]),
        (settings.as_str(), &with_env_var[..]),
    ] {
        let proxyd = ProxydProcess::start(BIN, config, env);
        let doc = client()
            .get(format!("{}/npm/secure", proxyd.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(doc.status(), 200, "{}", proxyd.log());
        let body = get_bytes(format!("{}/npm/secure/-/secure-1.0.0.tgz", proxyd.url())).await;
        assert_eq!(body, tarball);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_cannot_hold_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = "server:\n  header_read_timeout: 1s\n  max_connections: 20\n";
    let proxyd = ProxydProcess::start(BIN, config, &[]);
    let addr = proxyd.url().trim_start_matches("http://").to_owned();
    // Twenty clients that never finish their headers (a byte every 300 ms), twenty that
    // connect and say nothing, and twenty that send one request, read the answer and then keep
    // the connection idle: together more than the cap.
    let mut hostile = Vec::new();
    for n in 0..60 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        hostile.push(tokio::spawn(async move {
            match n % 3 {
                0 => {
                    let _ = stream.write_all(b"GET /health HTTP/1.1\r\n").await;
                    for _ in 0..30 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        if stream.write_all(b"X").await.is_err() {
                            break;
                        }
                    }
                }
                1 => {}
                _ => {
                    let request = b"GET /health HTTP/1.1\r\nhost: proxyd\r\n\r\n";
                    if stream.write_all(request).await.is_ok() {
                        let mut head = [0u8; 12];
                        if stream.read_exact(&mut head).await.is_ok() {
                            assert_eq!(&head, b"HTTP/1.1 200");
                        }
                    }
                }
            }
            // proxyd closes it (EOF, a 408, or a reset), long before the client would stop.
            let mut buf = [0u8; 256];
            let closed = tokio::time::timeout(Duration::from_secs(8), async {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            closed.is_ok()
        }));
    }
    // A normal client is still answered.
    let answered = tokio::time::timeout(
        Duration::from_secs(8),
        client().get(format!("{}/health", proxyd.url())).send(),
    )
    .await
    .expect("a normal client is answered while hostile ones hold connections")
    .unwrap();
    assert_eq!(answered.status(), 200);
    for closed in futures::future::join_all(hostile).await {
        assert!(closed.unwrap(), "proxyd closed the hostile connection");
    }
}

/// The hidden temporary files of puts under `dir`.
fn temporary_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with('.') && (name.contains(".tmp-") || name.contains(".metatmp-"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_download_leaves_nothing_after_restart() {
    let pkg = Package::new("crashing", "1.0.0").padded(2_000_000);
    let (registry, mut proxyd) = start(std::slice::from_ref(&pkg), "").await;
    registry.set_fault(&NpmRegistry::tarball_path(&pkg), Fault::StallMidBody);
    let url = tarball_url(&proxyd, &pkg);
    let download = tokio::spawn(async move { client().get(&url).send().await });
    let mut leftovers = Vec::new();
    for _ in 0..100 {
        leftovers = temporary_files(&proxyd.artifacts_dir());
        if !leftovers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!leftovers.is_empty(), "the download is being written");
    proxyd.kill(); // SIGKILL in the middle of the put
    download.abort();
    assert!(
        leftovers.iter().all(|p| p.exists()),
        "a crash leaves its temporary file"
    );
    registry.set_fault(
        &NpmRegistry::tarball_path(&pkg),
        Fault::Delay(Duration::ZERO),
    );
    proxyd.restart();
    let mut cleaned = false;
    for _ in 0..100 {
        if temporary_files(&proxyd.artifacts_dir()).is_empty() {
            cleaned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cleaned, "start-up removed what the crash left");
    assert!(
        !proxyd
            .artifacts_dir()
            .join("npm/crashing/-/crashing-1.0.0.tgz")
            .exists(),
        "no partial object"
    );
    let body = get_bytes(tarball_url(&proxyd, &pkg)).await;
    assert_eq!(body, registry.tarball(&pkg));
}

/// proxyd on S3 (s3s-fs) reached through a forwarder that can take it down, with `extra`
/// settings.
async fn behind_a_gate(
    extra: &str,
) -> (
    proxyd_testkit::emulators::S3sFs,
    proxyd_testkit::forward::TcpForwarder,
    ProxydProcess,
) {
    use proxyd_testkit::emulators::S3sFs;
    let s3 = S3sFs::start();
    s3.create_bucket("artifacts");
    let gate =
        proxyd_testkit::forward::TcpForwarder::start(([127, 0, 0, 1], s3.port()).into()).await;
    let config = format!(
        "storage:\n  url: \"s3://artifacts?region=us-east-1&endpoint={}&s3ForcePathStyle=true\"\n{extra}",
        gate.base_url()
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", S3sFs::ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", S3sFs::SECRET_KEY.to_owned()),
    ];
    let proxyd = ProxydProcess::start(BIN, &config, &env);
    (s3, gate, proxyd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_not_failed_while_storage_is_down() {
    let (_s3, gate, proxyd) = behind_a_gate("").await;
    let health = || async {
        let resp = reqwest::get(format!("{}/health", proxyd.url()))
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<serde_json::Value>().await.unwrap())
    };
    let (status, body) = health().await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ok")),
        "{body}"
    );
    gate.set_down(true);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, body) = health().await;
    assert_eq!(status, 200, "a load balancer keeps a degraded node: {body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["storage"]["status"], "error");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    gate.set_down(false);
    let mut healed = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if health().await.1["status"] == "ok" {
            healed = true;
            break;
        }
    }
    assert!(healed, "back to ok by itself when storage returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_outage_turns_proxyd_into_a_plain_proxy() {
    let pkg = Package::new("outage", "1.0.0").padded(300_000);
    let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
    let (_s3, gate, proxyd) =
        behind_a_gate(&format!("upstream:\n  npm: {}\n", registry.url())).await;
    let url = tarball_url(&proxyd, &pkg);
    let get = || async {
        let resp = client().get(&url).send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await)
    };
    // A miss while storage is down: served from the upstream, whole, not cached.
    gate.set_down(true);
    let (status, body) = get().await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), registry.tarball(&pkg));
    assert_eq!(proxyd.stats().await["cached_artifacts"], 0);
    // Storage back: the next request caches it (or the first one's store, retried, did).
    gate.set_down(false);
    let (_, body) = get().await;
    assert_eq!(body.unwrap(), registry.tarball(&pkg));
    proxyd.wait_cached(1).await;
    // A hit while storage is down: its object cannot be read, so the upstream serves it.
    let before = registry.hits(&NpmRegistry::tarball_path(&pkg));
    gate.set_down(true);
    let (status, body) = get().await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), registry.tarball(&pkg));
    assert_eq!(
        registry.hits(&NpmRegistry::tarball_path(&pkg)),
        before + 1,
        "{}",
        proxyd.log()
    );
    // The hit's bypass is counted (the first miss's too, unless its store, retried, succeeded
    // once storage was back).
    let m = proxyd.metrics().await;
    assert!(
        metric(&m, "proxyd_storage_bypass_total", &[("ecosystem", "npm")]) >= 1.0,
        "{m}"
    );
    assert_eq!(
        proxyd
            .log()
            .matches("downloads are served from the upstream without caching")
            .count(),
        1,
        "logged once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_redirect_to_storage_that_does_not_answer() {
    let pkg = Package::new("unredirected", "1.0.0").padded(100_000);
    let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
    let extra = format!(
        "  direct_serve: true\nupstream:\n  npm: {}\n",
        registry.url()
    );
    let (_s3, gate, proxyd) = behind_a_gate(&extra).await;
    let url = tarball_url(&proxyd, &pkg);
    let get = || async {
        let resp = client().get(&url).send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap())
    };
    assert_eq!(get().await.0, 200, "the miss");
    assert_eq!(
        get().await.0,
        302,
        "a hit is redirected while storage answers"
    );
    gate.set_down(true);
    // Within the background probe's period, hits stop being redirected and are served.
    let mut served = None;
    for _ in 0..40 {
        let (status, body) = get().await;
        if status == 200 {
            served = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        served.expect("no longer redirected"),
        registry.tarball(&pkg)
    );
    gate.set_down(false);
    let mut redirected = false;
    for _ in 0..40 {
        if get().await.0 == 302 {
            redirected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(redirected, "redirected again once storage answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_upstream_body_ends_at_the_deadline_with_nothing_cached() {
    let pkg = Package::new("endless", "1.0.0");
    let (registry, proxyd) = start(
        std::slice::from_ref(&pkg),
        "ecosystems:\n  npm:\n    upstream_deadline: 2s\n",
    )
    .await;
    registry.set_fault(&NpmRegistry::tarball_path(&pkg), Fault::Endless);
    let response = client()
        .get(tarball_url(&proxyd, &pkg))
        .send()
        .await
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(15), response.bytes())
        .await
        .expect("the transfer ends");
    assert!(body.is_err(), "aborted, never a clean body");
    assert_eq!(proxyd.stats().await["cached_artifacts"], 0);
    assert!(
        proxyd.log().contains("took longer than the deadline of 2s"),
        "{}",
        proxyd.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_download_on_s3_leaves_no_object_after_restart() {
    // Large enough for a multipart upload with a part sent before the upstream stalls halfway
    // (a tarball of about 24 MB; parts are 8 MiB), then proxyd is killed.
    let pkg = Package::new("crashing-s3", "1.0.0").padded(40_000_000);
    let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
    registry.set_fault(&NpmRegistry::tarball_path(&pkg), Fault::StallMidBody);
    let (s3, _gate, mut proxyd) = behind_a_gate(&format!(
        "  interrupted_age: 1s\nupstream:\n  npm: {}\n",
        registry.url()
    ))
    .await;
    let url = tarball_url(&proxyd, &pkg);
    let mut resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut received = 0;
    while received < 4_000_000 {
        received += resp
            .chunk()
            .await
            .unwrap()
            .expect("bytes before the stall")
            .len();
    }
    // What the upload leaves while it runs: its parts (s3s-fs keeps them beside the buckets)
    // and the note proxyd made of it.
    let parts = || {
        std::fs::read_dir(s3.data_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
            .count()
    };
    let notes = || {
        std::fs::read_dir(s3.data_dir().join("artifacts/.proxyd-uploads"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    for _ in 0..100 {
        if parts() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxyd.kill(); // SIGKILL with a multipart upload in progress
    drop(resp);
    let object = s3
        .data_dir()
        .join("artifacts/npm/crashing-s3/-/crashing-s3-1.0.0.tgz");
    assert!(
        !object.exists(),
        "no object while the upload was unfinished"
    );
    assert!(parts() > 0, "the killed upload's parts are there");
    assert_eq!(notes(), 1, "and its note");
    tokio::time::sleep(Duration::from_millis(1_100)).await; // older than interrupted_age
    registry.set_fault(
        &NpmRegistry::tarball_path(&pkg),
        Fault::Delay(Duration::ZERO),
    );
    proxyd.restart();
    for _ in 0..100 {
        if parts() == 0 && notes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(parts(), 0, "start-up aborted the interrupted upload");
    assert_eq!(notes(), 0, "and removed its note");
    assert_eq!(
        proxyd.stats().await["cached_artifacts"],
        0,
        "nothing counted"
    );
    let body = get_bytes(&url).await;
    assert_eq!(body, registry.tarball(&pkg), "fetched whole again");
    assert_eq!(registry.hits(&NpmRegistry::tarball_path(&pkg)), 2);
    proxyd.wait_cached(1).await;
    assert!(object.exists(), "and stored whole");
    assert_eq!(
        std::fs::metadata(&object).unwrap().len(),
        registry.tarball(&pkg).len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_outage_turns_proxyd_into_a_plain_proxy_and_heals() {
    use proxyd_testkit::emulators::Azurite;
    let pkg = Package::new("azure-outage", "1.0.0").padded(200_000);
    let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
    let azurite = Azurite::start();
    let location = azure_storage::CloudLocation::Custom {
        account: Azurite::ACCOUNT.into(),
        uri: azurite.account_endpoint(),
    };
    let creds = azure_storage::StorageCredentials::access_key(Azurite::ACCOUNT, Azurite::KEY);
    azure_storage_blobs::prelude::ClientBuilder::with_location(location, creds)
        .container_client("artifacts")
        .create()
        .await
        .unwrap();
    let gate =
        proxyd_testkit::forward::TcpForwarder::start(([127, 0, 0, 1], azurite.port()).into()).await;
    let config = format!(
        "storage:\n  url: \"azblob://artifacts?protocol=http&domain={}&localemu=true\"\n  direct_serve: true\nupstream:\n  npm: {}\n",
        gate.addr(),
        registry.url()
    );
    let env = [
        ("AZURE_STORAGE_ACCOUNT", Azurite::ACCOUNT.to_owned()),
        ("AZURE_STORAGE_KEY", Azurite::KEY.to_owned()),
    ];
    let proxyd = ProxydProcess::start(BIN, &config, &env);
    let url = tarball_url(&proxyd, &pkg);
    // A hit must not wait out the storage SDK's retries (it did: 82 s on Azure's defaults).
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let get = || async {
        let resp = no_redirects.get(&url).send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap())
    };
    let health = || async {
        let body: serde_json::Value = reqwest::get(format!("{}/health", proxyd.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["status"].as_str().unwrap_or_default().to_owned()
    };
    let wait_health = |want: &'static str| {
        let health = &health;
        async move {
            for _ in 0..100 {
                if health().await == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("health never {want}");
        }
    };
    // A miss while Azure is down: served whole from the upstream, nothing cached.
    gate.set_down(true);
    let (status, body) = get().await;
    assert_eq!(status, 200);
    assert_eq!(body, registry.tarball(&pkg));
    wait_health("degraded").await;
    // Azure back: the next miss is stored, then redirected.
    gate.set_down(false);
    wait_health("ok").await;
    let (status, body) = get().await;
    assert!(status == 200 || status == 302, "{status}");
    if status == 200 {
        assert_eq!(body, registry.tarball(&pkg));
    }
    proxyd.wait_cached(1).await;
    assert_eq!(get().await.0, 302, "a hit is redirected");
    // Azure down again: once noticed, hits are not redirected to it but served from the
    // upstream; back again: redirected again.
    gate.set_down(true);
    wait_health("degraded").await;
    let before = registry.hits(&NpmRegistry::tarball_path(&pkg));
    let (status, body) = get().await;
    assert_eq!(status, 200, "no redirect to storage that does not answer");
    assert_eq!(body, registry.tarball(&pkg));
    assert_eq!(registry.hits(&NpmRegistry::tarball_path(&pkg)), before + 1);
    gate.set_down(false);
    wait_health("ok").await;
    assert_eq!(get().await.0, 302, "redirected again once Azure answers");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status();
        assert!(
            mounted.is_ok_and(|s| s.success()),
            "this test fills a {size} tmpfs it mounts at {}: run the tests as root, as scripts/test does in CI (or with CAP_SYS_ADMIN)",
            at.display()
        );
        Self(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_serves_the_miss_whole_and_keeps_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(dir.path().join("small-disk"), "2m");
    let big = Package::new("too-big", "1.0.0").padded(8_000_000); // about 5 MB gzipped
    let small = Package::new("fits", "1.0.0").padded(1_000);
    let registry = NpmRegistry::start(&[big.clone(), small.clone()]).await;
    let config = format!(
        "storage:\n  url: file://{}\nupstream:\n  npm: {}\n",
        disk.0.display(),
        registry.url()
    );
    let proxyd = ProxydProcess::start(BIN, &config, &[]);
    // Storage runs out of space in the middle of the put: the client still gets every byte.
    let body = get_bytes(tarball_url(&proxyd, &big)).await;
    assert_eq!(body, registry.tarball(&big));
    let mut counted = false;
    for _ in 0..100 {
        let m = proxyd.metrics().await;
        if metric(&m, "proxyd_storage_bypass_total", &[("ecosystem", "npm")]) >= 1.0 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        counted,
        "served without caching, and counted:\n{}",
        proxyd.log()
    );
    assert_eq!(proxyd.stats().await["cached_artifacts"], 0);
    assert!(
        temporary_files(&disk.0).is_empty() && files_under(&disk.0).is_empty(),
        "nothing of it is left on the disk: {:?}",
        files_under(&disk.0)
    );
    // What fits is cached once storage answers again (the probe notices within seconds).
    let mut cached = false;
    for _ in 0..50 {
        let body = get_bytes(tarball_url(&proxyd, &small)).await;
        assert_eq!(body, registry.tarball(&small));
        if proxyd.stats().await["cached_artifacts"] == 1 {
            cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cached, "{}", proxyd.log());
}

/// Send `request` as raw bytes on a new connection; what came back before proxyd closed it or
/// went quiet for 2 s (at most 64 KiB).
async fn raw(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // proxyd may answer and close before it read everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.len() < 65_536 {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn statuses(response: &str) -> Vec<u16> {
    response
        .match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| response.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_normal_clients_still_answered() {
    let pkg = Package::new("fine", "1.0.0");
    let (registry, proxyd) = start(std::slice::from_ref(&pkg), "").await;
    let addr = proxyd.url().trim_start_matches("http://").to_owned();
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let big_uri = format!(
        "GET /npm/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(8 << 20)
    );
    let smuggled = "GET /npm/fine HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /npm/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let two_lengths =
        "GET /npm/fine HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    let folded = "GET /npm/fine HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n";
    let mut not_utf8 = b"GET /npm/".to_vec();
    not_utf8.extend_from_slice(&[0xff, 0xfe]);
    not_utf8.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a 1 MiB header line", big_header.into_bytes()),
        ("an 8 MiB URI", big_uri.into_bytes()),
        (
            "Content-Length with Transfer-Encoding",
            smuggled.as_bytes().to_vec(),
        ),
        ("two Content-Lengths", two_lengths.as_bytes().to_vec()),
        ("an obsolete folded header", folded.as_bytes().to_vec()),
        ("a path that is not UTF-8", not_utf8),
        (
            "DELETE",
            b"DELETE /npm/fine HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (what, request) in cases {
        let response = raw(&addr, &request).await;
        let seen = statuses(&response);
        assert!(
            seen.iter().all(|s| (400..500).contains(s)),
            "{what}: {seen:?} {}",
            response.lines().next().unwrap_or("")
        );
        // Still answering a normal client.
        let health = tokio::time::timeout(
            Duration::from_secs(5),
            client().get(format!("{}/health", proxyd.url())).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("a normal client is answered after {what}"))
        .unwrap();
        assert_eq!(health.status(), 200, "after {what}");
    }
    assert_eq!(registry.total_hits(), 0, "nothing reached upstream");
    // Pipelined requests are each answered, in order.
    let pipelined = raw(
        &addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /stats HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&pipelined), [200, 200], "{pipelined}");
}
