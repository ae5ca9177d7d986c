//! Real OCI clients pulling through proxyd from a real registry (Debian's docker-registry,
//! CNCF distribution 2.8, started by the test on 127.0.0.1): skopeo and podman through
//! `HOST/local/<repository>:<tag>` (`upstream.oci.local`), and a Docker Engine (Debian's
//! docker.io, started by the test with its own data root, vfs storage, no iptables, on its own
//! socket) through `registry-mirrors` (`upstream.oci.default`). The image has three layers made
//! of real files, one of them tens of MB. For each storage backend, with direct-serve on: cold,
//! again with fresh client state (no new blob download upstream; redirects followed), again with
//! the upstream stopped. A blob corrupted upstream is refused; a tag pushed again upstream is
//! seen after the TTL while the old digest still resolves.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::{BIN, Backend, storage};
use proxyd_testkit::oci_registry::{DistributionRegistry, Image, skopeo_copy};
use proxyd_testkit::proxyd::ProxydProcess;

const REPOSITORY: &str = "demo/hello";
/// The large layer: tens of MB.
const BIG: usize = 24 << 20;

fn run(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown} ({e}); scripts/test installs it"));
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{shown} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// skopeo copying `reference` (`HOST/local/demo/hello:1.0`) into a fresh OCI layout; the
/// digests of the blobs it wrote.
fn skopeo_pull(reference: &str) -> Result<Vec<String>, String> {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    skopeo_copy(reference, &layout)?;
    let blobs = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect();
    Ok(blobs)
}

/// podman pulling `reference` into fresh storage (vfs); the image's digest as podman has it.
fn podman_pull(reference: &str) -> Result<String, String> {
    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("registries.conf");
    std::fs::write(&conf, "unqualified-search-registries = []\n").unwrap();
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.env("HOME", work.path())
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .env("XDG_RUNTIME_DIR", work.path())
            .arg("--root")
            .arg(work.path().join("root"))
            .arg("--runroot")
            .arg(work.path().join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args);
        c
    };
    run(&mut podman(&[
        "pull",
        "-q",
        "--tls-verify=false",
        reference,
    ]))?;
    let digest = run(&mut podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        reference,
    ]))?;
    Ok(digest.trim().to_owned())
}

/// A private Docker Engine: its own data root, exec root and socket, vfs storage, no
/// iptables or bridge, `registry-mirrors` pointing at proxyd; killed (by PID) when dropped.
struct DockerEngine {
    child: Child,
    dir: tempfile::TempDir,
}

impl DockerEngine {
    fn start(mirror: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let p = |name: &str| root.join(name);
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(p("data"))
            .arg("--exec-root")
            .arg(p("exec"))
            .arg("-H")
            .arg(format!("unix://{}", p("docker.sock").display()))
            .arg("--pidfile")
            .arg(p("docker.pid"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .arg("--registry-mirror")
            .arg(mirror)
            .arg("--insecure-registry")
            .arg(host_of(mirror))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p("dockerd.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start dockerd ({e}): install Debian's docker.io (scripts/test does)")
            });
        let engine = Self { child, dir };
        for _ in 0..150 {
            if engine.docker(&["version"]).is_ok() {
                return engine;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "dockerd did not start:\n{}",
            std::fs::read_to_string(p("dockerd.log")).unwrap_or_default()
        );
    }

    fn docker(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("docker")
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.dir.path().join("docker.sock").display()),
            )
            .env("DOCKER_CONFIG", self.dir.path().join("config"))
            .args(args))
    }

    /// Pull `image` (a Docker Hub name, so the mirror is asked), then remove it again so the
    /// next pull starts from nothing; the digest Docker recorded.
    fn pull_fresh(&self, image: &str) -> Result<String, String> {
        self.docker(&["pull", "-q", image])?;
        let digest = self.docker(&[
            "image",
            "inspect",
            "--format",
            "{{index .RepoDigests 0}}",
            image,
        ])?;
        self.docker(&["image", "rm", "-f", image])?;
        Ok(digest.trim().to_owned())
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        // SIGTERM by PID, so dockerd stops its containerd too, then wait.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    registry: DistributionRegistry,
    image: Image,
}

