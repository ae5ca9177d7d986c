//! Scenario 9: two nodes on one PostgreSQL index and one S3 store: upstream fetches per artifact for
//! concurrent misses spread over both, the time fifty misses of a large artifact from a slow
//! upstream take on two nodes against one, and hit throughput of two nodes against one.

use std::time::{Duration, Instant};

use futures::StreamExt;
use proxyd_testkit::postgres::PostgresServer;

use crate::peers::{Env, Server};
use crate::procs::wrk;
use crate::stub::{Shape, Stub, bytes_of};
use crate::{Row, get_all, npm_yaml};

/// `n` proxyd nodes on S3 at `s3` with direct-serve on; on `database` (a PostgreSQL URL) or, when
/// `None`, each on its own SQLite file.
fn start_nodes(
    env: &Env,
    stub: &Stub,
    s3: &Server,
    database: Option<&str>,
    n: usize,
) -> anyhow::Result<Vec<Server>> {
    let yaml = format!(
        "storage:\n  url: \"s3://bench?region=us-east-1&endpoint={}&s3ForcePathStyle=true\"\n  direct_serve: true\n{}",
        s3.url(),
        npm_yaml(stub)
    );
    let mut envs = vec![
        ("AWS_ACCESS_KEY_ID", "AKIDBENCH".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret".to_owned()),
    ];
    if let Some(url) = database {
        envs.push(("PROXYD_DATABASE_DRIVER", "postgres".to_owned()));
        envs.push(("PROXYD_DATABASE_URL", url.to_owned()));
    }
    (0..n).map(|_| env.proxyd(&yaml, &envs)).collect()
}

/// When one client's download of an artifact from one node got its first byte and its last.
struct Timing {
    node: usize,
    first_byte: f64,
    whole: f64,
}

/// Download `url` whole (following redirects to storage), timed from `start`; its length.
async fn download(
    client: &reqwest::Client,
    url: &str,
    start: Instant,
) -> anyhow::Result<(usize, f64, f64)> {
    let resp = client.get(url).send().await?;
    anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let mut body = resp.bytes_stream();
    let mut n = 0;
    let mut first_byte = None;
    while let Some(chunk) = body.next().await {
        first_byte.get_or_insert_with(|| start.elapsed().as_secs_f64());
        n += chunk?.len();
    }
    Ok((n, first_byte.unwrap_or(0.0), start.elapsed().as_secs_f64()))
}

/// `clients` concurrent downloads of `path` spread round-robin over `nodes`, each checked whole.
async fn concurrent_misses(
    nodes: &[Server],
    path: &str,
    clients: usize,
    expect: usize,
) -> anyhow::Result<Vec<Timing>> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let downloads = (0..clients).map(|i| {
        let node = i % nodes.len();
        let url = format!("{}/npm{path}", nodes[node].url());
        let client = client.clone();
        async move {
            let (n, first_byte, whole) = download(&client, &url, start).await?;
            anyhow::ensure!(n == expect, "short download of {url}: {n}");
            Ok::<_, anyhow::Error>(Timing {
                node,
                first_byte,
                whole,
            })
        }
    });
    futures::future::join_all(downloads)
        .await
        .into_iter()
        .collect()
}

fn min_of(timings: &[Timing], node: usize, f: impl Fn(&Timing) -> f64) -> f64 {
    timings
        .iter()
        .filter(|t| t.node == node)
        .map(f)
        .fold(f64::INFINITY, f64::min)
}

