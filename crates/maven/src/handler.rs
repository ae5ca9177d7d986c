use std::sync::Arc;

use proxyd_ecosystem::http::{HeaderValue, Method};
use proxyd_ecosystem::serde::{Deserialize, Deserializer};
use proxyd_ecosystem::{
    ArtifactSpec, Document, DocumentCheck, DocumentReply, DocumentRequest, Ecosystem,
    EcosystemContext, EcosystemKind, EcosystemRequest, ExpectedDigest, FailureKind, Fetch,
    FetchFailure, Freshness, FreshnessRule, ObjectKey, Refusal, Reply, StoredReply, Url, any_body,
    read_only, serde_json, settings,
};

use crate::path::{MavenFile, MavenPath};

/// Settings of a Maven instance (`upstream.maven`, or an `ecosystems.<name>` of kind `maven`).
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "proxyd_ecosystem::serde", deny_unknown_fields)]
pub struct MavenConfig {
    /// One repository root, or several tried in order while they answer 404 (a list, or one
    /// comma-separated text as the environment gives it).
    #[serde(deserialize_with = "one_or_many")]
    pub upstream: Vec<String>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    let texts: Vec<String> = match &value {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| {
                settings::scalar_text(v).ok_or_else(|| "each upstream must be a URL".to_owned())
            })
            .collect::<Result<_, _>>()
            .map_err(proxyd_ecosystem::serde::de::Error::custom)?,
        other => vec![
            settings::scalar_text(other)
                .ok_or_else(|| proxyd_ecosystem::serde::de::Error::custom("must be a URL"))?,
        ],
    };
    Ok(texts
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect())
}

fn roots(config: &MavenConfig) -> Result<Vec<Url>, String> {
    config
        .upstream
        .iter()
        .map(|u| settings::upstream_url(u))
        .collect()
}

/// The Maven kind: register it with `registry.register::<MavenKind>()`.
#[derive(Debug)]
pub struct MavenKind;

impl EcosystemKind for MavenKind {
    const KIND: &'static str = "maven";
    type Config = MavenConfig;
    type Handler = MavenRepository;

    fn upstream(config: &MavenConfig) -> Result<Option<Url>, String> {
        Ok(roots(config)?.into_iter().next())
    }

    fn more_upstreams(config: &MavenConfig) -> Vec<Url> {
        roots(config)
            .unwrap_or_default()
            .into_iter()
            .skip(1)
            .collect()
    }

    fn build(config: MavenConfig, context: EcosystemContext) -> Result<MavenRepository, String> {
        let upstreams = roots(&config)?
            .into_iter()
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .collect::<Vec<_>>();
        if upstreams.is_empty() {
            return Err("upstream: no repository URL".into());
        }
        Ok(MavenRepository { upstreams, context })
    }
}

/// A Maven repository in front of one or more upstream repositories.
#[derive(Debug)]
pub struct MavenRepository {
    /// Repository roots, without a trailing slash, in the order they are tried.
    upstreams: Vec<String>,
    context: EcosystemContext,
}

/// What a Maven request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum MavenOp {
    /// An artifact kept in storage (release: immutable; SNAPSHOT: revalidated).
    Artifact {
        /// Storage key (`{instance}/{path}`).
        key: ObjectKey,
        /// The path.
        path: MavenPath,
    },
    /// A document (metadata, checksum, signature, anything else) kept in the index.
    Document(MavenPath),
}

/// `maven-metadata.xml` is whole when it parses to the end and its root element closed.
fn xml_body(body: &[u8]) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(quick_xml::events::Event::Start(_)) => {
                if depth == 0 {
                    roots += 1;
                }
                depth += 1;
            }
            Ok(quick_xml::events::Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(quick_xml::events::Event::Empty(_)) if depth == 0 => roots += 1,
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("not well-formed XML: {e}")),
        }
        buf.clear();
    }
    if depth != 0 || roots != 1 {
        return Err("the XML document does not close its root element: it was cut short".into());
    }
    Ok(())
}

