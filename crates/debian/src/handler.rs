use std::sync::Arc;

use proxyd_ecosystem::http::HeaderValue;
use proxyd_ecosystem::http::Method;
use proxyd_ecosystem::serde::Deserialize;
use proxyd_ecosystem::{
    ArtifactSpec, DocumentReply, DocumentRequest, Ecosystem, EcosystemContext, EcosystemKind,
    EcosystemRequest, ExpectedDigest, FailureKind, Fetch, FetchFailure, FreshnessRule, ObjectKey,
    Refusal, Reply, StoredReply, Url, read_only, settings, tracing,
};

use crate::packages::PoolDigests;

/// Settings of an APT archive instance (`upstream.debian`, or an `ecosystems.<name>` of kind
/// `debian`, such as a security archive at `/debian-security`).
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "proxyd_ecosystem::serde", deny_unknown_fields)]
pub struct DebianConfig {
    /// The archive root: the folder holding `dists/` and `pool/`.
    pub upstream: String,
}

/// The APT kind: register it with `registry.register::<DebianKind>()`.
#[derive(Debug)]
pub struct DebianKind;

impl EcosystemKind for DebianKind {
    const KIND: &'static str = "debian";
    type Config = DebianConfig;
    type Handler = DebianArchive;

    fn upstream(config: &DebianConfig) -> Result<Option<Url>, String> {
        settings::upstream_url(&config.upstream).map(Some)
    }

    fn build(config: DebianConfig, context: EcosystemContext) -> Result<DebianArchive, String> {
        Ok(DebianArchive {
            upstream: settings::upstream_url(&config.upstream)?
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            digests: PoolDigests::new(),
            context,
        })
    }
}

/// An APT archive in front of one upstream archive.
#[derive(Debug)]
pub struct DebianArchive {
    upstream: String,
    digests: PoolDigests,
    context: EcosystemContext,
}

/// A signed file of a suite, kept as a document: checked whole before it is served or kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedFile {
    /// `InRelease`: the `Release` with its signature inline.
    InRelease,
    /// `Release`.
    Release,
    /// `Release.gpg`: the detached signature.
    ReleaseGpg,
}

/// How a file of `dists/` is kept.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum DistsFile {
    /// `InRelease`, `Release`, `Packages`, ...: passed byte for byte, revalidated after
    /// `metadata_ttl`; `reads_index` when it is a package index whose `.deb` digests are noted.
    Revalidated {
        /// Whether it sits in a `binary-*` directory (a `Packages` index).
        reads_index: bool,
    },
    /// `by-hash/<algorithm>/<hex>`: named by its digest, verified against it.
    ByHash {
        /// `sha256`, `sha512` or `md5`.
        algorithm: &'static str,
        /// The digest, hex.
        hex: String,
        /// Whether it sits in a `binary-*` directory.
        reads_index: bool,
    },
}

/// What an APT request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum DebianOp {
    /// `dists/{suite}/InRelease`, `Release` or `Release.gpg`.
    Signed {
        /// The path after the mount, without the leading slash.
        path: String,
        /// Which.
        file: SignedFile,
    },
    /// A file under `dists/`.
    Dists {
        /// Storage key.
        key: ObjectKey,
        /// The path after the mount, without the leading slash.
        path: String,
        /// How it is kept.
        file: DistsFile,
    },
    /// A file under `pool/`: immutable.
    Pool {
        /// Storage key.
        key: ObjectKey,
        /// The path after the mount (`pool/main/h/hello/hello_2.10-3_amd64.deb`).
        path: String,
    },
}

/// A whole ASCII-armoured signature (or signed message) ends with its END line.
fn armoured(body: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim_end();
    if text.contains("-----BEGIN PGP ") && text.ends_with("-----END PGP SIGNATURE-----") {
        Ok(())
    } else {
        Err("the signed file does not end with its signature: it was cut short".into())
    }
}

/// A whole `Release` ends its last line.
fn release_body(body: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "a Release is text".to_owned())?;
    if !text.ends_with('\n') || !text.contains("\nSHA256:") && !text.contains("\nMD5Sum:") {
        return Err(
            "the Release does not end its last line or lists no files: it was cut short".into(),
        );
    }
    Ok(())
}

