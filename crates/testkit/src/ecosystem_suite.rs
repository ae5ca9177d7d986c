//! The ecosystem conformance suite: one set of checks, written once, run for every ecosystem
//! (as the storage suite runs for every backend). Each ecosystem supplies a [`Fixture`]: a fake
//! upstream serving one package in its protocol, the paths of its metadata and artifact on
//! proxyd and upstream, its bad paths and what it negotiates. Each check starts the proxyd
//! binary on filesystem storage or on S3 (s3s-fs) with direct-serve, and stops everything it
//! started.

use std::time::Duration;

use bytes::Bytes;

use crate::apt_repo::AptRepository;
use crate::cargo_registry::{CargoRegistry, Crate};
use crate::emulators::S3sFs;
use crate::go_proxy::{GoModule, GoProxyServer};
use crate::maven_repo::{MavenArtifact, MavenRepository};
use crate::npm_registry::{NpmRegistry, Package};
use crate::proxyd::{ProxydProcess, metric};
use crate::pypi_registry::{File, PageFormat, PyPiRegistry};
use crate::static_server::{Fault, StaticServer};

/// The ecosystems with a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Npm,
    PyPi,
    Cargo,
    Maven,
    Debian,
    Go,
    Oci,
}

/// Where proxyd keeps artifacts in a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A directory: hits are streamed.
    Fs,
    /// s3s-fs with direct-serve: GET hits are redirected.
    S3,
}

enum Upstream {
    Npm(NpmRegistry),
    PyPi(PyPiRegistry),
    Cargo(CargoRegistry),
    Maven(MavenRepository),
    Debian(AptRepository),
    Go(GoProxyServer),
    Oci(StaticServer),
}

/// One ecosystem's package, served by its fake upstream.
pub struct Fixture {
    pub kind: Kind,
    /// The instance's mount (`npm`; `v2` for OCI).
    pub mount: &'static str,
    /// The instance's name: its metrics label, `/stats` key and settings key (`oci`).
    pub name: &'static str,
    /// proxyd's settings naming the upstream.
    pub settings: String,
    /// The package's metadata on proxyd and on upstream.
    pub metadata_path: String,
    pub metadata_upstream_path: String,
    /// The artifact on proxyd and on upstream, and its bytes.
    pub artifact_path: String,
    pub artifact_upstream_path: String,
    pub artifact: Bytes,
    /// The digest upstream declares (named in the refusal).
    pub digest: &'static str,
    /// Whether the metadata reply depends on `Accept`.
    pub negotiates: bool,
    /// A document on proxyd that must point back at proxyd, and what it must contain (none
    /// where nothing is rewritten, as in a Maven repository).
    pub links: Option<(String, String)>,
    /// Paths proxyd must refuse with 4xx without asking upstream.
    pub bad_paths: Vec<String>,
    /// Metadata of a package upstream does not have, on proxyd and upstream.
    pub unknown: (String, String),
    /// An artifact of the package that upstream does not have.
    pub unknown_artifact: String,
    /// What a client asks before an artifact (apt's `update`: the indexes whose digests
    /// verify the `.deb` files); asked by the checks about artifacts.
    pub warm_up: Vec<String>,
    /// How many of those are kept in storage (counted as cached).
    pub warm_up_stored: u64,
    upstream: Upstream,
}

