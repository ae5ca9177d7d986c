//! A static HTTP server on 127.0.0.1 for test upstreams: fixed bodies per path, ETag and
//! If-None-Match, request counting, and faults.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the server does wrong on purpose for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve the body with one byte flipped (its digest no longer matches).
    Corrupt,
    /// Announce the full length, send half, then close the connection.
    DropMidBody,
    /// Wait before answering.
    Delay(Duration),
    /// Answer 503.
    Unavailable,
    /// Answer 429 Too Many Requests.
    TooManyRequests,
    /// Announce the full length, send half, then send nothing more (the connection stays
    /// open).
    StallMidBody,
    /// Announce no length and send the body's first kilobyte again and again, forever.
    Endless,
    /// Send the body at this many bytes per second (a slow upstream), in 64 KiB pieces.
    Throttle(u64),
    /// Answer 200 with the first half of the body, cleanly ended (a document cut short by an
    /// upstream that ends its response without a length).
    Truncated,
}

/// Answers paths no route names (a repository read from disk): the body and its content type.
pub type Fallback = Box<dyn Fn(&str) -> Option<(Bytes, String)> + Send + Sync>;

#[derive(Default)]
struct State {
    routes: HashMap<String, (Bytes, String)>,
    fallback: Option<Arc<Fallback>>,
    /// When set, requests without this `Authorization` value are answered 401.
    authorization: Option<String>,
    /// When set, an OCI registry's bearer-token gate: the basic credentials `/token` takes,
    /// and the token it hands out, which every other path requires.
    bearer: Option<(String, String)>,
    faults: HashMap<String, Fault>,
    hits: HashMap<String, usize>,
    /// Stopped: open connections are closed at their next request.
    stopped: bool,
}