fn valid_segment(segment: &str) -> bool {
    (1..=255).contains(&segment.len())
        && !segment.starts_with('.')
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+~".contains(&b))
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".deb") || name.ends_with(".udeb") {
        "application/vnd.debian.binary-package"
    } else if name.ends_with(".gz") {
        "application/gzip"
    } else if name.ends_with(".xz") {
        "application/x-xz"
    } else if matches!(name, "InRelease" | "Release" | "Release.gpg") {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

impl DebianArchive {
    fn key(&self, path: &str) -> Result<ObjectKey, Refusal> {
        ObjectKey::new(format!("{}/{path}", self.context.instance))
            .map_err(|e| Refusal::bad_request(e.message().to_owned()))
    }

    fn spec(&self, key: ObjectKey, path: &str, verifier: Option<ExpectedDigest>) -> ArtifactSpec {
        let name = path.rsplit('/').next().unwrap_or("").to_owned();
        let (package, version) = match name.split('_').collect::<Vec<_>>().as_slice() {
            [package, version, ..] => ((*package).to_owned(), (*version).to_owned()),
            _ => (name.clone(), String::new()),
        };
        ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            name: package,
            version,
            content_type: content_type(&name).into(),
            filename: name,
            upstream_url: format!("{}/{path}", self.upstream),
            verifier: verifier.map(|d| d.boxed_verifier()),
        }
    }

    /// A signed file of a suite, from the documents; the index files an `InRelease` or
    /// `Release` lists are noted (once per new copy) for verifying them.
    async fn serve_signed(&self, path: &str, file: SignedFile) -> Reply {
        let url = format!("{}/{path}", self.upstream);
        let request = DocumentRequest {
            key: path,
            url: &url,
            accept: "*/*",
            check: match file {
                SignedFile::Release => release_body,
                _ => armoured,
            },
            headers: None,
        };
        let (doc, freshness) = match self.context.documents.get(&request, false).await {
            Ok(found) => found,
            Err(err) => return FetchFailure::from(err).into(),
        };
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned();
        let digests = self.digests.clone();
        self.context
            .documents
            .reply(path, "", &doc, freshness, |doc| {
                if file != SignedFile::ReleaseGpg {
                    digests.read_release(&dir, &doc.body);
                }
                // No Last-Modified: apt revalidates these by date only, and a copy refreshed
                // within the upstream's second would look unchanged. They are small; the ETag
                // still lets clients that send If-None-Match get 304.
                Ok(DocumentReply::new(
                    HeaderValue::from_static("text/plain"),
                    doc.body.clone(),
                    0,
                ))
            })
    }

    /// On a miss: a `dists/` file, verified against the digest its name or the suite's
    /// `Release` declares; a package index is read as it passes through.
    fn fetch_dists(&self, key: ObjectKey, path: &str, file: &DistsFile) -> Fetch {
        let (verifier, reads_index) = match file {
            DistsFile::Revalidated { reads_index } => (
                self.digests
                    .sha256_hex(path)
                    .and_then(|hex| ExpectedDigest::sha256_hex(&hex)),
                *reads_index,
            ),
            DistsFile::ByHash {
                algorithm,
                hex,
                reads_index,
            } => {
                let digest = match *algorithm {
                    "sha256" => ExpectedDigest::sha256_hex(hex),
                    "sha512" => ExpectedDigest::sha512_hex(hex),
                    _ => ExpectedDigest::md5_hex(hex),
                };
                (digest, *reads_index)
            }
        };
        let fetch = self
            .context
            .upstream
            .fetch(self.spec(key, path, verifier.clone()));
        if !reads_index {
            return fetch;
        }
        let digests = self.digests.clone();
        let source = fetch.source;
        Fetch {
            spec: fetch.spec,
            source: Box::pin(async move {
                let mut upstream = source.await?;
                upstream.body = digests.read_as_it_passes(upstream.body, verifier.as_ref());
                Ok(upstream)
            }),
        }
    }

    /// On a miss: a `pool/` file, verified against the SHA-256 a package index proxyd served
    /// declared for it; one no index listed is fetched unverified and counted.
    fn fetch_pool(&self, key: ObjectKey, path: &str) -> Result<Fetch, FetchFailure> {
        if self.context.documents.known_missing(path) {
            return Err(FetchFailure::not_found(format!(
                "the upstream has no {path} (asked again after metadata_ttl)"
            )));
        }
        let verifier = match self.digests.sha256_hex(path) {
            Some(hex) => Some(ExpectedDigest::sha256_hex(&hex).ok_or_else(|| {
                FetchFailure::upstream(format!("the index's SHA256 of {path} is malformed"))
            })?),
            None => {
                metrics::counter!("proxyd_unverified_downloads_total", "ecosystem" => self.context.instance)
                    .increment(1);
                tracing::warn!(path = %path, "no package index proxyd served lists this file; fetched unverified");
                None
            }
        };
        let fetch = self.context.upstream.fetch(self.spec(key, path, verifier));
        let (documents, path) = (self.context.documents.clone(), path.to_owned());
        let source = fetch.source;
        Ok(Fetch {
            spec: fetch.spec,
            source: Box::pin(async move {
                let answer = source.await;
                if let Err(f) = &answer
                    && f.kind == FailureKind::NotFound
                {
                    documents.note_missing(&path);
                }
                answer
            }),
        })
    }
}

