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
    /// `scheme://host[:port]/[bucket/]`.
    prefix: String,
    /// `host[:port]`, the signed Host.
    host: String,
    /// The path part of `prefix` (`/bucket/` or `/`).
    path_prefix: String,
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
        let path_prefix = prefix[after_scheme + host.len()..].to_owned();
        Ok(Self {
            prefix,
            host,
            path_prefix,
            region,
        })
    }
}

/// The SigV4 signing key of one day, kept so a redirect costs one HMAC, not five.
#[derive(Default)]
pub(crate) struct DayKey {
    cached: std::sync::Mutex<Option<(String, String, [u8; 32])>>,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl DayKey {
    fn get(&self, creds: &Credentials, date: &str, region: &str) -> [u8; 32] {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, id, key)) = cached.as_ref()
            && d == date
            && id == creds.access_key_id()
        {
            return *key;
        }
        let k_date = hmac(
            format!("AWS4{}", creds.secret_access_key()).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac(&k_date, region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let key = hmac(&k_service, b"aws4_request");
        *cached = Some((date.to_owned(), creds.access_key_id().to_owned(), key));
        key
    }
}

/// Lower-case hex by table: the generic iterator-based encoder showed up in redirect profiles.
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn enc(s: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(s, UNRESERVED)
}

/// A SigV4 query-signed GET (the presigned-URL form of AWS Signature Version 4): canonical
/// request over the path, the sorted query and the `host` header with an unsigned payload.
fn sign_get(
    base: &UrlBase,
    day_key: &DayKey,
    creds: &Credentials,
    key: &str,
    ttl: Duration,
    now: SystemTime,
    overrides: &ResponseOverrides,
) -> Result<String> {
    use sha2::Digest;
    use std::fmt::Write;
    let date_time = amz_date(now);
    let date = &date_time[..8];
    let scope = format!("{date}/{}/s3/aws4_request", base.region);
    let mut path = String::with_capacity(key.len() + 16);
    for (i, segment) in key.split('/').enumerate() {
        if i > 0 {
            path.push('/');
        }
        let _ = write!(path, "{}", enc(segment));
    }
    // Query parameters in byte order of their names, as the canonical form requires.
    let mut query = String::with_capacity(512);
    let _ = write!(
        query,
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}%2F{}&X-Amz-Date={date_time}&X-Amz-Expires={}",
        enc(creds.access_key_id()),
        enc(&scope),
        ttl.as_secs()
    );
    if let Some(token) = creds.session_token() {
        let _ = write!(query, "&X-Amz-Security-Token={}", enc(token));
    }
    query.push_str("&X-Amz-SignedHeaders=host");
    if let Some(cd) = &overrides.content_disposition {
        let _ = write!(query, "&response-content-disposition={}", enc(cd));
    }
    if let Some(ct) = &overrides.content_type {
        let _ = write!(query, "&response-content-type={}", enc(ct));
    }
    let canonical = format!(
        "GET\n{}{path}\n{query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
        base.path_prefix, base.host
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        lower_hex(&sha2::Sha256::digest(canonical.as_bytes()))
    );
    let signature = lower_hex(&hmac(
        &day_key.get(creds, date, &base.region),
        string_to_sign.as_bytes(),
    ));
    Ok(format!(
        "{}{path}?{query}&X-Amz-Signature={signature}",
        base.prefix
    ))
}

/// Cached credentials are refreshed when they would expire within a URL's TTL plus this margin.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Signing state: the client whose endpoint is the host URLs are signed for, and the
/// credentials last used, cached so a hit does not ask the credential chain every time.
pub(crate) struct PresignState {
    client: Client,
    day_key: DayKey,
    base: tokio::sync::OnceCell<UrlBase>,
    provider: Option<SharedCredentialsProvider>,
    cached: RwLock<Option<Credentials>>,
    refresh: tokio::sync::Mutex<()>,
}

impl PresignState {
    pub(crate) fn new(client: Client, provider: Option<SharedCredentialsProvider>) -> Self {
        Self {
            client,
            day_key: DayKey::default(),
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
        let url = sign_get(
            &base,
            &state.day_key,
            &creds,
            key.as_str(),
            ttl,
            now,
            overrides,
        )?;
        Ok(PresignedUrl::new(url, now + ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(amz_date(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29T23:59:59Z
        assert_eq!(amz_date(t), "20240229T235959Z");
    }

    /// The lean signer must produce exactly what the SDK's own `aws-sigv4` signer produces.
    #[test]
    fn matches_the_sdk_signer() {
        use aws_sigv4::http_request::{
            PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
            UriPathNormalizationMode, sign,
        };
        let creds = Credentials::new(
            "AKIDEXAMPLE",
            "secret/key+x",
            Some("tok/en=".into()),
            None,
            "test",
        );
        let base = UrlBase {
            prefix: "http://127.0.0.1:9000/bucket/".into(),
            host: "127.0.0.1:9000".into(),
            path_prefix: "/bucket/".into(),
            region: "eu-west-1".into(),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_732_460_000);
        let ttl = Duration::from_secs(900);
        let overrides = ResponseOverrides::new(
            Some("application/octet-stream".into()),
            Some("attachment; filename=\"@s/p-1.0.0.tgz\"".into()),
        );
        let key = "npm/@scope/p+q/-/p-1.0.0.tgz";
        let ours = sign_get(&base, &DayKey::default(), &creds, key, ttl, now, &overrides).unwrap();

        let unsigned = ours.split("&X-Amz-Signature=").next().unwrap();
        let (path_and_base, _) = unsigned.split_once('?').unwrap();
        let url = format!(
            "{path_and_base}?response-content-disposition={}&response-content-type={}",
            enc(overrides.content_disposition.as_deref().unwrap()),
            enc(overrides.content_type.as_deref().unwrap())
        );
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(ttl);
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity: aws_smithy_runtime_api::client::identity::Identity = creds.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("eu-west-1")
            .name("s3")
            .time(now)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            "GET",
            url.as_str(),
            std::iter::once(("host", "127.0.0.1:9000")),
            SignableBody::UnsignedPayload,
        )
        .unwrap();
        let (_, sdk_signature) = sign(signable, &params).unwrap().into_parts();
        let our_signature = ours.rsplit("X-Amz-Signature=").next().unwrap();
        assert_eq!(our_signature, sdk_signature, "{ours}");
    }
}
