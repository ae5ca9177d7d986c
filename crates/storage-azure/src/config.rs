use std::fmt;

use proxyd_storage_core::{Error, Result, validate_public_base_url};
use url::Url;

/// Default block size (and the size above which a put is staged in blocks).
pub const DEFAULT_BLOCK_SIZE: usize = 4 * 1024 * 1024;
const DEFAULT_DOMAIN: &str = "blob.core.windows.net";

/// How the backend authenticates.
#[derive(Clone)]
pub enum AzureCredentials {
    /// The account key: reads, writes and SAS minting.
    AccountKey(String),
    /// A SAS token: reads and writes, but no new URLs can be minted from it.
    SasToken(String),
}

// Secrets never reach logs.
impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AccountKey(_) => f.write_str("AccountKey(<redacted>)"),
            Self::SasToken(_) => f.write_str("SasToken(<redacted>)"),
        }
    }
}

/// Settings of the Azure backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AzureConfig {
    /// Storage account name.
    pub account: String,
    /// Container name.
    pub container: String,
    /// Account endpoint, e.g. `https://ACCOUNT.blob.core.windows.net` or
    /// `http://127.0.0.1:10000/ACCOUNT` for the emulator.
    pub endpoint: String,
    /// Credentials.
    pub credentials: AzureCredentials,
    /// Public `scheme://host[:port]` swapped into presigned URLs.
    pub public_base_url: Option<String>,
    /// Block size for staged puts.
    pub block_size: usize,
    /// PEM certificates trusted in addition to the system's store (`upstream.ca_file`).
    pub extra_ca_pem: Option<Vec<u8>>,
}

impl AzureConfig {
    /// Settings for `container` at `endpoint` with defaults.
    pub fn new(
        account: impl Into<String>,
        container: impl Into<String>,
        endpoint: impl Into<String>,
        credentials: AzureCredentials,
    ) -> Self {
        Self {
            account: account.into(),
            container: container.into(),
            endpoint: endpoint.into().trim_end_matches('/').to_owned(),
            credentials,
            public_base_url: None,
            block_size: DEFAULT_BLOCK_SIZE,
            extra_ca_pem: None,
        }
    }

    /// Parse `azblob://CONTAINER?protocol=..&domain=..&localemu=..&storage_account=..`, taking
    /// credentials from `env` (`AZURE_STORAGE_ACCOUNT` + `AZURE_STORAGE_KEY`,
    /// `AZURE_STORAGE_CONNECTION_STRING`, or `AZURE_STORAGE_SAS_TOKEN`). `env` is a lookup so
    /// tests pass their own map instead of touching the process environment.
    pub fn from_url(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let bad = |msg: String| Error::invalid("open", msg);
        let parsed = Url::parse(url).map_err(|e| bad(format!("storage URL {url:?}: {e}")))?;
        if parsed.scheme() != "azblob" {
            return Err(bad(format!("storage URL {url:?} is not an azblob:// URL")));
        }
        let container = parsed.host_str().unwrap_or_default().to_owned();
        if !(3..=63).contains(&container.len())
            || !container
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad(format!(
                "storage URL {url:?}: container name must be 3-63 lowercase letters, digits or '-'"
            )));
        }
        if !matches!(parsed.path(), "" | "/") {
            return Err(bad(format!(
                "storage URL {url:?}: a key prefix path is not supported"
            )));
        }
        let (mut protocol, mut domain, mut localemu, mut account) = (None, None, false, None);
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "protocol" => match value.as_ref() {
                    "http" | "https" => protocol = Some(value.to_string()),
                    v => {
                        return Err(bad(format!(
                            "storage URL parameter protocol={v:?} is not http or https"
                        )));
                    }
                },
                "domain" => domain = Some(value.to_string()),
                "localemu" => {
                    localemu = match value.as_ref() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        v => {
                            return Err(bad(format!(
                                "storage URL parameter localemu={v:?} is not true or false"
                            )));
                        }
                    }
                }
                "storage_account" => account = Some(value.to_string()),
                other => {
                    return Err(bad(format!(
                        "storage URL parameter {other:?} is unknown (known: protocol, domain, \
                         localemu, storage_account)"
                    )));
                }
            }
        }

        let conn = env("AZURE_STORAGE_CONNECTION_STRING").map(|s| ConnectionString::parse(&s));
        let account = account
            .or_else(|| env("AZURE_STORAGE_ACCOUNT"))
            .or_else(|| conn.as_ref().and_then(|c| c.account.clone()))
            .ok_or_else(|| {
                bad("no Azure storage account: set storage_account in the URL, AZURE_STORAGE_ACCOUNT, \
                     or AZURE_STORAGE_CONNECTION_STRING"
                    .into())
            })?;
        let credentials = if let Some(key) = env("AZURE_STORAGE_KEY") {
            AzureCredentials::AccountKey(key)
        } else if let Some(key) = conn.as_ref().and_then(|c| c.key.clone()) {
            AzureCredentials::AccountKey(key)
        } else if let Some(sas) = conn.as_ref().and_then(|c| c.sas.clone()) {
            AzureCredentials::SasToken(sas)
        } else if let Some(sas) = env("AZURE_STORAGE_SAS_TOKEN") {
            AzureCredentials::SasToken(sas)
        } else {
            return Err(bad("no Azure credentials: set AZURE_STORAGE_KEY, \
                            AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_SAS_TOKEN"
                .into()));
        };

        let endpoint = match (&domain, conn.as_ref().and_then(|c| c.blob_endpoint.clone())) {
            (None, Some(endpoint)) => endpoint,
            _ => {
                let protocol = protocol.unwrap_or_else(|| "https".into());
                let domain = domain.unwrap_or_else(|| DEFAULT_DOMAIN.into());
                if localemu {
                    format!("{protocol}://{domain}/{account}")
                } else {
                    format!("{protocol}://{account}.{domain}")
                }
            }
        };
        Ok(Self::new(account, container, endpoint, credentials))
    }

    /// Set the public base URL (validated: `scheme://host[:port]`).
    pub fn with_public_base_url(mut self, base: &str) -> Result<Self> {
        self.public_base_url = Some(validate_public_base_url(base)?);
        Ok(self)
    }

    /// Also trust the PEM certificates in `pem` (the system's store is always trusted).
    pub fn with_extra_ca_pem(mut self, pem: Vec<u8>) -> Self {
        self.extra_ca_pem = Some(pem);
        self
    }
}

