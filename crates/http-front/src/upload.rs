//! Bodies clients send to be kept (a Gradle build cache entry): size-limited while streaming,
//! stored whole or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Response, StatusCode, header};
use proxyd_ecosystem::{ArtifactSpec, UploadReply};

use crate::body::{self, Body};
use crate::front::{Front, RequestBody};

impl Front {
    /// Store `body` as `upload` says: 201 when kept; 413 when it is (or turns out, while
    /// streaming) larger than its limit; nothing is kept unless all of it arrived.
    pub(crate) async fn store_upload(
        self: &Arc<Self>,
        ecosystem: &'static str,
        headers: &HeaderMap,
        upload: UploadReply,
        request_body: Option<RequestBody>,
    ) -> Response<Body> {
        let too_large = || {
            body::error(
                413,
                &format!("the body is larger than {} bytes", upload.max_size),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > upload.max_size) {
            return too_large();
        }
        let Some(request_body) = request_body else {
            return body::error(400, "a PUT needs a body");
        };
        let exceeded = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicU64::new(0));
        let max = upload.max_size;
        let flag = exceeded.clone();
        let stream = http_body_util::BodyDataStream::new(request_body)
            .map(move |chunk: std::io::Result<Bytes>| {
                let chunk = chunk?;
                let total =
                    seen.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if total > max {
                    flag.store(true, Ordering::Relaxed);
                    return Err(std::io::Error::other("the body is larger than its limit"));
                }
                Ok(chunk)
            })
            .boxed();
        let filename = upload
            .key
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let spec = ArtifactSpec {
            key: upload.key.clone(),
            ecosystem,
            name: upload.name,
            version: String::new(),
            filename,
            content_type: upload.content_type,
            upstream_url: String::new(),
            verifier: None,
        };
        match self.cache.store(&spec, stream).await {
            Ok(_) => {
                let mut response = Response::new(body::empty());
                *response.status_mut() = StatusCode::CREATED;
                response
            }
            Err(_) if exceeded.load(Ordering::Relaxed) => too_large(),
            Err(err) if err.kind() == proxyd_storage_core::ErrorKind::InvalidInput => {
                body::error(400, &format!("the body was not stored: {err}"))
            }
            Err(err) => body::error(503, &format!("the body was not stored: {err}")),
        }
    }
}
