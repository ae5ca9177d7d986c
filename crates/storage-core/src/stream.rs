use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::ByteStream;

/// Size and SHA-256 of everything a [`PartReader`] has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutDigest {
    /// Bytes read.
    pub size: u64,
    /// SHA-256 of those bytes.
    pub sha256: [u8; 32],
}

/// Reads a put body chunk by chunk or in fixed-size parts, hashing on the way.
///
/// Backends use it so that every one computes size and SHA-256 the same way and none collects
/// a whole body: at most one part is held in memory.
pub struct PartReader {
    body: ByteStream,
    pending: Option<Bytes>,
    hasher: Sha256,
    size: u64,
    done: bool,
}

impl PartReader {
    /// Start reading `body`.
    pub fn new(body: ByteStream) -> Self {
        Self {
            body,
            pending: None,
            hasher: Sha256::new(),
            size: 0,
            done: false,
        }
    }

    /// The next non-empty chunk as the body produced it, `None` at the end.
    pub async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        if let Some(pending) = self.pending.take() {
            return Ok(Some(pending));
        }
        while !self.done {
            match self.body.next().await {
                None => self.done = true,
                Some(Err(err)) => return Err(err),
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    self.hasher.update(&chunk);
                    self.size += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
            }
        }
        Ok(None)
    }

    /// The next part of exactly `part_size` bytes (the last may be shorter), `None` at the end.
    pub async fn next_part(&mut self, part_size: usize) -> std::io::Result<Option<Bytes>> {
        assert!(part_size > 0, "part size must be positive");
        let mut buf = BytesMut::new();
        while buf.len() < part_size {
            let Some(mut chunk) = self.next_chunk().await? else {
                break;
            };
            let need = part_size - buf.len();
            if chunk.len() > need {
                self.pending = Some(chunk.split_off(need));
            }
            if buf.is_empty() && chunk.len() == part_size {
                return Ok(Some(chunk)); // a whole part in one chunk: no copy
            }
            if buf.capacity() == 0 {
                buf.reserve(part_size);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(if buf.is_empty() {
            None
        } else {
            Some(buf.freeze())
        })
    }

    /// Whether the body has ended (and nothing is pending).
    pub fn is_done(&self) -> bool {
        self.done && self.pending.is_none()
    }

    /// Whether the body has no more bytes, reading ahead one chunk if needed (kept for the
    /// next read).
    pub async fn at_end(&mut self) -> std::io::Result<bool> {
        if self.pending.is_some() {
            return Ok(false);
        }
        match self.next_chunk().await? {
            Some(chunk) => {
                self.pending = Some(chunk);
                Ok(false)
            }
            None => Ok(true),
        }
    }

    /// What a completed put reports: size and SHA-256 of what was read, and the new ETag.
    pub fn put_result(&self, etag: Option<String>) -> crate::PutResult {
        let digest = self.digest();
        crate::PutResult {
            size: digest.size,
            sha256: digest.sha256,
            etag,
        }
    }

    /// Size and SHA-256 of what was read; call after the body ended.
    pub fn digest(&self) -> PutDigest {
        PutDigest {
            size: self.size,
            sha256: self.hasher.clone().finalize().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn body(chunks: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    #[tokio::test]
    async fn parts_are_exact_and_hash_covers_all() {
        let mut r = PartReader::new(body(vec![b"abc", b"", b"defgh", b"ij"]));
        let mut parts = Vec::new();
        while let Some(p) = r.next_part(4).await.unwrap() {
            parts.push(p);
        }
        assert_eq!(parts, vec![&b"abcd"[..], &b"efgh"[..], &b"ij"[..]]);
        assert!(r.is_done());
        let d = r.digest();
        assert_eq!(d.size, 10);
        let expected: [u8; 32] = Sha256::digest(b"abcdefghij").into();
        assert_eq!(d.sha256, expected);
    }

    #[tokio::test]
    async fn error_surfaces() {
        let s: ByteStream = Box::pin(stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("cut")),
        ]));
        let mut r = PartReader::new(s);
        assert!(r.next_part(8).await.is_err());
    }
}
