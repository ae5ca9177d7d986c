//! The SHA-256 of every file the archive's signed files declare: index files listed in an
//! `InRelease` / `Release` proxyd served, and `.deb` files listed in the `Packages` indexes it
//! served (read as they pass through, plain, gzip or xz), so each is verified before it is kept.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use proxyd_ecosystem::{Bytes, DigestVerifier, ExpectedDigest, fingerprint};

/// Pool files whose digest is remembered (a fingerprint and a digest each, about 100 bytes
/// with the map's own; the Debian archive's main amd64 index lists about 65,000).
const REMEMBERED: usize = 400_000;

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

    /// Read a whole index body (plain, gzip or xz, told by its first bytes); the files it
    /// lists with a SHA-256 are remembered. Returns how many (none when the body is unreadable
    /// or cut short).
    #[cfg(test)]
    pub(crate) fn read_index(&self, body: &[u8]) -> usize {
        let mut reader = IndexReader::new(None);
        reader.feed(body);
        self.remember(reader.finish())
    }

    fn remember(&self, found: Option<Vec<(u128, [u8; 32])>>) -> usize {
        let found = found.unwrap_or_default();
        for (fingerprint, sha) in &found {
            self.digests.insert(*fingerprint, *sha);
        }
        found.len()
    }

    /// `body` passed through unchanged, read as it passes (decompressed and parsed paragraph
    /// by paragraph, never held whole). What it lists is remembered only once it has ended
    /// whole and, when the suite's release declares its digest (`expected`), matched it: a
    /// tampered index never supplies digests.
    pub(crate) fn read_as_it_passes(
        &self,
        body: proxyd_ecosystem::ByteStream,
        expected: Option<&ExpectedDigest>,
    ) -> proxyd_ecosystem::ByteStream {
        let reader = Arc::new(Mutex::new(Some(IndexReader::new(
            expected.map(ExpectedDigest::verifier),
        ))));
        let tap = reader.clone();
        let seen = body.inspect(move |chunk| {
            let mut reader = tap.lock().unwrap_or_else(|p| p.into_inner());
            match (chunk, reader.as_mut()) {
                (Ok(bytes), Some(r)) => r.feed(bytes),
                _ => *reader = None, // a failed body is not read
            }
        });
        let digests = self.clone();
        let end = futures::stream::once(async move {
            let reader = reader.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(reader) = reader {
                digests.remember(reader.finish());
            }
            None::<std::io::Result<Bytes>>
        })
        .filter_map(futures::future::ready);
        Box::pin(seen.chain(end))
    }
}

/// Decompressed bytes read at most (Debian's largest `Packages` is about 50 MB).
const MAX_DECODED: u64 = 1 << 30;

/// The longest paragraph held while it is incomplete.
const MAX_PARAGRAPH: usize = 1 << 20;

/// How an index is compressed, known from its first bytes.
enum Decoder {
    /// Fewer than six bytes seen.
    Undecided(Vec<u8>),
    Plain,
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Xz(Box<xz2::write::XzDecoder<Vec<u8>>>),
}

const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// A package index read chunk by chunk: decompressed as the bytes arrive and split into
/// paragraphs, so only the paragraph being read is held, plus the digests found.
struct IndexReader {
    decoder: Decoder,
    /// Decompressed bytes not yet split into paragraphs.
    text: Vec<u8>,
    found: Vec<(u128, [u8; 32])>,
    decoded: u64,
    check: Option<DigestVerifier>,
    broken: bool,
}

impl IndexReader {
    fn new(check: Option<DigestVerifier>) -> Self {
        Self {
            decoder: Decoder::Undecided(Vec::new()),
            text: Vec::new(),
            found: Vec::new(),
            decoded: 0,
            check,
            broken: false,
        }
    }

    /// The next bytes of the body. Decompression runs here, on the fetch's task: a chunk of a
    /// few KiB decodes in well under a millisecond, and an index is read once per refresh.
    fn feed(&mut self, chunk: &[u8]) {
        if let Some(check) = self.check.as_mut() {
            check.update(chunk);
        }
        if self.broken {
            return;
        }
        if let Decoder::Undecided(head) = &mut self.decoder {
            head.extend_from_slice(chunk);
            if head.len() < XZ_MAGIC.len() {
                return;
            }
            let head = std::mem::take(head);
            self.decoder = if head.starts_with(&[0x1f, 0x8b]) {
                Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
            } else if head.starts_with(&XZ_MAGIC) {
                Decoder::Xz(Box::new(xz2::write::XzDecoder::new_multi_decoder(
                    Vec::new(),
                )))
            } else {
                Decoder::Plain
            };
            return self.feed_decided(&head);
        }
        self.feed_decided(chunk);
    }