/// The parts of an Azure connection string this backend uses.
#[derive(Default)]
struct ConnectionString {
    account: Option<String>,
    key: Option<String>,
    sas: Option<String>,
    blob_endpoint: Option<String>,
}

impl ConnectionString {
    fn parse(text: &str) -> Self {
        let mut out = Self::default();
        let (mut protocol, mut suffix) = ("https".to_owned(), None);
        for part in text.split(';') {
            let Some((name, value)) = part.split_once('=') else {
                continue;
            };
            let value = value.trim().to_owned();
            match name.trim() {
                "AccountName" => out.account = Some(value),
                "AccountKey" => out.key = Some(value),
                "SharedAccessSignature" => out.sas = Some(value),
                "BlobEndpoint" => out.blob_endpoint = Some(value.trim_end_matches('/').to_owned()),
                "DefaultEndpointsProtocol" => protocol = value,
                "EndpointSuffix" => suffix = Some(value),
                _ => {}
            }
        }
        if out.blob_endpoint.is_none()
            && let (Some(account), Some(suffix)) = (&out.account, suffix)
        {
            out.blob_endpoint = Some(format!("{protocol}://{account}.blob.{suffix}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn emulator_layout_with_key() {
        let env = env_of(&[
            ("AZURE_STORAGE_ACCOUNT", "devstoreaccount1"),
            ("AZURE_STORAGE_KEY", "a2V5"),
        ]);
        let c = AzureConfig::from_url(
            "azblob://artifacts?protocol=http&domain=127.0.0.1:10000&localemu=true",
            &env,
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(c.container, "artifacts");
        assert!(matches!(c.credentials, AzureCredentials::AccountKey(_)));
    }

    #[test]
    fn public_cloud_layout_and_sas() {
        let env = env_of(&[("AZURE_STORAGE_SAS_TOKEN", "sv=x&sig=y")]);
        let c = AzureConfig::from_url("azblob://artifacts?storage_account=acct", &env).unwrap();
        assert_eq!(c.endpoint, "https://acct.blob.core.windows.net");
        assert!(matches!(c.credentials, AzureCredentials::SasToken(_)));
        assert!(!format!("{c:?}").contains("sig=y"));
    }

    #[test]
    fn connection_string() {
        let env = env_of(&[(
            "AZURE_STORAGE_CONNECTION_STRING",
            "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5==;BlobEndpoint=http://127.0.0.1:1/acct;",
        )]);
        let c = AzureConfig::from_url("azblob://artifacts", &env).unwrap();
        assert_eq!(c.account, "acct");
        assert_eq!(c.endpoint, "http://127.0.0.1:1/acct");
        let AzureCredentials::AccountKey(key) = &c.credentials else {
            panic!()
        };
        assert_eq!(key, "a2V5==");
    }

    #[test]
    fn refuses_bad_input() {
        let env = env_of(&[("AZURE_STORAGE_ACCOUNT", "a"), ("AZURE_STORAGE_KEY", "k")]);
        assert!(
            AzureConfig::from_url("azblob://ab", &env).is_err(),
            "short container"
        );
        assert!(
            AzureConfig::from_url("azblob://abc?protocl=http", &env)
                .unwrap_err()
                .to_string()
                .contains("protocl")
        );
        assert!(AzureConfig::from_url("azblob://abc?protocol=ftp", &env).is_err());
        assert!(
            AzureConfig::from_url("azblob://abc", &env_of(&[])).is_err(),
            "no account"
        );
        assert!(
            AzureConfig::from_url("azblob://abc", &env_of(&[("AZURE_STORAGE_ACCOUNT", "a")]))
                .is_err(),
            "no credentials"
        );
    }
}