impl Fixture {
    /// Start the fake upstream of `kind` with one package whose artifact is about `size` bytes.
    pub async fn start(kind: Kind, size: usize) -> Self {
        match kind {
            Kind::Npm => {
                let pkg = Package::new("conformance-pkg", "1.0.0").padded(size);
                let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
                let path = NpmRegistry::tarball_path(&pkg);
                Self {
                    kind,
                    mount: "npm",
                    name: "npm",
                    settings: format!("upstream:\n  npm: {}\n", registry.url()),
                    metadata_path: "/npm/conformance-pkg".into(),
                    metadata_upstream_path: "/conformance-pkg".into(),
                    artifact_path: format!("/npm{path}"),
                    artifact_upstream_path: path,
                    artifact: registry.tarball(&pkg),
                    digest: "sha512",
                    negotiates: true,
                    links: Some((
                        "/npm/conformance-pkg".into(),
                        "/npm/conformance-pkg/-/conformance-pkg-1.0.0.tgz".into(),
                    )),
                    bad_paths: vec![
                        "/npm/conformance-pkg/-/..%2fx.tgz".into(),
                        "/npm/conformance-pkg/-/conformance-pkg-1.0.0.zip".into(),
                        "/npm/@a/b/c".into(),
                        "/npm/.hidden".into(),
                    ],
                    unknown: ("/npm/no-such-pkg".into(), "/no-such-pkg".into()),
                    unknown_artifact: "/npm/conformance-pkg/-/conformance-pkg-9.9.9.tgz".into(),
                    warm_up: vec![],
                    warm_up_stored: 0,
                    upstream: Upstream::Npm(registry),
                }
            }
            Kind::PyPi => {
                let filename = "conformance_pkg-1.0-py3-none-any.whl".to_owned();
                let bytes = Bytes::from(crate::conformance::pattern(size.max(64), 3));
                let file = File {
                    project: "conformance-pkg".into(),
                    filename: filename.clone(),
                    bytes: bytes.clone(),
                    metadata: None,
                };
                let registry = PyPiRegistry::start(PageFormat::Html, vec![file]).await;
                Self {
                    kind,
                    mount: "pypi",
                    name: "pypi",
                    settings: format!("upstream:\n  pypi: {}\n", registry.index_url()),
                    metadata_path: "/pypi/simple/conformance-pkg/".into(),
                    metadata_upstream_path: "/simple/conformance-pkg/".into(),
                    artifact_path: format!("/pypi/packages/conformance-pkg/{filename}"),
                    artifact_upstream_path: format!("/files/{filename}"),
                    artifact: bytes,
                    digest: "sha256",
                    negotiates: true,
                    links: Some((
                        "/pypi/simple/conformance-pkg/".into(),
                        format!("/pypi/packages/conformance-pkg/{filename}"),
                    )),
                    bad_paths: vec![
                        "/pypi/packages/Conformance_Pkg/x.whl".into(),
                        "/pypi/packages/conformance-pkg/.x.whl".into(),
                        "/pypi/simple/a/b/".into(),
                    ],
                    unknown: (
                        "/pypi/simple/no-such-pkg/".into(),
                        "/simple/no-such-pkg/".into(),
                    ),
                    unknown_artifact:
                        "/pypi/packages/conformance-pkg/conformance_pkg-9.9-py3-none-any.whl".into(),
                    warm_up: vec![],
                    warm_up_stored: 0,
                    upstream: Upstream::PyPi(registry),
                }
            }
            Kind::Cargo => {
                let krate = Crate::new("conformance-pkg", "1.0.0").padded(size);
                let registry = CargoRegistry::start(std::slice::from_ref(&krate)).await;
                let upstream_path = CargoRegistry::crate_path("conformance-pkg", "1.0.0");
                let artifact = registry.server.get(&upstream_path).unwrap();
                Self {
                    kind,
                    mount: "cargo",
                    name: "cargo",
                    settings: format!("upstream:\n  cargo: {}\n", registry.index_url()),
                    metadata_path: "/cargo/co/nf/conformance-pkg".into(),
                    metadata_upstream_path: "/index/co/nf/conformance-pkg".into(),
                    artifact_path: "/cargo/crates/conformance-pkg/1.0.0/download".into(),
                    artifact_upstream_path: upstream_path,
                    artifact,
                    digest: "sha256",
                    negotiates: false,
                    links: Some((
                        "/cargo/config.json".into(),
                        "/cargo/crates/{crate}/{version}/download".into(),
                    )),
                    bad_paths: vec![
                        "/cargo/crates/conformance-pkg/..%2f/download".into(),
                        "/cargo/crates/-x/1.0.0/download".into(),
                        "/cargo/co/nf/other-name".into(),
                    ],
                    unknown: (
                        "/cargo/no/-s/no-such-pkg".into(),
                        "/index/no/-s/no-such-pkg".into(),
                    ),
                    unknown_artifact: "/cargo/crates/conformance-pkg/9.9.9/download".into(),
                    warm_up: vec![],
                    warm_up_stored: 0,
                    upstream: Upstream::Cargo(registry),
                }
            }
            Kind::Maven => {
                let artifact =
                    MavenArtifact::new("org.conformance", "conformance-pkg", "1.0.0", size);
                let repo = MavenRepository::start(std::slice::from_ref(&artifact)).await;
                let jar = artifact.path("jar");
                Self {
                    kind,
                    mount: "maven",
                    name: "maven",
                    settings: format!("upstream:\n  maven: {}\n", repo.url()),
                    metadata_path: format!("/maven{}", artifact.metadata_path()),
                    metadata_upstream_path: artifact.metadata_path(),
                    artifact_path: format!("/maven{jar}"),
                    artifact_upstream_path: jar,
                    artifact: artifact.jar.clone(),
                    digest: "sha1",
                    negotiates: false,
                    links: None,
                    bad_paths: vec![
                        "/maven/org/conformance/..%2fx/1.0/x-1.0.jar".into(),
                        "/maven/org/.m2/x/1.0/x-1.0.jar".into(),
                        "/maven/x.jar".into(),
                        "/maven/org/x/1.0/x 1.0.jar".into(),
                    ],
                    unknown: (
                        "/maven/org/none/no-such-pkg/maven-metadata.xml".into(),
                        "/org/none/no-such-pkg/maven-metadata.xml".into(),
                    ),
                    unknown_artifact:
                        "/maven/org/conformance/conformance-pkg/9.9.9/conformance-pkg-9.9.9.jar"
                            .into(),
                    warm_up: vec![],
                    warm_up_stored: 0,
                    upstream: Upstream::Maven(repo),
                }
            }
            Kind::Debian => {
                // A genuine .deb (its size is what it is), in a signed archive.
                let repo = AptRepository::start(&["hello_"]).await;
                let pool = repo.pool_path("hello_");
                let artifact = Bytes::from(
                    std::fs::read(
                        crate::apt_repo::debs_dir().join(pool.rsplit('/').next().unwrap()),
                    )
                    .unwrap(),
                );
                Self {
                    kind,
                    mount: "debian",
                    name: "debian",
                    settings: format!("upstream:\n  debian: {}\n", repo.url()),
                    metadata_path: "/debian/dists/stable/InRelease".into(),
                    metadata_upstream_path: "/dists/stable/InRelease".into(),
                    artifact_path: format!("/debian{pool}"),
                    artifact_upstream_path: pool,
                    artifact,
                    digest: "sha256",
                    negotiates: false,
                    links: None,
                    bad_paths: vec![
                        "/debian/pool/main/.hidden.deb".into(),
                        "/debian/other/x".into(),
                        "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/abc".into(),
                        "/debian/pool/main/x%2f..%2fy.deb".into(),
                    ],
                    unknown: (
                        "/debian/dists/nosuch/InRelease".into(),
                        "/dists/nosuch/InRelease".into(),
                    ),
                    unknown_artifact: "/debian/pool/main/nosuch_1.0_amd64.deb".into(),
                    // apt's update: the signed release, then the index listing the .deb.
                    warm_up: vec![
                        "/debian/dists/stable/InRelease".into(),
                        "/debian/dists/stable/main/binary-amd64/Packages".into(),
                    ],
                    warm_up_stored: 1,
                    upstream: Upstream::Debian(repo),
                }
            }
            Kind::Go => {
                let body = Bytes::from(crate::conformance::pattern(size.max(64), 5));
                let module = GoModule::new(
                    "example.com/conformance/pkg",
                    "v1.0.0",
                    &[
                        (
                            "go.mod".into(),
                            Bytes::from("module example.com/conformance/pkg\n"),
                        ),
                        ("data.bin".into(), body),
                    ],
                );
                let proxy = GoProxyServer::start(std::slice::from_ref(&module)).await;
                let zip = format!("{}.zip", module.base());
                Self {
                    kind,
                    mount: "go",
                    name: "go",
                    settings: format!(
                        "upstream:\n  go: {}\n  go_sumdb: {}\n",
                        proxy.url(),
                        proxy.sumdb_url()
                    ),
                    metadata_path: "/go/example.com/conformance/pkg/@latest".into(),
                    metadata_upstream_path: "/example.com/conformance/pkg/@latest".into(),
                    artifact_path: format!("/go{zip}"),
                    artifact_upstream_path: zip,
                    artifact: module.zip.clone(),
                    digest: "h1",
                    negotiates: false,
                    links: None,
                    bad_paths: vec![
                        "/go/example.com/Conformance/@v/list".into(),
                        "/go/example.com/../x/@v/list".into(),
                        "/go/example.com/conformance/pkg/@v/v1.0.0%2f.zip".into(),
                        "/go/example.com/conformance/pkg/@v/master.zip".into(),
                        "/go/nodot/x/@v/list".into(),
                        "/go/sumdb/127.0.0.1/lookup/example.com/x@..".into(),
                    ],
                    unknown: (
                        "/go/example.com/no-such-module/@latest".into(),
                        "/example.com/no-such-module/@latest".into(),
                    ),
                    unknown_artifact: "/go/example.com/conformance/pkg/@v/v9.9.9.zip".into(),
                    warm_up: vec![],
                    warm_up_stored: 0,
                    upstream: Upstream::Go(proxy),
                }
            }
            Kind::Oci => {
                // An OCI registry's answers, served from memory (the real registry is in the
                // client tests): one image whose single layer is the artifact.
                let layer = Bytes::from(crate::conformance::pattern(size.max(64), 9));
                let config = Bytes::from_static(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}");
                let digest = |b: &[u8]| crate::oci_registry::digest(b);
                let manifest = format!(
                    "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{}\",\"size\":{}}},\"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"{}\",\"size\":{}}}]}}",
                    digest(&config),
                    config.len(),
                    digest(&layer),
                    layer.len()
                );
                let server = StaticServer::start().await;
                let blob = format!("/v2/demo/pkg/blobs/{}", digest(&layer));
                server.put(&blob, layer.clone(), "application/octet-stream");
                server.put(
                    &format!("/v2/demo/pkg/blobs/{}", digest(&config)),
                    config,
                    "application/octet-stream",
                );
                server.put(
                    "/v2/demo/pkg/manifests/1.0",
                    manifest,
                    "application/vnd.oci.image.manifest.v1+json",
                );
                Self {
                    kind,
                    mount: "v2",
                    name: "oci",
                    settings: format!("upstream:\n  oci:\n    default: {}\n", server.url()),
                    metadata_path: "/v2/demo/pkg/manifests/1.0".into(),
                    metadata_upstream_path: "/v2/demo/pkg/manifests/1.0".into(),
                    artifact_path: format!("/v2{}", blob.trim_start_matches("/v2")),
                    artifact_upstream_path: blob,
                    artifact: layer,
                    digest: "sha256",
                    negotiates: true,
                    links: None,
                    bad_paths: vec![
                        "/v2/Demo/pkg/manifests/1.0".into(),
                        "/v2/demo/pkg/blobs/sha256:abc".into(),
                        "/v2/demo/pkg/blobs/md5:0123".into(),
                        "/v2/demo/pkg/manifests/.x".into(),
                        "/v2/demo//pkg/tags/list".into(),
                        "/v2/demo/pkg/other/x".into(),
                    ],
                    unknown: (
                        "/v2/demo/none/manifests/1.0".into(),
                        "/v2/demo/none/manifests/1.0".into(),
                    ),
                    unknown_artifact: format!("/v2/demo/pkg/blobs/sha256:{}", "0".repeat(64)),
                    warm_up: vec![],
                    warm_up_stored: 0,
                    upstream: Upstream::Oci(server),
                }
            }
        }
    }

