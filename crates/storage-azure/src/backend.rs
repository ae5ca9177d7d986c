use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::StatusCode;
use azure_core::error::ErrorKind as AzureKind;
use azure_core::request_options::IfMatchCondition;
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::blob::{BlobBlockType, BlockList};
use azure_storage_blobs::prelude::{BlobClient, BlockId, ClientBuilder, ContainerClient};
use futures::{StreamExt, TryStreamExt};
use proxyd_storage_core::{
    ByteStream, Error, ErrorKind, GetResult, MAX_PRESIGN_TTL_ANY, ObjectKey, ObjectMeta,
    ObjectStream, PartReader, PresignSupport, PresignedUrl, PutMode, PutOptions, PutResult,
    ResponseOverrides, Result, Signer, Storage, validate_ttl,
};
use time::OffsetDateTime;

use crate::config::{AzureConfig, AzureCredentials};
use crate::sas::{BlobSas, blob_path};

/// Range length asked for on a whole-object read, so the SDK fetches it in one response.
const WHOLE_OBJECT: u64 = 1 << 50;
/// SAS start time is backdated this much: Azure refuses a SAS whose start is even a second
/// ahead of its own clock.
const CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// A storage backend on an Azure Blob container.
#[derive(Clone)]
pub struct AzureStorage {
    inner: Arc<Inner>,
}

struct Inner {
    container: ContainerClient,
    config: AzureConfig,
    /// For the one call the SDK cannot make: listing uncommitted blobs (its parser requires a
    /// Content-Type they do not have).
    http: reqwest::Client,
}

impl std::fmt::Debug for AzureStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.inner.config;
        f.debug_struct("AzureStorage")
            .field("endpoint", &c.endpoint)
            .field("container", &c.container)
            .field("credentials", &c.credentials)
            .field("public_base_url", &c.public_base_url)
            .finish()
    }
}

fn map_error(op: &'static str, key: Option<&str>, err: azure_core::Error) -> Error {
    let (kind, message) = match err.kind() {
        AzureKind::HttpResponse { status, error_code } => {
            let code = error_code.clone().unwrap_or_default();
            let kind = match *status {
                StatusCode::NotFound => ErrorKind::NotFound,
                StatusCode::Forbidden | StatusCode::Unauthorized => ErrorKind::PermissionDenied,
                StatusCode::RequestedRangeNotSatisfiable => ErrorKind::InvalidInput,
                StatusCode::PreconditionFailed => ErrorKind::AlreadyExists,
                StatusCode::Conflict if code == "BlobAlreadyExists" => ErrorKind::AlreadyExists,
                StatusCode::TooManyRequests | StatusCode::RequestTimeout => ErrorKind::Temporary,
                s if u16::from(s) >= 500 => ErrorKind::Temporary,
                StatusCode::BadRequest => ErrorKind::InvalidInput,
                _ => ErrorKind::Unexpected,
            };
            (
                kind,
                format!("Azure answered {} {code}", u16::from(*status))
                    .trim_end()
                    .to_owned(),
            )
        }
        AzureKind::Io => (
            ErrorKind::Temporary,
            "Azure could not be reached".to_owned(),
        ),
        AzureKind::Credential => (
            ErrorKind::PermissionDenied,
            "Azure credentials were refused".to_owned(),
        ),
        _ => (ErrorKind::Unexpected, "Azure request failed".to_owned()),
    };
    let mut out = Error::new(kind, op, message).with_source(err);
    if let Some(key) = key {
        out = out.with_key(key);
    }
    out
}

fn body_error(key: &ObjectKey, err: &std::io::Error) -> Error {
    Error::new(ErrorKind::Temporary, "put", format!("body failed: {err}")).with_key(key.as_str())
}

fn system_time(t: OffsetDateTime) -> SystemTime {
    SystemTime::from(t)
}

fn non_empty(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_owned())
    }
}

