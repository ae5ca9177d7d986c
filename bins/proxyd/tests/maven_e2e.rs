//! The real `mvn` (strict checksums, `-C`) building a small project whose dependency is given as
//! a version range, through proxyd in front of a repository of genuine jars and poms (Debian's
//! `/usr/share/maven-repo`, served as it is with checksums and `maven-metadata.xml` made on
//! request), for each storage backend: cold, again with a fresh local repository (no new
//! upstream request), then with the upstream stopped. A jar whose upstream `.sha1` does not
//! match is refused and not stored.

use std::path::Path;
use std::process::Command;

mod common;

use common::{BIN, Backend, storage};
use proxyd_testkit::maven_repo::MavenRepository;
use proxyd_testkit::proxyd::{ProxydProcess, metric};
use proxyd_testkit::static_server::Fault;

const DEBIAN_REPO: &str = "/usr/share/maven-repo";

const POM: &str = r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>demo</groupId><artifactId>app</artifactId><version>1.0</version>
  <properties>
    <maven.compiler.source>11</maven.compiler.source>
    <maven.compiler.target>11</maven.compiler.target>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencies>
    <dependency>
      <groupId>org.apache.commons</groupId><artifactId>commons-lang3</artifactId>
      <version>[3.0,4.0)</version>
    </dependency>
  </dependencies>
</project>
"#;

const APP: &str = "package demo; public class App { public static void main(String[] a) { \
                   System.out.print(org.apache.commons.lang3.StringUtils.capitalize(\"proxyd\")); } }";

/// `mvn -C package` of the demo project through `repository` (a fresh local repository each
/// time), then the program run with the dependency Maven resolved.
fn mvn_package(repository: &str) {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("app");
    std::fs::create_dir_all(project.join("src/main/java/demo")).unwrap();
    std::fs::write(project.join("pom.xml"), POM).unwrap();
    std::fs::write(project.join("src/main/java/demo/App.java"), APP).unwrap();
    std::fs::write(
        work.path().join("settings.xml"),
        format!(
            "<settings><mirrors><mirror><id>proxyd</id><mirrorOf>*</mirrorOf>\
             <url>{repository}</url></mirror></mirrors></settings>"
        ),
    )
    .unwrap();
    let local = work.path().join("m2");
    let output = Command::new("mvn")
        .current_dir(&project)
        .args(["-B", "-q", "-C", "-s"])
        .arg(work.path().join("settings.xml"))
        .arg(format!("-Dmaven.repo.local={}", local.display()))
        .arg("package")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run mvn ({e}); install Debian's maven (scripts/test does)")
        });
    assert!(
        output.status.success(),
        "mvn package failed (Debian's maven plugin packages missing? scripts/test installs them):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lang3 = find_jar(&local.join("org/apache/commons/commons-lang3"))
        .expect("commons-lang3 resolved from the range");
    let run = Command::new("java")
        .arg("-cp")
        .arg(format!(
            "{}:{}",
            project.join("target/app-1.0.jar").display(),
            lang3.display()
        ))
        .arg("demo.App")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "Proxyd");
}

fn find_jar(dir: &Path) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_jar(&path) {
                return Some(found);
            }
        } else if path.extension().is_some_and(|e| e == "jar") {
            return Some(path);
        }
    }
    None
}

async fn mvn_package_async(repository: String) {
    tokio::task::spawn_blocking(move || mvn_package(&repository))
        .await
        .unwrap();
}