/// The hex digest a checksum file holds (its first word; some add the file name after it).
fn checksum_hex(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let word = text.split_whitespace().next()?.to_ascii_lowercase();
    (matches!(word.len(), 32 | 40 | 64 | 128) && word.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(word)
}

fn checksum_body(body: &[u8]) -> Result<(), String> {
    checksum_hex(body)
        .map(|_| ())
        .ok_or_else(|| "a checksum file holds a hex digest".into())
}

fn signature_body(body: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.starts_with("-----BEGIN PGP SIGNATURE-----")
        && text.ends_with("-----END PGP SIGNATURE-----")
    {
        Ok(())
    } else {
        Err("not a whole ASCII-armoured signature".into())
    }
}

fn expected(algorithm: &str, hex: &str) -> Option<ExpectedDigest> {
    match algorithm {
        "sha512" => ExpectedDigest::sha512_hex(hex),
        "sha256" => ExpectedDigest::sha256_hex(hex),
        "sha1" => ExpectedDigest::sha1_hex(hex),
        "md5" => ExpectedDigest::md5_hex(hex),
        _ => None,
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "jar" | "war" | "ear" | "aar" => "application/java-archive",
        "pom" | "xml" => "text/xml",
        "module" | "json" => "application/json",
        "asc" => "application/pgp-signature",
        "sha1" | "sha256" | "sha512" | "md5" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// The order in which a release artifact's checksum is looked for: `.sha1` first (every
/// repository has it, and Maven asks for it next), then the stronger ones.
const VERIFY_WITH: [&str; 3] = ["sha1", "sha256", "sha512"];

impl MavenRepository {
    /// The document `path` from upstream `index`.
    async fn document_at(
        &self,
        index: usize,
        path: &str,
        check: DocumentCheck,
        force: bool,
    ) -> Result<(Arc<Document>, Freshness), FetchFailure> {
        let key = format!("u{index}/{path}");
        let url = format!("{}/{path}", self.upstreams[index]);
        let request = DocumentRequest {
            key: &key,
            url: &url,
            accept: "*/*",
            check,
            headers: None,
        };
        self.context
            .documents
            .get(&request, force)
            .await
            .map_err(FetchFailure::from)
    }

    /// The document `path` from the first upstream that has it (an upstream failing otherwise
    /// than with 404 ends the search); which upstream gave it.
    async fn document(
        &self,
        path: &str,
        check: DocumentCheck,
        force: bool,
    ) -> Result<(usize, Arc<Document>, Freshness), FetchFailure> {
        let mut not_found = None;
        for index in 0..self.upstreams.len() {
            match self.document_at(index, path, check, force).await {
                Ok((doc, freshness)) => return Ok((index, doc, freshness)),
                Err(f) if f.kind == FailureKind::NotFound => not_found = Some(f),
                Err(f) => return Err(f),
            }
        }
        Err(not_found.unwrap_or_else(|| FetchFailure::not_found(format!("no upstream has {path}"))))
    }

    fn check_of(file: &MavenFile) -> DocumentCheck {
        match file {
            MavenFile::Metadata => xml_body,
            MavenFile::Checksum(_) => checksum_body,
            MavenFile::Signature => signature_body,
            _ => any_body,
        }
    }

    async fn serve_document(&self, path: MavenPath) -> Reply {
        let check = Self::check_of(&path.file);
        let mut found = self.document(&path.path, check, false).await;
        // The checksum of maven-metadata.xml must be the checksum of the copy served: when the
        // kept pair disagrees (one was refreshed without the other), both are asked again.
        if let (Ok((index, sum, _)), Some(subject), MavenFile::Checksum(alg)) =
            (&found, path.subject(), &path.file)
            && subject.ends_with("maven-metadata.xml")
            && !self.matches(*index, subject, alg, sum, false).await
        {
            let _ = self.document_at(*index, subject, xml_body, true).await;
            found = self.document(&path.path, check, true).await;
        }
        let (index, doc, freshness) = match found {
            Ok(found) => found,
            Err(f) => return f.into(),
        };
        let name = path.path.rsplit('/').next().unwrap_or("");
        let kind = HeaderValue::from_static(content_type(name));
        self.context.documents.reply(
            &format!("u{index}/{}", path.path),
            "",
            &doc,
            freshness,
            |doc| {
                let mut reply = DocumentReply::new(kind, doc.body.clone(), 0);
                reply.last_modified = doc.last_modified.clone();
                Ok(reply)
            },
        )
    }

    /// Whether the kept `subject` of upstream `index` matches the checksum document `sum`.
    async fn matches(
        &self,
        index: usize,
        subject: &str,
        algorithm: &str,
        sum: &Document,
        force: bool,
    ) -> bool {
        let Some(expected) = checksum_hex(&sum.body).and_then(|hex| expected(algorithm, &hex))
        else {
            return false;
        };
        match self.document_at(index, subject, xml_body, force).await {
            Ok((doc, _)) => {
                let mut verifier = expected.verifier();
                verifier.update(&doc.body);
                verifier.matches()
            }
            Err(_) => true, // nothing to compare with: serve the checksum as it is
        }
    }

    /// On a miss: the first upstream that has a checksum of `path`, and the digest to verify
    /// against.
    async fn resolve(
        self: Arc<Self>,
        key: ObjectKey,
        path: MavenPath,
    ) -> Result<Fetch, FetchFailure> {
        // A SNAPSHOT's checksum changes with each deploy: always asked again (conditionally).
        let force = path.file == MavenFile::Snapshot;
        let mut chosen = None;
        'upstreams: for index in 0..self.upstreams.len() {
            for algorithm in VERIFY_WITH {
                let sum_path = format!("{}.{algorithm}", path.path);
                match self
                    .document_at(index, &sum_path, checksum_body, force)
                    .await
                {
                    Ok((doc, _)) => {
                        let digest = checksum_hex(&doc.body)
                            .and_then(|hex| expected(algorithm, &hex))
                            .ok_or_else(|| {
                                FetchFailure::upstream(format!("upstream {sum_path} is malformed"))
                            })?;
                        chosen = Some((index, digest));
                        break 'upstreams;
                    }
                    Err(f) if f.kind == FailureKind::NotFound => {}
                    Err(f) => return Err(f),
                }
            }
        }
        // Only what can be verified is served: an artifact with no checksum upstream is
        // answered as missing (Gradle's probes for `.module` files end here, and the 404 each
        // upstream gave for its checksums is remembered for the TTL).
        let Some((index, digest)) = chosen else {
            return Err(FetchFailure::not_found(format!(
                "no upstream has {} with a checksum",
                path.path
            )));
        };
        let (group, artifact, version, name) = path.coordinates().unwrap_or_else(|| {
            let name = path.path.rsplit('/').next().unwrap_or("");
            (String::new(), "", "", name)
        });
        let spec = ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            name: if group.is_empty() {
                artifact.to_owned()
            } else {
                format!("{group}:{artifact}")
            },
            version: version.to_owned(),
            filename: name.to_owned(),
            content_type: content_type(name).into(),
            upstream_url: format!("{}/{}", self.upstreams[index], path.path),
            verifier: Some(digest.boxed_verifier()),
        };
        Ok(self.context.upstream.fetch(spec))
    }
}

impl Ecosystem for MavenRepository {
    type Op = MavenOp;

    fn route(&self, method: &Method, path: &str) -> Result<MavenOp, Refusal> {
        read_only(method)?;
        let path = MavenPath::parse(path).map_err(Refusal::bad_request)?;
        match path.file {
            MavenFile::Release | MavenFile::Snapshot => {
                let key = ObjectKey::new(format!("{}/{}", self.context.instance, path.path))
                    .map_err(|e| Refusal::bad_request(e.message().to_owned()))?;
                Ok(MavenOp::Artifact { key, path })
            }
            _ => Ok(MavenOp::Document(path)),
        }
    }

    async fn handle(self: Arc<Self>, op: MavenOp, _request: EcosystemRequest<'_>) -> Reply {
        match op {
            MavenOp::Document(path) => Box::pin(self.serve_document(path)).await,
            MavenOp::Artifact { key, path } => {
                let freshness = if path.file == MavenFile::Snapshot {
                    FreshnessRule::RevalidateAfter(self.context.documents.ttl())
                } else {
                    FreshnessRule::Immutable
                };
                let this = self.clone();
                let mut reply = StoredReply::immutable(
                    key,
                    Box::new(move |key| Box::pin(this.resolve(key, path))),
                );
                reply.freshness = freshness;
                Reply::Stored(reply)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_cut_short_are_refused() {
        let whole = b"<?xml version=\"1.0\"?>\n<metadata><groupId>g</groupId></metadata>\n";
        assert!(xml_body(whole).is_ok());
        assert!(xml_body(&whole[..30]).is_err());
        assert!(xml_body(b"<a></a><b/>").is_err(), "two roots");
        assert!(xml_body(b"").is_err());
        assert!(checksum_body(b"da39a3ee5e6b4b0d3255bfef95601890afd80709").is_ok());
        assert!(checksum_body(b"da39a3ee5e6b4b0d3255bfef95601890afd80709  x.jar\n").is_ok());
        assert!(checksum_body(b"da39a3ee5e6b4b0d").is_err());
        assert!(checksum_body(b"<html>").is_err());
        assert!(
            signature_body(b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n")
                .is_ok()
        );
        assert!(signature_body(b"-----BEGIN PGP SIGNATURE-----\nabc").is_err());
    }

    #[test]
    fn upstreams_are_one_or_many() {
        let one: MavenConfig =
            serde_json::from_value(serde_json::json!({"upstream": "http://a/"})).unwrap();
        assert_eq!(one.upstream, ["http://a/"]);
        let text: MavenConfig =
            serde_json::from_value(serde_json::json!({"upstream": "http://a, http://b"})).unwrap();
        assert_eq!(text.upstream, ["http://a", "http://b"]);
        let list: MavenConfig =
            serde_json::from_value(serde_json::json!({"upstream": ["http://a", "http://b/"]}))
                .unwrap();
        assert_eq!(list.upstream, ["http://a", "http://b/"]);
        assert_eq!(MavenKind::more_upstreams(&list).len(), 1);
    }
}