impl AzureStorage {
    /// Build the client and check that the container exists and the credentials are accepted;
    /// the error says which when not.
    pub async fn connect(config: AzureConfig) -> Result<Self> {
        if config.block_size == 0 {
            return Err(Error::invalid("open", "Azure block size must be positive"));
        }
        let credentials = match &config.credentials {
            AzureCredentials::AccountKey(key) => {
                StorageCredentials::access_key(config.account.clone(), key.clone())
            }
            AzureCredentials::SasToken(token) => StorageCredentials::sas_token(token.clone())
                .map_err(|e| {
                    Error::invalid("open", "AZURE_STORAGE_SAS_TOKEN is not a SAS token")
                        .with_source(e)
                })?,
        };
        let location = CloudLocation::Custom {
            account: config.account.clone(),
            uri: config.endpoint.clone(),
        };
        let http = http_client(config.extra_ca_pem.as_deref())?;
        // The SDK's default retries for up to a minute; a read that waits that long while
        // storage is down holds a client that the upstream could serve (measured: 82 s for one
        // hit against a stopped Azurite). Three retries within ten seconds.
        let retry = azure_core::ExponentialRetryOptions::default()
            .max_retries(3u32)
            .max_total_elapsed(std::time::Duration::from_secs(10))
            .max_delay(std::time::Duration::from_secs(2));
        let container = ClientBuilder::with_location(location, credentials)
            .transport(azure_core::TransportOptions::new(Arc::new(http.clone())))
            .retry(azure_core::RetryOptions::exponential(retry))
            .container_client(config.container.clone());
        let storage = Self {
            inner: Arc::new(Inner {
                container,
                config,
                http,
            }),
        };
        storage.check_container().await?;
        Ok(storage)
    }

    async fn check_container(&self) -> Result<()> {
        let name = &self.inner.config.container;
        // A one-blob listing works with a key and with a container SAS alike (a SAS may not
        // read container properties).
        let one = std::num::NonZeroU32::MIN;
        let listing = self
            .inner
            .container
            .list_blobs()
            .max_results(one)
            .into_stream()
            .next()
            .await;
        match listing {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(err)) => {
                let err = map_error("open", None, err);
                let message = match err.kind() {
                    ErrorKind::NotFound => format!("Azure container {name:?} does not exist"),
                    ErrorKind::PermissionDenied => {
                        format!("Azure refused the credentials for container {name:?}")
                    }
                    _ => format!("Azure container {name:?} could not be checked"),
                };
                Err(Error::new(err.kind(), "open", message).with_source(err))
            }
        }
    }

    fn blob(&self, key: &ObjectKey) -> BlobClient {
        self.inner.container.blob_client(key.as_str())
    }

    async fn put_blocks(
        &self,
        key: &ObjectKey,
        reader: &mut PartReader,
        first: bytes::Bytes,
        content_type: Option<String>,
        create_only: bool,
    ) -> Result<Option<String>> {
        let blob = self.blob(key);
        // Block ids unique to this put: concurrent puts of one key must not stage over each
        // other's uncommitted blocks.
        let nonce: u64 = rand::random();
        let mut blocks = Vec::new();
        let mut next = Some(first);
        let mut index = 0u32;
        while let Some(block) = next.take() {
            let id = BlockId::new(format!("{nonce:016x}-{index:08}").into_bytes());
            blob.put_block(id.clone(), block)
                .await
                .map_err(|e| map_error("put", Some(key.as_str()), e))?;
            blocks.push(BlobBlockType::new_uncommitted(id));
            index += 1;
            next = reader
                .next_part(self.inner.config.block_size)
                .await
                .map_err(|e| body_error(key, &e))?;
        }
        // The body ended cleanly: only now does the blob become visible.
        let mut commit = blob.put_block_list(BlockList { blocks });
        if let Some(ct) = content_type {
            commit = commit.content_type(ct);
        }
        if create_only {
            commit = commit.if_match(IfMatchCondition::NotMatch("*".into()));
        }
        let done = commit
            .await
            .map_err(|e| map_error("put", Some(key.as_str()), e))?;
        Ok(Some(done.etag.to_string()))
    }

    fn sign(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        overrides: &ResponseOverrides<'_>,
    ) -> Result<PresignedUrl> {
        let config = &self.inner.config;
        let AzureCredentials::AccountKey(account_key) = &config.credentials else {
            return Err(Error::unsupported("presign_get", SAS_ONLY));
        };
        let now = OffsetDateTime::now_utc();
        let expiry = now + ttl;
        let sas = BlobSas {
            account: &config.account,
            container: &config.container,
            blob: Some(key.as_str()),
            start: now - CLOCK_SKEW,
            expiry,
            https_only: config.endpoint.starts_with("https://"),
            content_type: overrides.content_type,
            content_disposition: overrides.content_disposition,
        };
        let query = sas.query(account_key)?;
        // A SAS does not cover the host, so swapping it for the public one is safe.
        let endpoint = match &config.public_base_url {
            Some(public) => swap_origin(&config.endpoint, public),
            None => config.endpoint.clone(),
        };
        let url = format!(
            "{endpoint}/{}/{}?{query}",
            config.container,
            blob_path(key.as_str())
        );
        // `se` has whole seconds: report the expiry storage will enforce.
        let expires_at = system_time(expiry.replace_nanosecond(0).unwrap_or(expiry));
        Ok(PresignedUrl::new(url, expires_at))
    }
}

