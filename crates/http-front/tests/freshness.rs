//! The front's rules for files kept in storage, shown with the smallest ecosystem there is: one
//! route, one file under a `RevalidateAfter` rule with an extra response header.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use proxyd_cache::{ArtifactSpec, Cache, CacheSettings};
use proxyd_ecosystem::http::{HeaderMap, HeaderValue, Method, Request};
use proxyd_ecosystem::{
    Ecosystem, EcosystemRequest, FreshnessRule, MountedInstance, ObjectKey, Refusal, Reply,
    StoredReply, Upstream, UpstreamClients, UpstreamLimits, UpstreamSettings, Url, read_only,
};
use proxyd_http_front::{DirectServeSettings, Front, FrontSettings};
use proxyd_index_sqlite::SqliteIndex;
use proxyd_storage_fs::FsStorage;
use proxyd_testkit::static_server::{Fault, StaticServer};

#[derive(Debug)]
struct OneFile {
    upstream: Upstream,
    url: String,
}

impl Ecosystem for OneFile {
    type Op = ();

    fn route(&self, method: &Method, path: &str) -> Result<(), Refusal> {
        read_only(method)?;
        (path == "/index")
            .then_some(())
            .ok_or_else(|| Refusal::not_found("no such file"))
    }

    async fn handle(self: Arc<Self>, _op: (), _request: EcosystemRequest<'_>) -> Reply {
        let key = ObjectKey::new("one/index").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-index", HeaderValue::from_static("yes"));
        let this = self.clone();
        Reply::Stored(StoredReply {
            key,
            freshness: FreshnessRule::RevalidateAfter(Duration::from_secs(1)),
            headers,
            never_redirect: false,
            resolve: Box::new(move |key| {
                Box::pin(async move {
                    Ok(this.upstream.fetch(ArtifactSpec {
                        key,
                        ecosystem: "one",
                        name: "index".into(),
                        version: String::new(),
                        filename: "index".into(),
                        content_type: "text/plain".into(),
                        upstream_url: this.url.clone(),
                        verifier: None,
                    }))
                })
            }),
        })
    }
}

async fn get(front: &Arc<Front>) -> (u16, Option<String>, Bytes) {
    let request = Request::get("/one/index").body(()).unwrap();
    let response = front.clone().handle(request).await;
    let status = response.status().as_u16();
    let header = response
        .headers()
        .get("x-index")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, header, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_to_revalidate_is_fetched_again_when_stale_and_kept_when_upstream_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = StaticServer::start().await;
    server.put("/index", "version 1", "text/plain");
    let storage = Arc::new(FsStorage::open(dir.path().join("a")).await.unwrap());
    let index = Arc::new(SqliteIndex::open(&dir.path().join("index.db")).unwrap());
    let cache = Cache::open(storage, index, CacheSettings::default())
        .await
        .unwrap();
    let clients = Arc::new(UpstreamClients::new(&UpstreamSettings::default()).unwrap());
    let limits = UpstreamLimits {
        retries: 0,
        ..UpstreamLimits::default()
    };
    let origin = Url::parse(&server.url()).unwrap();
    let handler = Arc::new(OneFile {
        upstream: clients.for_instance("one", Some(origin), limits),
        url: format!("{}/index", server.url()),
    });
    let instance = MountedInstance {
        name: "one",
        kind: "one",
        mount: "one",
        direct_serve: None,
        handler,
    };
    let settings = FrontSettings {
        direct_serve: DirectServeSettings {
            enabled: false,
            ttl: Duration::from_secs(60),
        },
    };
    let front = Front::new(cache, vec![instance], vec![], settings, None);

    assert_eq!(
        get(&front).await,
        (200, Some("yes".into()), "version 1".into())
    );
    server.put("/index", "version 2", "text/plain");
    assert_eq!(get(&front).await.2, "version 1", "fresh: served as kept");
    assert_eq!(server.hits("/index"), 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(get(&front).await.2, "version 2", "stale: fetched again");
    assert_eq!(server.hits("/index"), 2);
    server.set_fault("/index", Fault::Unavailable);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, header, body) = get(&front).await;
    assert_eq!(
        (status, body),
        (200, Bytes::from("version 2")),
        "the kept copy"
    );
    assert_eq!(header.as_deref(), Some("yes"));
    assert_eq!(server.hits("/index"), 3, "upstream was asked");
    let missing = front
        .clone()
        .handle(Request::get("/one/other").body(()).unwrap())
        .await;
    assert_eq!(missing.status(), 404);
}
