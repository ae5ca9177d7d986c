use std::fmt;

use proxyd_storage_core::{Error, Result};
use url::Url;

/// Default multipart part size (and the size above which a put goes multipart).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's minimum part size for every part but the last.
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// Fixed credentials, for embedding and tests; without them the standard AWS chain is used
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, profiles, web identity,
/// instance metadata).
#[derive(Clone)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// When temporary credentials stop working.
    pub expires_at: Option<std::time::SystemTime>,
}

// Secrets never reach logs.
impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Settings of the S3 backend; [`S3Config::from_url`] reads the `s3://` storage URL form.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Region; default: the AWS chain's, else `us-east-1`.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible service (`http://127.0.0.1:9000`); default: AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted
    /// (`bucket.endpoint/key`).
    pub force_path_style: bool,
    /// Public `scheme://host[:port]` clients use to reach storage; presigned URLs are signed
    /// **for this host**, so a request that arrives through it with its own `Host` validates.
    pub public_base_url: Option<String>,
    /// Fixed credentials instead of the AWS chain.
    pub credentials: Option<StaticCredentials>,
    /// Multipart part size; bodies larger than one part are uploaded in parts.
    pub part_size: usize,
    /// PEM certificates trusted in addition to the system's store (`upstream.ca_file`).
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl S3Config {
    /// Settings for `bucket` with defaults.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            region: None,
            endpoint: None,
            force_path_style: false,
            public_base_url: None,
            credentials: None,
            part_size: DEFAULT_PART_SIZE,
            extra_ca_pem: None,
        }
    }

    /// Parse `s3://BUCKET?region=R&endpoint=URL&s3ForcePathStyle=true&disableSSL=true`
    /// (the gocloud.dev form). An unknown parameter is an error naming it.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |msg: String| Error::invalid("open", msg);
        let parsed = Url::parse(url).map_err(|e| bad(format!("storage URL {url:?}: {e}")))?;
        if parsed.scheme() != "s3" {
            return Err(bad(format!("storage URL {url:?} is not an s3:// URL")));
        }
        let bucket = parsed.host_str().unwrap_or_default();
        if bucket.is_empty() {
            return Err(bad(format!("storage URL {url:?} names no bucket")));
        }
        if !matches!(parsed.path(), "" | "/") {
            return Err(bad(format!(
                "storage URL {url:?}: a key prefix path is not supported"
            )));
        }
        let mut config = Self::new(bucket);
        let mut disable_ssl = false;
        for (name, value) in parsed.query_pairs() {
            let flag = || -> Result<bool> {
                match value.as_ref() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    v => Err(bad(format!(
                        "storage URL parameter {name}={v:?} is not true or false"
                    ))),
                }
            };
            match name.as_ref() {
                "region" => config.region = Some(value.to_string()),
                "endpoint" => config.endpoint = Some(value.to_string()),
                "s3ForcePathStyle" | "use_path_style" => config.force_path_style = flag()?,
                "disableSSL" | "disable_https" => disable_ssl = flag()?,
                // gocloud selects its SDK generation with this; there is one here.
                "awssdk" => {}
                other => {
                    return Err(bad(format!(
                        "storage URL parameter {other:?} is unknown (known: region, endpoint, \
                         s3ForcePathStyle, disableSSL)"
                    )));
                }
            }
        }
        if let Some(endpoint) = &config.endpoint
            && !endpoint.contains("://")
        {
            let scheme = if disable_ssl { "http" } else { "https" };
            config.endpoint = Some(format!("{scheme}://{endpoint}"));
        }
        Ok(config)
    }

    /// Set the public base URL (validated: `scheme://host[:port]`, no path, query or user).
    pub fn with_public_base_url(mut self, base: &str) -> Result<Self> {
        self.public_base_url = Some(proxyd_storage_core::validate_public_base_url(base)?);
        Ok(self)
    }

    /// Also trust the PEM certificates in `pem` (the system's store is always trusted).
    pub fn with_extra_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.extra_ca_pem = Some(pem);
        self
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.part_size < MIN_PART_SIZE {
            return Err(Error::invalid(
                "open",
                "S3 part size must be at least 5 MiB",
            ));
        }
        if let Some(base) = &self.public_base_url {
            proxyd_storage_core::validate_public_base_url(base)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gocloud_form() {
        let c = S3Config::from_url(
            "s3://cache?region=eu-west-1&endpoint=127.0.0.1:9000&s3ForcePathStyle=true&disableSSL=true",
        )
        .unwrap();
        assert_eq!(c.bucket, "cache");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.force_path_style);
        let c = S3Config::from_url("s3://b?endpoint=https://s3.example.test").unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://s3.example.test"));
        assert!(!c.force_path_style);
    }

    #[test]
    fn refuses_unknown_and_malformed() {
        let err = S3Config::from_url("s3://b?regoin=x").unwrap_err();
        assert!(err.to_string().contains("regoin"), "{err}");
        assert!(S3Config::from_url("s3://?region=x").is_err());
        assert!(S3Config::from_url("s3://b/prefix").is_err());
        assert!(S3Config::from_url("s3://b?s3ForcePathStyle=yes").is_err());
        assert!(S3Config::from_url("file:///x").is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let creds = StaticCredentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("tok".into()),
            expires_at: None,
        };
        let text = format!("{creds:?}");
        assert!(
            !text.contains("very-secret") && !text.contains("tok\""),
            "{text}"
        );
    }
}
