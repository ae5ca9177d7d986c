//! The storage conformance suite. Every check takes a fresh, empty store; keys carry a random
//! prefix so a shared bucket cannot mix runs.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, stream};
use proxyd_storage_core::{
    ByteStream, ErrorKind, ObjectKey, PresignSupport, PutOptions, ResponseOverrides, Storage,
};
use sha2::{Digest, Sha256};

/// A store under test and whatever must stay alive with it (an emulator, a temp dir).
pub struct Fixture {
    pub store: Arc<dyn Storage>,
    pub guard: Box<dyn Any + Send>,
}

/// Expands to one `#[tokio::test]` per conformance check, each calling `$setup().await` for a
/// [`Fixture`].
#[macro_export]
macro_rules! conformance_tests {
    ($setup:path) => {
        $crate::conformance_tests!(@cases $setup;
            put_get_roundtrip, range_reads, missing_objects, delete_removes, list_by_prefix,
            failed_put_leaves_nothing, failed_put_keeps_previous, dropped_put_leaves_nothing,
            large_object, concurrent_puts_one_key, empty_object, invalid_keys_refused,
            presign_matches_support, presign_expired_refused, presign_ttl_validated,
            create_only_puts_never_overwrite);
    };
    (@cases $setup:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture: $crate::conformance::Fixture = $setup().await;
                $crate::conformance::$name(&*fixture.store).await;
                drop(fixture.guard);
            }
        )*
    };
}

