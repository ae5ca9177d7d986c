//! Gradle's HTTP build cache at `/gradle/`: entries PUT, read back (never redirected, also with
//! direct-serve on), limited in size while streaming, refused when read-only, counted and evicted
//! like artifacts; and the real Gradle (Debian's) building a project through `/maven/` with the
//! remote build cache on `/gradle/`, whose second clean build takes its tasks from the cache.

use std::process::Command;

mod common;

use common::{BIN, Backend, storage};
use proxyd_testkit::maven_repo::MavenRepository;
use proxyd_testkit::proxyd::ProxydProcess;

const KEY: &str = "0123456789abcdef0123456789abcdef";

fn key(n: u32) -> String {
    format!("{n:032x}")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_put_and_read_back_never_redirected() {
    let store = storage(Backend::S3, false).await;
    let proxyd = ProxydProcess::start(BIN, &store.yaml, &store.env);
    let url = format!("{}/gradle/{KEY}", proxyd.url());
    let c = client();
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(c.head(&url).send().await.unwrap().status(), 404);
    let entry = vec![42u8; 70_000];
    let put = c.put(&url).body(entry.clone()).send().await.unwrap();
    assert_eq!(put.status(), 201);
    let got = c.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 200, "streamed, not redirected");
    assert_eq!(
        got.headers()["content-type"],
        "application/vnd.gradle.build-cache-artifact.v1"
    );
    assert_eq!(got.bytes().await.unwrap(), entry);
    let head = c.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "70000");
    // PUT again replaces it.
    let put = c.put(&url).body(vec![1u8; 10]).send().await.unwrap();
    assert_eq!(put.status(), 201);
    assert_eq!(
        c.get(&url).send().await.unwrap().bytes().await.unwrap(),
        vec![1u8; 10]
    );
    let stats = proxyd.stats().await;
    assert_eq!(
        stats["ecosystems"]["gradle"]["cached_artifacts"], 1,
        "{stats}"
    );
    for bad in [
        "short",
        "0123456789ABCDEF0123456789ABCDEF",
        "..%2f..%2fetc%2fpasswd",
    ] {
        let resp = c
            .put(format!("{}/gradle/{bad}", proxyd.url()))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let post = c.post(&url).body("x").send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD, PUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_over_the_limit_is_refused_while_streaming_and_nothing_kept() {
    let proxyd = ProxydProcess::start(
        BIN,
        "ecosystems:\n  gradle:\n    max_upload_size: 1000\n",
        &[],
    );
    let url = format!("{}/gradle/{KEY}", proxyd.url());
    let c = client();
    let declared = c.put(&url).body(vec![0u8; 2_000]).send().await.unwrap();
    assert_eq!(declared.status(), 413, "refused from its Content-Length");
    // No length: found out while streaming.
    let chunks = futures::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![0u8; 100])));
    let streamed = c
        .put(&url)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413, "refused while streaming");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(proxyd.stats().await["cached_artifacts"], 0);
    let stored: Vec<_> = walk(&proxyd.artifacts_dir());
    assert!(stored.is_empty(), "nothing kept: {stored:?}");
    let fits = c.put(&url).body(vec![0u8; 1_000]).send().await.unwrap();
    assert_eq!(fits.status(), 201);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_cache_refuses_puts() {
    let proxyd = ProxydProcess::start(BIN, "ecosystems:\n  gradle:\n    read_only: true\n", &[]);
    let url = format!("{}/gradle/{KEY}", proxyd.url());
    let put = client().put(&url).body("x").send().await.unwrap();
    assert_eq!(put.status(), 405);
    assert_eq!(put.headers()["allow"], "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_evicted_like_artifacts() {
    let proxyd = ProxydProcess::start(
        BIN,
        "storage:\n  max_size: 3000\n  direct_serve_ttl: 1s\n",
        &[],
    );
    let c = client();
    for n in 0..5 {
        let url = format!("{}/gradle/{}", proxyd.url(), key(n));
        let put = c.put(&url).body(vec![n as u8; 1_000]).send().await.unwrap();
        assert_eq!(put.status(), 201);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut stats = proxyd.stats().await;
    for _ in 0..50 {
        if stats["bytes"].as_u64().unwrap() <= 3000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stats = proxyd.stats().await;
    }
    assert!(stats["bytes"].as_u64().unwrap() <= 3000, "{stats}");
    let oldest = format!("{}/gradle/{}", proxyd.url(), key(0));
    assert_eq!(
        c.get(&oldest).send().await.unwrap().status(),
        404,
        "evicted"
    );
    let newest = format!("{}/gradle/{}", proxyd.url(), key(4));
    assert_eq!(c.get(&newest).send().await.unwrap().status(), 200);
}

const BUILD: &str = "apply plugin: 'java'\n\
    repositories { maven { url 'REPOSITORY' } }\n\
    dependencies { compile 'org.apache.commons:commons-lang3:3.12.0' }\n";

const SETTINGS: &str = "rootProject.name = 'gapp'\n\
    buildCache {\n  local { enabled = false }\n\
    remote(HttpBuildCache) { url = 'CACHE'; push = true }\n}\n";

const APP: &str = "package demo; public class App { public static void main(String[] a) { \
                   System.out.print(org.apache.commons.lang3.StringUtils.capitalize(\"proxyd\")); } }";

/// `gradle <args>` in `project` with its own Gradle home; its output.
fn gradle(project: &std::path::Path, home: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new("gradle")
        .current_dir(project)
        .args(["--no-daemon", "--console=plain", "-g"])
        .arg(home)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run gradle ({e}); install Debian's gradle (scripts/test does)")
        });
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "gradle {args:?} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradle_builds_and_takes_tasks_from_the_build_cache_on_filesystem_storage() {
    gradle_cycle(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradle_builds_and_takes_tasks_from_the_build_cache_on_s3_with_direct_serve() {
    gradle_cycle(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradle_builds_and_takes_tasks_from_the_build_cache_on_azure_with_direct_serve() {
    gradle_cycle(Backend::Azure).await;
}

/// A build through `/maven/` with the remote cache on `/gradle/`, then a clean build whose
/// compilation comes from the cache (dependencies redirected to storage where direct-serve is
/// on; build cache entries always streamed).
async fn gradle_cycle(backend: Backend) {
    let upstream = MavenRepository::from_dir("/usr/share/maven-repo".into()).await;
    let store = storage(backend, false).await;
    let proxyd = ProxydProcess::start(
        BIN,
        &format!("{}upstream:\n  maven: {}\n", store.yaml, upstream.url()),
        &store.env,
    );
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("gapp");
    std::fs::create_dir_all(project.join("src/main/java/demo")).unwrap();
    std::fs::write(project.join("src/main/java/demo/App.java"), APP).unwrap();
    std::fs::write(
        project.join("build.gradle"),
        BUILD.replace("REPOSITORY", &format!("{}/maven/", proxyd.url())),
    )
    .unwrap();
    std::fs::write(
        project.join("settings.gradle"),
        SETTINGS.replace("CACHE", &format!("{}/gradle/", proxyd.url())),
    )
    .unwrap();
    let home = work.path().join("gradle-home");
    let (p, h) = (project.clone(), home.clone());
    let first = tokio::task::spawn_blocking(move || gradle(&p, &h, &["build", "--build-cache"]))
        .await
        .unwrap();
    assert!(!first.contains("FROM-CACHE"), "{first}");
    let stats = proxyd.stats().await;
    assert!(
        stats["ecosystems"]["gradle"]["cached_artifacts"]
            .as_u64()
            .unwrap()
            >= 1,
        "the build pushed its outputs: {stats}"
    );
    assert!(
        stats["ecosystems"]["maven"]["cached_artifacts"]
            .as_u64()
            .unwrap()
            >= 1,
        "and fetched its dependency through /maven/: {stats}"
    );
    let (p, h) = (project.clone(), home.clone());
    let second =
        tokio::task::spawn_blocking(move || gradle(&p, &h, &["clean", "build", "--build-cache"]))
            .await
            .unwrap();
    assert!(
        second.contains(":compileJava FROM-CACHE"),
        "the clean build takes compileJava from the cache:\n{second}"
    );
}
