//! Routing is a pure function from method and path to an operation or a refusal: table-tested
//! here for every ecosystem, and run over 20,000 generated hostile paths each, with no network.
//! Every accepted artifact maps to a storage key under the instance's prefix. Also the metadata
//! documents' bounds: names clients make up leave no per-name lock behind, memory stays within
//! `metadata_cache_size`, and what upstream does not have is asked for once per TTL.

use std::sync::Arc;

use proxyd_cache::{Cache, CacheSettings};
use proxyd_ecosystem::http::Method;
use proxyd_ecosystem::route_check::check_route;
use proxyd_ecosystem::{
    Ecosystem, EcosystemContext, EcosystemKind, MetadataCache, ObjectKey, UpstreamClients,
    UpstreamLimits, UpstreamSettings,
};
use proxyd_index_sqlite::SqliteIndex;

async fn context(instance: &'static str, dir: &std::path::Path) -> EcosystemContext {
    context_and_store(instance, dir, None, 16_000_000).await.0
}

async fn context_and_store(
    instance: &'static str,
    dir: &std::path::Path,
    upstream: Option<proxyd_ecosystem::Url>,
    metadata_bytes: u64,
) -> (EcosystemContext, Arc<MetadataCache>) {
    let storage = proxyd_storage::open(
        &format!("file://{}", dir.join("a").display()),
        &proxyd_storage::StorageOptions::default(),
        &|_: &str| None,
    )
    .await
    .unwrap();
    let index = SqliteIndex::open(&dir.join("index.db")).unwrap();
    let cache = Cache::open(storage, Arc::new(index), CacheSettings::default())
        .await
        .unwrap();
    let clients = Arc::new(UpstreamClients::new(&UpstreamSettings::default()).unwrap());
    let limits = UpstreamLimits {
        retries: 0,
        ..UpstreamLimits::default()
    };
    let upstream = clients.for_instance(instance, upstream, limits);
    let store = Arc::new(MetadataCache::new(
        cache,
        std::time::Duration::from_secs(60),
        metadata_bytes,
    ));
    let context = EcosystemContext::new(
        instance,
        instance,
        "http://proxy.test",
        upstream,
        store.clone(),
    );
    (context, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_names_leave_no_lock_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (context, store) = context_and_store("npm", dir.path(), None, 16_000_000).await;
    // Nothing listens on port 9 of 127.0.0.1: every lookup fails at once.
    let lookups = (0..2_000).map(|n| {
        let documents = context.documents.clone();
        tokio::spawn(async move {
            let key = format!("full/made-up-{n}");
            let url = format!("http://127.0.0.1:9/made-up-{n}");
            let request = proxyd_ecosystem::DocumentRequest {
                key: &key,
                url: &url,
                accept: "application/json",
                check: proxyd_ecosystem::json_body,
                headers: None,
            };
            documents.get(&request, false).await.is_err()
        })
    });
    for failed in futures::future::join_all(lookups).await {
        assert!(failed.unwrap());
    }
    assert_eq!(store.refresh_locks(), 0);
}

/// A small deterministic generator (xorshift), so a failure can be reproduced from its seed.
struct Paths(u64);

impl Paths {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn path(&mut self) -> String {
        const PARTS: &[&str] = &[
            "/",
            "/",
            "a",
            "Z",
            "0",
            "-",
            "_",
            ".",
            "..",
            "%2f",
            "%2F",
            "%2e",
            "%00",
            "%",
            "%ff",
            "@",
            "~",
            "+",
            "-/",
            "/-/",
            ".tgz",
            ".whl",
            ".crate",
            "simple",
            "packages",
            "crates",
            "download",
            "config.json",
            "dists",
            "pool",
            "InRelease",
            ".deb",
            "a.b",
            "/@v/",
            "v1.0.0",
            ".zip",
            ".mod",
            "list",
            "/@latest",
            "!x",
            "/manifests/",
            "/blobs/",
            "sha256:",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "/tags/list",
            "1.0.0",
            "ab",
            "cd",
            "é",
            "\\",
            ":",
            "?",
            "#",
            " ",
        ];
        let len = (self.next() % 12) as usize;
        let mut path = String::from("/");
        for _ in 0..len {
            path.push_str(PARTS[(self.next() % PARTS.len() as u64) as usize]);
        }
        if self.next().is_multiple_of(50) {
            path.push_str(&"a".repeat(10_000));
        }
        path
    }
}

/// Every generated path is routed without a panic; every accepted artifact's key is a valid
/// key under `prefix/`.
fn fuzz<E: Ecosystem>(eco: &E, prefix: &str, key_of: impl Fn(&E::Op) -> Option<&ObjectKey>) {
    let mut paths = Paths(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let path = paths.path();
        for method in [Method::GET, Method::HEAD, Method::POST] {
            if check_route(eco, prefix, &method, &path, &key_of) {
                accepted += 1;
            }
        }
    }
    assert!(accepted > 0, "the generator reaches accepted paths too");
}

#[tokio::test]
async fn npm_routes() {
    use proxyd_npm::{NpmConfig, NpmKind, NpmOp};
    let dir = tempfile::tempdir().unwrap();
    let config = NpmConfig {
        upstream: "http://127.0.0.1:9".into(),
    };
    let npm = NpmKind::build(config, context("npm", dir.path()).await).unwrap();
    let key = |k: &str| NpmOp::Tarball(ObjectKey::new(k).unwrap());
    let get = Method::GET;
    assert_eq!(
        npm.route(&get, "/lodash"),
        Ok(NpmOp::Packument("lodash".into()))
    );
    assert_eq!(
        npm.route(&get, "/@s%2fp"),
        Ok(NpmOp::Packument("@s/p".into()))
    );
    assert_eq!(
        npm.route(&get, "/@s/p"),
        Ok(NpmOp::Packument("@s/p".into()))
    );
    assert_eq!(
        npm.route(&get, "/a/-/a-1.0.0.tgz"),
        Ok(key("npm/a/-/a-1.0.0.tgz"))
    );
    assert_eq!(
        npm.route(&Method::HEAD, "/@s/p/-/p-1.0.0.tgz"),
        Ok(key("npm/@s/p/-/p-1.0.0.tgz"))
    );
    for (method, path, status) in [
        (Method::POST, "/a", 405),
        (Method::PUT, "/a/-/a-1.0.0.tgz", 405),
        (get.clone(), "/..%2f..%2fetc%2fpasswd", 400),
        (get.clone(), "/a/-/..%2fx.tgz", 400),
        (get.clone(), "/a/-/a.zip", 400),
        (get.clone(), "/a%00", 400),
        (get.clone(), "/.hidden", 400),
    ] {
        assert_eq!(
            npm.route(&method, path).map_err(|r| r.status()),
            Err(status),
            "{path}"
        );
    }
    fuzz(&npm, "npm", |op| match op {
        NpmOp::Tarball(key) => Some(key),
        NpmOp::Packument(_) => None,
    });
}

#[tokio::test]
async fn pypi_routes() {
    use proxyd_pypi::{PyPiConfig, PyPiKind, PyPiOp};
    let dir = tempfile::tempdir().unwrap();
    let config = PyPiConfig {
        upstream: "http://127.0.0.1:9/simple".into(),
    };
    let pypi = PyPiKind::build(config, context("pypi", dir.path()).await).unwrap();
    let get = Method::GET;
    assert_eq!(
        pypi.route(&get, "/simple/demo/"),
        Ok(PyPiOp::Page("demo".into()))
    );
    assert_eq!(
        pypi.route(&get, "/simple/Demo_Pkg/"),
        Ok(PyPiOp::Canonical("demo-pkg".into()))
    );
    assert_eq!(
        pypi.route(&get, "/simple/demo"),
        Ok(PyPiOp::Canonical("demo".into()))
    );
    assert_eq!(
        pypi.route(&get, "/packages/demo/demo-1.0.tar.gz"),
        Ok(PyPiOp::File(
            ObjectKey::new("pypi/demo/demo-1.0.tar.gz").unwrap()
        ))
    );
    for (path, status) in [
        ("/simple/", 404),
        ("/simple/a/b/", 400),
        ("/packages/Demo/x.whl", 400),
        ("/packages/demo/.x.whl", 400),
        ("/packages/demo/%2e%2e", 400),
        ("/other", 404),
    ] {
        assert_eq!(
            pypi.route(&get, path).map_err(|r| r.status()),
            Err(status),
            "{path}"
        );
    }
    fuzz(&pypi, "pypi", |op| match op {
        PyPiOp::File(key) => Some(key),
        _ => None,
    });
}

#[tokio::test]
async fn cargo_routes() {
    use proxyd_cargo::{CargoConfig, CargoKind, CargoOp};
    let dir = tempfile::tempdir().unwrap();
    let config = CargoConfig {
        upstream: "sparse+http://127.0.0.1:9/index/".into(),
    };
    let cargo = CargoKind::build(config, context("cargo", dir.path()).await).unwrap();
    let get = Method::GET;
    assert_eq!(cargo.route(&get, "/config.json"), Ok(CargoOp::Config));
    assert_eq!(
        cargo.route(&get, "/se/rd/serde"),
        Ok(CargoOp::IndexFile("serde".into()))
    );
    assert_eq!(
        cargo.route(&get, "/3/a/abc"),
        Ok(CargoOp::IndexFile("abc".into()))
    );
    assert_eq!(
        cargo.route(&get, "/crates/Serde/1.0.0/download"),
        Ok(CargoOp::Download {
            key: ObjectKey::new("cargo/serde/serde-1.0.0.crate").unwrap(),
            name: "Serde".into(),
            version: "1.0.0".into(),
        })
    );
    for (path, status) in [
        ("/se/rd/other", 404),
        ("/crates/-x/1.0.0/download", 400),
        ("/crates/x/..%2f/download", 400),
        ("/crates/x/1.0.0/../download", 404),
    ] {
        assert_eq!(
            cargo.route(&get, path).map_err(|r| r.status()),
            Err(status),
            "{path}"
        );
    }
    fuzz(&cargo, "cargo", |op| match op {
        CargoOp::Download { key, .. } => Some(key),
        _ => None,
    });
}

#[tokio::test]
async fn maven_routes() {
    use proxyd_maven::{MavenConfig, MavenFile, MavenKind, MavenOp};
    let dir = tempfile::tempdir().unwrap();
    let config = MavenConfig {
        upstream: vec!["http://127.0.0.1:9".into()],
    };
    let maven = MavenKind::build(config, context("maven", dir.path()).await).unwrap();
    let get = Method::GET;
    let jar = "/org/apache/commons/commons-lang3/3.12.0/commons-lang3-3.12.0.jar";
    match maven.route(&get, jar) {
        Ok(MavenOp::Artifact { key, path }) => {
            assert_eq!(key.as_str(), format!("maven{jar}"));
            assert_eq!(path.file, MavenFile::Release);
        }
        other => panic!("{other:?}"),
    }
    for (path, file) in [
        (format!("{jar}.sha1"), MavenFile::Checksum("sha1")),
        (
            "/org/apache/commons/commons-lang3/maven-metadata.xml".into(),
            MavenFile::Metadata,
        ),
        (format!("{jar}.asc"), MavenFile::Signature),
    ] {
        match maven.route(&Method::HEAD, &path) {
            Ok(MavenOp::Document(p)) => assert_eq!(p.file, file, "{path}"),
            other => panic!("{path}: {other:?}"),
        }
    }
    for (method, path, status) in [
        (Method::PUT, jar.to_owned(), 405),
        (get.clone(), "/org/../etc/passwd".into(), 400),
        (get.clone(), "/org/%2e%2e/x/1/x-1.jar".into(), 400),
        (get.clone(), "/org//x/1/x-1.jar".into(), 400),
        (get.clone(), "/x.jar".into(), 400),
        (get.clone(), format!("/org/{}", "a".repeat(2_000)), 400),
    ] {
        let refusal = maven.route(&method, &path).unwrap_err();
        assert_eq!(refusal.status(), status, "{method} {path}");
    }
    fuzz(&maven, "maven", |op| match op {
        MavenOp::Artifact { key, .. } => Some(key),
        MavenOp::Document(_) => None,
    });
}

#[tokio::test]
async fn debian_routes() {
    use proxyd_debian::{DebianConfig, DebianKind, DebianOp, DistsFile, SignedFile};
    let dir = tempfile::tempdir().unwrap();
    let config = DebianConfig {
        upstream: "http://127.0.0.1:9".into(),
    };
    let debian = DebianKind::build(config, context("debian", dir.path()).await).unwrap();
    let get = Method::GET;
    assert_eq!(
        debian.route(&get, "/dists/stable/InRelease"),
        Ok(DebianOp::Signed {
            path: "dists/stable/InRelease".into(),
            file: SignedFile::InRelease
        })
    );
    match debian.route(&get, "/dists/stable/main/binary-amd64/Packages.xz") {
        Ok(DebianOp::Dists { key, file, .. }) => {
            assert_eq!(
                key.as_str(),
                "debian/dists/stable/main/binary-amd64/Packages.xz"
            );
            assert_eq!(file, DistsFile::Revalidated { reads_index: true });
        }
        other => panic!("{other:?}"),
    }
    let hex = "ab".repeat(32);
    match debian.route(
        &Method::HEAD,
        &format!("/dists/stable/main/binary-amd64/by-hash/SHA256/{hex}"),
    ) {
        Ok(DebianOp::Dists {
            file: DistsFile::ByHash { algorithm, .. },
            ..
        }) => {
            assert_eq!(algorithm, "sha256");
        }
        other => panic!("{other:?}"),
    }
    match debian.route(&get, "/pool/main/h/hello/hello_2.10-3_amd64.deb") {
        Ok(DebianOp::Pool { key, .. }) => {
            assert_eq!(
                key.as_str(),
                "debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
            );
        }
        other => panic!("{other:?}"),
    }
    for (method, path, status) in [
        (Method::PUT, "/pool/main/x.deb".to_owned(), 405),
        (
            get.clone(),
            "/dists/stable/main/by-hash/SHA256/abc".into(),
            400,
        ),
        (
            get.clone(),
            "/dists/stable/main/by-hash/SHA1/abc".into(),
            400,
        ),
        (get.clone(), "/pool/main/..%2fx.deb".into(), 400),
        (get.clone(), "/pool/main/.x.deb".into(), 400),
        (get.clone(), "/other/x".into(), 404),
        (get.clone(), "/dists".into(), 404),
    ] {
        let refusal = debian.route(&method, &path).unwrap_err();
        assert_eq!(refusal.status(), status, "{method} {path}");
    }
    fuzz(&debian, "debian", |op| match op {
        DebianOp::Dists { key, .. } | DebianOp::Pool { key, .. } => Some(key),
        DebianOp::Signed { .. } => None,
    });
}

#[tokio::test]
async fn go_routes() {
    use proxyd_go::{GoConfig, GoKind, GoOp};
    let dir = tempfile::tempdir().unwrap();
    let config = GoConfig {
        upstream: "http://127.0.0.1:9".into(),
        go_sumdb: Some("http://127.0.0.1:8".into()),
        go_sumdb_name: Some("sum.test".into()),
        go_sumdb_key: None,
    };
    let go = GoKind::build(config, context("go", dir.path()).await).unwrap();
    let get = Method::GET;
    match go.route(&get, "/github.com/!burnt!sushi/toml/@v/v1.2.0.zip") {
        Ok(GoOp::File { key, module, .. }) => {
            assert_eq!(
                key.as_str(),
                "go/github.com/!burnt!sushi/toml/@v/v1.2.0.zip"
            );
            assert_eq!(module.path, "github.com/BurntSushi/toml");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        go.route(&get, "/golang.org/x/mod/@v/list"),
        Ok(GoOp::List(_))
    ));
    assert!(matches!(
        go.route(&get, "/golang.org/x/mod/@latest"),
        Ok(GoOp::Latest(_))
    ));
    assert!(matches!(
        go.route(&get, "/golang.org/x/mod/@v/master.info"),
        Ok(GoOp::Query(..))
    ));
    assert!(matches!(
        go.route(&get, "/sumdb/sum.test/supported"),
        Ok(GoOp::SumDbSupported)
    ));
    assert!(matches!(
        go.route(&get, "/sumdb/sum.test/tile/8/0/x001/002"),
        Ok(GoOp::SumDbTile { .. })
    ));
    assert!(matches!(
        go.route(&get, "/sumdb/sum.test/tile/8/0/002.p/7"),
        Ok(GoOp::SumDbDocument(_))
    ));
    for (method, path, status) in [
        (Method::PUT, "/golang.org/x/mod/@v/list".to_owned(), 405),
        (get.clone(), "/golang.org/x/Mod/@v/list".into(), 400),
        (get.clone(), "/golang.org/x/mod/@v/master.zip".into(), 400),
        (get.clone(), "/golang.org/x/%2e%2e/@v/list".into(), 400),
        (get.clone(), "/nodot/x/@v/list".into(), 400),
        (get.clone(), "/golang.org/x/mod".into(), 404),
        (get.clone(), "/golang.org/x/mod/@v/v1.0.0.tar".into(), 404),
        (get.clone(), "/sumdb/other.test/supported".into(), 404),
        (get.clone(), "/sumdb/sum.test/tile/../x".into(), 404),
        (get.clone(), "/sumdb/sum.test/lookup/x".into(), 400),
        (
            get.clone(),
            format!("/a.b/{}/@v/list", "a".repeat(2_000)),
            400,
        ),
    ] {
        let refusal = go.route(&method, &path).unwrap_err();
        assert_eq!(refusal.status(), status, "{method} {path}");
    }
    fuzz(&go, "go", |op| match op {
        GoOp::File { key, .. } | GoOp::SumDbTile { key, .. } => Some(key),
        _ => None,
    });
}

#[tokio::test]
async fn oci_routes() {
    use proxyd_oci::{OciConfig, OciKind, OciOp, Target};
    let dir = tempfile::tempdir().unwrap();
    let config: OciConfig = serde_json::from_value(serde_json::json!({"upstream": {
        "default": "http://127.0.0.1:9", "ghcr": "http://127.0.0.1:8"
    }}))
    .unwrap();
    let oci = OciKind::build(config, context("oci", dir.path()).await).unwrap();
    let get = Method::GET;
    let hex = "ab".repeat(32);
    assert!(matches!(oci.route(&get, "/"), Ok(OciOp::Base)));
    match oci.route(&get, "/ghcr/org/app/manifests/1.0") {
        Ok(OciOp::ManifestByTag(
            Target {
                upstream,
                repository,
            },
            tag,
        )) => {
            assert_eq!(
                (upstream, repository.as_str(), tag.as_str()),
                (0, "org/app", "1.0")
            );
        }
        other => panic!("{other:?}"),
    }
    match oci.route(&get, &format!("/library/alpine/blobs/sha256:{hex}")) {
        Ok(OciOp::Blob(target, _, key)) => {
            assert_eq!(
                (target.upstream, target.repository.as_str()),
                (1, "library/alpine")
            );
            assert_eq!(key.as_str(), format!("oci/blobs/sha256/{hex}"));
        }
        other => panic!("{other:?}"),
    }
    match oci.route(
        &Method::HEAD,
        &format!("/a/manifests/blobs/manifests/sha256:{hex}"),
    ) {
        Ok(OciOp::ManifestByDigest(target, _, key)) => {
            assert_eq!(target.repository, "a/manifests/blobs");
            assert_eq!(key.as_str(), format!("oci/manifests/sha256/{hex}"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        oci.route(&get, "/a/b/tags/list"),
        Ok(OciOp::Tags(_))
    ));
    for (method, path, status) in [
        (Method::PUT, "/a/manifests/1.0".to_owned(), 405),
        (Method::POST, "/a/blobs/uploads/".to_owned(), 405),
        (get.clone(), "/A/manifests/1.0".into(), 400),
        (get.clone(), "/a/manifests/-x".into(), 400),
        (get.clone(), "/a/blobs/sha256:abc".into(), 400),
        (get.clone(), "/a/blobs/1.0".into(), 400),
        (get.clone(), "/a/%2e%2e/manifests/1.0".into(), 400),
        (get.clone(), "/a/other".into(), 404),
        (
            get.clone(),
            format!("/{}/manifests/1", "a".repeat(300)),
            400,
        ),
    ] {
        let refusal = oci.route(&method, &path).unwrap_err();
        assert_eq!(refusal.status(), status, "{method} {path}");
    }
    fuzz(&oci, "oci", |op| match op {
        OciOp::Blob(_, _, key) | OciOp::ManifestByDigest(_, _, key) => Some(key),
        _ => None,
    });
}

fn doc_request<'a>(key: &'a str, url: &'a str) -> proxyd_ecosystem::DocumentRequest<'a> {
    proxyd_ecosystem::DocumentRequest {
        key,
        url,
        accept: "application/json",
        check: proxyd_ecosystem::json_body,
        headers: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_memory_stays_within_its_size() {
    let server = proxyd_testkit::static_server::StaticServer::start().await;
    let body = serde_json::json!({ "padding": "x".repeat(50_000) }).to_string();
    for n in 0..200 {
        server.put(&format!("/doc-{n}"), body.clone(), "application/json");
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = proxyd_ecosystem::Url::parse(&server.url()).unwrap();
    let (context, store) = context_and_store("npm", dir.path(), Some(origin), 2_000_000).await;
    for n in 0..200 {
        let (key, url) = (format!("doc-{n}"), format!("{}/doc-{n}", server.url()));
        let (doc, freshness) = context
            .documents
            .get(&doc_request(&key, &url), false)
            .await
            .unwrap();
        let reply = context.documents.reply(&key, "", &doc, freshness, |doc| {
            Ok(proxyd_ecosystem::DocumentReply::new(
                proxyd_ecosystem::http::HeaderValue::from_static("application/json"),
                doc.body.clone(),
                60,
            ))
        });
        assert!(matches!(reply, proxyd_ecosystem::Reply::Document(_)));
    }
    let memory = store.memory();
    assert!(memory.bytes <= 2_000_000, "{memory:?}");
    assert!(memory.documents < 200 && memory.documents > 0, "{memory:?}");
    // A document that left memory comes back from the index, without asking upstream.
    let url = format!("{}/doc-0", server.url());
    let (doc, _) = context
        .documents
        .get(&doc_request("doc-0", &url), false)
        .await
        .unwrap();
    assert_eq!(doc.body.len(), body.len());
    assert_eq!(server.hits("/doc-0"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_upstream_lacks_is_asked_once_per_ttl() {
    let server = proxyd_testkit::static_server::StaticServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let origin = proxyd_ecosystem::Url::parse(&server.url()).unwrap();
    let (context, store) = context_and_store("npm", dir.path(), Some(origin), 2_000_000).await;
    let url = format!("{}/nope", server.url());
    let lookups = (0..50).map(|_| {
        let (documents, url) = (context.documents.clone(), url.clone());
        tokio::spawn(async move {
            documents
                .get(&doc_request("nope", &url), false)
                .await
                .is_err()
        })
    });
    for failed in futures::future::join_all(lookups).await {
        assert!(failed.unwrap());
    }
    for _ in 0..10 {
        assert!(
            context
                .documents
                .get(&doc_request("nope", &url), false)
                .await
                .is_err()
        );
    }
    assert_eq!(server.hits("/nope"), 1);
    assert_eq!(store.memory().missing, 1);
}
