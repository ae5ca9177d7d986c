//! Maven repository paths (`group/as/dirs/artifact/version/file`): validated and classified
//! without any I/O.

/// The longest path accepted (Maven coordinates are short; this bounds what a client can send).
const MAX_PATH: usize = 1024;

/// The longest segment accepted.
const MAX_SEGMENT: usize = 255;

/// Checksum extensions, strongest first: the order in which a release artifact's checksum is
/// looked for upstream is the reverse (`.sha1` is what every repository has, and what Maven asks
/// for next anyway).
pub(crate) const CHECKSUMS: [&str; 4] = ["sha512", "sha256", "sha1", "md5"];

/// What a file in a Maven repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MavenFile {
    /// A release artifact (`.jar`, `.pom`, `.module`, `.war`, classifiers, ...): immutable.
    Release,
    /// An artifact of a `-SNAPSHOT` version: revalidated after `metadata_ttl`.
    Snapshot,
    /// `maven-metadata.xml`, anywhere: revalidated after `metadata_ttl`.
    Metadata,
    /// A checksum file (`.sha1`, `.sha256`, `.sha512`, `.md5`) of another file, with the
    /// algorithm.
    Checksum(&'static str),
    /// A signature (`.asc`).
    Signature,
    /// Anything else (an archetype catalog, an index file): a document revalidated after
    /// `metadata_ttl`.
    Other,
}

/// A validated path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MavenPath {
    /// The path, without a leading slash.
    pub path: String,
    /// What it is.
    pub file: MavenFile,
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= MAX_SEGMENT
        && segment != "."
        && segment != ".."
        && !segment.starts_with('.')
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+~".contains(&b))
}

impl MavenPath {
    /// Validate and classify `path` (after the mount); `Err` with a one-line reason.
    pub fn parse(path: &str) -> Result<Self, String> {
        let path = path.strip_prefix('/').unwrap_or(path);
        if path.is_empty() || path.ends_with('/') {
            return Err("a Maven path names a file".into());
        }
        if path.len() > MAX_PATH {
            return Err(format!("paths are at most {MAX_PATH} characters"));
        }
        if path.contains('%') {
            return Err("percent-escapes are not accepted in Maven paths".into());
        }
        let segments: Vec<&str> = path.split('/').collect();
        if let Some(bad) = segments.iter().find(|s| !valid_segment(s)) {
            return Err(format!(
                "{:?} is not a path segment of a Maven repository",
                truncate(bad)
            ));
        }
        if segments.len() < 2 {
            return Err("a Maven path has a group directory and a file".into());
        }
        let name = segments[segments.len() - 1];
        let file = classify(&segments, name);
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The file this checksum or signature is of (`a.jar` for `a.jar.sha1`).
    pub fn subject(&self) -> Option<&str> {
        match self.file {
            MavenFile::Checksum(alg) => self.path.strip_suffix(&format!(".{alg}")[..]),
            MavenFile::Signature => self.path.strip_suffix(".asc"),
            _ => None,
        }
    }

    /// Group, artifact, version and file name of an artifact path.
    pub fn coordinates(&self) -> Option<(String, &str, &str, &str)> {
        let segments: Vec<&str> = self.path.split('/').collect();
        let n = segments.len();
        (n >= 4).then(|| {
            (
                segments[..n - 3].join("."),
                segments[n - 3],
                segments[n - 2],
                segments[n - 1],
            )
        })
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

fn classify(segments: &[&str], name: &str) -> MavenFile {
    for alg in CHECKSUMS {
        if name.len() > alg.len() + 1 && name.ends_with(&format!(".{alg}")[..]) {
            return MavenFile::Checksum(alg);
        }
    }
    if name.ends_with(".asc") && name.len() > 4 {
        return MavenFile::Signature;
    }
    if name == "maven-metadata.xml" {
        return MavenFile::Metadata;
    }
    // group/.../artifact/version/artifact-version[-classifier].ext
    let n = segments.len();
    if n >= 4 {
        let (artifact, version) = (segments[n - 3], segments[n - 2]);
        if let Some(rest) = name
            .strip_prefix(artifact)
            .and_then(|r| r.strip_prefix('-'))
        {
            if let Some(base) = version.strip_suffix("-SNAPSHOT") {
                // artifact-1.0-SNAPSHOT.jar or the timestamped artifact-1.0-20240101.123456-1.jar
                if rest.starts_with(base) {
                    return MavenFile::Snapshot;
                }
            } else if rest.starts_with(version) && rest.len() > version.len() {
                return MavenFile::Release;
            }
        }
    }
    MavenFile::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> MavenFile {
        MavenPath::parse(path).unwrap().file
    }

    #[test]
    fn files_are_classified() {
        let jar = "org/apache/commons/commons-lang3/3.12.0/commons-lang3-3.12.0.jar";
        assert_eq!(file(jar), MavenFile::Release);
        assert_eq!(file(&format!("{jar}.sha1")), MavenFile::Checksum("sha1"));
        assert_eq!(
            file(&format!("{jar}.sha512")),
            MavenFile::Checksum("sha512")
        );
        assert_eq!(file(&format!("{jar}.asc")), MavenFile::Signature);
        assert_eq!(
            file(&format!("{jar}.asc.sha1")),
            MavenFile::Checksum("sha1")
        );
        assert_eq!(
            file("org/x/lib/1.0/lib-1.0-sources.jar"),
            MavenFile::Release
        );
        assert_eq!(file("org/x/lib/1.0/lib-1.0.module"), MavenFile::Release);
        assert_eq!(file("org/x/lib/maven-metadata.xml"), MavenFile::Metadata);
        assert_eq!(
            file("org/x/lib/1.0-SNAPSHOT/maven-metadata.xml"),
            MavenFile::Metadata
        );
        assert_eq!(
            file("org/x/lib/1.0-SNAPSHOT/lib-1.0-20240101.123456-1.jar"),
            MavenFile::Snapshot
        );
        assert_eq!(
            file("org/x/lib/1.0-SNAPSHOT/lib-1.0-SNAPSHOT.pom"),
            MavenFile::Snapshot
        );
        assert_eq!(file("archetype-catalog.xml/x"), MavenFile::Other);
        assert_eq!(file("org/x/lib/1.0/other-1.0.jar"), MavenFile::Other);
        let checksum = MavenPath::parse(&format!("{jar}.sha1")).unwrap();
        assert_eq!(checksum.subject(), Some(jar));
        let release = MavenPath::parse(jar).unwrap();
        assert_eq!(
            release.coordinates(),
            Some((
                "org.apache.commons".into(),
                "commons-lang3",
                "3.12.0",
                "commons-lang3-3.12.0.jar"
            ))
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [
            "",
            "/",
            "org/",
            "x.jar",
            "org/../etc/passwd",
            "org/./x/a.jar",
            "org//x/a.jar",
            "org/x/%2e%2e/a.jar",
            "org/x/a b.jar",
            "org/.hidden/a.jar",
            "org/x/a\u{0}.jar",
            "org/x/ä.jar",
        ] {
            assert!(MavenPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(MavenPath::parse(&format!("org/{}", "a/".repeat(600))).is_err());
    }
}
