//! The real go command building a small program whose dependencies are genuine modules (the
//! upstream releases of github.com/pkg/errors v0.9.1 and github.com/google/uuid v1.3.0, from
//! Debian's source packages) through `GOPROXY=proxyd/go`, with checksum verification on: the
//! client's `GOSUMDB` names a real checksum database (golang.org/x/mod's server, `sumdbd`) that
//! it reaches through proxyd, and proxyd verifies every `.zip` and `.mod` against it with its
//! verifier key. For each storage backend: cold, again with a fresh module cache (no new
//! upstream download), again with the upstream and the database stopped. A zip whose bytes do
//! not match the database is refused and not stored.

use std::process::Command;

mod common;

use common::{BIN, Backend, storage};
use proxyd_testkit::go_proxy::{GoModule, GoProxyServer, SumDbProcess, write_dir};
use proxyd_testkit::proxyd::{ProxydProcess, metric};
use proxyd_testkit::static_server::Fault;

const DB_NAME: &str = "sum.proxyd.test";

const GO_MOD: &str = "module example.com/app\n\ngo 1.19\n\nrequire (\n\
                      \tgithub.com/google/uuid v1.3.0\n\tgithub.com/pkg/errors v0.9.1\n)\n";

const MAIN: &str = r#"package main

import (
	"fmt"

	"github.com/google/uuid"
	"github.com/pkg/errors"
)

func main() {
	fmt.Print(errors.Wrap(fmt.Errorf("cause"), "proxyd"), " ", uuid.NewSHA1(uuid.NameSpaceDNS, []byte("proxyd")))
}
"#;

/// The public go.sum line of github.com/pkg/errors v0.9.1: the module is the genuine release.
const ERRORS_SUM: &str =
    "github.com/pkg/errors v0.9.1 h1:FEBLx1zS214owpjy7qsBeixbURkuhQAwrK5UwLGTwt4=";

/// `go build` of the demo program with a fresh module cache, `GOPROXY=proxy`, and `GOSUMDB`
/// naming the database by its key only (so the go command reaches it through the proxy);
/// the program's output, or the go command's error.
fn go_build(proxy: &str, sumdb_key: &str) -> Result<String, String> {
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("go.mod"), GO_MOD).unwrap();
    std::fs::write(app.join("main.go"), MAIN).unwrap();
    let gopath = work.path().join("gopath");
    let output = Command::new("go")
        .current_dir(&app)
        .args(["build", "-o", "app", "."])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", work.path())
        .env("GOPATH", &gopath)
        .env("GOMODCACHE", gopath.join("pkg/mod"))
        .env("GOCACHE", work.path().join("gocache"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "on")
        .env("GOPROXY", proxy)
        .env("GOSUMDB", sumdb_key)
        .env("GONOSUMDB", "")
        .env("GOPRIVATE", "")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run go ({e}); install Debian's golang-go (scripts/test does)")
        });
    if !output.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let sum = std::fs::read_to_string(app.join("go.sum")).unwrap();
    assert!(sum.contains(ERRORS_SUM), "go.sum:\n{sum}");
    let run = Command::new(app.join("app")).output().unwrap();
    Ok(String::from_utf8_lossy(&run.stdout).into_owned())
}

async fn build(proxy: String, key: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || go_build(&proxy, &key))
        .await
        .unwrap()
}

struct Upstream {
    proxy: GoProxyServer,
    sumdb: SumDbProcess,
    modules: Vec<GoModule>,
    _dir: tempfile::TempDir,
}

async fn upstream() -> Upstream {
    let modules = GoModule::genuine();
    let dir = tempfile::tempdir().unwrap();
    write_dir(&modules, dir.path());
    let sumdb = SumDbProcess::start(dir.path(), DB_NAME);
    let proxy = GoProxyServer::start(&modules).await;
    Upstream {
        proxy,
        sumdb,
        modules,
        _dir: dir,
    }
}

fn settings(up: &Upstream) -> String {
    format!(
        "upstream:\n  go: {}\n  go_sumdb: {}\n  go_sumdb_name: {DB_NAME}\n  go_sumdb_key: {}\n",
        up.proxy.url(),
        up.sumdb.url,
        up.sumdb.key
    )
}

fn zip_path(m: &GoModule) -> String {
    format!("{}.zip", m.base())
}

