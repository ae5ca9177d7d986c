use std::sync::{Arc, RwLock};
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

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn keyed(key: &[u8]) -> HmacSha256 {
    use hmac::Mac;
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = keyed(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SigV4 signing key of one day, kept already keyed into an HMAC so a redirect costs one
/// HMAC over the string to sign, not five (nor the two key blocks of a fresh HMAC).
#[derive(Default)]
pub(crate) struct DayKey {
    cached: std::sync::Mutex<Option<(String, String, HmacSha256)>>,
}

impl DayKey {
    fn mac(&self, creds: &Credentials, date: &str, region: &str) -> HmacSha256 {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, id, mac)) = cached.as_ref()
            && d == date
            && id == creds.access_key_id()
        {
            return mac.clone();
        }
        let k_date = hmac(
            format!("AWS4{}", creds.secret_access_key()).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac(&k_date, region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let mac = keyed(&hmac(&k_service, b"aws4_request"));
        *cached = Some((
            date.to_owned(),
            creds.access_key_id().to_owned(),
            mac.clone(),
        ));
        mac
    }
}

/// Lower-case hex of a SHA-256 output, on the stack.
fn lower_hex(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// `YYYYMMDDTHHMMSSZ` in UTC, on the stack.
fn amz_date(t: SystemTime) -> [u8; 16] {
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
    let mut out = *b"00000000T000000Z";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(4, 2, month as u64);
    put(6, 2, day as u64);
    put(9, 2, rem / 3600);
    put(11, 2, (rem % 3600) / 60);
    put(13, 2, rem % 60);
    out
}

/// Bytes SigV4 leaves as they are (`A-Z a-z 0-9 - . _ ~`), as a table: this runs over every
/// byte of every signed URL.
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
};

/// Append `s` percent-encoded the SigV4 way (upper-case hex); `keep_slash` leaves `/` as is
/// (in a path).
fn push_encoded(out: &mut Vec<u8>, s: &str, keep_slash: bool) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = s.as_bytes();
    // Plain runs are copied whole; most of a key or a content type is one run.
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if UNRESERVED[usize::from(b)] || (keep_slash && b == b'/') {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        out.extend_from_slice(&[
            b'%',
            DIGITS[usize::from(b >> 4)],
            DIGITS[usize::from(b & 0x0f)],
        ]);
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// A SigV4 query-signed GET (the presigned-URL form of AWS Signature Version 4): canonical
/// request over the path, the sorted query and the `host` header with an unsigned payload.
/// The URL is built once; the canonical request and the string to sign are hashed in pieces
/// straight from it, never assembled.
fn sign_get(
    base: &UrlBase,
    day_key: &DayKey,
    creds: &Credentials,
    key: &str,
    ttl: Duration,
    now: SystemTime,
    overrides: &ResponseOverrides<'_>,
) -> Result<String> {
    use hmac::Mac;
    use sha2::Digest;
    use std::io::Write;
    let date_time = amz_date(now);
    let date = &date_time[..8];
    let mut url = Vec::with_capacity(base.prefix.len() + 2 * key.len() + 384);
    url.extend_from_slice(base.prefix.as_bytes());
    let path_start = url.len();
    push_encoded(&mut url, key, true);
    let path_end = url.len();
    url.push(b'?');
    // Query parameters in byte order of their names, as the canonical form requires.
    let query_start = url.len();
    url.extend_from_slice(b"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=");
    push_encoded(&mut url, creds.access_key_id(), false);
    url.extend_from_slice(b"%2F");
    url.extend_from_slice(date);
    url.extend_from_slice(b"%2F");
    push_encoded(&mut url, &base.region, false);
    url.extend_from_slice(b"%2Fs3%2Faws4_request&X-Amz-Date=");
    url.extend_from_slice(&date_time);
    url.extend_from_slice(b"&X-Amz-Expires=");
    let _ = write!(url, "{}", ttl.as_secs());
    if let Some(token) = creds.session_token() {
        url.extend_from_slice(b"&X-Amz-Security-Token=");
        push_encoded(&mut url, token, false);
    }
    url.extend_from_slice(b"&X-Amz-SignedHeaders=host");
    if let Some(cd) = overrides.content_disposition {
        url.extend_from_slice(b"&response-content-disposition=");
        push_encoded(&mut url, cd, false);
    }
    if let Some(ct) = overrides.content_type {
        url.extend_from_slice(b"&response-content-type=");
        push_encoded(&mut url, ct, false);
    }
    let query_end = url.len();

    let mut canonical = sha2::Sha256::new();
    canonical.update(b"GET\n");
    canonical.update(base.path_prefix.as_bytes());
    canonical.update(&url[path_start..path_end]);
    canonical.update(b"\n");
    canonical.update(&url[query_start..query_end]);
    canonical.update(b"\nhost:");
    canonical.update(base.host.as_bytes());
    canonical.update(b"\n\nhost\nUNSIGNED-PAYLOAD");
    let canonical = lower_hex(&canonical.finalize().into());

    let mut mac = day_key.mac(creds, ascii(date), &base.region);
    for piece in [
        b"AWS4-HMAC-SHA256\n".as_slice(),
        &date_time,
        b"\n",
        date,
        b"/",
        base.region.as_bytes(),
        b"/s3/aws4_request\n",
        &canonical,
    ] {
        mac.update(piece);
    }
    let signature = lower_hex(&mac.finalize().into_bytes().into());
    url.extend_from_slice(b"&X-Amz-Signature=");
    url.extend_from_slice(&signature);
    // Only ASCII went in: the prefix came from a parsed URL and everything else is encoded.
    String::from_utf8(url).map_err(|_| {
        Error::new(
            ErrorKind::Unexpected,
            "presign_get",
            "the signed URL is not ASCII",
        )
    })
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
    /// Behind an `Arc`: cloning the SDK's `Credentials` copies its property map, which
    /// showed in redirect profiles.
    cached: RwLock<Option<Arc<Credentials>>>,
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

    fn cached_valid_for(&self, ttl: Duration) -> Option<Arc<Credentials>> {
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
    async fn base(&self, bucket: &str, creds: &Credentials) -> Result<&UrlBase> {
        if let Some(base) = self.base.get() {
            return Ok(base);
        }
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
    }

    /// Credentials that, where possible, outlive `ttl`.
    async fn credentials(&self, ttl: Duration) -> Result<Arc<Credentials>> {
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
        let fresh = Arc::new(fresh);
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
        overrides: &ResponseOverrides<'_>,
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
            base,
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
        assert_eq!(&amz_date(SystemTime::UNIX_EPOCH), b"19700101T000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29T23:59:59Z
        assert_eq!(&amz_date(t), b"20240229T235959Z");
    }

    /// Percent-encoding as an independent encoder does it (upper-case hex, unreserved kept).
    fn enc(s: &str) -> String {
        const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'.')
            .remove(b'_')
            .remove(b'~');
        percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
    }

    #[test]
    fn encodes_like_percent_encoding() {
        for s in [
            "plain-1.0.0.tgz",
            "@s/p+q",
            "a b/c%d",
            "ünï/cödé",
            "",
            "~._-",
        ] {
            let mut ours = Vec::new();
            push_encoded(&mut ours, s, false);
            assert_eq!(ascii(&ours), enc(s), "{s}");
            let mut path = Vec::new();
            push_encoded(&mut path, s, true);
            let segments: Vec<String> = s.split('/').map(enc).collect();
            assert_eq!(ascii(&path), segments.join("/"), "{s}");
        }
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
            Some("application/octet-stream"),
            Some("attachment; filename=\"@s/p-1.0.0.tgz\""),
        );
        let key = "npm/@scope/p+q/-/p-1.0.0.tgz";
        let ours = sign_get(&base, &DayKey::default(), &creds, key, ttl, now, &overrides).unwrap();

        let unsigned = ours.split("&X-Amz-Signature=").next().unwrap();
        let (path_and_base, _) = unsigned.split_once('?').unwrap();
        let url = format!(
            "{path_and_base}?response-content-disposition={}&response-content-type={}",
            enc(overrides.content_disposition.unwrap()),
            enc(overrides.content_type.unwrap())
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
