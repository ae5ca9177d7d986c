//! Several proxyd processes on one PostgreSQL index and one store serve as one cache: one
//! upstream fetch per artifact across nodes (also for a large artifact from a slow upstream),
//! what one node cached is a hit on every other, a node killed mid-fetch leaves nothing partial
//! and another takes the fetch over, eviction keeps the whole cluster within `storage.max_size`
//! while every redirect handed out stays fetchable, metadata is shared (a node that never
//! fetched a packument serves it stale), and a database outage degrades the nodes to plain
//! proxies until it ends.

use std::time::Duration;

mod common;

use common::{BIN, Backend, StorageFixture, npm_install, packages, storage};
use proxyd_testkit::npm_registry::{Fault, NpmRegistry, Package};
use proxyd_testkit::postgres::PostgresServer;
use proxyd_testkit::proxyd::{ProxydProcess, metric};
use sha2::{Digest, Sha256};

/// `n` nodes on one new database of `db` and on `store`, with `extra` settings.
async fn nodes(
    n: usize,
    db: &PostgresServer,
    store: &StorageFixture,
    extra: &str,
) -> Vec<ProxydProcess> {
    let url = db.create_database().await;
    let mut env = store.env.clone();
    env.push(("PROXYD_DATABASE_DRIVER", "postgres".to_owned()));
    env.push(("PROXYD_DATABASE_URL", url));
    // A dead node's fetch is taken over after this.
    env.push(("PROXYD_DATABASE_FETCH_LEASE", "3s".to_owned()));
    let config = format!("{}{extra}", store.yaml);
    (0..n)
        .map(|_| ProxydProcess::start(BIN, &config, &env))
        .collect()
}

fn upstream(registry: &NpmRegistry) -> String {
    format!("upstream:\n  npm: {}\n", registry.url())
}

fn tarball_url(node: &ProxydProcess, p: &Package) -> String {
    format!("{}/npm{}", node.url(), NpmRegistry::tarball_path(p))
}

/// A client that follows redirects to storage, as package managers do.
fn following() -> reqwest::Client {
    reqwest::Client::new()
}

fn not_following() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The SHA-256 and length of a whole download, read as it streams.
async fn digest_of(resp: reqwest::Response) -> (u16, [u8; 32], u64) {
    let status = resp.status().as_u16();
    let mut resp = resp;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (status, hasher.finalize().into(), len)
}

