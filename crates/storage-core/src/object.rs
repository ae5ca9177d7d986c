use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::{ObjectKey, Result, Signer};

/// A body: a stream of chunks. A stream that yields an error is a failed body, and a put that
/// reads one commits nothing.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + 'static>>;

/// A listing, page by page as the backend gives it: never held whole in memory.
pub type ObjectStream = Pin<Box<dyn Stream<Item = Result<ObjectMeta>> + Send + 'static>>;

/// A listing collected into memory (for tests and small prefixes).
pub async fn list_all(store: &dyn Storage, prefix: &str) -> Result<Vec<ObjectMeta>> {
    use futures::TryStreamExt;
    store.list(prefix).try_collect().await
}

/// What a stored object looks like without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key.
    pub key: ObjectKey,
    /// Size of the whole object in bytes.
    pub size: u64,
    /// Content type stored with the object (`None` when the backend does not report it, as in
    /// listings).
    pub content_type: Option<String>,
    /// Entity tag as the backend reports it, including quotes.
    pub etag: Option<String>,
    /// Last modification time.
    pub last_modified: Option<SystemTime>,
}

/// Options of [`Storage::put`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PutOptions {
    /// Content type stored with the object.
    pub content_type: Option<String>,
    /// Replace an existing object, or only create one.
    pub mode: PutMode,
}

/// What a put does when the key is already there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (the last complete put wins).
    #[default]
    Overwrite,
    /// Refuse with [`crate::ErrorKind::AlreadyExists`], atomically in the backend (filesystem
    /// link-or-fail, S3 and Azure `If-None-Match: *`): of several concurrent creates, one wins.
    Create,
}

impl PutOptions {
    /// Options with a content type.
    pub fn with_content_type(content_type: impl Into<String>) -> Self {
        Self {
            content_type: Some(content_type.into()),
            mode: PutMode::Overwrite,
        }
    }

    /// The same options, creating only.
    pub fn create_only(mut self) -> Self {
        self.mode = PutMode::Create;
        self
    }
}

/// What a completed put wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// Bytes written.
    pub size: u64,
    /// SHA-256 of the bytes written, computed while streaming.
    pub sha256: [u8; 32],
    /// Entity tag of the new object, when the backend reports one.
    pub etag: Option<String>,
}

/// An object being read: metadata, the byte range served, and the body.
pub struct GetResult {
    /// Metadata of the whole object.
    pub meta: ObjectMeta,
    /// The byte range the body holds (`0..size` without a range request).
    pub range: Range<u64>,
    /// The bytes of `range`.
    pub body: ByteStream,
}

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// A place to keep artifacts. Every backend also implements [`Signer`], if only to refuse.
///
/// Guarantees every implementation gives:
/// - `put` streams: the body is never collected whole in memory;
/// - an object is absent or complete: a put whose body fails, is short, or is dropped midway
///   leaves no visible object (and does not disturb an older complete one);
/// - concurrent puts of one key leave one complete body of one of them;
/// - `delete` of an absent key succeeds.
#[async_trait]
pub trait Storage: Signer {
    /// Store `body` under `key`; commits only once the stream has ended without error.
    async fn put(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult>;

    /// Read `key`, or the bytes `range` of it (`range.start < range.end <= size`; a range past
    /// the end fails with [`crate::ErrorKind::InvalidInput`]).
    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<GetResult>;

    /// Metadata of `key`.
    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta>;

    /// Remove `key`; an absent key is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<()>;

    /// Remove what interrupted puts of earlier processes left behind (temporary files, S3
    /// multipart uploads, Azure's uncommitted blocks): what the backend can tell is dead, and
    /// anything of the kind older than `older_than` where it cannot tell whose it is (shared
    /// storage: another node's upload may be running). Returns how many were removed. The
    /// default removes nothing.
    async fn remove_interrupted(&self, older_than: std::time::Duration) -> Result<u64> {
        let _ = older_than;
        Ok(0)
    }

    /// Every object whose key starts with `prefix` (see [`ObjectKey::validate_prefix`]), with
    /// sizes, as a stream read page by page (an invalid prefix is the stream's one error); used
    /// to reconcile the cache index without holding the bucket in memory.
    fn list(&self, prefix: &str) -> ObjectStream;
}