async fn build_cycle(backend: Backend) {
    let mut up = upstream().await;
    let store = storage(backend, false).await;
    let proxyd = ProxydProcess::start(BIN, &format!("{}{}", store.yaml, settings(&up)), &store.env);
    let goproxy = format!("{}/go", proxyd.url());
    let key = up.sumdb.key.clone();

    let out = build(goproxy.clone(), key.clone()).await.unwrap();
    assert!(out.starts_with("proxyd: cause "), "{out}");
    for m in &up.modules {
        assert_eq!(
            up.proxy.server.hits(&zip_path(m)),
            1,
            "{} fetched once",
            m.path
        );
    }
    let cached = proxyd.stats().await["ecosystems"]["go"]["cached_artifacts"]
        .as_u64()
        .unwrap();
    assert!(cached >= 4, "the .mod and .zip files are cached: {cached}");

    // A fresh module cache: nothing new is downloaded from the upstream.
    build(goproxy.clone(), key.clone()).await.unwrap();
    for m in &up.modules {
        assert_eq!(
            up.proxy.server.hits(&zip_path(m)),
            1,
            "{} not again",
            m.path
        );
    }
    let metrics = proxyd.metrics().await;
    if store.redirects {
        let redirects = metric(
            &metrics,
            "proxyd_direct_serve_total",
            &[("ecosystem", "go"), ("outcome", "redirect")],
        );
        assert!(redirects >= 2.0, "the zips were redirected: {redirects}");
    }

    // The upstream and the checksum database gone: the same build from what proxyd kept.
    up.proxy.server.stop();
    up.sumdb.stop();
    let out = build(goproxy, key).await.unwrap();
    assert!(out.starts_with("proxyd: cause "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_builds_through_filesystem_storage() {
    build_cycle(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_builds_through_s3_with_direct_serve() {
    build_cycle(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_builds_through_azure_with_direct_serve() {
    build_cycle(Backend::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_that_does_not_match_the_checksum_database_is_refused_and_not_stored() {
    let up = upstream().await;
    let errors = &up.modules[0];
    up.proxy.server.set_fault(&zip_path(errors), Fault::Corrupt);
    let proxyd = ProxydProcess::start(BIN, &settings(&up), &[]);
    let failed = build(format!("{}/go", proxyd.url()), up.sumdb.key.clone())
        .await
        .unwrap_err();
    assert!(failed.contains("github.com/pkg/errors"), "{failed}");
    assert!(
        proxyd
            .log()
            .contains("does not match its declared h1 digest"),
        "{}",
        proxyd.log()
    );
    // Whatever else was kept, the corrupt zip was not: asking again fetches it again.
    let before = up.proxy.server.hits(&zip_path(errors));
    let again = reqwest::get(format!("{}/go{}", proxyd.url(), zip_path(errors)))
        .await
        .unwrap();
    let _ = again.bytes().await;
    assert_eq!(up.proxy.server.hits(&zip_path(errors)), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_modules_and_prefix_probes_answer_404_and_bad_paths_400() {
    let up = upstream().await;
    let proxyd = ProxydProcess::start(BIN, &settings(&up), &[]);
    let get = |path: &str| reqwest::get(format!("{}/go{path}", proxyd.url()));
    for path in [
        "/github.com/pkg/@v/list",
        "/github.com/@v/v0.9.1.info",
        "/github.com/pkg/errors/@v/v9.9.9.zip",
        "/github.com/pkg/errors/@v/v9.9.9.info",
        "/example.com/none/@latest",
    ] {
        assert_eq!(get(path).await.unwrap().status(), 404, "{path}");
    }
    let asked = up.proxy.server.total_hits();
    for path in [
        "/github.com/Pkg/errors/@v/list",
        "/github.com/pkg/errors/@v/v0.9.1%2F.zip",
        "/github.com/pkg/.hidden/@v/list",
        "/github.com/pkg/x%2fy/@v/list",
        "/github.com/pkg/errors/@v/master.zip",
    ] {
        assert_eq!(get(path).await.unwrap().status(), 400, "{path}");
    }
    assert_eq!(
        up.proxy.server.total_hits(),
        asked,
        "bad paths reach nothing"
    );
    // Another checksum database is not proxied: the client goes to it directly.
    assert_eq!(
        get("/sumdb/sum.golang.example/supported")
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get(&format!("/sumdb/{DB_NAME}/supported"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_not_signed_by_the_configured_key_are_refused() {
    let up = upstream().await;
    // The stand-in database beside the proxy answers lookups with an unsigned tree head; the
    // key is the real database's.
    let config = format!(
        "upstream:\n  go: {}\n  go_sumdb: {}\n  go_sumdb_name: {DB_NAME}\n  go_sumdb_key: {}\n",
        up.proxy.url(),
        up.proxy.sumdb_url(),
        up.sumdb.key
    );
    let proxyd = ProxydProcess::start(BIN, &config, &[]);
    let zip = zip_path(&up.modules[0]);
    let response = reqwest::get(format!("{}/go{zip}", proxyd.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let reason = response.text().await.unwrap();
    assert!(reason.contains("not signed by"), "{reason}");
    assert_eq!(up.proxy.server.hits(&zip), 0, "nothing fetched unverified");
    assert_eq!(proxyd.stats().await["cached_artifacts"], 0);
}
