use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::StreamExt;
use proxyd_storage_core::{
    ByteStream, Error, ErrorKind, GetResult, ObjectKey, ObjectMeta, ObjectStream, PartReader,
    PresignSupport, PutMode, PutOptions, PutResult, Result, Signer, Storage,
};
use tokio::sync::Mutex;

/// Stripes of the in-process rename lock (data and sidecar of one key move together).
const LOCK_STRIPES: usize = 64;
/// Read buffer for streamed gets.
const READ_CHUNK: usize = 96 * 1024;
/// Bodies up to this size are read in one call when opened instead of streamed.
const INLINE_READ_LIMIT: u64 = 64 * 1024;

/// A storage backend on a local directory.
#[derive(Clone)]
pub struct FsStorage {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    locks: Vec<Mutex<()>>,
    /// Sidecars recently read or written, so a hit does not open a second file; bounded
    /// ([`SIDECARS_KEPT`]): an unbounded map held 25 MiB after hits on 100,000 keys. Kept in
    /// step by put and delete; another process writing the same directory is not seen.
    sidecars: moka::sync::Cache<String, Arc<Sidecar>, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for FsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStorage")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl FsStorage {
    /// Use (and create if missing) the directory `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        tokio::fs::create_dir_all(&root)
            .await
            .map_err(|e| Error::from(e).with_key(&root.display().to_string()))?;
        let root = tokio::fs::canonicalize(&root).await?;
        let locks = (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                locks,
                sidecars: moka::sync::Cache::builder()
                    .max_capacity(SIDECARS_KEPT)
                    .build_with_hasher(foldhash::fast::RandomState::default()),
            }),
        })
    }

    /// Parse a `file://` storage URL (`file:///abs/path`, `file://./rel/path`) into a directory.
    pub fn path_from_url(url: &str) -> Result<PathBuf> {
        let rest = url.strip_prefix("file://").ok_or_else(|| {
            Error::invalid(
                "open",
                format!("storage URL {url:?} does not start with file://"),
            )
        })?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        if rest.is_empty() {
            return Err(Error::invalid(
                "open",
                format!("storage URL {url:?} names no directory"),
            ));
        }
        Ok(PathBuf::from(rest))
    }

    /// The directory objects live in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn data_path(&self, key: &ObjectKey) -> PathBuf {
        // Safe: ObjectKey admits no absolute path, `..`, backslash or dot-segment.
        self.inner.root.join(key.as_str())
    }

    fn remember_sidecar(&self, key: &ObjectKey, sidecar: Sidecar) {
        self.inner
            .sidecars
            .insert(key.as_str().to_owned(), Arc::new(sidecar));
    }

    fn sidecar_for(&self, key: &ObjectKey, data: &Path) -> Sidecar {
        if let Some(known) = self.inner.sidecars.get(key.as_str()) {
            return (*known).clone();
        }
        let read = read_sidecar_now(data);
        self.remember_sidecar(key, read.clone());
        read
    }

    fn lock_for(&self, key: &ObjectKey) -> &Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key.as_str());
        &self.inner.locks[(hash as usize) % LOCK_STRIPES]
    }
}

fn sidecar_path(data: &Path) -> PathBuf {
    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    data.with_file_name(format!(".{name}.meta"))
}

fn temp_path(data: &Path, what: &str) -> PathBuf {
    let name = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce: u64 = rand::random();
    let pid = std::process::id();
    data.with_file_name(format!(".{name}.{what}-p{pid}-{nonce:016x}"))
}

/// Whether `file_name` is a temporary file of a put, and whether this process wrote it (an
/// older name without the writer's id counts as another's).
fn temp_owner(file_name: &str) -> Option<bool> {
    if !file_name.starts_with('.') {
        return None;
    }
    let (_, tail) = file_name
        .rsplit_once(".tmp-")
        .or_else(|| file_name.rsplit_once(".metatmp-"))?;
    // `p{pid}-{nonce}` (or only `{nonce}` from before the writer's id was kept): exactly that,
    // so a sidecar or an artifact whose name merely contains ".tmp-" is never taken for one.
    let (pid, nonce) = match tail.strip_prefix('p').and_then(|t| t.split_once('-')) {
        Some((pid, nonce)) => (pid.parse::<u32>().ok(), nonce),
        None => (None, tail),
    };
    if nonce.len() != 16 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(pid == Some(std::process::id()))
}