/// A random key prefix for one test.
pub fn unique_prefix() -> String {
    format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

fn key(prefix: &str, rest: &str) -> ObjectKey {
    ObjectKey::new(format!("{prefix}/{rest}")).unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `data` as a body of `chunk`-sized pieces.
pub fn body(data: Vec<u8>, chunk: usize) -> ByteStream {
    let data = Bytes::from(data);
    let pieces: Vec<_> = (0..data.len())
        .step_by(chunk.max(1))
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    Box::pin(stream::iter(pieces))
}

/// A body that yields `data` and then fails, like an upstream that drops the connection.
pub fn failing_body(data: Vec<u8>) -> ByteStream {
    Box::pin(stream::iter(vec![
        Ok(Bytes::from(data)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "upstream went away",
        )),
    ]))
}

/// A body that yields `data` and then never ends.
pub fn stalled_body(data: Vec<u8>) -> ByteStream {
    Box::pin(stream::iter(vec![Ok(Bytes::from(data))]).chain(stream::pending()))
}

/// Collect a body.
pub async fn read_all(mut body: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn get_all(store: &dyn Storage, key: &ObjectKey) -> Vec<u8> {
    read_all(store.get(key, None).await.unwrap().body).await
}

pub async fn put_get_roundtrip(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "pkg/-/pkg-1.0.0.tgz");
    let data = pattern(100_000, 1);
    let put = store
        .put(
            &k,
            body(data.clone(), 7_000),
            PutOptions::with_content_type("application/octet-stream"),
        )
        .await
        .unwrap();
    assert_eq!(put.size, data.len() as u64);
    let expected: [u8; 32] = Sha256::digest(&data).into();
    assert_eq!(
        put.sha256, expected,
        "put must report the SHA-256 of the bytes"
    );

    let got = store.get(&k, None).await.unwrap();
    assert_eq!(got.meta.size, data.len() as u64);
    assert_eq!(got.range, 0..data.len() as u64);
    assert_eq!(
        got.meta.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert!(got.meta.etag.is_some(), "get reports an ETag");
    assert!(
        got.meta.last_modified.is_some(),
        "get reports a last-modified time"
    );
    assert_eq!(read_all(got.body).await, data);

    let head = store.head(&k).await.unwrap();
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(
        head.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert!(head.etag.is_some());
}

pub async fn range_reads(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "r.bin");
    let data = pattern(10_000, 2);
    store
        .put(&k, body(data.clone(), 1024), PutOptions::default())
        .await
        .unwrap();
    for range in [0..1, 10..20, 9_000..10_000, 0..10_000, 9_999..10_000] {
        let got = store.get(&k, Some(range.clone())).await.unwrap();
        assert_eq!(got.range, range);
        assert_eq!(
            got.meta.size, 10_000,
            "meta.size is the whole object for a range"
        );
        let bytes = read_all(got.body).await;
        assert_eq!(
            bytes,
            &data[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    let err = store.get(&k, Some(10_000..10_001)).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidInput,
        "range past the end: {err}"
    );
}

pub async fn missing_objects(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "absent");
    assert_eq!(
        store.get(&k, None).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.head(&k).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    store
        .delete(&k)
        .await
        .expect("deleting an absent key is fine");
}

pub async fn delete_removes(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "d.bin");
    store
        .put(&k, body(b"bye".to_vec(), 2), PutOptions::default())
        .await
        .unwrap();
    store.delete(&k).await.unwrap();
    assert_eq!(
        store.head(&k).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(
        proxyd_storage_core::list_all(store, &format!("{p}/"))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn list_by_prefix(store: &dyn Storage) {
    let p = unique_prefix();
    for (name, len) in [
        ("npm/a/-/a-1.tgz", 10),
        ("npm/b/-/b-1.tgz", 20),
        ("pypi/x/x.whl", 30),
    ] {
        store
            .put(
                &key(&p, name),
                body(pattern(len, 3), 4),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    let all = proxyd_storage_core::list_all(store, &format!("{p}/"))
        .await
        .unwrap();
    let mut got: Vec<_> = all
        .iter()
        .map(|m| (m.key.as_str().to_owned(), m.size))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (format!("{p}/npm/a/-/a-1.tgz"), 10),
            (format!("{p}/npm/b/-/b-1.tgz"), 20),
            (format!("{p}/pypi/x/x.whl"), 30)
        ]
    );
    let npm = proxyd_storage_core::list_all(store, &format!("{p}/npm/"))
        .await
        .unwrap();
    assert_eq!(npm.len(), 2);
    let partial = proxyd_storage_core::list_all(store, &format!("{p}/npm/a"))
        .await
        .unwrap();
    assert_eq!(partial.len(), 1, "a prefix may end inside a segment");
    assert_eq!(
        proxyd_storage_core::list_all(store, "../")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}

pub async fn failed_put_leaves_nothing(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "broken.tgz");
    let err = store
        .put(&k, failing_body(pattern(50_000, 4)), PutOptions::default())
        .await;
    assert!(err.is_err(), "a put whose body fails must fail");
    assert_eq!(
        store.head(&k).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(
        proxyd_storage_core::list_all(store, &format!("{p}/"))
            .await
            .unwrap()
            .is_empty(),
        "nothing visible is left"
    );
}

pub async fn failed_put_keeps_previous(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "kept.tgz");
    let good = pattern(3_000, 5);
    store
        .put(&k, body(good.clone(), 1000), PutOptions::default())
        .await
        .unwrap();
    let _ = store
        .put(&k, failing_body(pattern(9_000, 6)), PutOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        get_all(store, &k).await,
        good,
        "a failed put must not disturb the old object"
    );
}

pub async fn dropped_put_leaves_nothing(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "dropped.tgz");
    let put = store.put(&k, stalled_body(pattern(20_000, 7)), PutOptions::default());
    let outcome = tokio::time::timeout(Duration::from_millis(500), put).await;
    assert!(
        outcome.is_err(),
        "a put whose body never ends cannot complete"
    );
    assert_eq!(
        store.head(&k).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(
        proxyd_storage_core::list_all(store, &format!("{p}/"))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn large_object(store: &dyn Storage) {
    // Over every backend's multipart/block threshold.
    let p = unique_prefix();
    let k = key(&p, "large.bin");
    let data = pattern(21 * 1024 * 1024 + 123, 8);
    let put = store
        .put(&k, body(data.clone(), 64 * 1024), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(put.size, data.len() as u64);
    let got = get_all(store, &k).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "large object comes back byte for byte");
    let tail = store
        .get(&k, Some(20 * 1024 * 1024..data.len() as u64))
        .await
        .unwrap();
    assert_eq!(read_all(tail.body).await, &data[20 * 1024 * 1024..]);
}

pub async fn concurrent_puts_one_key(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "race.tgz");
    let bodies: Vec<Vec<u8>> = (0..6)
        .map(|i| pattern(200_000 + i * 10, 10 + i as u8))
        .collect();
    let puts = bodies
        .iter()
        .map(|b| store.put(&k, body(b.clone(), 8192), PutOptions::default()));
    for result in futures::future::join_all(puts).await {
        result.unwrap();
    }
    let got = get_all(store, &k).await;
    assert!(
        bodies.contains(&got),
        "the object is one complete body of one of the puts"
    );
    let head = store.head(&k).await.unwrap();
    assert_eq!(head.size, got.len() as u64);
}

/// A create-only put refuses an existing key with `AlreadyExists` and leaves it as it was, for
/// small bodies (one-shot put) and large ones (multipart or block-list commit, both
/// conditional).
pub async fn create_only_puts_never_overwrite(store: &dyn Storage) {
    let create = || PutOptions::default().create_only();
    for size in [1_000, 9 * 1024 * 1024] {
        let p = unique_prefix();
        let k = key(&p, "created.tgz");
        let first = pattern(size, 21);
        store
            .put(&k, body(first.clone(), 64 * 1024), create())
            .await
            .unwrap();
        let err = store
            .put(&k, body(pattern(size, 22), 64 * 1024), create())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
        assert!(get_all(store, &k).await == first, "the first body stays");
    }
}

/// Of concurrent create-only puts of one key, exactly one wins. Run for the backends whose
/// test server makes the condition atomic: the filesystem and Azurite. s3s-fs checks
/// `If-None-Match` before it writes, not atomically, so this cannot be proven against it (S3
/// itself makes conditional writes atomic).
pub async fn concurrent_creates_one_wins(store: &dyn Storage) {
    let p = unique_prefix();
    let race = key(&p, "raced.tgz");
    let puts = (0..4u8).map(|i| {
        store.put(
            &race,
            body(pattern(1_000, 30 + i), 64 * 1024),
            PutOptions::default().create_only(),
        )
    });
    let results = futures::future::join_all(puts).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "exactly one create wins: {results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.kind(), ErrorKind::AlreadyExists, "{r}");
    }
}

pub async fn empty_object(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "empty");
    let put = store
        .put(&k, body(Vec::new(), 1), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(put.size, 0);
    assert_eq!(store.head(&k).await.unwrap().size, 0);
    assert!(get_all(store, &k).await.is_empty());
}

pub async fn invalid_keys_refused(store: &dyn Storage) {
    for bad in ["../x", "/abs", "a\\b", "a%2e%2e"] {
        assert_eq!(
            ObjectKey::new(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    assert_eq!(
        proxyd_storage_core::list_all(store, "/")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}

/// GET `url` with a plain HTTP client: status, content type, content disposition, body.
pub async fn fetch(url: &str) -> (u16, Option<String>, Option<String>, Vec<u8>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (ct, cd) = (header("content-type"), header("content-disposition"));
    (status, ct, cd, resp.bytes().await.unwrap().to_vec())
}

/// `url` with one character of its signature changed.
pub fn tamper_signature(url: &str) -> String {
    for param in ["X-Amz-Signature=", "sig="] {
        if let Some(i) = url.find(param) {
            let at = i + param.len();
            let mut out = url.to_owned();
            let c = &url[at..=at];
            let repl = if c == "a" || c == "A" { "b" } else { "a" };
            out.replace_range(at..=at, repl);
            return out;
        }
    }
    panic!("no signature parameter in {url}");
}

pub async fn presign_matches_support(store: &dyn Storage) {
    let p = unique_prefix();
    let k = key(&p, "pkg-1.0.0.tgz");
    let data = pattern(5_000, 20);
    store
        .put(
            &k,
            body(data.clone(), 999),
            PutOptions::with_content_type("application/x-tar"),
        )
        .await
        .unwrap();
    let overrides = ResponseOverrides::new(
        Some("application/octet-stream"),
        Some("attachment; filename=\"pkg-1.0.0.tgz\""),
    );
    let ttl = Duration::from_secs(300);
    match store.presign_support() {
        PresignSupport::Unsupported { reason } => {
            assert!(!reason.is_empty());
            let err = store.presign_get(&k, ttl, &overrides).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        }
        PresignSupport::Supported { max_ttl } => {
            assert!(max_ttl >= ttl);
            let url = store.presign_get(&k, ttl, &overrides).await.unwrap();
            let (status, ct, cd, bytes) = fetch(url.as_str()).await;
            assert_eq!(status, 200, "presigned GET of {}", url.redacted());
            assert!(bytes == data, "presigned GET returns the object");
            assert_eq!(
                ct.as_deref(),
                Some("application/octet-stream"),
                "content-type override"
            );
            assert_eq!(
                cd.as_deref(),
                Some("attachment; filename=\"pkg-1.0.0.tgz\"")
            );
            assert!(
                !url.redacted()
                    .contains(&url.as_str()[url.as_str().len() - 8..])
            );

            let (status, ..) = fetch(&tamper_signature(url.as_str())).await;
            assert_eq!(
                status, 403,
                "a tampered signature must be refused by storage"
            );

            let plain = store
                .presign_get(&k, ttl, &ResponseOverrides::default())
                .await
                .unwrap();
            let (status, ct, _, _) = fetch(plain.as_str()).await;
            assert_eq!(status, 200);
            assert_eq!(
                ct.as_deref(),
                Some("application/x-tar"),
                "stored content type"
            );
        }
    }
}

pub async fn presign_expired_refused(store: &dyn Storage) {
    if !store.presign_support().is_supported() {
        return; // covered by presign_matches_support
    }
    let p = unique_prefix();
    let k = key(&p, "short.tgz");
    store
        .put(&k, body(b"short-lived".to_vec(), 4), PutOptions::default())
        .await
        .unwrap();
    let url = store
        .presign_get(&k, Duration::from_secs(1), &ResponseOverrides::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (status, ..) = fetch(url.as_str()).await;
    assert_eq!(status, 403, "an expired URL must be refused by storage");
}

pub async fn presign_ttl_validated(store: &dyn Storage) {
    let PresignSupport::Supported { max_ttl } = store.presign_support() else {
        return;
    };
    let p = unique_prefix();
    let k = key(&p, "ttl.tgz");
    let none = ResponseOverrides::default();
    let err = store
        .presign_get(&k, Duration::from_millis(500), &none)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = store
        .presign_get(&k, max_ttl + Duration::from_secs(1), &none)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
