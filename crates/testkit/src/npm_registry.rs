//! A small npm registry on 127.0.0.1 for tests: real packuments and real tarballs, request
//! counting, and faults (corrupt bytes, a connection dropped mid-body, delays).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha1::Sha1;
use sha2::{Digest, Sha512};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A package to publish.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub dependencies: Vec<(String, String)>,
    /// Extra bytes in the tarball (to make it larger).
    pub padding: usize,
}

impl Package {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            dependencies: Vec::new(),
            padding: 0,
        }
    }

    pub fn depends_on(mut self, name: &str, range: &str) -> Self {
        self.dependencies.push((name.into(), range.into()));
        self
    }

    pub fn padded(mut self, bytes: usize) -> Self {
        self.padding = bytes;
        self
    }

    /// `name-1.0.0.tgz` (the part after the scope).
    pub fn file_name(&self) -> String {
        let base = self.name.rsplit('/').next().unwrap_or(&self.name);
        format!("{base}-{}.tgz", self.version)
    }

    /// A real npm tarball: `package/package.json` and `package/index.js`.
    pub fn tarball(&self) -> Vec<u8> {
        let deps: serde_json::Map<String, serde_json::Value> = self
            .dependencies
            .iter()
            .map(|(n, r)| (n.clone(), r.clone().into()))
            .collect();
        let manifest = serde_json::json!({
            "name": self.name, "version": self.version, "main": "index.js", "license": "MIT",
            "dependencies": deps,
        });
        let index = format!(
            "module.exports = () => {:?};\n/*{}*/\n",
            format!("{}@{}", self.name, self.version),
            crate::conformance::pattern(self.padding, 7)
                .iter()
                .map(|b| char::from(b'a' + b % 26))
                .collect::<String>()
        );
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, data) in [
            ("package/package.json", manifest.to_string().into_bytes()),
            ("package/index.js", index.into_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            builder
                .append_data(&mut header, path, data.as_slice())
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }
}

/// What the registry does wrong on purpose for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve the tarball with one byte flipped (its digest no longer matches).
    Corrupt,
    /// Announce the full length, send half, then close the connection.
    DropMidBody,
    /// Wait before answering.
    Delay(Duration),
    /// Answer 503.
    Unavailable,
}

#[derive(Default)]
struct State {
    packuments: HashMap<String, serde_json::Value>,
    tarballs: HashMap<String, Bytes>,
    faults: HashMap<String, Fault>,
    hits: HashMap<String, usize>,
}

/// The registry. Stops when dropped.
pub struct NpmRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl NpmRegistry {
    /// Start with `packages` published.
    pub async fn start(packages: &[Package]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let registry_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = registry_state.clone();
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
        let registry = Self { addr, state, task };
        for p in packages {
            registry.publish(p);
        }
        registry
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Add a version of a package.
    pub fn publish(&self, package: &Package) {
        let tarball = Bytes::from(package.tarball());
        let path = format!("/{}/-/{}", package.name, package.file_name());
        let integrity = format!(
            "sha512-{}",
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&tarball))
        );
        let shasum = hex::encode(Sha1::digest(&tarball));
        let deps: serde_json::Map<String, serde_json::Value> = package
            .dependencies
            .iter()
            .map(|(n, r)| (n.clone(), r.clone().into()))
            .collect();
        let mut state = self.state.lock().unwrap();
        let doc = state.packuments.entry(package.name.clone()).or_insert_with(
            || serde_json::json!({"name": package.name, "dist-tags": {}, "versions": {}}),
        );
        doc["versions"][&package.version] = serde_json::json!({
            "name": package.name, "version": package.version, "dependencies": deps,
            "dist": {"tarball": format!("{}{path}", self.url()), "integrity": integrity, "shasum": shasum},
        });
        doc["dist-tags"]["latest"] = package.version.clone().into();
        state.tarballs.insert(path, tarball);
    }

    /// The bytes of a published tarball.
    pub fn tarball(&self, package: &Package) -> Bytes {
        let path = format!("/{}/-/{}", package.name, package.file_name());
        self.state.lock().unwrap().tarballs[&path].clone()
    }

    /// The path of a package's tarball on this registry and on proxyd (`/name/-/file`).
    pub fn tarball_path(package: &Package) -> String {
        format!("/{}/-/{}", package.name, package.file_name())
    }

    /// Misbehave on `path` from now on.
    pub fn set_fault(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(path.to_owned(), fault);
    }

    /// Requests received for `path` (decoded, without query).
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

    /// Stop answering (connections are refused from now on).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for NpmRegistry {
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
    let fault = {
        let mut s = state.lock().unwrap();
        *s.hits.entry(path.clone()).or_default() += 1;
        s.faults.get(&path).copied()
    };
    match fault {
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Unavailable) => return full(StatusCode::SERVICE_UNAVAILABLE, "down"),
        _ => {}
    }
    let (doc, tarball) = {
        let s = state.lock().unwrap();
        (
            s.packuments.get(path.trim_start_matches('/')).cloned(),
            s.tarballs.get(&path).cloned(),
        )
    };
    if let Some(doc) = doc {
        let body = doc.to_string();
        let etag = format!("\"{}\"", hex::encode(&Sha512::digest(body.as_bytes())[..8]));
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
        let mut r = full(StatusCode::OK, body);
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r.headers_mut().insert("etag", etag.parse().unwrap());
        return r;
    }
    let Some(tarball) = tarball else {
        return full(StatusCode::NOT_FOUND, "not found");
    };
    match fault {
        Some(Fault::Corrupt) => {
            let mut bytes = tarball.to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            full(StatusCode::OK, bytes)
        }
        Some(Fault::DropMidBody) => {
            let half = tarball.slice(..tarball.len() / 2);
            let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(half)),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "dropped",
                )),
            ];
            let body = StreamBody::new(futures::stream::iter(chunks)).boxed_unsync();
            let mut r = Response::new(body);
            r.headers_mut()
                .insert("content-length", tarball.len().into());
            r
        }
        _ => {
            let mut r = full(StatusCode::OK, tarball);
            r.headers_mut()
                .insert("content-type", "application/octet-stream".parse().unwrap());
            r
        }
    }
}