    fn feed_decided(&mut self, chunk: &[u8]) {
        use std::io::Write;
        let written = match &mut self.decoder {
            Decoder::Undecided(_) => return,
            Decoder::Plain => {
                self.text.extend_from_slice(chunk);
                self.decoded += chunk.len() as u64;
                Ok(())
            }
            Decoder::Gzip(d) => d.write_all(chunk),
            Decoder::Xz(d) => d.write_all(chunk),
        };
        if written.is_err() {
            self.broken = true;
            return;
        }
        self.take_decoded();
        self.split_paragraphs();
    }

    /// Move what the decompressor produced into `text`.
    fn take_decoded(&mut self) {
        let out = match &mut self.decoder {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Xz(d) => d.get_mut(),
            _ => return,
        };
        self.decoded += out.len() as u64;
        self.text.extend_from_slice(out);
        out.clear();
    }

    /// Parse every complete paragraph in `text`, keeping the incomplete rest.
    fn split_paragraphs(&mut self) {
        let mut start = 0;
        while let Some(at) = self.text[start..].windows(2).position(|w| w == b"\n\n") {
            let end = start + at + 2;
            self.paragraph(start, end);
            start = end;
        }
        self.text.drain(..start);
        if self.text.len() > MAX_PARAGRAPH || self.decoded > MAX_DECODED {
            self.broken = true;
        }
    }

    fn paragraph(&mut self, start: usize, end: usize) {
        if self.found.len() >= REMEMBERED {
            return;
        }
        let Ok(text) = std::str::from_utf8(&self.text[start..end]) else {
            return;
        };
        for paragraph in deb822_fast::borrowed::iter_paragraphs_borrowed(text).flatten() {
            if let (Some(file), Some(sha)) = (
                paragraph.get_single("Filename"),
                paragraph.get_single("SHA256").and_then(hex_digest),
            ) {
                self.found.push((fingerprint(file.trim()), sha));
            }
        }
    }

    /// What the index listed, if it ended whole (and matched its declared digest).
    fn finish(mut self) -> Option<Vec<(u128, [u8; 32])>> {
        let finished = match &mut self.decoder {
            Decoder::Undecided(head) => {
                let head = std::mem::take(head);
                self.decoder = Decoder::Plain;
                self.feed_decided(&head);
                Ok(())
            }
            Decoder::Plain => Ok(()),
            Decoder::Gzip(d) => d.try_finish(),
            // Finishing hands the last of the output back (the decoder is done with it).
            Decoder::Xz(d) => d.finish().map(|rest| {
                self.decoded += rest.len() as u64;
                self.text.extend_from_slice(&rest);
            }),
        };
        if finished.is_err() {
            return None;
        }
        if !matches!(self.decoder, Decoder::Xz(_)) {
            self.take_decoded();
        }
        self.split_paragraphs();
        let rest = self.text.len();
        self.paragraph(0, rest);
        if self.broken || self.check.take().is_some_and(|c| !c.matches()) {
            return None;
        }
        Some(self.found)
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
    fn an_index_is_read_in_small_chunks_and_only_when_it_matches_its_digest() {
        use std::io::Write;
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(INDEX.as_bytes()).unwrap();
        let xz = xz.finish().unwrap();
        let read = |expected: Option<ExpectedDigest>| {
            let mut reader = IndexReader::new(expected.as_ref().map(ExpectedDigest::verifier));
            for chunk in xz.chunks(3) {
                reader.feed(chunk);
            }
            reader.finish()
        };
        assert_eq!(
            read(None).map(|f| f.len()),
            Some(1),
            "xz, three bytes at a time"
        );
        let wrong = ExpectedDigest::sha256_hex(&"00".repeat(32)).unwrap();
        assert_eq!(
            read(Some(wrong)),
            None,
            "an index that does not match supplies nothing"
        );
        let mut cut = IndexReader::new(None);
        cut.feed(&xz[..xz.len() - 4]);
        assert_eq!(cut.finish(), None, "cut short: nothing");
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