    /// The fake upstream's server (faults, hit counts).
    pub fn server(&self) -> &StaticServer {
        match &self.upstream {
            Upstream::Npm(r) => r.server(),
            Upstream::PyPi(r) => &r.server,
            Upstream::Cargo(r) => &r.server,
            Upstream::Maven(r) => &r.server,
            Upstream::Debian(r) => &r.server,
            Upstream::Go(r) => &r.server,
            Upstream::Oci(s) => s,
        }
    }

    /// Paths every ecosystem must refuse: traversal (plain and encoded), NUL, a name of
    /// 10,000 characters, a doubled slash before the mount, and its own bad paths.
    pub fn all_bad_paths(&self) -> Vec<String> {
        let m = self.mount;
        let mut paths = vec![
            format!("/{m}/..%2f..%2fetc%2fpasswd"),
            format!("/{m}/%2e%2e/%2e%2e/etc/passwd"),
            format!("/{m}/a%00b"),
            format!("/{m}/{}", "a".repeat(10_000)),
            format!("/{m}/packages/{}/x", "a".repeat(10_000)),
            format!("/{m}/simple/{}/", "a".repeat(10_000)),
            format!("/{m}/crates/{}/1.0.0/download", "a".repeat(10_000)),
            format!("/{m}/a%ffb"),
            format!("/{}", self.artifact_path.trim_start_matches('/')).replacen('/', "//", 1),
        ];
        paths.extend(self.bad_paths.iter().cloned());
        paths
    }
}