/// The server. Stops when dropped.
pub struct StaticServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl StaticServer {
    /// Start on a free port with no routes.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Start serving HTTPS with the certificate `ca` issued for 127.0.0.1.
    pub async fn start_tls(ca: &crate::tls::TestCa) -> Self {
        Self::start_with(Some(ca.acceptor())).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move {
                            if state.lock().unwrap().stopped {
                                return Err(std::io::Error::other("the server is stopped"));
                            }
                            Ok(respond(&state, req).await)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            // A client that refuses the certificate ends the handshake here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Serve `body` at `path` (decoded, `%2f` as `/`).
    pub fn put(&self, path: &str, body: impl Into<Bytes>, content_type: &str) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), (body.into(), content_type.to_owned()));
    }

    /// Guard every path as an OCI registry with token authentication does: without
    /// `Authorization: Bearer {token}` a 401 with `WWW-Authenticate: Bearer
    /// realm="{url}/token",service="testkit"`; `/token` gives the token (JSON, 300 s) to a
    /// request sending `Authorization: {basic}` and 401 to others.
    pub fn require_bearer_token(&self, basic: &str, token: &str) {
        self.state.lock().unwrap().bearer = Some((basic.to_owned(), token.to_owned()));
    }

    /// Answer 401 to every request that does not send `Authorization: {value}`.
    pub fn require_authorization(&self, value: &str) {
        self.state.lock().unwrap().authorization = Some(value.to_owned());
    }

    /// Answer paths no route names with `fallback` (its answers are not kept).
    pub fn set_fallback(&self, fallback: Fallback) {
        self.state.lock().unwrap().fallback = Some(Arc::new(fallback));
    }

    /// The body at `path`.
    pub fn get(&self, path: &str) -> Option<Bytes> {
        self.state
            .lock()
            .unwrap()
            .routes
            .get(path)
            .map(|(b, _)| b.clone())
    }

    /// Misbehave on `path` from now on.
    pub fn set_fault(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(path.to_owned(), fault);
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request received.
    pub fn total_hits(&self) -> usize {
        self.state.lock().unwrap().hits.values().sum()
    }

    /// Paths requested so far, with counts.
    pub fn requests(&self) -> HashMap<String, usize> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Stop answering (connections are refused from now on).
    pub fn stop(&self) {
        self.state.lock().unwrap().stopped = true;
        self.task.abort();
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

async fn respond(state: &Mutex<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().replace("%2f", "/").replace("%2F", "/");
    let (fault, route, fallback) = {
        let mut s = state.lock().unwrap();
        *s.hits.entry(path.clone()).or_default() += 1;
        if let Some((basic, token)) = &s.bearer {
            let sent = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if path == "/token" {
                return if sent == Some(basic.as_str()) {
                    full(
                        StatusCode::OK,
                        format!("{{\"token\":\"{token}\",\"expires_in\":300}}"),
                    )
                } else {
                    full(StatusCode::UNAUTHORIZED, "wrong credentials")
                };
            }
            if sent != Some(format!("Bearer {token}").as_str()) {
                let host = req
                    .headers()
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("127.0.0.1");
                let mut r = full(StatusCode::UNAUTHORIZED, "token required");
                if let Ok(v) = http::HeaderValue::from_str(&format!(
                    "Bearer realm=\"http://{host}/token\",service=\"testkit\""
                )) {
                    r.headers_mut().insert("www-authenticate", v);
                }
                return r;
            }
        }
        if let Some(required) = &s.authorization {
            let sent = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if sent != Some(required.as_str()) {
                return full(StatusCode::UNAUTHORIZED, "credentials required");
            }
        }
        (
            s.faults.get(&path).copied(),
            s.routes.get(&path).cloned(),
            s.fallback.clone(),
        )
    };
    let route = match (route, fallback) {
        (None, Some(fallback)) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || fallback(&path))
                .await
                .ok()
                .flatten()
        }
        (route, _) => route,
    };
    match fault {
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Unavailable) => return full(StatusCode::SERVICE_UNAVAILABLE, "down"),
        Some(Fault::TooManyRequests) => return full(StatusCode::TOO_MANY_REQUESTS, "slow down"),
        _ => {}
    }
    let Some((body, content_type)) = route else {
        return full(StatusCode::NOT_FOUND, "not found");
    };
    let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..8]));
    if req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        let mut r = full(StatusCode::NOT_MODIFIED, Bytes::new());
        r.headers_mut().insert("etag", etag.parse().unwrap());
        return r;
    }
    let mut response = match fault {
        Some(Fault::Corrupt) => {
            let mut bytes = body.to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            full(StatusCode::OK, bytes)
        }
        Some(Fault::Truncated) => full(StatusCode::OK, body.slice(..body.len() / 2)),
        Some(Fault::Endless) => {
            let piece = body.slice(..body.len().min(1024));
            let chunks = futures::stream::repeat_with(move || Ok(Frame::data(piece.clone())));
            let paced = futures::StreamExt::then(chunks, |chunk| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                chunk
            });
            Response::new(StreamBody::new(paced).boxed_unsync())
        }
        Some(Fault::Throttle(per_second)) => {
            const PIECE: usize = 64 << 10;
            let pause = Duration::from_secs_f64(PIECE as f64 / per_second.max(1) as f64);
            let pieces: Vec<Bytes> = (0..body.len())
                .step_by(PIECE)
                .map(|at| body.slice(at..(at + PIECE).min(body.len())))
                .collect();
            let paced =
                futures::StreamExt::then(futures::stream::iter(pieces), move |piece| async move {
                    tokio::time::sleep(pause).await;
                    Ok(Frame::data(piece))
                });
            let mut r = Response::new(StreamBody::new(paced).boxed_unsync());
            r.headers_mut().insert("content-length", body.len().into());
            r
        }
        Some(Fault::StallMidBody) => {
            let half = futures::stream::iter([Ok(Frame::data(body.slice(..body.len() / 2)))]);
            let chunks = futures::StreamExt::chain(half, futures::stream::pending());
            let mut r = Response::new(StreamBody::new(chunks).boxed_unsync());
            r.headers_mut().insert("content-length", body.len().into());
            r
        }
        Some(Fault::DropMidBody) => {
            let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(body.slice(..body.len() / 2))),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "dropped",
                )),
            ];
            let mut r =
                Response::new(StreamBody::new(futures::stream::iter(chunks)).boxed_unsync());
            r.headers_mut().insert("content-length", body.len().into());
            r
        }
        _ => full(StatusCode::OK, body),
    };
    response
        .headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    response.headers_mut().insert("etag", etag.parse().unwrap());
    response
        .headers_mut()
        .insert("last-modified", LAST_MODIFIED.parse().unwrap());
    response
}

/// Every route claims this modification time, so conditional requests can be tested.
pub const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