async fn build_cycle(backend: Backend) {
    let upstream = MavenRepository::from_dir(DEBIAN_REPO.into()).await;
    let store = storage(backend, false).await;
    let config = format!("{}upstream:\n  maven: {}\n", store.yaml, upstream.url());
    let proxyd = ProxydProcess::start(BIN, &config, &store.env);
    let repository = format!("{}/maven/", proxyd.url());

    mvn_package_async(repository.clone()).await;
    let cached = proxyd.stats().await["ecosystems"]["maven"]["cached_artifacts"]
        .as_u64()
        .unwrap();
    assert!(
        cached > 20,
        "the build's jars and poms are cached: {cached}"
    );
    let asked = upstream.server.total_hits();

    // A fresh local repository: everything comes from proxyd, nothing new from upstream.
    mvn_package_async(repository.clone()).await;
    assert_eq!(
        upstream.server.total_hits(),
        asked,
        "a warm build asks the upstream nothing"
    );
    let metrics = proxyd.metrics().await;
    let hits = metric(
        &metrics,
        "proxyd_cache_hits_total",
        &[("ecosystem", "maven")],
    );
    assert!(hits >= cached as f64, "{hits} hits for {cached} artifacts");
    if store.redirects {
        let redirects = metric(
            &metrics,
            "proxyd_direct_serve_total",
            &[("ecosystem", "maven"), ("outcome", "redirect")],
        );
        assert!(
            redirects >= cached as f64,
            "hits were redirected: {redirects}"
        );
    }

    // The upstream gone: the same build from what proxyd kept.
    upstream.server.stop();
    mvn_package_async(repository).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mvn_builds_through_filesystem_storage() {
    build_cycle(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mvn_builds_through_s3_with_direct_serve() {
    build_cycle(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mvn_builds_through_azure_with_direct_serve() {
    build_cycle(Backend::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jar_that_does_not_match_its_sha1_is_refused_and_not_stored() {
    let upstream = MavenRepository::from_dir(DEBIAN_REPO.into()).await;
    let jar = "/org/apache/commons/commons-lang3/3.12.0/commons-lang3-3.12.0.jar";
    upstream.server.set_fault(jar, Fault::Corrupt);
    let proxyd = ProxydProcess::start(
        BIN,
        &format!("upstream:\n  maven: {}\n", upstream.url()),
        &[],
    );
    let response = reqwest::get(format!("{}/maven{jar}", proxyd.url()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the transfer starts");
    assert!(
        response.bytes().await.is_err(),
        "and is aborted, never completed"
    );
    proxyd.assert_refused_as_corrupt("sha1").await;
    // The checksum itself is served as the upstream has it.
    let sum = reqwest::get(format!("{}/maven{jar}.sha1", proxyd.url()))
        .await
        .unwrap();
    assert_eq!(sum.status(), 200);
    assert_eq!(sum.text().await.unwrap().len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_tried_in_order_while_they_answer_404() {
    use proxyd_testkit::maven_repo::MavenArtifact;
    let central = MavenArtifact::new("org.central", "lib", "1.0", 5_000);
    let portal = MavenArtifact::new("org.portal", "plugin", "2.0", 6_000);
    let first = MavenRepository::start(std::slice::from_ref(&central)).await;
    let second = MavenRepository::start(std::slice::from_ref(&portal)).await;
    let proxyd = ProxydProcess::start(
        BIN,
        &format!(
            "upstream:\n  maven:\n    - {}\n    - {}\n",
            first.url(),
            second.url()
        ),
        &[],
    );
    let get = |path: String| {
        let url = format!("{}/maven{path}", proxyd.url());
        async move { reqwest::get(url).await.unwrap() }
    };
    let from_first = get(central.path("jar")).await;
    assert_eq!(from_first.status(), 200);
    assert_eq!(from_first.bytes().await.unwrap(), central.jar);
    assert_eq!(
        second.server.hits(&central.path("jar.sha1")),
        0,
        "found first"
    );
    let from_second = get(portal.path("jar")).await;
    assert_eq!(from_second.status(), 200);
    assert_eq!(from_second.bytes().await.unwrap(), portal.jar);
    assert_eq!(first.server.hits(&portal.path("jar")), 0);
    let metadata = get(portal.metadata_path()).await;
    assert_eq!(metadata.status(), 200);
    assert!(
        metadata
            .text()
            .await
            .unwrap()
            .contains("<version>2.0</version>")
    );
    // A file neither has (Gradle probes for .module files): the last 404 passes through.
    let module = get(central.path("module")).await;
    assert_eq!(module.status(), 404);
    assert_eq!(
        first.server.hits(&central.path("module")),
        0,
        "no checksum, no fetch"
    );
    assert_eq!(
        proxyd.stats().await["ecosystems"]["maven"]["cached_artifacts"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_deployed_again_is_seen_after_the_metadata_ttl() {
    use proxyd_testkit::maven_repo::MavenArtifact;
    let v1 = MavenArtifact::new("org.snap", "lib", "1.0-SNAPSHOT", 4_000);
    let repo = MavenRepository::start(std::slice::from_ref(&v1)).await;
    let proxyd = ProxydProcess::start(
        BIN,
        &format!("metadata_ttl: 1s\nupstream:\n  maven: {}\n", repo.url()),
        &[],
    );
    let url = format!("{}/maven{}", proxyd.url(), v1.path("jar"));
    assert_eq!(
        reqwest::get(&url).await.unwrap().bytes().await.unwrap(),
        v1.jar
    );
    let v2 = MavenArtifact {
        jar: vec![7u8; 4_321].into(),
        ..v1.clone()
    };
    repo.publish(&v2);
    assert_eq!(
        reqwest::get(&url).await.unwrap().bytes().await.unwrap(),
        v1.jar,
        "fresh for the TTL"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        reqwest::get(&url).await.unwrap().bytes().await.unwrap(),
        v2.jar,
        "deployed again: fetched, verified against its new checksum, kept"
    );
    // With the upstream gone the last copy is served.
    repo.server.stop();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(
        reqwest::get(&url).await.unwrap().bytes().await.unwrap(),
        v2.jar
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_credentials_come_from_upstream_auth() {
    use base64::Engine;
    use proxyd_testkit::maven_repo::MavenArtifact;
    let artifact = MavenArtifact::new("org.private", "lib", "1.0", 3_000);
    let repo = MavenRepository::start(std::slice::from_ref(&artifact)).await;
    let basic = base64::engine::general_purpose::STANDARD.encode("deployer:s3cret-pw");
    repo.server.require_authorization(&format!("Basic {basic}"));
    let proxyd = ProxydProcess::start(
        BIN,
        &format!(
            "upstream:\n  maven: {url}\n  auth:\n    private:\n      url: {url}\n      type: basic\n      username: deployer\n      password: ${{MAVEN_PASSWORD}}\n",
            url = repo.url()
        ),
        &[("MAVEN_PASSWORD", "s3cret-pw".to_owned())],
    );
    let jar = reqwest::get(format!("{}/maven{}", proxyd.url(), artifact.path("jar")))
        .await
        .unwrap();
    assert_eq!(jar.status(), 200);
    assert_eq!(jar.bytes().await.unwrap(), artifact.jar);
    assert!(!proxyd.log().contains("s3cret-pw"), "{}", proxyd.log());
}
