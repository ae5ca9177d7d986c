use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// Checks an artifact's bytes as they stream, before anything is committed: a declared digest
/// ([`ExpectedDigest::verifier`]) or a hash an ecosystem computes over the content.
pub trait Verifier: Send + Sync + std::fmt::Debug {
    /// Feed the next bytes.
    fn update(&mut self, bytes: &[u8]);
    /// `Ok` when everything fed is what was expected, else a reason completing the sentence
    /// "upstream file NAME ..." (for example "does not match its declared sha256 digest").
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// A digest the upstream registry declared for an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedDigest {
    /// SHA-512 (npm's `dist.integrity`).
    Sha512(Vec<u8>),
    /// SHA-256 (PyPI's `#sha256=`, Cargo's `cksum`).
    Sha256(Vec<u8>),
    /// SHA-1 (npm's legacy `dist.shasum`, Maven's `.sha1`).
    Sha1(Vec<u8>),
    /// MD5 (where nothing stronger is declared).
    Md5(Vec<u8>),
}

impl ExpectedDigest {
    /// Parse a Subresource Integrity string (`sha512-BASE64`); of several, the strongest.
    pub fn from_sri(sri: &str) -> Option<Self> {
        let mut best: Option<Self> = None;
        for part in sri.split_whitespace() {
            let Some((alg, b64)) = part.split_once('-') else {
                continue;
            };
            let b64 = b64.split('?').next().unwrap_or_default();
            let Ok(bytes) = STANDARD.decode(b64) else {
                continue;
            };
            let candidate = match (alg, bytes.len()) {
                ("sha512", 64) => Self::Sha512(bytes),
                ("sha256", 32) => Self::Sha256(bytes),
                ("sha1", 20) => Self::Sha1(bytes),
                _ => continue,
            };
            if best
                .as_ref()
                .is_none_or(|b| candidate.strength() > b.strength())
            {
                best = Some(candidate);
            }
        }
        best
    }

    /// Parse a hex SHA-256.
    pub fn sha256_hex(hex_digest: &str) -> Option<Self> {
        let bytes = hex::decode(hex_digest.trim()).ok()?;
        (bytes.len() == 32).then_some(Self::Sha256(bytes))
    }

    /// Parse a hex SHA-1.
    pub fn sha1_hex(hex_digest: &str) -> Option<Self> {
        let bytes = hex::decode(hex_digest.trim()).ok()?;
        (bytes.len() == 20).then_some(Self::Sha1(bytes))
    }

    /// Parse a hex SHA-512.
    pub fn sha512_hex(hex_digest: &str) -> Option<Self> {
        let bytes = hex::decode(hex_digest.trim()).ok()?;
        (bytes.len() == 64).then_some(Self::Sha512(bytes))
    }

    /// Parse a hex MD5.
    pub fn md5_hex(hex_digest: &str) -> Option<Self> {
        let bytes = hex::decode(hex_digest.trim()).ok()?;
        (bytes.len() == 16).then_some(Self::Md5(bytes))
    }

    fn strength(&self) -> u8 {
        match self {
            Self::Md5(_) => 0,
            Self::Sha1(_) => 1,
            Self::Sha256(_) => 2,
            Self::Sha512(_) => 3,
        }
    }

    /// Algorithm name.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Sha512(_) => "sha512",
            Self::Sha256(_) => "sha256",
            Self::Sha1(_) => "sha1",
            Self::Md5(_) => "md5",
        }
    }

    /// A hasher that checks bytes against this digest.
    pub fn verifier(&self) -> DigestVerifier {
        let state = match self {
            Self::Sha512(_) => State::Sha512(Sha512::new()),
            Self::Sha256(_) => State::Sha256(Sha256::new()),
            Self::Sha1(_) => State::Sha1(Sha1::new()),
            Self::Md5(_) => State::Md5(Md5::new()),
        };
        DigestVerifier {
            expected: self.clone(),
            state,
        }
    }

    /// [`ExpectedDigest::verifier`], boxed for an [`crate::ArtifactSpec`].
    pub fn boxed_verifier(&self) -> Box<dyn Verifier> {
        Box::new(self.verifier())
    }
}

enum State {
    Sha512(Sha512),
    Sha256(Sha256),
    Sha1(Sha1),
    Md5(Md5),
}

/// Hashes bytes as they stream and says at the end whether they match.
pub struct DigestVerifier {
    expected: ExpectedDigest,
    state: State,
}

impl DigestVerifier {
    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Sha512(h) => h.update(bytes),
            State::Sha256(h) => h.update(bytes),
            State::Sha1(h) => h.update(bytes),
            State::Md5(h) => h.update(bytes),
        }
    }

    /// Whether everything fed matches the expected digest.
    pub fn matches(self) -> bool {
        let actual: Vec<u8> = match self.state {
            State::Sha512(h) => h.finalize().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
            State::Sha1(h) => h.finalize().to_vec(),
            State::Md5(h) => h.finalize().to_vec(),
        };
        let expected = match &self.expected {
            ExpectedDigest::Sha512(d)
            | ExpectedDigest::Sha256(d)
            | ExpectedDigest::Sha1(d)
            | ExpectedDigest::Md5(d) => d,
        };
        actual == *expected
    }
}

impl std::fmt::Debug for DigestVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestVerifier")
            .field("algorithm", &self.expected.algorithm())
            .finish_non_exhaustive()
    }
}

impl Verifier for DigestVerifier {
    fn update(&mut self, bytes: &[u8]) {
        DigestVerifier::update(self, bytes);
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        let algorithm = self.expected.algorithm();
        if self.matches() {
            Ok(())
        } else {
            Err(format!("does not match its declared {algorithm} digest"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sri_picks_strongest_and_verifies() {
        let data = b"hello";
        let sha512 = STANDARD.encode(Sha512::digest(data));
        let sha1 = STANDARD.encode(Sha1::digest(data));
        let d = ExpectedDigest::from_sri(&format!("sha1-{sha1} sha512-{sha512}")).unwrap();
        assert_eq!(d.algorithm(), "sha512");
        let mut v = d.verifier();
        v.update(b"hel");
        v.update(b"lo");
        assert!(v.matches());
        let mut v = d.verifier();
        v.update(b"hellO");
        assert!(!v.matches());
        assert!(ExpectedDigest::from_sri("md5-xxxx").is_none());
        assert!(ExpectedDigest::sha256_hex(&hex::encode(Sha256::digest(data))).is_some());
        assert!(ExpectedDigest::sha1_hex("zz").is_none());
    }
}
