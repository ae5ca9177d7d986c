//! The real `apt-get` (private state directories; the system's apt state is untouched) against
//! proxyd in front of a signed archive of genuine `.deb` files, for each storage backend:
//! `update` (the signature verifies through proxyd) and `install --download-only` of a package
//! with dependencies; again with fresh state (no new `.deb` asked upstream); again with the
//! upstream stopped. A re-published archive is seen after the TTL; a `.deb` whose bytes do not
//! match its `Packages` entry is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{BIN, Backend, storage};
use proxyd_testkit::apt_repo::AptRepository;
use proxyd_testkit::proxyd::{ProxydProcess, metric};
use proxyd_testkit::static_server::Fault;

/// fortune-mod depends on librecode0 and recommends fortunes-min, none of them installed.
const PACKAGES: &[&str] = &["fortune-mod_", "librecode0_", "fortunes-min_", "hello_"];

/// apt-get with its own sources, lists and cache under `work`.
struct Apt {
    work: tempfile::TempDir,
}

impl Apt {
    fn new(archive: &str, key: &Path) -> Self {
        let work = tempfile::tempdir().unwrap();
        for dir in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(work.path().join(dir)).unwrap();
        }
        std::fs::write(
            work.path().join("sources.list"),
            format!("deb [signed-by={}] {archive} stable main\n", key.display()),
        )
        .unwrap();
        Self { work }
    }

    /// apt-get `args` with this state; its output, whatever the outcome.
    fn output(&self, args: &[&str]) -> std::process::Output {
        let w = self.work.path();
        Command::new("apt-get")
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceList={}",
                w.join("sources.list").display()
            ))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", w.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", w.join("cache").display()))
            .args([
                "-o",
                "APT::Sandbox::User=root",
                "-o",
                "Acquire::Languages=none",
            ])
            .args(["-o", "Debug::NoLocking=1"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("cannot run apt-get ({e})"))
    }

    fn run(&self, args: &[&str]) -> String {
        let output = self.output(args);
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "apt-get {args:?} failed:\n{text}");
        text
    }

    /// `update`, then `install --download-only` of fortune-mod: the `.deb` files downloaded.
    fn update_and_download(&self) -> Vec<String> {
        let update = self.run(&["update"]);
        assert!(
            !update.contains("NO_PUBKEY") && !update.contains("not signed"),
            "{update}"
        );
        self.run(&["install", "--download-only", "-y", "fortune-mod"]);
        self.downloaded()
    }

    fn downloaded(&self) -> Vec<String> {
        let mut debs: Vec<String> = std::fs::read_dir(self.work.path().join("cache/archives"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".deb"))
            .collect();
        debs.sort();
        debs
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn key_of(repo: &AptRepository) -> PathBuf {
    repo.key()
}

async fn apt_cycle(backend: Backend) {
    let repo = AptRepository::start(PACKAGES).await;
    let store = storage(backend, false).await;
    let config = format!("{}upstream:\n  debian: {}\n", store.yaml, repo.url());
    let proxyd = ProxydProcess::start(BIN, &config, &store.env);
    let archive = format!("{}/debian", proxyd.url());
    let key = key_of(&repo);

    let (a, k) = (archive.clone(), key.clone());
    let debs = blocking(move || Apt::new(&a, &k).update_and_download()).await;
    assert_eq!(
        debs.len(),
        3,
        "fortune-mod with its dependency and recommendation: {debs:?}"
    );
    assert!(
        debs.iter().any(|d| d.starts_with("librecode0_")),
        "{debs:?}"
    );
    let metrics = proxyd.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "proxyd_unverified_downloads_total",
            &[("ecosystem", "debian")]
        ),
        0.0,
        "every .deb was verified against the index"
    );
    let pool_hits = |repo: &AptRepository| {
        ["fortune-mod_", "librecode0_", "fortunes-min_"]
            .iter()
            .map(|p| repo.server.hits(&repo.pool_path(p)))
            .sum::<usize>()
    };
    assert_eq!(pool_hits(&repo), 3);
    assert!(
        repo.server
            .requests()
            .keys()
            .any(|p| p.contains("/binary-amd64/by-hash/SHA512/")),
        "the index was asked for by its hash (and verified against it): {:?}",
        repo.server.requests()
    );

    // Fresh client state: every .deb comes from proxyd.
    let (a, k) = (archive.clone(), key.clone());
    let debs = blocking(move || Apt::new(&a, &k).update_and_download()).await;
    assert_eq!(debs.len(), 3);
    assert_eq!(pool_hits(&repo), 3, "no .deb asked upstream again");
    if store.redirects {
        let redirects = metric(
            &proxyd.metrics().await,
            "proxyd_direct_serve_total",
            &[("ecosystem", "debian"), ("outcome", "redirect")],
        );
        assert!(redirects >= 3.0, "cached .debs are redirected: {redirects}");
    }

    // The upstream gone: the signed indexes and the .debs from what proxyd kept.
    repo.server.stop();
    let (a, k) = (archive.clone(), key.clone());
    let debs = blocking(move || Apt::new(&a, &k).update_and_download()).await;
    assert_eq!(debs.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_through_filesystem_storage() {
    apt_cycle(Backend::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_through_s3_with_direct_serve() {
    apt_cycle(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_through_azure_with_direct_serve() {
    apt_cycle(Backend::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_archive_is_seen_after_the_ttl() {
    let repo = AptRepository::start(&["hello_"]).await;
    let proxyd = ProxydProcess::start(
        BIN,
        &format!("metadata_ttl: 1s\nupstream:\n  debian: {}\n", repo.url()),
        &[],
    );
    let archive = format!("{}/debian", proxyd.url());
    let key = key_of(&repo);
    let apt = blocking(move || {
        let apt = Apt::new(&archive, &key);
        apt.run(&["update"]);
        apt
    })
    .await;
    repo.publish(PACKAGES);
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let apt = blocking(move || {
        apt.run(&["update"]);
        apt.run(&["install", "--download-only", "-y", "fortune-mod"]);
        apt
    })
    .await;
    assert_eq!(apt.downloaded().len(), 3, "the new packages are seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deb_that_does_not_match_its_index_is_refused() {
    let repo = AptRepository::start(&["hello_"]).await;
    repo.server
        .set_fault(&repo.pool_path("hello_"), Fault::Corrupt);
    let proxyd = ProxydProcess::start(BIN, &format!("upstream:\n  debian: {}\n", repo.url()), &[]);
    let archive = format!("{}/debian", proxyd.url());
    let key = key_of(&repo);
    let failed = blocking(move || {
        let apt = Apt::new(&archive, &key);
        apt.run(&["update"]);
        apt.output(&["install", "--download-only", "-y", "hello"])
    })
    .await;
    assert!(!failed.status.success(), "apt must not get a corrupt .deb");
    let log = proxyd.log();
    assert!(
        log.contains("does not match its declared sha256 digest"),
        "{log}"
    );
    let object = proxyd
        .artifacts_dir()
        .join(format!("debian{}", repo.pool_path("hello_")));
    assert!(!object.exists(), "nothing of it is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_archive_is_an_instance_and_signed_files_pass_byte_for_byte() {
    let main = AptRepository::start(&["hello_"]).await;
    let security = AptRepository::start(&["librecode0_"]).await;
    let proxyd = ProxydProcess::start(
        BIN,
        &format!(
            "upstream:\n  debian: {}\necosystems:\n  debian-security:\n    kind: debian\n    upstream: {}\n",
            main.url(),
            security.url()
        ),
        &[],
    );
    for (mount, repo) in [("debian", &main), ("debian-security", &security)] {
        for file in ["InRelease", "Release", "Release.gpg"] {
            let got = reqwest::get(format!("{}/{mount}/dists/stable/{file}", proxyd.url()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let upstream = reqwest::get(format!("{}/dists/stable/{file}", repo.url()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(got, upstream, "/{mount}/dists/stable/{file} byte for byte");
        }
    }
    let archive = format!("{}/debian-security", proxyd.url());
    let key = key_of(&security);
    blocking(move || {
        let apt = Apt::new(&archive, &key);
        apt.run(&["update"]);
        apt.run(&["install", "--download-only", "-y", "librecode0"]);
        assert_eq!(apt.downloaded().len(), 1);
    })
    .await;
}