/// Remove the temporary files under `root` that another process left (it was killed in the
/// middle of a put), or older than `older_than` whoever wrote them.
fn remove_leftovers(root: &Path, older_than: std::time::Duration) -> std::io::Result<u64> {
    let now = SystemTime::now();
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(ours) = temp_owner(&name) else {
                continue;
            };
            let old = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= older_than);
            if !ours || old {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(removed)
}

/// Removes a temporary file unless disarmed, so a failed or dropped put leaves nothing.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Sidecars kept in memory (about 150 bytes each).
const SIDECARS_KEPT: u64 = 16_384;

#[derive(Default, Clone)]
struct Sidecar {
    content_type: Option<String>,
    sha256: Option<String>,
}

impl Sidecar {
    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(ct) = &self.content_type {
            out.push_str(&format!("content-type: {ct}\n"));
        }
        if let Some(sha) = &self.sha256 {
            out.push_str(&format!("sha256: {sha}\n"));
        }
        out
    }

    fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            match line.split_once(": ") {
                Some(("content-type", v)) => out.content_type = Some(v.to_owned()),
                Some(("sha256", v)) => out.sha256 = Some(v.to_owned()),
                _ => {}
            }
        }
        out
    }
}

fn read_sidecar_now(data: &Path) -> Sidecar {
    match std::fs::read_to_string(sidecar_path(data)) {
        Ok(text) => Sidecar::parse(&text),
        Err(_) => Sidecar::default(),
    }
}

async fn read_sidecar(data: &Path) -> Sidecar {
    match tokio::fs::read_to_string(sidecar_path(data)).await {
        Ok(text) => Sidecar::parse(&text),
        Err(_) => Sidecar::default(),
    }
}

fn content_type_ok(ct: &str) -> bool {
    !ct.is_empty() && ct.len() <= 256 && ct.bytes().all(|b| (0x20..0x7f).contains(&b))
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::File::open(dir).await?.sync_all().await
}

fn meta_from(key: &ObjectKey, md: &std::fs::Metadata, sidecar: Sidecar) -> ObjectMeta {
    ObjectMeta {
        key: key.clone(),
        size: md.len(),
        content_type: sidecar.content_type,
        etag: sidecar.sha256.map(|s| format!("\"{s}\"")),
        last_modified: md.modified().ok(),
    }
}

fn op_err<'a>(op: &'static str, key: &'a ObjectKey) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| {
        let kind = Error::from(e);
        Error::new(kind.kind(), op, kind.message().to_owned()).with_key(key.as_str())
    }
}

impl Signer for FsStorage {
    fn presign_support(&self) -> PresignSupport {
        PresignSupport::Unsupported {
            reason: "local filesystem storage has no URL to sign; hits are streamed".into(),
        }
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn put(
        &self,
        key: &ObjectKey,
        body: ByteStream,
        options: PutOptions,
    ) -> Result<PutResult> {
        if let Some(ct) = &options.content_type
            && !content_type_ok(ct)
        {
            return Err(
                Error::invalid("put", "content type is empty, too long or not printable")
                    .with_key(key.as_str()),
            );
        }
        let data = self.data_path(key);
        let dir = data.parent().unwrap_or(&self.inner.root).to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(op_err("put", key))?;

        let tmp = temp_path(&data, "tmp");
        let mut guard = TempGuard(Some(tmp.clone()));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(op_err("put", key))?
            .into_std()
            .await;
        // Each chunk is handed to a blocking write as it is (tokio's File would copy it into a
        // buffer of its own that grows to the largest chunk seen and stays: 512 KiB per
        // concurrent miss in the memory benchmark).
        let blocking = |r: std::result::Result<std::io::Result<std::fs::File>, _>| {
            r.unwrap_or_else(|e: tokio::task::JoinError| Err(std::io::Error::other(e)))
        };
        let mut reader = PartReader::new(body);
        while let Some(chunk) = reader.next_chunk().await.map_err(op_err("put", key))? {
            let write = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                file.write_all(&chunk).map(|()| file)
            });
            file = blocking(write.await).map_err(op_err("put", key))?;
        }
        let sync = tokio::task::spawn_blocking(move || file.sync_all().map(|()| file));
        drop(blocking(sync.await).map_err(op_err("put", key))?);
        let digest = reader.digest();
        let sha_hex = hex::encode(digest.sha256);