pub(crate) async fn two_nodes(env: &Env, s: u32) -> anyhow::Result<Vec<Row>> {
    let db = PostgresServer::start();
    let mut rows = Vec::new();

    // 9a. Twenty artifacts, twenty concurrent misses each, all at once, over two nodes.
    let stub = Stub::start(Shape::default()).await;
    for i in 0..20 {
        stub.publish_npm(
            &format!("spread{i}"),
            &[("1.0.0".into(), bytes_of(4 << 20, 900 + i))],
            0,
        );
    }
    let s3 = env.s3s()?;
    let url = db.create_database().await;
    let nodes = start_nodes(env, &stub, &s3, Some(&url), 2)?;
    for i in 0..20 {
        for node in &nodes {
            get_all(&format!("{}/npm/spread{i}", node.url())).await?; // packuments first
        }
    }
    stub.set_shape(Shape {
        latency: Duration::from_millis(50),
        bandwidth: Some(16 << 20),
    });
    let all = (0..20).map(|i| {
        let nodes = &nodes;
        async move {
            concurrent_misses(
                nodes,
                &format!("/spread{i}/-/spread{i}-1.0.0.tgz"),
                20,
                4 << 20,
            )
            .await
        }
    });
    for r in futures::future::join_all(all).await {
        r?;
    }
    let fetches: Vec<usize> = (0..20)
        .map(|i| stub.hits(&format!("/spread{i}/-/spread{i}-1.0.0.tgz")))
        .collect();
    let worst = fetches.iter().copied().max().unwrap_or(0);
    rows.push(Row::absolute(
        "9a. upstream fetches per artifact, 20 artifacts x 20 concurrent misses over 2 nodes",
        format!(
            "max {worst}, total {} for 20",
            fetches.iter().sum::<usize>()
        ),
        "= 1",
        worst == 1,
    ));
    drop(nodes);
    drop(s3);

    // 9b-9d. Fifty misses of one 64 MiB artifact from a slow upstream: two nodes on PostgreSQL
    // against one node on SQLite.
    let large = Stub::start(Shape::default()).await;
    large.publish_npm("large", &[("1.0.0".into(), bytes_of(64 << 20, 901))], 0);
    let path = "/large/-/large-1.0.0.tgz";
    let mut runs = Vec::new();
    let mut fetches = Vec::new();
    for database in [Some(db.create_database().await), None] {
        let s3 = env.s3s()?;
        let n = if database.is_some() { 2 } else { 1 };
        let nodes = start_nodes(env, &large, &s3, database.as_deref(), n)?;
        for node in &nodes {
            get_all(&format!("{}/npm/large", node.url())).await?;
        }
        large.set_shape(Shape {
            latency: Duration::from_millis(50),
            bandwidth: Some(32 << 20),
        });
        let before = large.hits(path);
        runs.push(concurrent_misses(&nodes, path, 50, 64 << 20).await?);
        fetches.push(large.hits(path) - before);
        large.set_shape(Shape::default());
    }
    let (two, one) = (&runs[0], &runs[1]);
    rows.push(Row::absolute(
        "9b. upstream fetches for 50 misses of one 64 MiB artifact (32 MiB/s upstream) over 2 nodes",
        fetches[0].to_string(),
        "= 1",
        fetches[0] == 1,
    ));
    // The node that fetched streams live (its first byte comes first); the other waits for
    // the commit and redirects to storage.
    let fetcher = usize::from(min_of(two, 1, |t| t.first_byte) < min_of(two, 0, |t| t.first_byte));
    let waiter = 1 - fetcher;
    let fetched_at = min_of(two, fetcher, |t| t.whole);
    let waited = (min_of(two, waiter, |t| t.first_byte) - fetched_at) * 1000.0;
    rows.push(Row::absolute(
        "9c. the other node's first byte after the fetching node's download ended (lease poll, commit, redirect)",
        format!("{waited:.0} ms (download {fetched_at:.2} s)"),
        "<= 1000 ms",
        waited <= 1000.0,
    ));
    let last = |run: &[Timing]| run.iter().map(|t| t.whole).fold(0.0, f64::max);
    let (two_last, one_last) = (last(two), last(one));
    rows.push(Row {
        scenario: "9d. the same until all 50 have it whole: two nodes on PostgreSQL vs one on SQLite (the other node's 25 read from s3s-fs after the commit)".into(),
        proxyd: format!("{two_last:.2} s"),
        reference: format!("{one_last:.2} s"),
        ratio: Some(two_last / one_last),
        target: "report".into(),
        pass: None,
    });

    // 9e. Redirected hits on one small cached artifact: two nodes (32 connections each, two
    // load generators at once) against one node (64 connections).
    let small = Stub::start(Shape::default()).await;
    small.publish_npm("small", &[("1.0.0".into(), bytes_of(10 * 1024, 902))], 0);
    let s3 = env.s3s()?;
    let url = db.create_database().await;
    let nodes = start_nodes(env, &small, &s3, Some(&url), 2)?;
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}/npm/small/-/small-1.0.0.tgz", n.url()))
        .collect();
    download(&reqwest::Client::new(), &urls[0], Instant::now()).await?; // the miss, on node 0
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    for url in &urls {
        let status = no_redirects.get(url).send().await?.status();
        anyhow::ensure!(status == 302, "{url}: {status}, not a redirect");
    }
    let seconds = s.max(4);
    let one = wrk(&urls[0], 64, seconds, &[])?;
    anyhow::ensure!(one.non_2xx_3xx == 0, "{} errors", one.non_2xx_3xx);
    let both: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = urls
            .iter()
            .map(|url| scope.spawn(move || wrk(url, 32, seconds, &[])))
            .collect();
        runs.into_iter()
            .map(|r| r.join().map_err(|_| anyhow::anyhow!("wrk thread")))
            .collect::<Result<Vec<_>, _>>()
    })?
    .into_iter()
    .collect::<Result<_, _>>()?;
    let two: f64 = both.iter().map(|r| r.requests_per_sec).sum();
    let errors: u64 = both.iter().map(|r| r.non_2xx_3xx).sum();
    anyhow::ensure!(errors == 0, "{errors} errors on two nodes");
    rows.push(Row::ratio(
        "9e. redirected hits, two nodes on PostgreSQL vs one (all servers share one CPU), req/s",
        two,
        one.requests_per_sec,
        "req/s",
        Some(0.9),
    ));
    Ok(rows)
}
