//! The SHA-256 of every file the archive's signed files declare: index files listed in an
//! `InRelease` / `Release` proxyd served, and `.deb` files listed in the `Packages` indexes it
//! served (read as they pass through, plain, gzip or xz), so each is verified before it is kept.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use proxyd_ecosystem::Bytes;

/// Pool files whose digest is remembered (a fingerprint and a digest each, about 100 bytes
/// with the map's own; the Debian archive's main amd64 index lists about 65,000).
const REMEMBERED: usize = 400_000;

/// The largest index read (compressed size as it arrives; uncompressed at most four times
/// this): larger ones pass through unread.
const MAX_INDEX: usize = 64 << 20;

/// Digests of pool files, bounded.
#[derive(Clone)]
pub(crate) struct PoolDigests {
    digests: Arc<quick_cache::sync::Cache<u128, [u8; 32]>>,
}

impl std::fmt::Debug for PoolDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolDigests")
            .field("remembered", &self.digests.len())
            .finish()
    }
}

/// A 128-bit fingerprint of a pool path (two SipHash runs with different prefixes).
fn fingerprint(path: &str) -> u128 {
    let half = |salt: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut h);
        path.hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl PoolDigests {
    pub(crate) fn new() -> Self {
        Self {
            digests: Arc::new(quick_cache::sync::Cache::new(REMEMBERED)),
        }
    }

    /// The SHA-256 (hex) an index declared for `pool_path` (`pool/main/h/hello/...deb`).
    pub(crate) fn sha256_hex(&self, pool_path: &str) -> Option<String> {
        self.digests.get(&fingerprint(pool_path)).map(|d| {
            d.iter().fold(String::with_capacity(64), |mut s, b| {
                s.push_str(&format!("{b:02x}"));
                s
            })
        })
    }

    /// Read a `Release` (or the message an `InRelease` signs) of the suite at `dir`
    /// (`dists/stable`): the SHA-256 of every index file it lists is remembered under
    /// `dir/path`. Returns how many.
    pub(crate) fn read_release(&self, dir: &str, body: &[u8]) -> usize {
        let Ok(text) = std::str::from_utf8(body) else {
            return 0;
        };
        // An InRelease is the Release between the armour lines.
        let text = match text.split_once("-----BEGIN PGP SIGNED MESSAGE-----") {
            Some((_, signed)) => {
                let message = signed.split_once("\n\n").map_or(signed, |(_, m)| m);
                message
                    .split("-----BEGIN PGP SIGNATURE-----")
                    .next()
                    .unwrap_or("")
            }
            None => text,
        };
        let mut n = 0;
        for paragraph in deb822_fast::borrowed::iter_paragraphs_borrowed(text) {
            let Ok(paragraph) = paragraph else { break };
            for line in paragraph.get("SHA256").unwrap_or_default() {
                let mut words = line.split_whitespace();
                if let (Some(hex), Some(_size), Some(path)) =
                    (words.next(), words.next(), words.next())
                    && let Some(sha) = hex_digest(hex)
                {
                    self.digests
                        .insert(fingerprint(&format!("{dir}/{path}")), sha);
                    n += 1;
                }
            }
        }
        n
    }

    /// Read an index body (plain, gzip or xz, told by its first bytes); the files it lists
    /// with a SHA-256 are remembered. Returns how many.
    pub(crate) fn read_index(&self, body: &[u8]) -> usize {
        let Some(text) = decompress(body) else {
            return 0;
        };
        let Ok(text) = std::str::from_utf8(&text) else {
            return 0;
        };
        let mut n = 0;
        for paragraph in deb822_fast::borrowed::iter_paragraphs_borrowed(text) {
            let Ok(paragraph) = paragraph else {
                break; // the rest is unreadable: what was read stands
            };
            if let (Some(file), Some(sha)) = (
                paragraph.get_single("Filename"),
                paragraph.get_single("SHA256").and_then(hex_digest),
            ) {
                self.digests.insert(fingerprint(file.trim()), sha);
                n += 1;
            }
        }
        n
    }

    /// `body` passed through unchanged, read once it has ended whole (in the background).
    pub(crate) fn read_as_it_passes(
        &self,
        body: proxyd_ecosystem::ByteStream,
    ) -> proxyd_ecosystem::ByteStream {
        let collected = Arc::new(Mutex::new(Some(Vec::new())));
        let tap = collected.clone();
        let seen = body.inspect(move |chunk| {
            let mut kept = tap.lock().unwrap_or_else(|p| p.into_inner());
            match (chunk, kept.as_mut()) {
                (Ok(bytes), Some(buf)) if buf.len() + bytes.len() <= MAX_INDEX => {
                    buf.extend_from_slice(bytes);
                }
                _ => *kept = None, // a failed or oversized body is not read
            }
        });
        let digests = self.clone();
        let end = futures::stream::once(async move {
            let body = collected.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(body) = body {
                let _ = tokio::task::spawn_blocking(move || digests.read_index(&body)).await;
            }
            None::<std::io::Result<Bytes>>
        })
        .filter_map(futures::future::ready);
        Box::pin(seen.chain(end))
    }
}

fn decompress(body: &[u8]) -> Option<Vec<u8>> {
    let limit = (MAX_INDEX as u64) * 4;
    if body.starts_with(&[0x1f, 0x8b]) {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    } else if body.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(body), &mut out).ok()?;
        (out.len() as u64 <= limit).then_some(out)
    } else {
        Some(body.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "Package: hello\nVersion: 2.10-3\nFilename: pool/main/h/hello/hello_2.10-3_amd64.deb\nSize: 5\nSHA256: 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\nDescription: hi\n there\n\nPackage: nohash\nFilename: pool/main/n/nohash.deb\n";

    #[test]
    fn release_files_are_read_signed_or_not() {
        let release = "Origin: test\nSuite: stable\nSHA256:\n 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03 123 main/binary-amd64/Packages\n 0000000000000000000000000000000000000000000000000000000000000001 45 main/binary-amd64/Packages.xz\n";
        let digests = PoolDigests::new();
        assert_eq!(digests.read_release("dists/stable", release.as_bytes()), 2);
        assert!(
            digests
                .sha256_hex("dists/stable/main/binary-amd64/Packages")
                .is_some()
        );
        let signed = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{release}-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n"
        );
        let fresh = PoolDigests::new();
        assert_eq!(fresh.read_release("dists/stable", signed.as_bytes()), 2);
    }

    #[test]
    fn indexes_plain_and_gzip_are_read() {
        let digests = PoolDigests::new();
        assert_eq!(digests.read_index(INDEX.as_bytes()), 1);
        assert_eq!(
            digests
                .sha256_hex("pool/main/h/hello/hello_2.10-3_amd64.deb")
                .as_deref(),
            Some("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
        );
        assert_eq!(digests.sha256_hex("pool/main/n/nohash.deb"), None);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, INDEX.replace("hello_", "hello2_").as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let fresh = PoolDigests::new();
        assert_eq!(fresh.read_index(&gz), 1);
        assert!(
            fresh
                .sha256_hex("pool/main/h/hello/hello2_2.10-3_amd64.deb")
                .is_some()
        );
        assert_eq!(
            fresh.read_index(&gz[..gz.len() / 2]),
            0,
            "cut short: nothing"
        );
    }
}
