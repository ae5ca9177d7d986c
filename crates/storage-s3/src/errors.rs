use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use proxyd_storage_core::{Error, ErrorKind};

/// Map an SDK error to a storage error a caller can act on.
pub(crate) fn map_sdk_error<E>(
    op: &'static str,
    key: Option<&str>,
    err: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, message) = match &err {
        SdkError::ServiceError(service) => {
            let status = Some(service.raw().status().as_u16());
            let code = service.err().code().unwrap_or("");
            let kind = match (status, code) {
                (_, "NoSuchKey" | "NoSuchBucket" | "NotFound") | (Some(404), _) => {
                    ErrorKind::NotFound
                }
                (Some(401 | 403), _)
                | (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                    ErrorKind::PermissionDenied
                }
                (Some(416), _) | (_, "InvalidRange") => ErrorKind::InvalidInput,
                (Some(412), _) | (_, "PreconditionFailed" | "ConditionalRequestConflict") => {
                    ErrorKind::AlreadyExists
                }
                (Some(429), _) | (_, "SlowDown" | "RequestTimeout") => ErrorKind::Temporary,
                (Some(s), _) if s >= 500 => ErrorKind::Temporary,
                (Some(400), _) => ErrorKind::InvalidInput,
                _ => ErrorKind::Unexpected,
            };
            let msg = service.err().message().unwrap_or("");
            let status = status.map(|s| s.to_string()).unwrap_or_default();
            (
                kind,
                format!("S3 answered {status} {code} {msg}")
                    .trim_end()
                    .to_owned(),
            )
        }
        SdkError::TimeoutError(_) => (ErrorKind::Temporary, "S3 request timed out".to_owned()),
        SdkError::DispatchFailure(_) => {
            (ErrorKind::Temporary, "S3 could not be reached".to_owned())
        }
        SdkError::ResponseError(_) => (
            ErrorKind::Temporary,
            "S3 response was unreadable".to_owned(),
        ),
        SdkError::ConstructionFailure(_) => (
            ErrorKind::InvalidInput,
            "S3 request could not be built".to_owned(),
        ),
        _ => (ErrorKind::Unexpected, "S3 request failed".to_owned()),
    };
    let mut out = Error::new(kind, op, message).with_source(err);
    if let Some(key) = key {
        out = out.with_key(key);
    }
    out
}
