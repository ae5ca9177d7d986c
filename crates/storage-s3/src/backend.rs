use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream as SdkBody;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};
use proxyd_storage_core::{
    ByteStream, Error, ErrorKind, GetResult, ObjectKey, ObjectMeta, ObjectStream, PartReader,
    PutMode, PutOptions, PutResult, Result, Storage,
};
use tokio_util::io::ReaderStream;

use crate::config::S3Config;
use crate::errors::map_sdk_error;
use crate::signer::PresignState;

/// Read buffer for streamed gets.
const READ_CHUNK: usize = 64 * 1024;

/// Where each multipart upload in progress is noted (one small object per upload, named by
/// its upload id in hex, holding the key): a process killed mid-upload leaves its note, and
/// start-up aborts the upload it names. Not a valid object key (a segment starting with `.`),
/// so no artifact can collide with it and listings skip it. Needs nothing of the service but
/// plain puts and listings (s3s-fs, for one, has no ListMultipartUploads).
const UPLOAD_NOTES: &str = ".proxyd-uploads/";

fn upload_note(upload_id: &str) -> String {
    format!("{UPLOAD_NOTES}{}", hex::encode(upload_id))
}

/// A storage backend on an S3 bucket (AWS or any S3-compatible service).
#[derive(Clone)]
pub struct S3Storage {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) bucket: String,
    pub(crate) part_size: usize,
    pub(crate) presign: PresignState,
    pub(crate) description: String,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.description)
    }
}

impl S3Storage {
    /// Build clients from `config` and check that the bucket exists and the credentials are
    /// accepted; the error says which when not.
    pub async fn connect(config: S3Config) -> Result<Self> {
        config.check()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        let region = RegionProviderChain::first_try(config.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::from_static("us-east-1"));
        loader = loader.region(region);
        if let Some(creds) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.clone(),
                creds.session_token.clone(),
                creds.expires_at,
                "proxyd-static",
            ));
        }
        if let Some(pem) = &config.extra_ca_pem {
            use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
            // The system's roots stay (TrustStore's default), with these added.
            let context = TlsContext::builder()
                .with_trust_store(TrustStore::default().with_pem_certificate(pem.clone()))
                .build()
                .map_err(|e| Error::invalid("open", format!("extra CA certificates: {e}")))?;
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .tls_context(context)
                .build_https();
            loader = loader.http_client(http);
        }
        let sdk = loader.load().await;
        // S3-compatible stores differ in their support of the newer default checksums; ask for
        // them only where the API requires them.
        let builder = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.force_path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        let builder = match &config.endpoint {
            Some(endpoint) => builder.endpoint_url(endpoint),
            None => builder,
        };
        let client = Client::from_conf(builder.clone().build());
        let presign_client = match &config.public_base_url {
            Some(public) => Client::from_conf(builder.endpoint_url(public).build()),
            None => client.clone(),
        };
        let presign = PresignState::new(presign_client, sdk.credentials_provider());
        let description = format!(
            "S3Storage {{ bucket: {:?}, endpoint: {:?}, path_style: {}, public_base_url: {:?} }}",
            config.bucket, config.endpoint, config.force_path_style, config.public_base_url
        );
        let storage = Self {
            inner: Arc::new(Inner {
                client,
                bucket: config.bucket.clone(),
                part_size: config.part_size,
                presign,
                description,
            }),
        };
        storage.check_bucket().await?;
        Ok(storage)
    }

    async fn check_bucket(&self) -> Result<()> {
        let bucket = &self.inner.bucket;
        match self.inner.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(err) => {
                let err = map_sdk_error("open", None, err);
                let message = match err.kind() {
                    ErrorKind::NotFound => format!("S3 bucket {bucket:?} does not exist"),
                    ErrorKind::PermissionDenied => {
                        format!("S3 refused the credentials for bucket {bucket:?}")
                    }
                    _ => format!("S3 bucket {bucket:?} could not be checked"),
                };
                Err(Error::new(err.kind(), "open", message).with_source(err))
            }
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    async fn put_multipart(
        &self,
        key: &ObjectKey,
        reader: &mut PartReader,
        first: bytes::Bytes,
        content_type: Option<String>,
        if_none_match: Option<String>,
    ) -> Result<Option<String>> {
        let inner = &self.inner;
        let created = inner
            .client
            .create_multipart_upload()
            .bucket(&inner.bucket)
            .key(key.as_str())
            .set_content_type(content_type)
            .send()
            .await
            .map_err(|e| map_sdk_error("put", Some(key.as_str()), e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let mut guard = AbortGuard {
            client: inner.client.clone(),
            bucket: inner.bucket.clone(),
            key: key.as_str().to_owned(),
            upload_id: Some(upload_id.clone()),
        };
        inner
            .client
            .put_object()
            .bucket(&inner.bucket)
            .key(upload_note(&upload_id))
            .body(SdkBody::from(key.as_str().as_bytes().to_vec()))
            .send()
            .await
            .map_err(|e| map_sdk_error("put", Some(key.as_str()), e))?;
        let mut parts = Vec::new();
        let mut next = Some(first);
        let mut number = 1;
        while let Some(part) = next.take() {
            let out = inner
                .client
                .upload_part()
                .bucket(&inner.bucket)
                .key(key.as_str())
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(part.len() as i64)
                .body(SdkBody::from(part))
                .send()
                .await
                .map_err(|e| map_sdk_error("put", Some(key.as_str()), e))?;
            parts.push(
                CompletedPart::builder()
                    .set_e_tag(out.e_tag)
                    .part_number(number)
                    .build(),
            );
            number += 1;
            next = reader
                .next_part(inner.part_size)
                .await
                .map_err(|e| body_error(key, &e))?;
        }
        // The body ended cleanly: only now does the object become visible.
        let done = inner
            .client
            .complete_multipart_upload()
            .bucket(&inner.bucket)
            .key(key.as_str())
            .upload_id(&upload_id)
            .set_if_none_match(if_none_match)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| map_sdk_error("put", Some(key.as_str()), e))?;
        guard.upload_id = None;
        delete_note(&inner.client, &inner.bucket, &upload_id).await;
        Ok(done.e_tag)
    }
}

fn body_error(key: &ObjectKey, err: &std::io::Error) -> Error {
    Error::new(ErrorKind::Temporary, "put", format!("body failed: {err}")).with_key(key.as_str())
}

/// Aborts an unfinished multipart upload when a put fails or is dropped, so no parts linger.
struct AbortGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let request = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id.clone());
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        runtime.spawn(async move {
            match request.send().await {
                Ok(_) => delete_note(&client, &bucket, &upload_id).await,
                Err(err) => {
                    tracing::warn!(error = %err, "could not abort an unfinished multipart upload");
                }
            }
        });
    }
}