/// proxyd over `storage` with the fixture's settings plus `extra` YAML.
pub struct Running {
    pub proxyd: ProxydProcess,
    pub redirects: bool,
    _s3: Option<S3sFs>,
}

/// [`start_proxyd`], then what a client asks before an artifact (the fixture's `warm_up`).
pub async fn start_warm(bin: &str, fixture: &Fixture, storage: Storage, extra: &str) -> Running {
    let run = start_proxyd(bin, fixture, storage, extra);
    for path in &fixture.warm_up {
        let resp = run.get(path).await;
        assert_eq!(resp.status(), 200, "warm-up {path}");
        resp.bytes().await.unwrap();
    }
    // The client has the last byte before the commit: wait for it.
    run.proxyd.wait_cached(fixture.warm_up_stored).await;
    run
}

/// Start proxyd for `fixture` on `storage`.
pub fn start_proxyd(bin: &str, fixture: &Fixture, storage: Storage, extra: &str) -> Running {
    let (yaml, env, s3) = match storage {
        Storage::Fs => (String::new(), vec![], None),
        Storage::S3 => {
            let server = S3sFs::start();
            server.create_bucket("artifacts");
            let yaml = format!(
                "storage:\n  url: \"s3://artifacts?region=us-east-1&endpoint={}&s3ForcePathStyle=true\"\n  direct_serve: true\n",
                server.endpoint()
            );
            let env = vec![
                ("AWS_ACCESS_KEY_ID", S3sFs::ACCESS_KEY.to_owned()),
                ("AWS_SECRET_ACCESS_KEY", S3sFs::SECRET_KEY.to_owned()),
            ];
            (yaml, env, Some(server))
        }
    };
    let config = format!("{yaml}{}{extra}", fixture.settings);
    let proxyd = ProxydProcess::start(bin, &config, &env);
    Running {
        proxyd,
        redirects: storage == Storage::S3,
        _s3: s3,
    }
}

