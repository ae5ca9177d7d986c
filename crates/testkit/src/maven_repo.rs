//! Maven repository upstreams for tests: a few artifacts made in memory (jar, pom, their
//! `.sha1`, `maven-metadata.xml`), or a directory tree such as Debian's `/usr/share/maven-repo`
//! served as it is on disk, with checksum files computed and `maven-metadata.xml` written on
//! request.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::static_server::StaticServer;

/// One artifact of an in-memory repository.
#[derive(Debug, Clone)]
pub struct MavenArtifact {
    pub group: String,
    pub artifact: String,
    pub version: String,
    pub jar: Bytes,
}

impl MavenArtifact {
    /// `group:artifact:version` with a jar of about `size` bytes.
    pub fn new(group: &str, artifact: &str, version: &str, size: usize) -> Self {
        let seed = artifact.len() as u8 ^ version.len() as u8;
        Self {
            group: group.into(),
            artifact: artifact.into(),
            version: version.into(),
            jar: Bytes::from(crate::conformance::pattern(size.max(64), seed)),
        }
    }

    /// `group/dirs/artifact/version/artifact-version.{ext}`.
    pub fn path(&self, ext: &str) -> String {
        format!(
            "/{}/{}/{}/{}-{}.{ext}",
            self.group.replace('.', "/"),
            self.artifact,
            self.version,
            self.artifact,
            self.version
        )
    }

    /// `group/dirs/artifact/maven-metadata.xml`.
    pub fn metadata_path(&self) -> String {
        format!(
            "/{}/{}/maven-metadata.xml",
            self.group.replace('.', "/"),
            self.artifact
        )
    }

    fn pom(&self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<project><modelVersion>4.0.0</modelVersion>\
             <groupId>{}</groupId><artifactId>{}</artifactId><version>{}</version></project>\n",
            self.group, self.artifact, self.version
        )
    }
}

/// SHA-1 of `bytes`, hex.
pub fn sha1_hex(bytes: &[u8]) -> String {
    hex::encode(Sha1::digest(bytes))
}

/// `maven-metadata.xml` listing `versions` (sorted as given) of `group:artifact`.
pub fn metadata_xml(group: &str, artifact: &str, versions: &[String]) -> String {
    let release = versions
        .iter()
        .rev()
        .find(|v| !v.ends_with("-SNAPSHOT") && v.starts_with(|c: char| c.is_ascii_digit()));
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata>\n  <groupId>{group}</groupId>\n  \
         <artifactId>{artifact}</artifactId>\n  <versioning>\n"
    );
    if let Some(latest) = versions.last() {
        xml.push_str(&format!("    <latest>{latest}</latest>\n"));
    }
    if let Some(release) = release {
        xml.push_str(&format!("    <release>{release}</release>\n"));
    }
    xml.push_str("    <versions>\n");
    for v in versions {
        xml.push_str(&format!("      <version>{v}</version>\n"));
    }
    xml.push_str("    </versions>\n    <lastUpdated>20261201000000</lastUpdated>\n  </versioning>\n</metadata>\n");
    xml
}

/// A Maven repository on a [`StaticServer`].
pub struct MavenRepository {
    pub server: StaticServer,
}

impl MavenRepository {
    /// The repository of `artifacts`: each with its jar, pom, their `.sha1` files and the
    /// artifact's `maven-metadata.xml` (with its `.sha1`).
    pub async fn start(artifacts: &[MavenArtifact]) -> Self {
        let server = StaticServer::start().await;
        let repo = Self { server };
        for a in artifacts {
            repo.publish(a);
        }
        repo
    }

    /// Publish `a` (again: a new version appears in its metadata).
    pub fn publish(&self, a: &MavenArtifact) {
        let put = |path: &str, body: Bytes, content_type: &str| {
            self.server
                .put(&format!("{path}.sha1"), sha1_hex(&body), "text/plain");
            self.server.put(path, body, content_type);
        };
        put(&a.path("jar"), a.jar.clone(), "application/java-archive");
        put(&a.path("pom"), Bytes::from(a.pom()), "text/xml");
        // The versions already published, plus this one.
        let mut versions: Vec<String> = self
            .server
            .get(&a.metadata_path())
            .map(|xml| {
                String::from_utf8_lossy(&xml)
                    .split("<version>")
                    .skip(1)
                    .filter_map(|s| s.split("</version>").next().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if !versions.contains(&a.version) {
            versions.push(a.version.clone());
        }
        put(
            &a.metadata_path(),
            Bytes::from(metadata_xml(&a.group, &a.artifact, &versions)),
            "text/xml",
        );
    }

    /// A directory tree served as a repository: files as they are on disk (symlinks
    /// followed), `.sha1` / `.sha256` / `.sha512` computed from the file they name, and
    /// `maven-metadata.xml` written from the version directories that hold a pom.
    pub async fn from_dir(root: PathBuf) -> Self {
        assert!(
            root.is_dir(),
            "{} is missing: install Debian's maven-repo packages (scripts/test does)",
            root.display()
        );
        let server = StaticServer::start().await;
        server.set_fallback(Box::new(move |path| from_disk(&root, path)));
        Self { server }
    }

    /// `http://127.0.0.1:PORT` (the repository root).
    pub fn url(&self) -> String {
        self.server.url()
    }
}

fn from_disk(root: &Path, path: &str) -> Option<(Bytes, String)> {
    let relative = path.trim_start_matches('/');
    if relative.split('/').any(|s| s == ".." || s.is_empty()) {
        return None;
    }
    for (ext, digest) in [
        ("sha1", (|b: &[u8]| sha1_hex(b)) as fn(&[u8]) -> String),
        ("sha256", |b: &[u8]| hex::encode(Sha256::digest(b))),
        ("sha512", |b: &[u8]| hex::encode(Sha512::digest(b))),
    ] {
        if let Some(subject) = relative.strip_suffix(&format!(".{ext}")[..]) {
            let (body, _) = from_disk(root, subject)?;
            return Some((Bytes::from(digest(&body)), "text/plain".into()));
        }
    }
    if let Some(dir) = relative.strip_suffix("/maven-metadata.xml") {
        let artifact_dir = root.join(dir);
        let artifact = artifact_dir.file_name()?.to_str()?.to_owned();
        let group = Path::new(dir).parent()?.to_str()?.replace('/', ".");
        let mut versions: Vec<String> = std::fs::read_dir(&artifact_dir)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|v| {
                artifact_dir
                    .join(v)
                    .join(format!("{artifact}-{v}.pom"))
                    .exists()
            })
            .collect();
        versions.sort_by_key(|v| {
            v.split(['.', '-'])
                .map(|p| {
                    p.parse::<u64>()
                        .map_or((1, 0, p.to_owned()), |n| (0, n, String::new()))
                })
                .collect::<Vec<_>>()
        });
        if versions.is_empty() {
            return None;
        }
        return Some((
            Bytes::from(metadata_xml(&group, &artifact, &versions)),
            "text/xml".into(),
        ));
    }
    let file = root.join(relative);
    if !file.is_file() {
        return None;
    }
    std::fs::read(&file)
        .ok()
        .map(|b| (Bytes::from(b), "application/octet-stream".into()))
}
