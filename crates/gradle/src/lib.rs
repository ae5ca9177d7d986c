#![doc = include_str!("../README.md")]

use std::sync::Arc;

use proxyd_ecosystem::http::Method;
use proxyd_ecosystem::serde::Deserialize;
use proxyd_ecosystem::settings::{de_text, parse_size};
use proxyd_ecosystem::{
    Ecosystem, EcosystemContext, EcosystemKind, EcosystemRequest, FetchFailure, ObjectKey, Refusal,
    Reply, StoredReply, UploadReply, Url,
};

/// The default `max_upload_size`.
const DEFAULT_MAX_UPLOAD: u64 = 100_000_000;

/// Gradle sends entries with this type, and gets them back with it.
const CONTENT_TYPE: &str = "application/vnd.gradle.build-cache-artifact.v1";

/// Settings of a build cache instance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(crate = "proxyd_ecosystem::serde", deny_unknown_fields)]
pub struct GradleConfig {
    /// Refuse PUTs (405): serve what is there only.
    #[serde(default, deserialize_with = "de_text::boolean")]
    pub read_only: bool,
    /// The largest entry accepted (`100MB` by default; a number is bytes).
    #[serde(default, deserialize_with = "size_text")]
    pub max_upload_size: Option<String>,
}

/// A size written as text (`100MB`) or a number of bytes.
fn size_text<'de, D: proxyd_ecosystem::serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let value = proxyd_ecosystem::serde_json::Value::deserialize(d)?;
    proxyd_ecosystem::settings::scalar_text(&value)
        .map(Some)
        .ok_or_else(|| proxyd_ecosystem::serde::de::Error::custom("must be a size like 100MB"))
}

/// The build cache kind: register it with `registry.register::<GradleKind>()`.
#[derive(Debug)]
pub struct GradleKind;

impl EcosystemKind for GradleKind {
    const KIND: &'static str = "gradle";
    const NEEDS_UPSTREAM: bool = false;
    const NEVER_REDIRECT: bool = true;
    type Config = GradleConfig;
    type Handler = GradleCache;

    fn upstream(config: &GradleConfig) -> Result<Option<Url>, String> {
        // Checked here, at start-up, with the other settings.
        max_upload(config)?;
        Ok(None)
    }

    fn build(config: GradleConfig, context: EcosystemContext) -> Result<GradleCache, String> {
        Ok(GradleCache {
            read_only: config.read_only,
            max_upload_size: max_upload(&config)?,
            context,
        })
    }
}

fn max_upload(config: &GradleConfig) -> Result<u64, String> {
    match &config.max_upload_size {
        None => Ok(DEFAULT_MAX_UPLOAD),
        Some(text) => match parse_size(text) {
            Ok(0) => Err("max_upload_size: must be more than 0".into()),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("max_upload_size: {e}")),
        },
    }
}

/// A build cache instance.
#[derive(Debug)]
pub struct GradleCache {
    read_only: bool,
    max_upload_size: u64,
    context: EcosystemContext,
}

/// What a build cache request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum GradleOp {
    /// Read an entry.
    Get(ObjectKey),
    /// Store an entry.
    Put(ObjectKey),
}

fn valid_key(key: &str) -> bool {
    (16..=128).contains(&key.len()) && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Ecosystem for GradleCache {
    type Op = GradleOp;

    fn route(&self, method: &Method, path: &str) -> Result<GradleOp, Refusal> {
        let allow = if self.read_only {
            "GET, HEAD"
        } else {
            "GET, HEAD, PUT"
        };
        let writes = !self.read_only && method == Method::PUT;
        if !(writes || method == Method::GET || method == Method::HEAD) {
            return Err(Refusal::method_not_allowed(allow));
        }
        let key = path.strip_prefix('/').unwrap_or(path);
        if !valid_key(key) {
            let shown: String = key.chars().take(40).collect();
            return Err(Refusal::bad_request(format!(
                "{shown:?} is not a build cache key (16 to 128 lowercase hex characters)"
            )));
        }
        let key = ObjectKey::new(format!("{}/{key}", self.context.instance))
            .map_err(|e| Refusal::bad_request(e.message().to_owned()))?;
        Ok(if writes {
            GradleOp::Put(key)
        } else {
            GradleOp::Get(key)
        })
    }

    async fn handle(self: Arc<Self>, op: GradleOp, _request: EcosystemRequest<'_>) -> Reply {
        match op {
            GradleOp::Get(key) => Reply::Stored(StoredReply::immutable(
                key,
                Box::new(|key| {
                    Box::pin(async move {
                        Err(FetchFailure::not_found(format!(
                            "no build cache entry {}",
                            key.as_str()
                        )))
                    })
                }),
            )),
            GradleOp::Put(key) => Reply::Upload(UploadReply {
                name: key
                    .as_str()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                key,
                content_type: CONTENT_TYPE.into(),
                max_size: self.max_upload_size,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_sizes() {
        assert!(valid_key("0123456789abcdef0123456789abcdef"));
        assert!(!valid_key("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!valid_key("abc"));
        assert!(!valid_key("../0123456789abcdef"));
        assert!(!valid_key(&"a".repeat(129)));
        assert_eq!(max_upload(&GradleConfig::default()), Ok(100_000_000));
        let config = GradleConfig {
            read_only: false,
            max_upload_size: Some("1MB".into()),
        };
        assert_eq!(max_upload(&config), Ok(1_000_000));
        let bad = GradleConfig {
            read_only: false,
            max_upload_size: Some("lots".into()),
        };
        assert!(max_upload(&bad).is_err());
    }
}