const SAS_ONLY: &str =
    "the Azure backend holds only a SAS token, which can read and write but cannot mint new URLs";

/// `endpoint` with its `scheme://host[:port]` replaced by `public` (its path kept).
fn swap_origin(endpoint: &str, public: &str) -> String {
    let after_scheme = endpoint.find("://").map_or(0, |i| i + 3);
    let path = endpoint[after_scheme..]
        .find('/')
        .map_or("", |i| &endpoint[after_scheme + i..]);
    format!("{public}{path}")
}

#[async_trait]
impl Signer for AzureStorage {
    fn presign_support(&self) -> PresignSupport {
        match self.inner.config.credentials {
            AzureCredentials::AccountKey(_) => PresignSupport::Supported {
                max_ttl: MAX_PRESIGN_TTL_ANY,
            },
            AzureCredentials::SasToken(_) => PresignSupport::Unsupported {
                reason: SAS_ONLY.into(),
            },
        }
    }

    async fn presign_get(
        &self,
        key: &ObjectKey,
        ttl: Duration,
        overrides: &ResponseOverrides<'_>,
    ) -> Result<PresignedUrl> {
        if !self.presign_support().is_supported() {
            return Err(Error::unsupported("presign_get", SAS_ONLY));
        }
        validate_ttl(ttl, MAX_PRESIGN_TTL_ANY)?;
        self.sign(key, ttl, overrides)
    }
}

