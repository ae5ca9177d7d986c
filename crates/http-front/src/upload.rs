//! Bodies clients send to be kept (a Gradle build cache entry): size-limited while streaming,
//! stored whole or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
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
            // The front reads what the client still sends of the unread body.
            return too_large();
        }
        let Some(request_body) = request_body else {
            return body::error(400, "a PUT needs a body");
        };
        let exceeded = Arc::new(AtomicBool::new(false));
        let max = upload.max_size;
        let flag = exceeded.clone();
        let data = http_body_util::BodyDataStream::new(request_body);
        let stream = futures::stream::unfold((data, 0u64), move |(mut data, seen)| {
            let flag = flag.clone();
            async move {
                let chunk = match data.next().await? {
                    Ok(chunk) => chunk,
                    Err(err) => return Some((Err(err), (data, seen))),
                };
                let seen = seen + chunk.len() as u64;
                if seen > max {
                    flag.store(true, Ordering::Relaxed);
                    linger(&mut data).await;
                    let too_large = std::io::Error::other("the body is larger than its limit");
                    return Some((Err(too_large), (data, seen)));
                }
                Some((Ok(chunk), (data, seen)))
            }
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

/// Longest and most a refused upload's remaining bytes are read and dropped before the 413.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 8 * 1024 * 1024;

/// Read and drop what the client still sends of a refused body, within [`LINGER`] and
/// [`LINGER_BYTES`], so that the answer reaches it. A connection closed with unread bytes is
/// reset, and the reset can arrive before the client reads the answer (one run in about forty
/// of the Gradle upload test lost its 413 so). nginx's lingering close does the same. Used for
/// an upload refused while streaming, and by the front for any body a route left unread.
pub(crate) async fn linger<S>(rest: &mut S)
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    let _ = tokio::time::timeout(LINGER, async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = rest.next().await {
            read += chunk.len() as u64;
            if read > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}
