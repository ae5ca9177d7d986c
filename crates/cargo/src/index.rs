//! Sparse index paths, index lines and the `dl` template.

use proxyd_ecosystem::serde_json::{self, Value};

/// Whether `name` is a valid crate name.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `version` looks like a semver version.
pub(crate) fn valid_version(version: &str) -> bool {
    (1..=100).contains(&version.len())
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
}

/// The index directory of a crate: `1`, `2`, `3/a`, `ab/cd`.
pub(crate) fn prefix(name: &str) -> String {
    match name.len() {
        1 => "1".into(),
        2 => "2".into(),
        3 => format!("3/{}", &name[..1]),
        _ => format!("{}/{}", &name[..2], &name[2..4]),
    }
}

/// The canonical index path of a crate (lower case).
pub(crate) fn index_path(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    format!("{}/{lower}", prefix(&lower))
}

/// What the index says about one version.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) name: String,
    pub(crate) cksum: String,
}

pub(crate) fn find_version(index_file: &[u8], version: &str) -> Option<IndexEntry> {
    for line in index_file.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if v.get("vers").and_then(Value::as_str) != Some(version) {
            continue;
        }
        let name = v.get("name").and_then(Value::as_str)?.to_owned();
        let cksum = v.get("cksum").and_then(Value::as_str)?.to_owned();
        return Some(IndexEntry { name, cksum });
    }
    None
}

/// The download URL from an upstream `dl` template.
pub(crate) fn download_url(dl: &str, name: &str, version: &str, cksum: &str) -> String {
    const MARKERS: [&str; 5] = [
        "{crate}",
        "{version}",
        "{prefix}",
        "{lowerprefix}",
        "{sha256-checksum}",
    ];
    if !MARKERS.iter().any(|m| dl.contains(m)) {
        return format!("{}/{name}/{version}/download", dl.trim_end_matches('/'));
    }
    dl.replace("{crate}", name)
        .replace("{version}", version)
        .replace("{prefix}", &prefix(name))
        .replace("{lowerprefix}", &prefix(&name.to_ascii_lowercase()))
        .replace("{sha256-checksum}", cksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(index_path("a"), "1/a");
        assert_eq!(index_path("ab"), "2/ab");
        assert_eq!(index_path("abc"), "3/a/abc");
        assert_eq!(index_path("Serde"), "se/rd/serde");
        assert!(valid_name("serde_json") && valid_name("tokio-util"));
        assert!(!valid_name("1abc") && !valid_name("a/b") && !valid_name(""));
        assert!(valid_version("1.0.0-beta.1+build.5"));
        assert!(!valid_version("../1"));
    }

    #[test]
    fn templates() {
        assert_eq!(
            download_url("http://d.test/api/v1/crates", "Foo", "1.0.0", "ab"),
            "http://d.test/api/v1/crates/Foo/1.0.0/download"
        );
        assert_eq!(
            download_url(
                "http://d.test/{prefix}/{lowerprefix}/{crate}-{version}.crate?c={sha256-checksum}",
                "Foo",
                "1.0.0",
                "ab"
            ),
            "http://d.test/3/F/3/f/Foo-1.0.0.crate?c=ab"
        );
    }

    #[test]
    fn lines() {
        let file = b"{\"name\":\"t\",\"vers\":\"0.1.0\",\"cksum\":\"aa\",\"yanked\":false}\n{\"name\":\"t\",\"vers\":\"0.2.0\",\"cksum\":\"bb\",\"yanked\":true}\n";
        assert_eq!(find_version(file, "0.2.0").unwrap().cksum, "bb");
        assert!(find_version(file, "0.3.0").is_none());
    }
}