impl Ecosystem for DebianArchive {
    type Op = DebianOp;

    fn route(&self, method: &Method, path: &str) -> Result<DebianOp, Refusal> {
        read_only(method)?;
        let path = path.strip_prefix('/').unwrap_or(path);
        if path.contains('%') {
            return Err(Refusal::bad_request(
                "percent-escapes are not accepted in APT paths",
            ));
        }
        if path.len() > 1024 {
            return Err(Refusal::bad_request("paths are at most 1024 characters"));
        }
        let segments: Vec<&str> = path.split('/').collect();
        if let Some(bad) = segments.iter().find(|s| !valid_segment(s)) {
            let shown: String = bad.chars().take(40).collect();
            return Err(Refusal::bad_request(format!(
                "{shown:?} is not a path segment of an APT archive"
            )));
        }
        match segments.as_slice() {
            ["dists", _suite, name] if matches!(*name, "InRelease" | "Release" | "Release.gpg") => {
                let file = match *name {
                    "InRelease" => SignedFile::InRelease,
                    "Release" => SignedFile::Release,
                    _ => SignedFile::ReleaseGpg,
                };
                Ok(DebianOp::Signed {
                    path: path.to_owned(),
                    file,
                })
            }
            ["dists", _suite, rest @ ..] if !rest.is_empty() => {
                let reads_index = segments.iter().any(|s| s.starts_with("binary-"));
                let n = segments.len();
                let file = if n >= 3 && segments[n - 3] == "by-hash" {
                    let (algorithm, len) = match segments[n - 2] {
                        "SHA256" => ("sha256", 64),
                        "SHA512" => ("sha512", 128),
                        "MD5Sum" => ("md5", 32),
                        other => {
                            return Err(Refusal::bad_request(format!(
                                "{other:?} is not a by-hash algorithm"
                            )));
                        }
                    };
                    let hex = segments[n - 1];
                    if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(Refusal::bad_request(format!(
                            "a by-hash {algorithm} name is {len} hex characters"
                        )));
                    }
                    DistsFile::ByHash {
                        algorithm,
                        hex: hex.to_ascii_lowercase(),
                        reads_index,
                    }
                } else {
                    DistsFile::Revalidated { reads_index }
                };
                Ok(DebianOp::Dists {
                    key: self.key(path)?,
                    path: path.to_owned(),
                    file,
                })
            }
            ["pool", _component, _rest, ..] => Ok(DebianOp::Pool {
                key: self.key(path)?,
                path: path.to_owned(),
            }),
            _ => Err(Refusal::not_found(
                "an APT archive serves dists/ and pool/ only",
            )),
        }
    }

    async fn handle(self: Arc<Self>, op: DebianOp, _request: EcosystemRequest<'_>) -> Reply {
        match op {
            DebianOp::Signed { path, file } => Box::pin(self.serve_signed(&path, file)).await,
            DebianOp::Dists { key, path, file } => {
                let freshness = match file {
                    DistsFile::ByHash { .. } => FreshnessRule::ContentAddressed,
                    DistsFile::Revalidated { .. } => {
                        FreshnessRule::RevalidateAfter(self.context.documents.ttl())
                    }
                };
                let this = self.clone();
                let mut reply = StoredReply::immutable(
                    key,
                    Box::new(move |key| {
                        Box::pin(async move { Ok(this.fetch_dists(key, &path, &file)) })
                    }),
                );
                reply.freshness = freshness;
                Reply::Stored(reply)
            }
            DebianOp::Pool { key, path } => {
                let this = self.clone();
                Reply::Stored(StoredReply::immutable(
                    key,
                    Box::new(move |key| Box::pin(async move { this.fetch_pool(key, &path) })),
                ))
            }
        }
    }
}
