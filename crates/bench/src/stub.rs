//! The upstream registry the benchmarks fetch from: npm packuments and tarballs, PyPI pages,
//! with a latency before headers and a bandwidth limit, counting requests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256, Sha512};
use tokio::net::TcpListener;

/// How the stub answers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Shape {
    /// Wait before sending headers.
    pub(crate) latency: Duration,
    /// Bytes per second per response body; unlimited when `None`.
    pub(crate) bandwidth: Option<u64>,
}

struct Route {
    body: Bytes,
    content_type: &'static str,
    etag: String,
}

#[derive(Default)]
struct State {
    routes: RwLock<HashMap<String, Route>>,
    hits: Mutex<HashMap<String, usize>>,
    shape: RwLock<Shape>,
}

/// The stub. Stops when dropped.
pub(crate) struct Stub {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

/// Deterministic bytes.
pub(crate) fn bytes_of(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

impl Stub {
    pub(crate) async fn start(shape: Shape) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        *state.shape.write().expect("lock") = shape;
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(&state, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn put(&self, path: &str, body: Bytes, content_type: &'static str) {
        let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..8]));
        self.state.routes.write().expect("lock").insert(
            path.to_owned(),
            Route {
                body,
                content_type,
                etag,
            },
        );
    }

    pub(crate) fn set_shape(&self, shape: Shape) {
        *self.state.shape.write().expect("lock") = shape;
    }

    pub(crate) fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Publish an npm package with `versions` (version, tarball bytes); `padding` bytes of
    /// description per version make the packument large.
    pub(crate) fn publish_npm(&self, name: &str, versions: &[(String, Bytes)], padding: usize) {
        let mut doc_versions = serde_json::Map::new();
        for (version, tarball) in versions {
            let path = format!("/{name}/-/{name}-{version}.tgz");
            let integrity = format!(
                "sha512-{}",
                base64::engine::general_purpose::STANDARD.encode(Sha512::digest(tarball))
            );
            doc_versions.insert(
                version.clone(),
                serde_json::json!({
                    "name": name, "version": version,
                    "description": "x".repeat(padding),
                    "dist": {"tarball": format!("{}{path}", self.url()), "integrity": integrity},
                }),
            );
            self.put(&path, tarball.clone(), "application/octet-stream");
        }
        let latest = versions.last().map(|(v, _)| v.clone()).unwrap_or_default();
        let doc = serde_json::json!({"name": name, "dist-tags": {"latest": latest}, "versions": doc_versions});
        self.put(
            &format!("/{name}"),
            Bytes::from(doc.to_string()),
            "application/json",
        );
    }

    /// Publish a PyPI project page (HTML) with `files` file names under `/files/`.
    pub(crate) fn publish_pypi_page(&self, project: &str, files: usize) {
        let mut html = String::from("<!DOCTYPE html><html><body>\n");
        for i in 0..files {
            let sha = hex::encode(Sha256::digest(format!("{project}-{i}")));
            html.push_str(&format!(
                "<a href=\"../../files/{project}-1.{i}-py3-none-any.whl#sha256={sha}\" data-requires-python=\"&gt;=3.8\">{project}-1.{i}-py3-none-any.whl</a><br/>\n"
            ));
        }
        html.push_str("</body></html>\n");
        self.put(
            &format!("/simple/{project}/"),
            Bytes::from(html),
            "text/html",
        );
        // Mirrors such as devpi read the project list first.
        let root = format!(
            "<!DOCTYPE html><html><body><a href=\"{project}/\">{project}</a></body></html>\n"
        );
        self.put("/simple/", Bytes::from(root), "text/html");
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

async fn respond(state: &State, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    *state
        .hits
        .lock()
        .expect("lock")
        .entry(path.clone())
        .or_default() += 1;
    let shape = *state.shape.read().expect("lock");
    if !shape.latency.is_zero() {
        tokio::time::sleep(shape.latency).await;
    }
    let route = state
        .routes
        .read()
        .expect("lock")
        .get(&path)
        .map(|r| (r.body.clone(), r.content_type, r.etag.clone()));
    let Some((body, content_type, etag)) = route else {
        let mut r = Response::new(
            Full::new(Bytes::from_static(b"not found"))
                .map_err(|n| match n {})
                .boxed_unsync(),
        );
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    if req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        let mut r = Response::new(
            Full::new(Bytes::new())
                .map_err(|n| match n {})
                .boxed_unsync(),
        );
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut().insert("etag", etag.parse().expect("etag"));
        return r;
    }
    let len = body.len();
    let mut response = match shape.bandwidth {
        None => Response::new(Full::new(body).map_err(|n| match n {}).boxed_unsync()),
        Some(rate) => {
            const CHUNK: usize = 16 * 1024;
            let pause = Duration::from_secs_f64(CHUNK as f64 / rate as f64);
            let chunks = (0..len.div_ceil(CHUNK))
                .map(move |i| body.slice(i * CHUNK..((i + 1) * CHUNK).min(len)));
            let stream = futures::stream::iter(chunks).then(move |chunk| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(Frame::data(chunk))
            });
            Response::new(StreamBody::new(stream).boxed_unsync())
        }
    };
    let h = response.headers_mut();
    h.insert("content-type", content_type.parse().expect("ct"));
    h.insert("content-length", len.into());
    h.insert("etag", etag.parse().expect("etag"));
    response
}

use futures::StreamExt as _;
