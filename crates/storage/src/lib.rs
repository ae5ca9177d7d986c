#![doc = include_str!("../README.md")]

use std::sync::Arc;

pub use proxyd_storage_core::*;

/// Options that are not part of the storage URL.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StorageOptions {
    /// Public `scheme://host[:port]` of the storage endpoint, used in presigned URLs.
    pub public_base_url: Option<String>,
    /// PEM certificates trusted in addition to the system's store (`upstream.ca_file`).
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl StorageOptions {
    /// Options with a public base URL.
    pub fn with_public_base_url(public_base_url: Option<String>) -> Self {
        Self {
            public_base_url,
            extra_ca_pem: None,
        }
    }

    /// The same options, also trusting the PEM certificates in `pem`.
    pub fn with_extra_ca_pem(mut self, pem: Option<Vec<u8>>) -> Self {
        self.extra_ca_pem = pem;
        self
    }
}

/// The backend family of a storage URL, for logs and metrics labels.
pub fn backend_name(url: &str) -> &'static str {
    match url.split_once("://").map(|(s, _)| s) {
        Some("file") => "fs",
        Some("s3") => "s3",
        Some("azblob") => "azure",
        _ => "unknown",
    }
}

/// Open (and check) the backend `url` names.
pub async fn open(
    url: &str,
    options: &StorageOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Storage>> {
    let _ = (options, env);
    match backend_name(url) {
        #[cfg(feature = "fs")]
        "fs" => {
            let path = proxyd_storage_fs::FsStorage::path_from_url(url)?;
            Ok(Arc::new(proxyd_storage_fs::FsStorage::open(path).await?))
        }
        #[cfg(feature = "s3")]
        "s3" => {
            let mut config = proxyd_storage_s3::S3Config::from_url(url)?;
            if let Some(base) = &options.public_base_url {
                config = config.with_public_base_url(base)?;
            }
            if let Some(pem) = &options.extra_ca_pem {
                config = config.with_extra_ca_pem(pem.clone());
            }
            Ok(Arc::new(
                proxyd_storage_s3::S3Storage::connect(config).await?,
            ))
        }
        #[cfg(feature = "azure")]
        "azure" => {
            let mut config = proxyd_storage_azure::AzureConfig::from_url(url, env)?;
            if let Some(base) = &options.public_base_url {
                config = config.with_public_base_url(base)?;
            }
            if let Some(pem) = &options.extra_ca_pem {
                config = config.with_extra_ca_pem(pem.clone());
            }
            Ok(Arc::new(
                proxyd_storage_azure::AzureStorage::connect(config).await?,
            ))
        }
        "unknown" => Err(Error::invalid(
            "open",
            format!("storage URL {url:?} must start with file://, s3:// or azblob://"),
        )),
        name => Err(Error::unsupported(
            "open",
            format!("this build of proxyd has no {name} storage backend (cargo feature {name})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_a_directory_and_refuses_unknown_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/artifacts", dir.path().display());
        let store = open(&url, &StorageOptions::default(), &|_| None)
            .await
            .unwrap();
        assert!(!store.presign_support().is_supported());
        let err = open("gs://bucket", &StorageOptions::default(), &|_| None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("file://, s3:// or azblob://"));
    }
}