async fn setup() -> Setup {
    let registry = DistributionRegistry::start().await;
    let image = Image::demo("hello from proxyd", BIG);
    registry.push(REPOSITORY, "1.0", &image).await;
    Setup { registry, image }
}

fn settings(registry: &DistributionRegistry, extra: &str) -> String {
    format!(
        "upstream:\n  oci:\n    local: {url}\n    default: {url}\n{extra}",
        url = registry.url()
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn blob_gets(registry: &DistributionRegistry) -> usize {
    registry.gets(&format!("/v2/{REPOSITORY}/blobs/"))
}

async fn pull_cycle(backend: Backend) {
    let mut s = setup().await;
    let store = storage(backend, false).await;
    let proxyd = ProxydProcess::start(
        BIN,
        &format!("{}{}", store.yaml, settings(&s.registry, "")),
        &store.env,
    );
    let host = host_of(&proxyd.url());
    let reference = format!("{host}/local/{REPOSITORY}:1.0");
    let want: Vec<String> = s
        .image
        .blobs()
        .iter()
        .map(|b| proxyd_testkit::oci_registry::digest(b))
        .collect();

    // Cold: skopeo fetches every blob once through proxyd.
    let r = reference.clone();
    let got = blocking(move || skopeo_pull(&r)).await.unwrap();
    for d in &want {
        assert!(got.contains(d), "skopeo wrote {d}");
    }
    assert_eq!(blob_gets(&s.registry), want.len(), "each blob fetched once");

    // podman and the Docker Engine, fresh state each: nothing new upstream.
    let r = reference.clone();
    let digest = blocking(move || podman_pull(&r)).await.unwrap();
    assert_eq!(digest, s.image.digest());
    let engine = blocking({
        let mirror = proxyd.url();
        move || DockerEngine::start(&mirror)
    })
    .await;
    let engine = std::sync::Arc::new(engine);
    let e = engine.clone();
    let recorded = blocking(move || e.pull_fresh(&format!("{REPOSITORY}:1.0")))
        .await
        .unwrap();
    assert!(recorded.ends_with(&s.image.digest()), "{recorded}");
    assert_eq!(
        blob_gets(&s.registry),
        want.len(),
        "warm pulls ask the upstream for no blob"
    );
    if store.redirects {
        let metrics = proxyd.metrics().await;
        let redirects = proxyd_testkit::proxyd::metric(
            &metrics,
            "proxyd_direct_serve_total",
            &[("ecosystem", "oci"), ("outcome", "redirect")],
        );
        assert!(
            redirects >= 2.0 * want.len() as f64,
            "blobs were redirected: {redirects}"
        );
    }

    // The upstream gone: every client still pulls.
    s.registry.stop();
    let r = reference.clone();
    blocking(move || skopeo_pull(&r)).await.unwrap();
    let r = reference.clone();
    blocking(move || podman_pull(&r)).await.unwrap();
    let e = engine.clone();
    blocking(move || e.pull_fresh(&format!("{REPOSITORY}:1.0")))
        .await
        .unwrap();
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_podman_and_docker_pull_through_filesystem_storage() {
    pull_cycle(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_podman_and_docker_pull_through_s3_with_direct_serve() {
    pull_cycle(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_podman_and_docker_pull_through_azure_with_direct_serve() {
    pull_cycle(Backend::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_corrupted_upstream_is_refused_and_not_stored() {
    let s = setup().await;
    let big = proxyd_testkit::oci_registry::digest(s.image.layers.last().unwrap());
    s.registry.corrupt_blob(&big);
    let proxyd = ProxydProcess::start(BIN, &settings(&s.registry, ""), &[]);
    let reference = format!("{}/local/{REPOSITORY}:1.0", host_of(&proxyd.url()));
    let failed = blocking(move || skopeo_pull(&reference)).await.unwrap_err();
    assert!(
        failed.contains("blob") || failed.contains("digest"),
        "{failed}"
    );
    assert!(
        proxyd
            .log()
            .contains("does not match its declared sha256 digest"),
        "{}",
        proxyd.log()
    );
    // Not kept: asking again asks the upstream again.
    let before = s.registry.gets(&format!("/v2/{REPOSITORY}/blobs/{big}"));
    let again = reqwest::get(format!(
        "{}/v2/local/{REPOSITORY}/blobs/{big}",
        proxyd.url()
    ))
    .await
    .unwrap();
    let _ = again.bytes().await;
    assert_eq!(
        s.registry.gets(&format!("/v2/{REPOSITORY}/blobs/{big}")),
        before + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pushed_again_is_seen_after_the_ttl_and_the_old_digest_still_resolves() {
    let s = setup().await;
    let proxyd = ProxydProcess::start(BIN, &settings(&s.registry, "metadata_ttl: 1s\n"), &[]);
    let reference = format!("{}/local/{REPOSITORY}:1.0", host_of(&proxyd.url()));
    let r = reference.clone();
    let first = blocking(move || podman_pull(&r)).await.unwrap();
    assert_eq!(first, s.image.digest());
    let newer = Image::demo("hello again", 1_000);
    s.registry.push(REPOSITORY, "1.0", &newer).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = reference.clone();
    let second = blocking(move || podman_pull(&r)).await.unwrap();
    assert_eq!(second, newer.digest(), "the new push is seen");
    let by_digest = format!("{}/local/{REPOSITORY}@{first}", host_of(&proxyd.url()));
    let old = blocking(move || skopeo_pull(&by_digest)).await.unwrap();
    for blob in s.image.blobs() {
        assert!(old.contains(&proxyd_testkit::oci_registry::digest(&blob)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_with_oci_errors_and_headers() {
    let s = setup().await;
    let proxyd = ProxydProcess::start(BIN, &settings(&s.registry, ""), &[]);
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = c.get(format!("{}/v2/", proxyd.url())).send().await.unwrap();
    assert_eq!(base.status(), 200);
    assert_eq!(
        base.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let manifest = c
        .get(format!(
            "{}/v2/local/{REPOSITORY}/manifests/1.0",
            proxyd.url()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(
        manifest.headers()["docker-content-digest"],
        s.image.digest().as_str()
    );
    assert_eq!(
        manifest.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest.bytes().await.unwrap(),
        s.image.manifest,
        "byte for byte"
    );
    let head = c
        .head(format!(
            "{}/v2/local/{REPOSITORY}/manifests/{}",
            proxyd.url(),
            s.image.digest()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["docker-content-digest"],
        s.image.digest().as_str()
    );
    for (path, status, code) in [
        ("/v2/local/demo/none/manifests/1.0", 404, "MANIFEST_UNKNOWN"),
        (
            &*format!("/v2/local/{REPOSITORY}/blobs/sha256:{}", "0".repeat(64)),
            404,
            "BLOB_UNKNOWN",
        ),
        ("/v2/local/Demo/manifests/1.0", 400, "NAME_INVALID"),
        ("/v2/local/demo/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        ("/v2/local/demo/other", 404, "UNSUPPORTED"),
    ] {
        let resp = c
            .get(format!("{}{path}", proxyd.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], code, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_challenges_are_answered_with_configured_credentials() {
    use base64::Engine;
    let f = proxyd_testkit::ecosystem_suite::Fixture::start(
        proxyd_testkit::ecosystem_suite::Kind::Oci,
        10_000,
    )
    .await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("puller:s3cret")
    );
    f.server().require_bearer_token(&basic, "t0ken");
    // The fixture's settings are `upstream:` and its `oci:` mapping; the credential joins them.
    let config = format!(
        "{}  auth:\n    registry:\n      url: {}/token\n      username: puller\n      password: s3cret\n",
        f.settings,
        f.server().url()
    );
    let proxyd = ProxydProcess::start(BIN, &config, &[]);
    for _ in 0..3 {
        let manifest = reqwest::get(format!("{}{}", proxyd.url(), f.metadata_path))
            .await
            .unwrap();
        assert_eq!(manifest.status(), 200, "{}", proxyd.log());
        let blob = reqwest::get(format!("{}{}", proxyd.url(), f.artifact_path))
            .await
            .unwrap();
        assert_eq!(blob.status(), 200);
        assert_eq!(blob.bytes().await.unwrap(), f.artifact);
    }
    assert_eq!(f.server().hits("/token"), 1, "the token is reused");
    assert!(
        !proxyd.log().contains("t0ken"),
        "tokens never reach the log"
    );
    assert!(!proxyd.log().contains("s3cret"));
}