impl Running {
    /// GET `path` on proxyd (redirects not followed).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        client()
            .get(format!("{}{path}", self.proxyd.url()))
            .send()
            .await
            .unwrap()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// GET `url`, following one redirect to storage when `redirects`; the status of the first
/// answer and the bytes finally received (an error when the transfer broke off).
async fn download(url: &str, redirects: bool) -> (u16, Result<Bytes, String>) {
    let c = client();
    let first = c.get(url).send().await.unwrap();
    let status = first.status().as_u16();
    if redirects && status == 302 {
        let location = first.headers()["location"].to_str().unwrap().to_owned();
        let body = c
            .get(&location)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map_err(|e| e.to_string());
        return (status, body);
    }
    (status, first.bytes().await.map_err(|e| e.to_string()))
}

/// A miss is fetched once and stored; the next request is a hit (a redirect on S3), counted
/// once each.
pub async fn miss_then_hit(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 100_000).await;
    let run = start_warm(bin, &f, storage, "").await;
    let label = [("ecosystem", f.name)];
    let before = run.proxyd.metrics().await;
    let (misses, hits) = (
        metric(&before, "proxyd_cache_misses_total", &label),
        metric(&before, "proxyd_cache_hits_total", &label),
    );
    let cached = run.proxyd.stats().await["ecosystems"][f.name]["cached_artifacts"]
        .as_u64()
        .unwrap_or(0);
    let url = format!("{}{}", run.proxyd.url(), f.artifact_path);
    let (status, body) = download(&url, run.redirects).await;
    assert_eq!(status, 200, "the miss streams");
    assert_eq!(body.unwrap(), f.artifact);
    let (status, body) = download(&url, run.redirects).await;
    assert_eq!(status, if run.redirects { 302 } else { 200 });
    assert_eq!(body.unwrap(), f.artifact);
    assert_eq!(f.server().hits(&f.artifact_upstream_path), 1);
    let m = run.proxyd.metrics().await;
    assert_eq!(
        metric(&m, "proxyd_cache_misses_total", &label) - misses,
        1.0
    );
    assert_eq!(metric(&m, "proxyd_cache_hits_total", &label) - hits, 1.0);
    assert_eq!(
        run.proxyd.stats().await["ecosystems"][f.name]["cached_artifacts"],
        cached + 1
    );
}