#[async_trait]
impl Storage for AzureStorage {
    async fn put(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let block_size = self.inner.config.block_size;
        let create_only = options.mode == PutMode::Create;
        let mut reader = PartReader::new(body);
        let first = reader
            .next_part(block_size)
            .await
            .map_err(|e| body_error(key, &e))?
            .unwrap_or_default();
        let etag = if reader.at_end().await.map_err(|e| body_error(key, &e))? {
            // The whole body was read without error: one atomic Put Blob.
            let mut put = self.blob(key).put_block_blob(first);
            if let Some(ct) = options.content_type {
                put = put.content_type(ct);
            }
            if create_only {
                // Azure refuses the write (409 or 412) when the blob exists, atomically.
                put = put.if_match(IfMatchCondition::NotMatch("*".into()));
            }
            let done = put
                .await
                .map_err(|e| map_error("put", Some(key.as_str()), e))?;
            Some(done.etag.to_string())
        } else {
            self.put_blocks(key, &mut reader, first, options.content_type, create_only)
                .await?
        };
        Ok(reader.put_result(etag))
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<GetResult> {
        let blob = self.blob(key);
        let request_range = match &range {
            Some(r) if r.start >= r.end => {
                return Err(Error::invalid("get", "empty byte range").with_key(key.as_str()));
            }
            Some(r) => r.clone(),
            None => 0..WHOLE_OBJECT,
        };
        let first = blob
            .get()
            .range(request_range)
            .chunk_size(WHOLE_OBJECT)
            .into_stream()
            .next()
            .await
            .ok_or_else(|| {
                Error::new(ErrorKind::Unexpected, "get", "no response").with_key(key.as_str())
            })?;
        let response = match first {
            Ok(response) => response,
            Err(err) => {
                let err = map_error("get", Some(key.as_str()), err);
                // A ranged read of an empty blob is refused with 416; the blob exists.
                if range.is_none() && err.kind() == ErrorKind::InvalidInput {
                    let meta = self.head(key).await?;
                    if meta.size == 0 {
                        let body = futures::stream::empty().boxed();
                        return Ok(GetResult {
                            meta,
                            range: 0..0,
                            body,
                        });
                    }
                }
                return Err(err);
            }
        };
        let props = &response.blob.properties;
        let size = match &range {
            // A whole-object read is served in one response: its length is the size.
            None => props.content_length,
            // A ranged read reports only the part; the total costs one more request.
            Some(_) => self.head(key).await?.size,
        };
        if let Some(r) = &range
            && r.end > size
        {
            return Err(Error::range_outside(key.as_str(), r, size));
        }
        let meta = ObjectMeta {
            key: key.clone(),
            size,
            content_type: non_empty(&props.content_type),
            etag: Some(props.etag.to_string()),
            last_modified: Some(system_time(props.last_modified)),
        };
        let body = response.data.map_err(std::io::Error::other).boxed();
        let range = range.unwrap_or(0..size);
        Ok(GetResult { meta, range, body })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let out = self
            .blob(key)
            .get_properties()
            .await
            .map_err(|e| map_error("head", Some(key.as_str()), e))?;
        let props = &out.blob.properties;
        Ok(ObjectMeta {
            key: key.clone(),
            size: props.content_length,
            content_type: non_empty(&props.content_type),
            etag: Some(props.etag.to_string()),
            last_modified: Some(system_time(props.last_modified)),
        })
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match self.blob(key).delete().await {
            Ok(_) => Ok(()),
            Err(err) => {
                let err = map_error("delete", Some(key.as_str()), err);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// Blobs that hold only uncommitted blocks (a put interrupted before its block list was
    /// committed) and were last written longer than `older_than` ago: their blocks are
    /// discarded (an empty block list is committed, then the blob deleted). Azure would drop
    /// them itself after seven days; until then they are billed. Blobs with committed content
    /// are never touched, nor recent ones (an upload of another node may still be running).
    async fn remove_interrupted(&self, older_than: Duration) -> Result<u64> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for (name, size, modified) in self.uncommitted_candidates().await? {
            if size != 0 || modified > cutoff {
                continue;
            }
            let client = self.inner.container.blob_client(&name);
            let Ok(list) = client
                .get_block_list()
                .block_list_type(azure_storage_blobs::prelude::BlockListType::All)
                .await
            else {
                continue; // committed or deleted meanwhile
            };
            let blocks = list.block_with_size_list.blocks;
            let staged_only = !blocks.is_empty()
                && blocks
                    .iter()
                    .all(|b| matches!(b.block_list_type, BlobBlockType::Uncommitted(_)));
            if !staged_only {
                continue;
            }
            client
                .put_block_list(BlockList { blocks: Vec::new() })
                .await
                .map_err(|e| map_error("remove_interrupted", Some(&name), e))?;
            client
                .delete()
                .await
                .map_err(|e| map_error("remove_interrupted", Some(&name), e))?;
            removed += 1;
        }
        Ok(removed)
    }

    fn list(&self, prefix: &str) -> ObjectStream {
        if let Err(err) = ObjectKey::validate_prefix(prefix) {
            return Box::pin(futures::stream::once(async move { Err(err) }));
        }
        let pages = self
            .inner
            .container
            .list_blobs()
            .prefix(prefix.to_owned())
            .into_stream();
        Box::pin(
            pages
                .map(|page| {
                    let page = page.map_err(|e| map_error("list", None, e))?;
                    let metas: Vec<Result<ObjectMeta>> = page
                        .blobs
                        .blobs()
                        .filter_map(|blob| {
                            let key = ObjectKey::new(blob.name.clone()).ok()?;
                            let props = &blob.properties;
                            Some(Ok(ObjectMeta {
                                key,
                                size: props.content_length,
                                content_type: non_empty(&props.content_type),
                                etag: Some(props.etag.to_string()),
                                last_modified: Some(system_time(props.last_modified)),
                            }))
                        })
                        .collect();
                    Ok::<_, Error>(futures::stream::iter(metas))
                })
                .try_flatten(),
        )
    }
}

impl AzureStorage {
    /// Every blob the container lists with `include=uncommittedblobs` whose length is 0 (what
    /// a put that committed nothing looks like): name, length, last write. Read with a plain
    /// request, since the SDK cannot parse such entries.
    async fn uncommitted_candidates(&self) -> Result<Vec<(String, u64, SystemTime)>> {
        let config = &self.inner.config;
        let auth = match &config.credentials {
            AzureCredentials::AccountKey(key) => {
                let now = OffsetDateTime::now_utc();
                BlobSas {
                    account: &config.account,
                    container: &config.container,
                    blob: None,
                    start: now - CLOCK_SKEW,
                    expiry: now + time::Duration::minutes(10),
                    https_only: config.endpoint.starts_with("https://"),
                    content_type: None,
                    content_disposition: None,
                }
                .query(key)?
            }
            AzureCredentials::SasToken(token) => token.trim_start_matches('?').to_owned(),
        };
        let mut found = Vec::new();
        let mut marker = String::new();
        // Each page is at most 5,000 entries; the walk stops after 1,000 pages.
        for _ in 0..1_000 {
            let url = format!(
                "{}/{}?restype=container&comp=list&include=uncommittedblobs&marker={}&{auth}",
                config.endpoint, config.container, marker
            );
            let response = self
                .inner
                .http
                .get(&url)
                .header("x-ms-version", "2021-08-06")
                .send()
                .await
                .map_err(|e| {
                    Error::new(
                        proxyd_storage_core::ErrorKind::Temporary,
                        "remove_interrupted",
                        e.to_string(),
                    )
                })?;
            if !response.status().is_success() {
                return Err(Error::new(
                    proxyd_storage_core::ErrorKind::Unexpected,
                    "remove_interrupted",
                    format!("listing uncommitted blobs answered {}", response.status()),
                ));
            }
            let body = response.text().await.map_err(|e| {
                Error::new(
                    proxyd_storage_core::ErrorKind::Temporary,
                    "remove_interrupted",
                    e.to_string(),
                )
            })?;
            let (entries, next) = parse_listing(&body);
            found.extend(entries.into_iter().filter(|(_, size, _)| *size == 0));
            match next {
                Some(next) if !next.is_empty() => {
                    marker = percent_encoding::utf8_percent_encode(
                        &next,
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string();
                }
                _ => break,
            }
        }
        Ok(found)
    }
}

/// The blobs (name, length, last write) and the next marker of one List Blobs page.
fn parse_listing(xml: &str) -> (Vec<(String, u64, SystemTime)>, Option<String>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut entries = Vec::new();
    let mut next = None;
    let mut tag = Vec::new();
    let (mut name, mut size, mut modified) = (String::new(), 0u64, SystemTime::UNIX_EPOCH);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => tag = e.name().as_ref().to_vec(),
            Ok(Event::Text(t)) => {
                let text = t.unescape().map(|c| c.into_owned()).unwrap_or_default();
                match tag.as_slice() {
                    b"Name" => name = text,
                    b"Content-Length" => size = text.trim().parse().unwrap_or(u64::MAX),
                    b"Last-Modified" => {
                        modified = httpdate::parse_http_date(text.trim())
                            .unwrap_or_else(|_| SystemTime::now());
                    }
                    b"NextMarker" => next = Some(text),
                    _ => {}
                }
            }
            Ok(Event::End(e)) => {
                if e.name().as_ref() == b"Blob" {
                    entries.push((std::mem::take(&mut name), size, modified));
                    size = 0;
                    modified = SystemTime::UNIX_EPOCH;
                }
                tag.clear();
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    (entries, next)
}

/// The HTTP client of the Azure SDK: the system's certificate store (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` honoured) plus `extra_ca_pem`, instead of only the SDK's bundled roots.
fn http_client(extra_ca_pem: Option<&[u8]>) -> Result<reqwest::Client> {
    let native = rustls_native_certs::load_native_certs();
    let mut builder = reqwest::Client::builder().tls_built_in_root_certs(native.certs.is_empty());
    for der in &native.certs {
        if let Ok(cert) = reqwest::Certificate::from_der(der.as_ref()) {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pem) = extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::invalid("open", format!("extra CA certificates: {e}")))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| Error::invalid("open", format!("Azure HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_swap_keeps_path() {
        assert_eq!(
            swap_origin(
                "http://127.0.0.1:10000/devstoreaccount1",
                "https://files.example.test"
            ),
            "https://files.example.test/devstoreaccount1"
        );
        assert_eq!(
            swap_origin(
                "https://acct.blob.core.windows.net",
                "https://files.example.test"
            ),
            "https://files.example.test"
        );
    }
}
