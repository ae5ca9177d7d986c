//! What proxyd reads of a checksum database: a lookup's records (`path version h1:…` and
//! `path version/go.mod h1:…`) and, when the verifier key is configured, the signature of the
//! signed tree head the lookup ends with.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// The hashes a lookup gives for one module version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// The `.zip`'s `h1:` hash.
    pub zip: Option<String>,
    /// The `.mod`'s `h1:` hash.
    pub go_mod: Option<String>,
}

/// A lookup answer, read.
#[derive(Debug)]
pub(crate) struct Lookup<'a> {
    /// The hashes for the module version asked about.
    pub(crate) records: Records,
    /// The record's number in the tree.
    pub(crate) id: u64,
    /// The record as the tree hashes it (its lines, each ending in a newline).
    pub(crate) data: &'a [u8],
    /// The signed tree head.
    pub(crate) note: &'a [u8],
}

/// A signed tree head's text: `go.sum database tree`, the tree's size and its root hash.
pub(crate) fn tree_of(note: &[u8]) -> Result<(u64, [u8; 32]), String> {
    let text = std::str::from_utf8(note).map_err(|_| "the tree head is not UTF-8")?;
    let mut lines = text.lines();
    let (Some("go.sum database tree"), Some(size), Some(root)) =
        (lines.next(), lines.next(), lines.next())
    else {
        return Err("the tree head is not a go.sum database tree".into());
    };
    let size = size
        .parse()
        .map_err(|_| "the tree head's size is not a number".to_owned())?;
    let root: [u8; 32] = STANDARD
        .decode(root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or("the tree head's root is not a base64 SHA-256")?;
    Ok((size, root))
}

impl Records {
    /// Read a lookup answer for `path` at `version`; `Err` when it is not one (cut short, no
    /// signed tree head after the records).
    pub fn parse<'a>(
        body: &'a [u8],
        path: &str,
        version: &str,
    ) -> Result<(Self, &'a [u8]), String> {
        Self::lookup(body, path, version).map(|l| (l.records, l.note))
    }

    pub(crate) fn lookup<'a>(
        body: &'a [u8],
        path: &str,
        version: &str,
    ) -> Result<Lookup<'a>, String> {
        let text = std::str::from_utf8(body).map_err(|_| "a lookup is UTF-8 text".to_owned())?;
        let (records, note) = text.split_once("\n\n").ok_or(
            "a lookup ends with a signed tree head after a blank line: this one was cut short",
        )?;
        if !note.ends_with('\n') || !note.contains("\n\n") {
            return Err("the signed tree head of the lookup was cut short".into());
        }
        let mut lines = records.lines();
        let id = lines.next().unwrap_or_default();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err("a lookup starts with its record number".into());
        }
        let mut found = Self::default();
        let mod_version = format!("{version}/go.mod");
        for line in lines {
            let mut words = line.split(' ');
            let (Some(p), Some(v), Some(hash), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(format!("a lookup line is malformed: {line:?}"));
            };
            if p != path || !hash.starts_with("h1:") {
                continue;
            }
            if v == version {
                found.zip = Some(hash.to_owned());
            } else if v == mod_version {
                found.go_mod = Some(hash.to_owned());
            }
        }
        Ok(Lookup {
            records: found,
            id: id.parse().map_err(|_| "the record number is too large")?,
            data: &body[id.len() + 1..records.len() + 1],
            note: &body[records.len() + 2..],
        })
    }
}

/// A checksum database's verifier key, as written in `GOSUMDB` (`name+hash+key`).
#[derive(Debug, Clone)]
pub struct VerifierKey {
    name: String,
    hash: [u8; 4],
    key: VerifyingKey,
}

impl VerifierKey {
    /// Parse `name+hash+base64`; `Err` says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("a verifier key is name+hash+key".into());
        };
        let key = STANDARD
            .decode(key)
            .map_err(|_| "the key part of the verifier key is not base64".to_owned())?;
        let hash = u32::from_str_radix(hash, 16)
            .ok()
            .filter(|_| hash.len() == 8)
            .ok_or("the hash part of the verifier key is 8 hex digits")?
            .to_be_bytes();
        if key_hash(name, &key) != hash {
            return Err("the verifier key's hash does not match its name and key".into());
        }
        let [1, rest @ ..] = key.as_slice() else {
            return Err("the verifier key is not an Ed25519 key".into());
        };
        let bytes: [u8; 32] = rest
            .try_into()
            .map_err(|_| "an Ed25519 verifier key is 32 bytes".to_owned())?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "the verifier key is not a valid Ed25519 key".to_owned())?;
        Ok(Self {
            name: name.to_owned(),
            hash,
            key,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Ok` when `note` (a signed note: text, a blank line, signature lines) carries a valid
    /// signature by this key over its text.
    pub fn verify_note(&self, note: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(note).map_err(|_| "the signed note is not UTF-8")?;
        let split = text
            .rfind("\n\n")
            .ok_or("the signed note has no signatures")?;
        let (message, signatures) = (&text[..split + 1], &text[split + 2..]);
        let prefix = format!("\u{2014} {} ", self.name);
        for line in signatures.lines() {
            let Some(b64) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(sig) = STANDARD.decode(b64) else {
                continue;
            };
            if sig.len() != 68 || sig[..4] != self.hash {
                continue;
            }
            let Ok(signature) = Signature::from_slice(&sig[4..]) else {
                continue;
            };
            return self
                .key
                .verify_strict(message.as_bytes(), &signature)
                .map_err(|_| format!("the tree head's signature by {} is not valid", self.name));
        }
        Err(format!("the tree head is not signed by {}", self.name))
    }
}

fn key_hash(name: &str, key: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(key);
    let sum = h.finalize();
    [sum[0], sum[1], sum[2], sum[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key_and_note(text: &str) -> (String, String) {
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let mut key = vec![1u8];
        key.extend_from_slice(signing.verifying_key().as_bytes());
        let hash = key_hash("sum.test", &key);
        let vkey = format!("sum.test+{}+{}", hex::encode(hash), STANDARD.encode(&key));
        let mut sig = hash.to_vec();
        sig.extend_from_slice(&signing.sign(text.as_bytes()).to_bytes());
        let note = format!("{text}\n\u{2014} sum.test {}\n", STANDARD.encode(sig));
        (vkey, note)
    }

    #[test]
    fn lookups_are_read_and_their_tree_heads_checked() {
        let tree = "go.sum database tree\n3\nAAAA\n";
        let (vkey, note) = key_and_note(tree);
        let body = format!("2\na.b/c v1.0.0 h1:zip=\na.b/c v1.0.0/go.mod h1:mod=\n\n{note}");
        let (records, signed) = Records::parse(body.as_bytes(), "a.b/c", "v1.0.0").unwrap();
        assert_eq!(records.zip.as_deref(), Some("h1:zip="));
        assert_eq!(records.go_mod.as_deref(), Some("h1:mod="));
        let key = VerifierKey::parse(&vkey).unwrap();
        assert_eq!(key.name(), "sum.test");
        key.verify_note(signed).unwrap();
        let forged = note.replace("\n3\n", "\n4\n");
        assert!(key.verify_note(forged.as_bytes()).is_err());
        assert!(Records::parse(&body.as_bytes()[..30], "a.b/c", "v1.0.0").is_err());
        assert!(VerifierKey::parse("sum.test+00000000+AQ==").is_err());
        assert!(VerifierKey::parse("nonsense").is_err());
    }
}
