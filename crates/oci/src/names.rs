//! Repository names, tags and digests as the OCI distribution specification defines them.

/// The longest repository name accepted.
const MAX_NAME: usize = 255;

/// `Ok` when `name` is a repository name: path components of lower case letters and digits
/// separated by `.`, `_`, `__` or runs of `-`, joined by `/`, at most 255 characters.
pub fn check_repository(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("a repository name is 1 to {MAX_NAME} characters"));
    }
    for component in name.split('/') {
        if !component_ok(component) {
            return Err(format!(
                "repository name {name:?}: component {component:?} is not lower case letters and digits separated by . _ __ or -"
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or one or more `-`, then an alphanumeric.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !bytes.get(i).is_some_and(|b| alnum(*b)) {
            return false;
        }
    }
    true
}

/// A content digest: `sha256:` and 64 lower case hex digits, or `sha512:` and 128.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    /// `sha256` or `sha512`.
    pub algorithm: &'static str,
    /// The hex digits.
    pub hex: String,
}

impl Digest {
    /// Parse `algorithm:hex`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (algorithm, hex) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not a digest (algorithm:hex)"))?;
        let (algorithm, len) = match algorithm {
            "sha256" => ("sha256", 64),
            "sha512" => ("sha512", 128),
            other => {
                return Err(format!(
                    "digest algorithm {other:?} is not supported (sha256, sha512)"
                ));
            }
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "{text:?} is not a digest: {algorithm} takes {len} lower case hex digits"
            ));
        }
        Ok(Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes` by this digest's algorithm.
    pub fn of(&self, bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        let hex = match self.algorithm {
            "sha512" => hex::encode(sha2::Sha512::digest(bytes)),
            _ => hex::encode(sha2::Sha256::digest(bytes)),
        };
        Self {
            algorithm: self.algorithm,
            hex,
        }
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            algorithm: "sha256",
            hex: hex::encode(sha2::Sha256::digest(bytes)),
        }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// A manifest reference: a tag, or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl Reference {
    /// Parse a tag or a digest.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains(':') {
            return Digest::parse(text).map(Self::Digest);
        }
        let ok = (1..=128).contains(&text.len())
            && text
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self::Tag(text.to_owned()))
        } else {
            Err(format!(
                "{text:?} is not a tag (up to 128 of A-Z a-z 0-9 . _ -, not starting with . or -)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_specification() {
        for ok in ["library/alpine", "a", "a.b/c_d/e__f/g--h", "x0/y-1"] {
            assert!(check_repository(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Library/alpine",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a/../b",
            "a%2fb",
            "a b",
        ] {
            assert!(check_repository(bad).is_err(), "{bad:?}");
        }
        assert!(check_repository(&"a".repeat(256)).is_err());
    }

    #[test]
    fn references_are_tags_or_digests() {
        let hex = "ab".repeat(32);
        assert_eq!(
            Reference::parse(&format!("sha256:{hex}")),
            Ok(Reference::Digest(Digest {
                algorithm: "sha256",
                hex: hex.clone()
            }))
        );
        assert_eq!(Reference::parse("1.0"), Ok(Reference::Tag("1.0".into())));
        assert_eq!(Reference::parse("_x"), Ok(Reference::Tag("_x".into())));
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "sha256:abc",
            "md5:0123",
            &format!("sha256:{}", "AB".repeat(32)),
            &"a".repeat(129),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
        let d = Digest::sha256_of(b"x");
        assert_eq!(d.of(b"x"), d);
        assert_eq!(Digest::parse(&d.to_string()), Ok(d));
    }
}