/// Fifty concurrent requests for one uncached artifact make one upstream request.
pub async fn fifty_concurrent_misses_make_one_fetch(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 1_000_000).await;
    f.server().set_fault(
        &f.artifact_upstream_path,
        Fault::Delay(Duration::from_millis(300)),
    );
    let run = start_warm(bin, &f, storage, "").await;
    let url = format!("{}{}", run.proxyd.url(), f.artifact_path);
    let requests = (0..50).map(|_| {
        let (url, redirects) = (url.clone(), run.redirects);
        tokio::spawn(async move { download(&url, redirects).await })
    });
    for result in futures::future::join_all(requests).await {
        let (_, body) = result.unwrap();
        assert_eq!(body.unwrap(), f.artifact);
    }
    assert_eq!(f.server().hits(&f.artifact_upstream_path), 1);
}

/// Bytes that do not match the declared digest are refused, and nothing is stored.
pub async fn digest_mismatch_is_refused(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 200_000).await;
    f.server()
        .set_fault(&f.artifact_upstream_path, Fault::Corrupt);
    let run = start_warm(bin, &f, storage, "").await;
    let cached = run.proxyd.stats().await["cached_artifacts"].clone();
    let (_, body) = download(&format!("{}{}", run.proxyd.url(), f.artifact_path), false).await;
    assert!(
        body.is_err() || body.unwrap().len() < f.artifact.len(),
        "never a clean full body"
    );
    if f.warm_up.is_empty() {
        run.proxyd.assert_refused_as_corrupt(f.digest).await;
    } else {
        // What the warm-up cached stays; the artifact is not added.
        assert_eq!(run.proxyd.stats().await["cached_artifacts"], cached);
        let needle = format!("does not match its declared {} digest", f.digest);
        assert!(run.proxyd.log().contains(&needle), "{}", run.proxyd.log());
    }
}

/// An upstream that drops the connection mid-body aborts the client's transfer and stores
/// nothing; once upstream behaves the artifact is cached.
pub async fn dropped_upstream_aborts_the_client(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 300_000).await;
    f.server()
        .set_fault(&f.artifact_upstream_path, Fault::DropMidBody);
    let run = start_warm(bin, &f, storage, "").await;
    let url = format!("{}{}", run.proxyd.url(), f.artifact_path);
    let (_, body) = download(&url, false).await;
    assert!(
        !body.is_ok_and(|b| b.len() == f.artifact.len()),
        "a broken download must not look complete"
    );
    assert_eq!(
        run.proxyd.stats().await["cached_artifacts"],
        f.warm_up_stored,
        "nothing of the artifact is cached"
    );
    f.server()
        .set_fault(&f.artifact_upstream_path, Fault::Delay(Duration::ZERO));
    let (_, body) = download(&url, run.redirects).await;
    assert_eq!(body.unwrap(), f.artifact);
}

/// Upstream errors become 502 and slow upstreams 504, each with a one-line reason.
pub async fn upstream_failures_give_502_and_504(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 1_000).await;
    let extra = format!(
        "ecosystems:\n  {}:\n    upstream_timeout: 1s\n    upstream_retries: 1\n",
        f.name
    );
    let run = start_proxyd(bin, &f, storage, &extra);
    f.server()
        .set_fault(&f.metadata_upstream_path, Fault::Unavailable);
    let resp = run.get(&f.metadata_path).await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(
        text.contains("503"),
        "the reason names upstream's answer: {text}"
    );
    assert_eq!(
        f.server().hits(&f.metadata_upstream_path),
        2,
        "a 503 is retried (upstream_retries: 1)"
    );
    f.server()
        .set_fault(&f.metadata_upstream_path, Fault::TooManyRequests);
    let resp = run.get(&f.metadata_path).await;
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("429"));
    assert_eq!(
        f.server().hits(&f.metadata_upstream_path),
        4,
        "429 retried too"
    );
    f.server().set_fault(
        &f.metadata_upstream_path,
        Fault::Delay(Duration::from_secs(3)),
    );
    let resp = run.get(&f.metadata_path).await;
    assert_eq!(resp.status(), 504);
    assert!(resp.text().await.unwrap().contains("timed out"));
    // An artifact whose upstream stalls mid-body: the client's transfer fails after the
    // timeout (never a clean short body), and nothing is cached.
    f.server()
        .set_fault(&f.metadata_upstream_path, Fault::Delay(Duration::ZERO));
    f.server()
        .set_fault(&f.artifact_upstream_path, Fault::StallMidBody);
    let (_, body) = download(&format!("{}{}", run.proxyd.url(), f.artifact_path), false).await;
    assert!(
        !body.is_ok_and(|b| b.len() == f.artifact.len()),
        "a stalled download must not look complete"
    );
    assert_eq!(run.proxyd.stats().await["cached_artifacts"], 0);
    assert!(
        run.proxyd.log().contains("sent nothing for 1s"),
        "{}",
        run.proxyd.log()
    );
}