/// `count` concurrent GETs of `pkg` spread round-robin over `nodes`; each must be 200 with the
/// upstream's bytes.
async fn concurrent_misses(nodes: &[ProxydProcess], registry: &NpmRegistry, pkg: &Package) {
    let expected: [u8; 32] = Sha256::digest(registry.tarball(pkg)).into();
    let client = following();
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let (client, url) = (client.clone(), tarball_url(&nodes[i % nodes.len()], pkg));
            tokio::spawn(async move { digest_of(client.get(&url).send().await.unwrap()).await })
        })
        .collect();
    for request in requests {
        let (status, digest, _) = request.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(digest, expected, "every client gets the upstream's bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_misses_over_three_nodes_on_s3_make_one_upstream_request_and_hit_everywhere() {
    fifty_misses_over_three_nodes(Backend::S3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_misses_over_three_nodes_on_azure_make_one_upstream_request_and_hit_everywhere() {
    fifty_misses_over_three_nodes(Backend::Azure).await;
}

async fn fifty_misses_over_three_nodes(backend: Backend) {
    let pkg = Package::new("shared", "1.0.0").padded(1_000_000);
    let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
    registry.set_fault(
        &NpmRegistry::tarball_path(&pkg),
        Fault::Delay(Duration::from_millis(500)),
    );
    let db = PostgresServer::start();
    let store = storage(backend, false).await;
    let nodes = nodes(3, &db, &store, &upstream(&registry)).await;
    concurrent_misses(&nodes, &registry, &pkg).await;
    assert_eq!(
        registry.hits(&NpmRegistry::tarball_path(&pkg)),
        1,
        "one upstream fetch for the whole cluster"
    );
    let fetched: f64 = {
        let mut sum = 0.0;
        for node in &nodes {
            sum += metric(
                &node.metrics().await,
                "proxyd_fetch_leases_total",
                &[("outcome", "fetched")],
            );
        }
        sum
    };
    assert_eq!(fetched, 1.0, "one node held the fetch lease and fetched");
    // Every node sees the artifact, counts it, and answers it as a hit: a redirect to storage.
    for node in &nodes {
        node.wait_cached(1).await;
        let resp = not_following()
            .get(tarball_url(node, &pkg))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302, "{}", node.log());
        let head = not_following()
            .head(tarball_url(node, &pkg))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "HEAD is answered locally");
    }
    assert_eq!(registry.hits(&NpmRegistry::tarball_path(&pkg)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_artifact_from_a_slow_upstream_is_fetched_once_for_fifty_misses_on_two_nodes() {
    let pkg = Package::new("large", "1.0.0").padded(64 << 20);
    let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
    // About four seconds for the whole body: every miss arrives while it is in flight.
    registry.set_fault(&NpmRegistry::tarball_path(&pkg), Fault::Throttle(16 << 20));
    let db = PostgresServer::start();
    let store = storage(Backend::S3, false).await;
    let nodes = nodes(2, &db, &store, &upstream(&registry)).await;
    concurrent_misses(&nodes, &registry, &pkg).await;
    assert_eq!(registry.hits(&NpmRegistry::tarball_path(&pkg)), 1);
    for node in &nodes {
        assert!(
            !node.log().contains("lost the fetch lease"),
            "{}",
            node.log()
        );
        node.wait_cached(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_fetch_leaves_nothing_partial_and_another_takes_the_fetch_over() {
    let pkg = Package::new("orphaned", "1.0.0").padded(24_000_000);
    let registry = NpmRegistry::start(std::slice::from_ref(&pkg)).await;
    let path = NpmRegistry::tarball_path(&pkg);
    registry.set_fault(&path, Fault::StallMidBody);
    let db = PostgresServer::start();
    let store = storage(Backend::S3, false).await;
    let mut nodes = nodes(2, &db, &store, &upstream(&registry)).await;
    // Node 0 fetches and stalls halfway with a multipart upload open.
    let mut first = not_following()
        .get(tarball_url(&nodes[0], &pkg))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let mut received = 0;
    while received < 4_000_000 {
        received += first.chunk().await.unwrap().expect("bytes").len();
    }
    // Node 1 is asked too and waits on node 0's lease.
    let second = {
        let url = tarball_url(&nodes[1], &pkg);
        tokio::spawn(async move { digest_of(following().get(&url).send().await.unwrap()).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(registry.hits(&path), 1, "node 1 waits instead of fetching");
    nodes[0].kill();
    drop(first);
    registry.set_fault(&path, Fault::Delay(Duration::ZERO));
    // Once the dead node's lease expires, node 1 takes the fetch over and answers whole.
    let (status, digest, len) = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("node 1 answers once the lease expires")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(len, registry.tarball(&pkg).len() as u64);
    assert_eq!(
        digest,
        <[u8; 32]>::from(Sha256::digest(registry.tarball(&pkg)))
    );
    assert_eq!(registry.hits(&path), 2, "the fetch was taken over once");
    let metrics = nodes[1].metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "proxyd_fetch_leases_total",
            &[("outcome", "took_over")]
        ),
        1.0,
        "{metrics}"
    );
    nodes[1].wait_cached(1).await;
    let object = store_path(&store, "npm/orphaned/-/orphaned-1.0.0.tgz");
    assert_eq!(
        std::fs::metadata(&object).unwrap().len(),
        registry.tarball(&pkg).len() as u64,
        "the stored object is whole"
    );
    // The killed node comes back to a cache that has the artifact.
    nodes[0].restart();
    let (status, digest, _) = digest_of(
        following()
            .get(tarball_url(&nodes[0], &pkg))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        digest,
        <[u8; 32]>::from(Sha256::digest(registry.tarball(&pkg)))
    );
    assert_eq!(registry.hits(&path), 2);
}

/// Where s3s-fs keeps the object `key` of the `artifacts` bucket.
fn store_path(store: &StorageFixture, key: &str) -> std::path::PathBuf {
    store
        .s3_data
        .as_ref()
        .expect("an S3 fixture")
        .join("artifacts")
        .join(key)
}

fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                bytes_under(&path)
            } else if e.file_name().to_string_lossy().starts_with('.') {
                0 // s3s-fs's own bookkeeping
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_cluster_within_max_size_and_every_redirect_stays_fetchable() {
    let packages: Vec<Package> = (0..12)
        .map(|i| Package::new(&format!("evictable-{i}"), "1.0.0").padded(500_000))
        .collect();
    let registry = NpmRegistry::start(&packages).await;
    let db = PostgresServer::start();
    let store = storage(Backend::S3, false).await;
    let max = 2_000_000u64;
    let nodes = nodes(
        2,
        &db,
        &store,
        // Continues the fixture's storage section.
        &format!(
            "  max_size: {max}\n  direct_serve_ttl: 4s\n{}",
            upstream(&registry)
        ),
    )
    .await;
    // Each artifact is fetched through one node and its redirect taken from the other.
    let mut handed_out = Vec::new();
    for (i, pkg) in packages.iter().enumerate() {
        let (fetcher, redirector) = (&nodes[i % 2], &nodes[(i + 1) % 2]);
        let (status, _, _) = digest_of(
            following()
                .get(tarball_url(fetcher, pkg))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = not_following()
            .get(tarball_url(redirector, pkg))
            .send()
            .await
            .unwrap();
        if resp.status() == 302 {
            let location = resp.headers()["location"].to_str().unwrap().to_owned();
            handed_out.push((location, registry.tarball(pkg)));
        }
    }
    assert!(
        handed_out.len() >= 6,
        "most were hits handed out as redirects"
    );
    // Every URL handed out is still good, whatever was evicted since.
    for (location, bytes) in &handed_out {
        let resp = reqwest::get(location).await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "a redirect handed out must stay fetchable"
        );
        assert_eq!(&resp.bytes().await.unwrap(), bytes);
    }
    // After two URL lifetimes the evicted objects are gone: the store and the counts are
    // within the limit for the whole cluster.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let stored = bytes_under(&store.s3_data.as_ref().unwrap().join("artifacts"));
    assert!(stored <= max, "{stored} bytes stored, limit {max}");
    for node in &nodes {
        let stats = node.stats().await;
        assert!(stats["bytes"].as_u64().unwrap() <= max, "{stats}");
        assert!(stats["evicted_bytes"].is_u64(), "{stats}");
    }
    let evicting_nodes = {
        let mut n = 0;
        for node in &nodes {
            if node.stats().await["evicted_bytes"].as_u64().unwrap() > 0 {
                n += 1;
            }
        }
        n
    };
    assert!(evicting_nodes >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_install_through_one_node_then_through_another_with_the_upstream_stopped() {
    let registry = NpmRegistry::start(&packages()).await;
    let db = PostgresServer::start();
    let store = storage(Backend::S3, false).await;
    let nodes = nodes(2, &db, &store, &upstream(&registry)).await;
    let first = format!("{}/npm/", nodes[0].url());
    tokio::task::spawn_blocking(move || npm_install(&first))
        .await
        .unwrap();
    nodes[0].wait_cached(4).await;
    registry.stop();
    // Node 1 never fetched a packument or a tarball: it serves both from the shared index.
    let second = format!("{}/npm/", nodes[1].url());
    tokio::task::spawn_blocking(move || npm_install(&second))
        .await
        .unwrap();
    let stats = nodes[1].stats().await;
    assert_eq!(stats["cached_artifacts"], 4, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_degrades_the_nodes_to_plain_proxies_until_it_ends() {
    let cached = Package::new("cached-before", "1.0.0");
    let during = Package::new("asked-during", "1.0.0");
    let registry = NpmRegistry::start(&[cached.clone(), during.clone()]).await;
    let mut db = PostgresServer::start();
    let store = storage(Backend::Fs, false).await;
    let nodes = nodes(1, &db, &store, &upstream(&registry)).await;
    let node = &nodes[0];
    let get = |p: &Package| following().get(tarball_url(node, p)).send();
    assert_eq!(get(&cached).await.unwrap().status(), 200);
    node.wait_cached(1).await;
    db.stop();
    // Served all the same: from the upstream, nothing cached meanwhile.
    let resp = get(&during).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), registry.tarball(&during));
    let health = || async {
        reqwest::get(format!("{}/health", node.url()))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let mut degraded = serde_json::Value::Null;
    for _ in 0..100 {
        degraded = health().await;
        if degraded["status"] == "degraded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    assert_eq!(
        degraded["checks"]["database"]["status"], "error",
        "{degraded}"
    );
    assert!(
        !degraded.to_string().contains(PostgresServer::PASSWORD),
        "{degraded}"
    );
    db.restart();
    let mut healed = serde_json::Value::Null;
    for _ in 0..200 {
        healed = health().await;
        if healed["status"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healed["status"], "ok", "{healed}");
    // Caching resumes: the artifact asked during the outage is fetched and kept now.
    let resp = get(&during).await.unwrap();
    assert_eq!(resp.status(), 200);
    node.wait_cached(2).await;
    assert!(
        !node.log().contains(PostgresServer::PASSWORD),
        "{}",
        node.log()
    );
}
