use bytes::Bytes;
use futures::TryStreamExt;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use proxyd_storage_core::ByteStream;

/// Every response body proxyd sends.
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn stream(body: ByteStream) -> Body {
    StreamBody::new(body.map_ok(http_body::Frame::data)).boxed_unsync()
}

/// A plain-text error with a one-line reason.
/// The one-line reason of an error answer, kept with it so that an ecosystem whose protocol
/// defines error bodies (OCI) can render its own.
#[derive(Debug, Clone)]
pub(crate) struct ErrorReason(pub(crate) String);

pub(crate) fn error(status: u16, reason: &str) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let line = reason.lines().next().unwrap_or("");
    let mut response = Response::new(full(format!("{line}\n")));
    *response.status_mut() = status;
    response
        .extensions_mut()
        .insert(ErrorReason(line.to_owned()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