/// Metadata cut short is never served or kept as complete: the first time a 502; after a good
/// copy, the good copy (stale) rather than the cut one.
pub async fn metadata_cut_short_is_never_kept(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 1_000).await;
    let run = start_proxyd(bin, &f, storage, "metadata_ttl: 1s\n");
    let url = format!("{}{}", run.proxyd.url(), f.metadata_path);
    f.server()
        .set_fault(&f.metadata_upstream_path, Fault::Truncated);
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 502, "{}", resp.text().await.unwrap());
    f.server()
        .set_fault(&f.metadata_upstream_path, Fault::Delay(Duration::ZERO));
    let good = client().get(&url).send().await.unwrap();
    assert_eq!(good.status(), 200);
    let good = good.bytes().await.unwrap();
    f.server()
        .set_fault(&f.metadata_upstream_path, Fault::Truncated);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let again = client().get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.bytes().await.unwrap(),
        good,
        "the whole copy, not the cut one"
    );
}

/// With the upstream gone, metadata is served stale and every cached artifact still installs.
pub async fn served_offline_after_warm_up(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 10_000).await;
    let run = start_warm(bin, &f, storage, "metadata_ttl: 1s\n").await;
    let meta = format!("{}{}", run.proxyd.url(), f.metadata_path);
    let art = format!("{}{}", run.proxyd.url(), f.artifact_path);
    assert_eq!(client().get(&meta).send().await.unwrap().status(), 200);
    assert_eq!(download(&art, run.redirects).await.1.unwrap(), f.artifact);
    f.server().stop();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let stale = client().get(&meta).send().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert!(stale.headers().contains_key("warning"), "marked stale");
    assert_eq!(download(&art, run.redirects).await.1.unwrap(), f.artifact);
}

/// Bad paths answer 4xx with one line and reach neither upstream nor storage; other methods
/// answer 405.
pub async fn bad_paths_reach_nothing(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 1_000).await;
    let run = start_proxyd(bin, &f, storage, "");
    let c = client();
    for path in f.all_bad_paths() {
        let resp = run.get(&path).await;
        let status = resp.status().as_u16();
        let shown: String = path.chars().take(80).collect();
        assert!((400..500).contains(&status), "{shown}: {status}");
        let text = resp.text().await.unwrap();
        assert_eq!(text.lines().count(), 1, "one line for {shown}: {text:?}");
    }
    let post = c
        .post(format!("{}{}", run.proxyd.url(), f.artifact_path))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert!(post.headers().contains_key("allow"));
    assert_eq!(f.server().total_hits(), 0, "nothing reached upstream");
    assert_eq!(run.proxyd.stats().await["cached_artifacts"], 0);
}

/// HEAD is answered by proxyd, never redirected, with the entity headers.
pub async fn head_is_never_redirected(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 10_000).await;
    let run = start_warm(bin, &f, storage, "").await;
    let url = format!("{}{}", run.proxyd.url(), f.artifact_path);
    download(&url, run.redirects).await.1.unwrap();
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(!head.headers().contains_key("location"));
    for name in ["content-length", "content-type", "etag", "last-modified"] {
        assert!(head.headers().contains_key(name), "HEAD lacks {name}");
    }
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        f.artifact.len().to_string()
    );
}