/// Remove the note of an upload that completed or was aborted (a note left behind only makes
/// start-up abort an upload that is already gone).
async fn delete_note(client: &Client, bucket: &str, upload_id: &str) {
    if let Err(err) = client
        .delete_object()
        .bucket(bucket)
        .key(upload_note(upload_id))
        .send()
        .await
    {
        tracing::debug!(error = %err, "could not remove a multipart upload's note");
    }
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

/// `bytes a-b/total` → total.
fn total_from_content_range(value: &str) -> Option<u64> {
    value.rsplit('/').next()?.parse().ok()
}

#[async_trait]
impl Storage for S3Storage {
    async fn put(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        let inner = &self.inner;
        // Create-only: S3 refuses the write (412) when the key exists, atomically.
        let if_none_match = (options.mode == PutMode::Create).then(|| "*".to_owned());
        let mut reader = PartReader::new(body);
        let first = reader
            .next_part(inner.part_size)
            .await
            .map_err(|e| body_error(key, &e))?
            .unwrap_or_default();
        let etag = if reader.at_end().await.map_err(|e| body_error(key, &e))? {
            // The whole body fits one part and has been read without error: one atomic put.
            inner
                .client
                .put_object()
                .bucket(&inner.bucket)
                .key(key.as_str())
                .set_content_type(options.content_type)
                .set_if_none_match(if_none_match)
                .content_length(first.len() as i64)
                .body(SdkBody::from(first))
                .send()
                .await
                .map_err(|e| map_sdk_error("put", Some(key.as_str()), e))?
                .e_tag
        } else {
            self.put_multipart(key, &mut reader, first, options.content_type, if_none_match)
                .await?
        };
        Ok(reader.put_result(etag))
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<GetResult> {
        let inner = &self.inner;
        let mut request = inner
            .client
            .get_object()
            .bucket(&inner.bucket)
            .key(key.as_str());
        if let Some(r) = &range {
            if r.start >= r.end {
                return Err(Error::invalid("get", "empty byte range").with_key(key.as_str()));
            }
            request = request.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = request
            .send()
            .await
            .map_err(|e| map_sdk_error("get", Some(key.as_str()), e))?;
        let length = out.content_length().unwrap_or_default().max(0) as u64;
        let size = match (&range, out.content_range()) {
            (Some(_), Some(cr)) => total_from_content_range(cr).unwrap_or(length),
            _ => length,
        };
        let range = match range {
            // S3 shortens a range that runs past the end; the trait refuses it instead.
            Some(r) if r.end > size => {
                return Err(Error::range_outside(key.as_str(), &r, size));
            }
            Some(r) => r,
            None => 0..size,
        };
        let meta = ObjectMeta {
            key: key.clone(),
            size,
            content_type: out.content_type().map(str::to_owned),
            etag: out.e_tag().map(str::to_owned),
            last_modified: to_system_time(out.last_modified()),
        };
        let body = ReaderStream::with_capacity(out.body.into_async_read(), READ_CHUNK);
        Ok(GetResult {
            meta,
            range,
            body: body.boxed(),
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let inner = &self.inner;
        let out = inner
            .client
            .head_object()
            .bucket(&inner.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| map_sdk_error("head", Some(key.as_str()), e))?;
        Ok(ObjectMeta {
            key: key.clone(),
            size: out.content_length().unwrap_or_default().max(0) as u64,
            content_type: out.content_type().map(str::to_owned),
            etag: out.e_tag().map(str::to_owned),
            last_modified: to_system_time(out.last_modified()),
        })
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let inner = &self.inner;
        match inner
            .client
            .delete_object()
            .bucket(&inner.bucket)
            .key(key.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) => {
                let err = map_sdk_error("delete", Some(key.as_str()), err);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// Abort the multipart uploads whose notes are older than `older_than` (their process died
    /// mid-upload), and remove the notes.
    async fn remove_interrupted(&self, older_than: std::time::Duration) -> Result<u64> {
        let inner = &self.inner;
        let mut pages = inner
            .client
            .list_objects_v2()
            .bucket(&inner.bucket)
            .prefix(UPLOAD_NOTES)
            .into_paginator()
            .send();
        let mut removed = 0;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_sdk_error("list", None, e))?;
            for note in page.contents() {
                let (Some(name), Some(modified)) =
                    (note.key(), to_system_time(note.last_modified()))
                else {
                    continue;
                };
                if modified.elapsed().unwrap_or_default() < older_than {
                    continue; // may be an upload still running, here or on another node
                }
                let Some(upload_id) = name
                    .strip_prefix(UPLOAD_NOTES)
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                else {
                    continue;
                };
                let key = inner
                    .client
                    .get_object()
                    .bucket(&inner.bucket)
                    .key(name)
                    .send()
                    .await
                    .map_err(|e| map_sdk_error("get", Some(name), e))?
                    .body
                    .collect()
                    .await
                    .map_err(|e| Error::new(ErrorKind::Temporary, "get", e.to_string()))?
                    .into_bytes();
                let key = String::from_utf8_lossy(&key).into_owned();
                let aborted = inner
                    .client
                    .abort_multipart_upload()
                    .bucket(&inner.bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                    .map_err(|e| map_sdk_error("abort", Some(&key), e));
                match aborted {
                    Ok(_) => removed += 1,
                    // Already completed or aborted: only the note is left.
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(key, error = %e, "could not abort an interrupted multipart upload");
                        continue;
                    }
                }
                delete_note(&inner.client, &inner.bucket, &upload_id).await;
            }
        }
        Ok(removed)
    }

    fn list(&self, prefix: &str) -> ObjectStream {
        if let Err(err) = ObjectKey::validate_prefix(prefix) {
            return Box::pin(futures::stream::once(async move { Err(err) }));
        }
        let inner = self.inner.clone();
        let pages = inner
            .client
            .list_objects_v2()
            .bucket(&inner.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let pages = futures::stream::unfold(pages, |mut pages| async move {
            let page = pages.next().await?;
            Some((page, pages))
        });
        Box::pin(
            pages
                .map(|page| {
                    let page = page.map_err(|e| map_sdk_error("list", None, e))?;
                    let metas: Vec<Result<ObjectMeta>> = page
                        .contents()
                        .iter()
                        .filter_map(|object| {
                            // Objects proxyd did not write may not be valid keys; not ours.
                            let key = ObjectKey::new(object.key()?).ok()?;
                            Some(Ok(ObjectMeta {
                                key,
                                size: object.size().unwrap_or_default().max(0) as u64,
                                content_type: None,
                                etag: object.e_tag().map(str::to_owned),
                                last_modified: to_system_time(object.last_modified()),
                            }))
                        })
                        .collect();
                    Ok::<_, Error>(futures::stream::iter(metas))
                })
                .try_flatten(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_total() {
        assert_eq!(total_from_content_range("bytes 0-9/100"), Some(100));
        assert_eq!(total_from_content_range("bytes */100"), Some(100));
        assert_eq!(total_from_content_range("garbage"), None);
    }
}