        let sidecar = Sidecar {
            content_type: options.content_type.clone(),
            sha256: Some(sha_hex.clone()),
        };
        let meta_tmp = temp_path(&data, "metatmp");
        let mut meta_guard = TempGuard(Some(meta_tmp.clone()));
        tokio::fs::write(&meta_tmp, sidecar.render())
            .await
            .map_err(op_err("put", key))?;

        {
            let _held = self.lock_for(key).lock().await;
            if options.mode == PutMode::Create {
                // Link-or-fail: atomic even against another process; the temporary files go
                // with their guards.
                match tokio::fs::hard_link(&tmp, &data).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            "put",
                            "the key exists and the put was create-only",
                        )
                        .with_key(key.as_str()));
                    }
                    Err(e) => return Err(op_err("put", key)(e)),
                }
                tokio::fs::rename(&meta_tmp, sidecar_path(&data))
                    .await
                    .map_err(op_err("put", key))?;
                meta_guard.0 = None;
            } else {
                tokio::fs::rename(&meta_tmp, sidecar_path(&data))
                    .await
                    .map_err(op_err("put", key))?;
                meta_guard.0 = None;
                tokio::fs::rename(&tmp, &data)
                    .await
                    .map_err(op_err("put", key))?;
                guard.0 = None;
            }
            self.remember_sidecar(key, sidecar);
        }
        sync_dir(&dir).await.map_err(op_err("put", key))?;
        Ok(reader.put_result(Some(format!("\"{sha_hex}\""))))
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<GetResult> {
        let data = self.data_path(key);
        // Open, stat and (for small objects) read right here rather than through the blocking
        // pool: from the page cache these are microseconds, and every pool hop costs two
        // context switches, which dominated a small cache hit. Large bodies still stream
        // through the pool.
        let file = match std::fs::File::open(&data) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found("get", key.as_str()));
            }
            Err(e) => return Err(op_err("get", key)(e)),
        };
        let md = file.metadata().map_err(op_err("get", key))?;
        if !md.is_file() {
            return Err(Error::not_found("get", key.as_str()));
        }
        let meta = meta_from(key, &md, self.sidecar_for(key, &data));
        let range = match range {
            None => 0..meta.size,
            Some(r) if r.start < r.end && r.end <= meta.size => r,
            Some(r) => {
                return Err(Error::range_outside(key.as_str(), &r, meta.size));
            }
        };
        let len = range.end - range.start;
        if len <= INLINE_READ_LIMIT {
            let mut buf = vec![0u8; len as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, range.start)
                .map_err(op_err("get", key))?;
            let body = futures::stream::once(futures::future::ready(Ok(bytes::Bytes::from(buf))));
            return Ok(GetResult {
                meta,
                range,
                body: body.boxed(),
            });
        }
        // Larger bodies: one positioned read per chunk on the blocking pool, each into a fresh
        // buffer that becomes the chunk, so nothing is buffered twice and a connection holds at
        // most the chunk being written.
        // The buffer is allocated here, on the thread that later frees it once written, so
        // the allocator reuses it instead of parking it on a pool thread.
        let mut file = file;
        if range.start > 0 {
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(range.start))
                .map_err(op_err("get", key))?;
        }
        let file = Arc::new(file);
        let body = futures::stream::try_unfold(len, move |left| {
            let file = file.clone();
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let n = left.min(READ_CHUNK as u64);
                let buf = Vec::with_capacity(n as usize);
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut buf = buf;
                    std::io::Read::read_to_end(&mut std::io::Read::take(&*file, n), &mut buf)?;
                    Ok::<_, std::io::Error>(buf)
                })
                .await
                .map_err(std::io::Error::other)??;
                if chunk.len() as u64 != n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file shorter than its size",
                    ));
                }
                Ok(Some((bytes::Bytes::from(chunk), left - n)))
            }
        });
        Ok(GetResult {
            meta,
            range,
            body: body.boxed(),
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<ObjectMeta> {
        let data = self.data_path(key);
        match tokio::fs::metadata(&data).await {
            Ok(md) if md.is_file() => Ok(meta_from(key, &md, read_sidecar(&data).await)),
            Ok(_) => Err(Error::not_found("head", key.as_str())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found("head", key.as_str()))
            }
            Err(e) => Err(op_err("head", key)(e)),
        }
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        let data = self.data_path(key);
        let _held = self.lock_for(key).lock().await;
        self.inner.sidecars.invalidate(key.as_str());
        for path in [data.clone(), sidecar_path(&data)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(op_err("delete", key)(e)),
            }
        }
        Ok(())
    }

    async fn remove_interrupted(&self, older_than: std::time::Duration) -> Result<u64> {
        let root = self.inner.root.clone();
        tokio::task::spawn_blocking(move || remove_leftovers(&root, older_than))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, "clean", e.to_string()))?
            .map_err(Error::from)
    }

    fn list(&self, prefix: &str) -> ObjectStream {
        if let Err(err) = ObjectKey::validate_prefix(prefix) {
            return Box::pin(futures::stream::once(async move { Err(err) }));
        }
        let root = self.inner.root.clone();
        let prefix = prefix.to_owned();
        // A directory walk is blocking work: it runs off the async workers and hands entries
        // over a short channel, so the listing is never held whole.
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_BATCH);
        tokio::task::spawn_blocking(move || {
            if let Err(err) = walk(&root, &prefix, &mut |meta| {
                tx.blocking_send(Ok(meta)).is_ok()
            }) {
                let _ = tx.blocking_send(Err(err));
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

/// Listed entries handed over at once from the walking thread.
const LIST_BATCH: usize = 256;

/// Walk the directories under `root` that `prefix` names, giving each object to `found`, which
/// answers whether to go on.
fn walk(root: &Path, prefix: &str, found: &mut dyn FnMut(ObjectMeta) -> bool) -> Result<()> {
    // Start from the deepest directory the prefix names entirely.
    let start_rel = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut stack = vec![(root.join(start_rel), start_rel.to_owned())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::from(e)),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // temporary files and sidecars
            }
            let key_str = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type()?;
            if ft.is_dir() {
                if key_str.starts_with(prefix) || prefix.starts_with(&format!("{key_str}/")) {
                    stack.push((entry.path(), key_str));
                }
            } else if ft.is_file() && key_str.starts_with(prefix) {
                let Ok(key) = ObjectKey::new(key_str) else {
                    continue;
                };
                let md = entry.metadata()?;
                let meta = ObjectMeta {
                    key,
                    size: md.len(),
                    content_type: None,
                    etag: None,
                    last_modified: md.modified().ok().or(Some(SystemTime::UNIX_EPOCH)),
                };
                if !found(meta) {
                    return Ok(()); // the reader went away
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_files_of_other_processes_are_leftovers() {
        let ours = temp_path(Path::new("/x/a-1.0.0.tgz"), "tmp");
        let ours = ours.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(temp_owner(&ours), Some(true));
        assert_eq!(
            temp_owner(".a-1.0.0.tgz.tmp-p1-00000000000000ff"),
            Some(false)
        );
        assert_eq!(
            temp_owner(".a-1.0.0.tgz.metatmp-00000000000000ff"),
            Some(false)
        );
        assert_eq!(temp_owner("a-1.0.0.tgz"), None);
        assert_eq!(temp_owner(".a-1.0.0.tgz.meta"), None);
        assert_eq!(temp_owner(".x.tmp-release.tgz.meta"), None);
    }
}