/// Streamed hits honour Range (the largest end a client can write included; several ranges
/// get the whole body), If-None-Match and If-Modified-Since. On S3 the same rules hold on
/// the storage URL, so this runs where proxyd streams.
pub async fn range_and_conditionals(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 50_000).await;
    let run = start_warm(
        bin,
        &f,
        storage,
        &format!("ecosystems:\n  {}:\n    direct_serve: false\n", f.name),
    )
    .await;
    let url = format!("{}{}", run.proxyd.url(), f.artifact_path);
    download(&url, false).await.1.unwrap();
    let c = client();
    let get = |range: Option<&str>, header: Option<(&'static str, String)>| {
        let mut request = c.get(&url);
        if let Some(r) = range {
            request = request.header("range", r.to_owned());
        }
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.send()
    };
    let hit = get(None, None).await.unwrap();
    assert_eq!(hit.status(), 200);
    let etag = hit.headers()["etag"].to_str().unwrap().to_owned();
    let modified = hit.headers()["last-modified"].to_str().unwrap().to_owned();
    let part = get(Some("bytes=10-19"), None).await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-19/{}", f.artifact.len())
    );
    assert_eq!(part.bytes().await.unwrap(), f.artifact.slice(10..20));
    let huge = get(Some("bytes=0-18446744073709551615"), None)
        .await
        .unwrap();
    assert_eq!(huge.status(), 200, "the whole file, not a panic or a 416");
    assert_eq!(huge.bytes().await.unwrap(), f.artifact);
    let tail = get(Some("bytes=5-18446744073709551615"), None)
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap(), f.artifact.slice(5..));
    let several = get(Some("bytes=0-1,5-6"), None).await.unwrap();
    assert_eq!(several.status(), 200);
    assert_eq!(several.bytes().await.unwrap(), f.artifact);
    let outside = get(Some(&format!("bytes={}-", f.artifact.len())), None)
        .await
        .unwrap();
    assert_eq!(outside.status(), 416);
    let cond = get(None, Some(("if-none-match", etag))).await.unwrap();
    assert_eq!(cond.status(), 304);
    let since = get(None, Some(("if-modified-since", modified)))
        .await
        .unwrap();
    assert_eq!(since.status(), 304);
}

/// Metadata points back at proxyd, carries `Vary: Accept` where `Accept` chooses it, and
/// honours If-None-Match.
pub async fn metadata_points_at_proxyd(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 1_000).await;
    let run = start_proxyd(bin, &f, storage, "");
    let c = client();
    if let Some((doc_path, needle)) = &f.links {
        let doc = run.get(doc_path).await;
        assert_eq!(doc.status(), 200);
        let text = doc.text().await.unwrap();
        let expected = format!("{}{needle}", run.proxyd.url());
        assert!(text.contains(&expected), "{expected} not in {text}");
    }
    let meta = run.get(&f.metadata_path).await;
    assert_eq!(meta.status(), 200);
    let vary = meta
        .headers()
        .get("vary")
        .map(|v| v.to_str().unwrap().to_owned());
    if f.negotiates {
        assert_eq!(vary.as_deref(), Some("Accept"));
    } else {
        assert_eq!(vary, None);
    }
    let etag = meta.headers()["etag"].to_str().unwrap().to_owned();
    let again = c
        .get(format!("{}{}", run.proxyd.url(), f.metadata_path))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
}

/// What the upstream does not have is asked for at most once per metadata TTL, however many
/// clients ask: an unknown package, and an unknown file of a known one.
pub async fn unknown_names_reach_upstream_once(bin: &str, kind: Kind, storage: Storage) {
    let f = Fixture::start(kind, 1_000).await;
    let run = start_proxyd(bin, &f, storage, "");
    let (path, upstream_path) = &f.unknown;
    for _ in 0..5 {
        let resp = run.get(path).await;
        assert_eq!(resp.status(), 404);
    }
    assert_eq!(f.server().hits(upstream_path), 1, "asked once for {path}");
    let resp = run.get(&f.unknown_artifact).await;
    assert_eq!(resp.status(), 404);
    let after_first = f.server().total_hits();
    for _ in 0..4 {
        let resp = run.get(&f.unknown_artifact).await;
        assert_eq!(resp.status(), 404);
    }
    // Whatever the first one asked upstream (the metadata, just fetched, once at most), the
    // file is remembered as missing and the others ask nothing.
    assert_eq!(
        f.server().total_hits(),
        after_first,
        "the missing file is remembered"
    );
    assert!(f.server().hits(&f.metadata_upstream_path) <= 1);
    assert_eq!(f.server().hits(&f.artifact_upstream_path), 0);
}
