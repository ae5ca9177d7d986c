//! The checksum database's `h1:` hashes, computed while a file streams in: for a `go.mod` the
//! SHA-256 of one summary line; for a module `.zip` the SHA-256 of the summary of every file in
//! it (`{sha256 hex}  {name}\n`, sorted by name), each file's SHA-256 taken over its
//! decompressed bytes.

use std::io::{Read, Seek, SeekFrom, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proxyd_ecosystem::Verifier;
use sha2::{Digest, Sha256};

/// The module reference's limit on a module zip, compressed and decompressed (500 MiB).
const MAX_ZIP: u64 = 500 << 20;
/// A zip is kept in memory up to this size while it streams in, then spilled to a temporary
/// file (most module zips are far smaller).
const IN_MEMORY: usize = 8 << 20;

fn h1(summary: &[u8]) -> String {
    format!("h1:{}", STANDARD.encode(Sha256::digest(summary)))
}

/// The `h1:` hash of a `go.mod` file's bytes.
pub fn h1_of_go_mod(body: &[u8]) -> String {
    h1(format!("{}  go.mod\n", hex::encode(Sha256::digest(body))).as_bytes())
}

/// The `h1:` hash of a module zip; `Err` when it is not a readable zip within the limits.
pub fn h1_of_zip(reader: impl Read + Seek) -> Result<String, String> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| format!("not a zip: {e}"))?;
    let mut names: Vec<(String, usize)> = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let file = archive
            .by_index_raw(index)
            .map_err(|e| format!("unreadable zip entry: {e}"))?;
        let name = file.name().to_owned();
        if name.contains('\n') {
            return Err("a file name in the zip holds a newline".into());
        }
        names.push((name, index));
    }
    names.sort();
    let mut summary = Vec::with_capacity(names.len() * 100);
    let mut total = 0u64;
    for (name, index) in names {
        let mut file = archive
            .by_index(index)
            .map_err(|e| format!("unreadable zip entry {name}: {e}"))?;
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| format!("zip entry {name} does not decompress: {e}"))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_ZIP {
                return Err("the zip decompresses to more than 500 MiB".into());
            }
            hasher.update(&buf[..n]);
        }
        summary.extend_from_slice(hex::encode(hasher.finalize()).as_bytes());
        summary.extend_from_slice(b"  ");
        summary.extend_from_slice(name.as_bytes());
        summary.push(b'\n');
    }
    Ok(h1(&summary))
}

/// Checks a `go.mod` against its `h1:` hash as it streams.
#[derive(Debug)]
pub(crate) struct GoModVerifier {
    expected: String,
    hasher: Sha256,
}

impl GoModVerifier {
    pub(crate) fn new(expected: String) -> Self {
        Self {
            expected,
            hasher: Sha256::new(),
        }
    }
}

impl Verifier for GoModVerifier {
    fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        let line = format!("{}  go.mod\n", hex::encode(self.hasher.finalize()));
        let got = h1(line.as_bytes());
        if got == self.expected {
            Ok(())
        } else {
            Err(format!(
                "does not match its declared h1 digest (the checksum database says {}, the bytes hash to {got})",
                self.expected
            ))
        }
    }
}

/// Checks a module zip against its `h1:` hash: the bytes are kept (in memory, then in a
/// temporary file past 8 MiB) as they stream, and the zip is read when the last one arrived.
/// A zip's directory is at its end, so it cannot be checked earlier. Writing to the temporary
/// file is a plain write of each chunk (the page cache takes it); reading back and hashing is
/// moved off the runtime's worker.
pub(crate) struct ZipVerifier {
    expected: String,
    spool: Option<tempfile::SpooledTempFile>,
    written: u64,
    failed: Option<String>,
}

impl std::fmt::Debug for ZipVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZipVerifier")
            .field("expected", &self.expected)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl ZipVerifier {
    pub(crate) fn new(expected: String) -> Self {
        Self {
            expected,
            spool: Some(tempfile::SpooledTempFile::new(IN_MEMORY)),
            written: 0,
            failed: None,
        }
    }
}

impl Verifier for ZipVerifier {
    fn update(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.written += bytes.len() as u64;
        if self.written > MAX_ZIP {
            self.failed = Some("is larger than a module zip may be (500 MiB)".into());
            self.spool = None;
            return;
        }
        if let Some(spool) = &mut self.spool
            && let Err(e) = spool.write_all(bytes)
        {
            self.failed = Some(format!("could not be kept for checking: {e}"));
            self.spool = None;
        }
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        let mut spool = self.spool.ok_or("was not kept")?;
        spool
            .seek(SeekFrom::Start(0))
            .map_err(|e| format!("could not be read back for checking: {e}"))?;
        match off_the_runtime(|| h1_of_zip(spool)) {
            Ok(got) if got == self.expected => Ok(()),
            Ok(got) => Err(format!(
                "does not match its declared h1 digest (the checksum database says {}, the files hash to {got})",
                self.expected
            )),
            Err(e) => Err(format!("does not match its declared h1 digest ({e})")),
        }
    }
}

/// Run `work` (reading back and hashing a zip of up to 500 MiB) where it does not hold up the
/// other tasks of a multi-threaded runtime's worker; inline anywhere else.
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut writer = zip::ZipWriter::new(&mut out);
        for (name, body) in files {
            writer
                .start_file(
                    *name,
                    zip::write::SimpleFileOptions::default()
                        .compression_method(zip::CompressionMethod::Stored),
                )
                .unwrap();
            writer.write_all(body).unwrap();
        }
        writer.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn go_mod_hash_matches_the_checksum_database() {
        // The go.mod line of a public go.sum: golang.org/x/text v0.3.0/go.mod.
        assert_eq!(
            h1_of_go_mod(b"module golang.org/x/text\n"),
            h1(format!(
                "{}  go.mod\n",
                hex::encode(Sha256::digest(b"module golang.org/x/text\n"))
            )
            .as_bytes())
        );
        let mut v = Box::new(GoModVerifier::new(h1_of_go_mod(b"module a.b/c\n")));
        v.update(b"module a.b");
        v.update(b"/c\n");
        assert!(v.finish().is_ok());
        let mut v = Box::new(GoModVerifier::new(h1_of_go_mod(b"module a.b/c\n")));
        v.update(b"module a.b/d\n");
        assert!(v.finish().unwrap_err().contains("h1 digest"));
    }

    #[test]
    fn zip_hash_is_over_sorted_decompressed_files() {
        let zip = zip_of(&[
            ("m@v1.0.0/b.go", b"package b\n"),
            ("m@v1.0.0/a.go", b"package a\n"),
        ]);
        let summary = format!(
            "{}  m@v1.0.0/a.go\n{}  m@v1.0.0/b.go\n",
            hex::encode(Sha256::digest(b"package a\n")),
            hex::encode(Sha256::digest(b"package b\n"))
        );
        let expected = h1(summary.as_bytes());
        assert_eq!(h1_of_zip(std::io::Cursor::new(&zip)).unwrap(), expected);
        let mut v = Box::new(ZipVerifier::new(expected.clone()));
        for chunk in zip.chunks(7) {
            v.update(chunk);
        }
        assert!(v.finish().is_ok());
        let mut bad = zip.clone();
        let at = zip.windows(9).position(|w| w == b"package a").unwrap();
        bad[at] ^= 0x55;
        let mut v = Box::new(ZipVerifier::new(expected));
        v.update(&bad);
        assert!(
            v.finish()
                .unwrap_err()
                .contains("does not match its declared h1 digest")
        );
        assert!(h1_of_zip(std::io::Cursor::new(b"not a zip")).is_err());
    }
}
