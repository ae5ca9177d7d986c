use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::ProvideCredentials;
use aws_sdk_s3::config::SharedCredentialsProvider;
use aws_sdk_s3::presigning::PresigningConfig;
use proxyd_storage_core::{
    Error, ErrorKind, MAX_PRESIGN_TTL_ANY, ObjectKey, PresignSupport, PresignedUrl,
    ResponseOverrides, Result, Signer, validate_ttl,
};

use crate::S3Storage;
use crate::errors::map_sdk_error;

/// Cached credentials are refreshed when they would expire within a URL's TTL plus this margin.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Signing state: the client whose endpoint is the host URLs are signed for, and the
/// credentials last used, cached so a hit does not ask the credential chain every time.
pub(crate) struct PresignState {
    client: Client,
    provider: Option<SharedCredentialsProvider>,
    cached: RwLock<Option<Credentials>>,
    refresh: tokio::sync::Mutex<()>,
}

impl PresignState {
    pub(crate) fn new(client: Client, provider: Option<SharedCredentialsProvider>) -> Self {
        Self {
            client,
            provider,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn cached_valid_for(&self, ttl: Duration) -> Option<Credentials> {
        let cached = self.cached.read().unwrap_or_else(|p| p.into_inner());
        let creds = cached.as_ref()?;
        match creds.expiry() {
            None => Some(creds.clone()),
            Some(expiry) if expiry > SystemTime::now() + ttl + REFRESH_MARGIN => {
                Some(creds.clone())
            }
            Some(_) => None,
        }
    }

    /// Credentials that, where possible, outlive `ttl`.
    async fn credentials(&self, ttl: Duration) -> Result<Credentials> {
        if let Some(creds) = self.cached_valid_for(ttl) {
            return Ok(creds);
        }
        let _one_refresh = self.refresh.lock().await;
        if let Some(creds) = self.cached_valid_for(ttl) {
            return Ok(creds);
        }
        let provider = self.provider.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::PermissionDenied,
                "presign_get",
                "no AWS credentials are configured",
            )
        })?;
        let fresh = provider.provide_credentials().await.map_err(|e| {
            Error::new(
                ErrorKind::Temporary,
                "presign_get",
                "AWS credentials could not be loaded",
            )
            .with_source(e)
        })?;
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }
}

#[async_trait]
impl Signer for S3Storage {
    fn presign_support(&self) -> PresignSupport {
        if self.inner.presign.provider.is_none() {
            return PresignSupport::Unsupported {
                reason: "no AWS credentials are configured".into(),
            };
        }
        PresignSupport::Supported {
            max_ttl: MAX_PRESIGN_TTL_ANY,
        }
    }

    async fn presign_get(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        overrides: &ResponseOverrides,
    ) -> Result<PresignedUrl> {
        validate_ttl(ttl, MAX_PRESIGN_TTL_ANY)?;
        let state = &self.inner.presign;
        let creds = state.credentials(ttl).await?;
        let now = SystemTime::now();
        // A URL dies with the credentials that signed it: never promise more than they have.
        let ttl = match creds.expiry() {
            Some(expiry) => {
                let left = expiry.duration_since(now).unwrap_or_default();
                if left < proxyd_storage_core::MIN_PRESIGN_TTL {
                    return Err(Error::new(
                        ErrorKind::Temporary,
                        "presign_get",
                        "AWS credentials are expired or about to expire",
                    ));
                }
                ttl.min(left)
            }
            None => ttl,
        };
        let config = PresigningConfig::builder()
            .start_time(now)
            .expires_in(ttl)
            .build()
            .map_err(|e| Error::invalid("presign_get", "bad presign TTL").with_source(e))?;
        let request = state
            .client
            .get_object()
            .bucket(&self.inner.bucket)
            .key(key.as_str())
            .set_response_content_type(overrides.content_type.clone())
            .set_response_content_disposition(overrides.content_disposition.clone())
            .customize()
            .config_override(aws_sdk_s3::config::Builder::new().credentials_provider(creds))
            .presigned(config)
            .await
            .map_err(|e| map_sdk_error("presign_get", Some(key.as_str()), e))?;
        // A redirect carries no request headers: a URL that needs any besides Host is useless.
        if let Some((name, _)) = request
            .headers()
            .find(|(n, _)| !n.eq_ignore_ascii_case("host"))
        {
            return Err(Error::unsupported(
                "presign_get",
                format!(
                    "the presigned request needs the header {name:?}, which a redirect cannot carry"
                ),
            ));
        }
        Ok(PresignedUrl::new(request.uri().to_owned(), now + ttl))
    }
}
