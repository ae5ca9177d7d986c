//! PostgreSQL passes the index conformance suite on a real server, refuses newer schemas, says
//! which of reachability or credentials failed, speaks TLS when the URL asks, and shares its
//! leases and rows between two connections as two nodes would.

use std::sync::Arc;
use std::time::Duration;

use proxyd_cache::{ArtifactIndex, FetchLeases, Index, IndexErrorKind, Lease};
use proxyd_index_postgres::{PostgresIndex, PostgresOptions};
use proxyd_testkit::postgres::PostgresServer;
use proxyd_testkit::tls::TestCa;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_index_suite() {
    let server = PostgresServer::start();
    let server = &server;
    proxyd_testkit::index_suite::run(|| async move {
        let url = server.create_database().await;
        Arc::new(
            PostgresIndex::connect(&url, &PostgresOptions::default())
                .await
                .unwrap(),
        ) as Arc<dyn Index>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once_and_share_rows_and_leases() {
    let server = PostgresServer::start();
    let url = server.create_database().await;
    let options = PostgresOptions::default();
    let (a, b) = tokio::join!(
        PostgresIndex::connect(&url, &options),
        PostgresIndex::connect(&url, &options)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.schema_version().await.unwrap(), 1);
    assert_eq!(
        a.acquire_fetch("npm/x", "node-a", Duration::from_secs(30))
            .await
            .unwrap(),
        Lease::Acquired
    );
    assert_eq!(
        b.acquire_fetch("npm/x", "node-b", Duration::from_secs(30))
            .await
            .unwrap(),
        Lease::HeldElsewhere {
            owner: "node-a".into()
        }
    );
    a.release_fetch("npm/x", "node-a").await.unwrap();
    assert_eq!(
        b.acquire_fetch("npm/x", "node-b", Duration::from_secs(30))
            .await
            .unwrap(),
        Lease::Acquired
    );
    assert_eq!(b.artifact("npm/x").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let server = PostgresServer::start();
    let url = server.create_database().await;
    drop(
        PostgresIndex::connect(&url, &PostgresOptions::default())
            .await
            .unwrap(),
    );
    let name = url.rsplit('/').next().unwrap().to_owned();
    server
        .connect(&name)
        .await
        .batch_execute("UPDATE proxyd_schema SET version = 99")
        .await
        .unwrap();
    let err = PostgresIndex::connect(&url, &PostgresOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind, IndexErrorKind::SchemaTooNew, "{err}");
    assert!(err.message.contains("99"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_databases_and_refused_credentials_say_which() {
    let server = PostgresServer::start();
    let wrong_password = server
        .url("postgres")
        .replace(PostgresServer::PASSWORD, "not-the-password");
    let err = PostgresIndex::connect(&wrong_password, &PostgresOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind, IndexErrorKind::Permanent, "{err}");
    assert!(
        err.message.contains("password authentication failed"),
        "{err}"
    );
    assert!(!err.message.contains("not-the-password"), "{err}");

    let nobody_listens = format!(
        "postgres://u:secret-pw@127.0.0.1:{}/db",
        proxyd_testkit::free_port()
    );
    let err = PostgresIndex::connect(&nobody_listens, &PostgresOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind, IndexErrorKind::Temporary, "{err}");
    assert!(err.message.contains("127.0.0.1"), "{err}");
    assert!(!err.message.contains("secret-pw"), "{err}");

    let err = PostgresIndex::connect("mysql://x", &PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(err.message.contains("database.url"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_used_when_the_url_requires_it_and_the_certificate_is_checked() {
    let ca = TestCa::new();
    let server = PostgresServer::start_with_tls(&ca);
    let url = format!("{}?sslmode=require", server.create_database().await);
    let trusted = PostgresOptions::default().with_extra_ca_pem(Some(ca.ca_pem().into()));
    let index = PostgresIndex::connect(&url, &trusted).await.unwrap();
    // The server's own view of the connections proxyd opened.
    let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let ssl: Vec<bool> = server
        .admin()
        .await
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'proxyd'",
            &[&name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{ssl:?}");
    drop(index);

    // A server certificate no trusted CA issued is refused.
    let err = PostgresIndex::connect(&url, &PostgresOptions::default())
        .await
        .unwrap_err();
    assert!(err.message.to_lowercase().contains("certificate"), "{err}");
}
