//! Nothing that authorizes a request reaches a log at any level: proxyd at `trace` on S3 and
//! Azure, through a miss and a redirected hit, and its log searched for signatures, keys, SAS
//! `sig=` values and credentials.

mod common;

use common::{BIN, Backend, storage};
use proxyd_testkit::emulators::{Azurite, S3sFs};
use proxyd_testkit::npm_registry::{NpmRegistry, Package};
use proxyd_testkit::proxyd::ProxydProcess;

async fn run_at_trace(backend: Backend) -> String {
    let pkg = Package::new("secretive", "1.0.0");
    let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
    let fixture = storage(backend, false).await;
    let config = format!("{}upstream:\n  npm: {}\n", fixture.yaml, registry.url());
    let mut env = fixture.env.clone();
    env.push(("PROXYD_LOG_LEVEL", "trace".to_owned()));
    let proxyd = ProxydProcess::start(BIN, &config, &env);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("{}/npm{}", proxyd.url(), NpmRegistry::tarball_path(&pkg));
    for expected in [200, 302] {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), expected);
        resp.bytes().await.unwrap();
    }
    proxyd.log()
}

fn assert_no_secrets(log: &str, secrets: &[&str]) {
    assert!(
        log.lines().count() > 20,
        "a trace log: {} lines",
        log.lines().count()
    );
    for needle in [
        "SharedKey ",
        "sig=",
        "X-Amz-Signature=",
        "Signature=",
        "x-amz-security-token",
    ] {
        // Each occurrence must be followed by a redaction, never by a value.
        let leaked: Vec<&str> = log
            .lines()
            .filter(|line| {
                line.match_indices(needle).any(|(at, _)| {
                    let value = &line[at + needle.len()..];
                    !(value.starts_with("REDACTED") || value.starts_with("<redacted>"))
                })
            })
            .take(3)
            .collect();
        assert!(
            leaked.is_empty(),
            "{needle:?} in the log:\n{}",
            leaked.join("\n")
        );
    }
    for secret in secrets {
        assert!(!log.contains(secret), "a credential is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signature_reaches_the_log_on_s3() {
    let log = run_at_trace(Backend::S3).await;
    assert_no_secrets(&log, &[S3sFs::SECRET_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signature_reaches_the_log_on_azure() {
    let log = run_at_trace(Backend::Azure).await;
    assert_no_secrets(&log, &[Azurite::KEY]);
}
