use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{Error, ObjectKey, Result, redact_signed_url};

/// Shortest presign lifetime accepted.
pub const MIN_PRESIGN_TTL: Duration = Duration::from_secs(1);
/// Longest presign lifetime any backend accepts (SigV4's limit, seven days).
pub const MAX_PRESIGN_TTL_ANY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether a backend can mint presigned URLs, decided from its configuration and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresignSupport {
    /// It can; URLs live at most `max_ttl`.
    Supported {
        /// Longest lifetime the backend accepts.
        max_ttl: Duration,
    },
    /// It cannot, and says why (one line, fit for a startup log).
    Unsupported {
        /// Why not.
        reason: String,
    },
}

impl PresignSupport {
    /// Whether presigning is possible.
    pub fn is_supported(&self) -> bool {
        matches!(self, Self::Supported { .. })
    }
}

/// Response headers a presigned GET makes storage send, so a redirected client sees what a
/// streamed one would. Borrowed: a redirect signs them and lets go, so nothing is copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseOverrides<'a> {
    /// `Content-Type` of the response.
    pub content_type: Option<&'a str>,
    /// `Content-Disposition` of the response.
    pub content_disposition: Option<&'a str>,
}

impl<'a> ResponseOverrides<'a> {
    /// Overrides for a content type and a content disposition.
    pub fn new(content_type: Option<&'a str>, content_disposition: Option<&'a str>) -> Self {
        Self {
            content_type,
            content_disposition,
        }
    }
}

/// A presigned URL, exactly as the signer produced it.
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedUrl {
    url: String,
    expires_at: SystemTime,
}

impl PresignedUrl {
    /// Wrap a URL string that stays valid until `expires_at`.
    pub fn new(url: String, expires_at: SystemTime) -> Self {
        Self { url, expires_at }
    }

    /// The URL, byte for byte as signed: emit it unchanged.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The URL itself, byte for byte as signed.
    pub fn into_string(self) -> String {
        self.url
    }

    /// When storage stops accepting it.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// The URL with its signature removed, for logs.
    pub fn redacted(&self) -> String {
        redact_signed_url(&self.url)
    }
}

// Debug never shows the signature: a presigned URL is a bearer capability.
impl fmt::Debug for PresignedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresignedUrl")
            .field("url", &self.redacted())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The presign capability. Every backend implements it; one that cannot sign answers
/// [`PresignSupport::Unsupported`] and fails [`Signer::presign_get`] with
/// [`crate::ErrorKind::Unsupported`], which callers tell apart from a signing failure.
///
/// Rules for implementations:
/// - never drop an override silently: a [`ResponseOverrides`] field the backend cannot bind into
///   the signature makes the call fail with `Unsupported`;
/// - validate the TTL ([`validate_ttl`]) and never return a URL that outlives the credentials
///   that signed it ([`PresignedUrl::expires_at`] tells the real expiry);
/// - signing is offline: success says nothing about whether the object exists.
#[async_trait]
pub trait Signer: Send + Sync + fmt::Debug + 'static {
    /// Whether this backend, as configured, can presign.
    fn presign_support(&self) -> PresignSupport;

    /// A URL that lets anyone GET `key` until it expires.
    async fn presign_get(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        overrides: &ResponseOverrides<'_>,
    ) -> Result<PresignedUrl> {
        let _ = (key, ttl, overrides);
        Err(Error::unsupported(
            "presign_get",
            "this storage backend cannot presign URLs",
        ))
    }
}

/// Check a requested lifetime against the global bounds and a backend's own `max_ttl`.
pub fn validate_ttl(ttl: Duration, max_ttl: Duration) -> Result<()> {
    if ttl < MIN_PRESIGN_TTL {
        return Err(Error::invalid(
            "presign_get",
            format!("TTL {ttl:?} is under the minimum of one second"),
        ));
    }
    if ttl > max_ttl {
        return Err(Error::invalid(
            "presign_get",
            format!("TTL {ttl:?} is over this backend's maximum of {max_ttl:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct NoSign;
    impl Signer for NoSign {
        fn presign_support(&self) -> PresignSupport {
            PresignSupport::Unsupported {
                reason: "test".into(),
            }
        }
    }

    #[tokio::test]
    async fn default_presign_refuses_as_unsupported() {
        let key = ObjectKey::new("a/b").unwrap();
        let err = NoSign
            .presign_get(&key, Duration::from_secs(60), &ResponseOverrides::default())
            .await
            .unwrap_err();
        assert!(err.is_unsupported());
    }

    #[test]
    fn ttl_bounds() {
        assert!(validate_ttl(Duration::from_millis(999), MAX_PRESIGN_TTL_ANY).is_err());
        assert!(validate_ttl(Duration::from_secs(1), MAX_PRESIGN_TTL_ANY).is_ok());
        assert!(validate_ttl(MAX_PRESIGN_TTL_ANY, MAX_PRESIGN_TTL_ANY).is_ok());
        assert!(
            validate_ttl(
                MAX_PRESIGN_TTL_ANY + Duration::from_secs(1),
                MAX_PRESIGN_TTL_ANY
            )
            .is_err()
        );
    }

    #[test]
    fn debug_hides_signature() {
        let url = PresignedUrl::new(
            "http://h/b/k?X-Amz-Signature=abc123&X-Amz-Expires=60".into(),
            SystemTime::UNIX_EPOCH,
        );
        let dbg = format!("{url:?}");
        assert!(!dbg.contains("abc123"), "{dbg}");
    }
}
