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

const PROBE_KEY: &str = "proxyd-presign-probe";

/// Characters left as they are in a SigV4 URI path segment and query value.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The fixed part of every object URL: `scheme://host[:port]/[bucket/]`, the host to sign, and
/// the signing region.
#[derive(Debug, Clone)]
pub(crate) struct UrlBase {
    prefix: String,
    host: String,
    region: String,
}

impl UrlBase {
    fn from_probe(uri: &str) -> Result<Self> {
        let bad = || {
            Error::new(
                ErrorKind::Unexpected,
                "presign_get",
                "unexpected presigned URL layout",
            )
        };
        let prefix = uri
            .split_once(PROBE_KEY)
            .map(|(p, _)| p.to_owned())
            .ok_or_else(bad)?;
        let after_scheme = prefix.find("://").ok_or_else(bad)? + 3;
        let host = prefix[after_scheme..]
            .split('/')
            .next()
            .ok_or_else(bad)?
            .to_owned();
        // X-Amz-Credential=AKID/DATE/REGION/s3/aws4_request
        let credential = uri.split("X-Amz-Credential=").nth(1).ok_or_else(bad)?;
        let credential = credential
            .split('&')
            .next()
            .unwrap_or_default()
            .replace("%2F", "/");
        let region = credential.split('/').nth(2).ok_or_else(bad)?.to_owned();
        Ok(Self {
            prefix,
            host,
            region,
        })
    }
}

/// SigV4 query signing of one GET with the SDK's signer (`aws-sigv4`), without the SDK's
/// request pipeline around it: a redirect then costs one HMAC chain, not an operation.
fn sign_get(
    base: &UrlBase,
    creds: &Credentials,
    key: &str,
    ttl: Duration,
    now: SystemTime,
    overrides: &ResponseOverrides,
) -> Result<String> {
    use aws_sigv4::http_request::{
        PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
        UriPathNormalizationMode, sign,
    };
    let failed = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Unexpected,
            "presign_get",
            format!("signing failed: {e}"),
        )
    };
    let mut url = base.prefix.clone();
    let path: Vec<String> = key
        .split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string())
        .collect();
    url.push_str(&path.join("/"));
    let mut query = Vec::new();
    if let Some(cd) = &overrides.content_disposition {
        query.push(format!(
            "response-content-disposition={}",
            percent_encoding::utf8_percent_encode(cd, UNRESERVED)
        ));
    }
    if let Some(ct) = &overrides.content_type {
        query.push(format!(
            "response-content-type={}",
            percent_encoding::utf8_percent_encode(ct, UNRESERVED)
        ));
    }
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(ttl);
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let identity: aws_smithy_runtime_api::client::identity::Identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&base.region)
        .name("s3")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let signable = SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::once(("host", base.host.as_str())),
        SignableBody::UnsignedPayload,
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| failed(&e))?
        .into_parts();
    let mut request = http::Request::builder()
        .uri(url.as_str())
        .body(())
        .map_err(|e| failed(&e))?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(request.uri().to_string())
}

/// Cached credentials are refreshed when they would expire within a URL's TTL plus this margin.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Signing state: the client whose endpoint is the host URLs are signed for, and the
/// credentials last used, cached so a hit does not ask the credential chain every time.
pub(crate) struct PresignState {
    client: Client,
    base: tokio::sync::OnceCell<UrlBase>,
    provider: Option<SharedCredentialsProvider>,
    cached: RwLock<Option<Credentials>>,
    refresh: tokio::sync::Mutex<()>,
}

impl PresignState {
    pub(crate) fn new(client: Client, provider: Option<SharedCredentialsProvider>) -> Self {
        Self {
            client,
            base: tokio::sync::OnceCell::new(),
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

    /// Where object URLs start, learnt once from the SDK's own presigning of a probe key, so
    /// every endpoint flavour the SDK knows (path-style, virtual-hosted, custom, public base)
    /// is laid out the way it lays it out.
    async fn base(&self, bucket: &str, creds: &Credentials) -> Result<UrlBase> {
        self.base
            .get_or_try_init(|| async {
                let config = PresigningConfig::builder()
                    .expires_in(Duration::from_secs(60))
                    .build()
                    .map_err(|e| Error::invalid("presign_get", "bad presign TTL").with_source(e))?;
                let probe = self
                    .client
                    .get_object()
                    .bucket(bucket)
                    .key(PROBE_KEY)
                    .customize()
                    .config_override(
                        aws_sdk_s3::config::Builder::new().credentials_provider(creds.clone()),
                    )
                    .presigned(config)
                    .await
                    .map_err(|e| map_sdk_error("presign_get", None, e))?;
                UrlBase::from_probe(probe.uri())
            })
            .await
            .cloned()
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
        let base = state.base(&self.inner.bucket, &creds).await?;
        let url = sign_get(&base, &creds, key.as_str(), ttl, now, overrides)?;
        Ok(PresignedUrl::new(url, now + ttl))
    }
}
