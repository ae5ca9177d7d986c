use std::collections::BTreeMap;
use std::sync::Arc;

use proxyd_ecosystem::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use proxyd_ecosystem::serde::{Deserialize, Deserializer};
use proxyd_ecosystem::{
    ArtifactSpec, Bytes, Document, DocumentReply, DocumentRequest, Ecosystem, EcosystemContext,
    EcosystemKind, EcosystemRequest, ExpectedDigest, Fetch, FetchFailure, Freshness, FreshnessRule,
    ObjectKey, Refusal, Reply, StoredReply, UpstreamError, UpstreamResponse, Url, json_body,
    read_only, serde_json, settings,
};

use crate::auth::Tokens;
use crate::names::{Digest, Reference, check_repository};

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// The manifest media types proxyd asks for and serves, in the order it prefers them.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The largest manifest proxyd keeps (the distribution specification's registries refuse
/// more than 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;
/// Manifests kept in memory by digest after they were seen by tag (so that the by-digest request
/// a client makes next asks the upstream nothing), in bytes.
const SEEN_BYTES: u64 = 16 << 20;

/// Blob media types remembered (about 200 bytes each).
const MAX_BLOB_TYPES: u64 = 50_000;

/// Settings of an OCI instance: `upstream.oci.<name>` (or one URL, the default).
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "proxyd_ecosystem::serde", deny_unknown_fields)]
pub struct OciConfig {
    /// Registry roots by name: repositories under `<name>/` go to `<name>`, others to
    /// `default`.
    #[serde(deserialize_with = "named")]
    pub upstream: BTreeMap<String, String>,
}

fn named<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use proxyd_ecosystem::serde::de::Error;
    let value = serde_json::Value::deserialize(d)?;
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(name, url)| {
                let url = settings::scalar_text(&url).ok_or_else(|| {
                    D::Error::custom(format!("upstream.oci.{name} must be a URL"))
                })?;
                Ok((name, url))
            })
            .collect(),
        other => {
            let url = settings::scalar_text(&other)
                .ok_or_else(|| D::Error::custom("must be a URL or a mapping of names to URLs"))?;
            Ok(BTreeMap::from([("default".to_owned(), url)]))
        }
    }
}

/// One upstream registry.
#[derive(Debug)]
struct Registry {
    name: String,
    /// Root, without a trailing slash or `/v2`.
    root: String,
}

fn registries(config: &OciConfig) -> Result<Vec<Registry>, String> {
    let mut out = Vec::new();
    for (name, url) in &config.upstream {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!("upstream.oci.{name}: a name is [a-z0-9]+"));
        }
        let url = settings::upstream_url(url).map_err(|e| format!("upstream.oci.{name}: {e}"))?;
        let root = url.as_str().trim_end_matches('/');
        let root = root.strip_suffix("/v2").unwrap_or(root).to_owned();
        out.push(Registry {
            name: name.clone(),
            root,
        });
    }
    // The default last, so that its index is stable whatever the names.
    out.sort_by_key(|r| r.name == "default");
    Ok(out)
}

/// The OCI kind: register it with `registry.register::<OciKind>()`.
#[derive(Debug)]
pub struct OciKind;

impl EcosystemKind for OciKind {
    const KIND: &'static str = "oci";
    const DEFAULT_MOUNT: Option<&'static str> = Some("v2");
    const UPSTREAM_MAP: bool = true;
    type Config = OciConfig;
    type Handler = OciRegistry;

    fn upstream(config: &OciConfig) -> Result<Option<Url>, String> {
        let all = registries(config)?;
        Ok(all.first().and_then(|r| Url::parse(&r.root).ok()))
    }

    fn more_upstreams(config: &OciConfig) -> Vec<Url> {
        registries(config)
            .unwrap_or_default()
            .iter()
            .skip(1)
            .filter_map(|r| Url::parse(&r.root).ok())
            .collect()
    }

    fn build(config: OciConfig, context: EcosystemContext) -> Result<OciRegistry, String> {
        let registries = registries(&config)?;
        if registries.is_empty() {
            return Err("upstream: no registry URL".into());
        }
        Ok(OciRegistry {
            registries,
            tokens: Tokens::new(),
            seen: moka::sync::Cache::builder()
                .max_capacity(SEEN_BYTES)
                .weigher(|_, v: &Arc<(String, Bytes)>| {
                    u32::try_from(v.1.len() + v.0.len() + 100).unwrap_or(u32::MAX)
                })
                .build(),
            blob_types: moka::sync::Cache::new(MAX_BLOB_TYPES),
            context,
        })
    }
}

/// An OCI distribution registry (pull only) in front of one or more upstream registries.
pub struct OciRegistry {
    registries: Vec<Registry>,
    tokens: Tokens,
    /// Manifests seen by tag, by digest: content type and bytes.
    seen: moka::sync::Cache<String, Arc<(String, Bytes)>>,
    /// The media types manifests gave their blobs (config, layers), by digest: what a blob is
    /// served as (and redirected with).
    blob_types: moka::sync::Cache<String, Arc<str>>,
    context: EcosystemContext,
}

impl std::fmt::Debug for OciRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciRegistry")
            .field("registries", &self.registries)
            .finish_non_exhaustive()
    }
}

/// Which upstream registry and repository a client's repository name means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index of the upstream registry.
    pub upstream: usize,
    /// The repository on that registry.
    pub repository: String,
}

/// What an OCI request asks for.
#[derive(Debug)]
pub enum OciOp {
    /// `GET /v2/`: the API version check.
    Base,
    /// A manifest by tag: revalidated after `metadata_ttl`.
    ManifestByTag(Target, String),
    /// A manifest by digest: immutable, verified, kept in storage, never redirected.
    ManifestByDigest(Target, Digest, ObjectKey),
    /// A blob: immutable, verified, kept in storage.
    Blob(Target, Digest, ObjectKey),
    /// A repository's tags: revalidated.
    Tags(Target),
}

/// The route kinds, for error codes.
#[derive(Clone, Copy)]
enum Part {
    Manifest,
    Blob,
    Tags,
    Other,
}

fn part_of(path: &str) -> Part {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        [.., "manifests", _] => Part::Manifest,
        [.., "blobs", _] => Part::Blob,
        [.., "tags", "list"] => Part::Tags,
        _ => Part::Other,
    }
}

/// The manifest types the client's `Accept` takes, in proxyd's order (all of them when it
/// names none of them, as a client that sends no `Accept` gets every kind).
fn accepted(headers: &HeaderMap) -> Vec<&'static str> {
    let named: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    let chosen: Vec<&'static str> = MANIFEST_TYPES
        .into_iter()
        .filter(|t| named.iter().any(|n| n == t))
        .collect();
    if chosen.is_empty() {
        MANIFEST_TYPES.to_vec()
    } else {
        chosen
    }
}

/// The media type of a manifest: the upstream's `Content-Type` when it is one proxyd knows,
/// else the manifest's own `mediaType`.
fn media_type(content_type: Option<&str>, body: &[u8]) -> String {
    let declared = content_type
        .map(|t| t.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|t| MANIFEST_TYPES.contains(&t.as_str()));
    declared.unwrap_or_else(|| {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| MANIFEST_TYPES[2].to_owned())
    })
}

/// A source that is already in memory (a manifest read whole to learn its media type).
fn one_chunk(bytes: Bytes) -> proxyd_ecosystem::SourceFuture {
    Box::pin(async move {
        let content_length = Some(bytes.len() as u64);
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
        Ok(proxyd_ecosystem::UpstreamBody {
            content_length,
            body: Box::pin(stream),
        })
    })
}

impl OciRegistry {
    /// Remember the media types `manifest` gives its config and layers.
    fn learn_blob_types(&self, manifest: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(manifest) else {
            return;
        };
        let descriptors = value
            .get("layers")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .chain(value.get("config"));
        for d in descriptors {
            if let (Some(digest), Some(kind)) = (
                d.get("digest").and_then(|v| v.as_str()),
                d.get("mediaType").and_then(|v| v.as_str()),
            ) && Digest::parse(digest).is_ok()
                && HeaderValue::from_str(kind).is_ok()
                && kind.len() <= 200
            {
                self.blob_types.insert(digest.to_owned(), Arc::from(kind));
            }
        }
    }

    /// Which registry serves `name`: the one named by its first segment, else `default`.
    fn target(&self, name: &str) -> Result<Target, Refusal> {
        if let Some((first, rest)) = name.split_once('/')
            && first != "default"
            && let Some(index) = self.registries.iter().position(|r| r.name == first)
        {
            return Ok(Target {
                upstream: index,
                repository: rest.to_owned(),
            });
        }
        let index = self
            .registries
            .iter()
            .position(|r| r.name == "default")
            .ok_or_else(|| {
                Refusal::not_found(format!(
                    "no upstream registry serves {name:?}: its first segment names none and upstream.oci.default is not set"
                ))
            })?;
        Ok(Target {
            upstream: index,
            repository: name.to_owned(),
        })
    }

    fn root(&self, target: &Target) -> &str {
        &self.registries[target.upstream].root
    }

    fn key(&self, kind: &str, digest: &Digest) -> Result<ObjectKey, Refusal> {
        ObjectKey::new(format!(
            "{}/{kind}/{}/{}",
            self.context.instance, digest.algorithm, digest.hex
        ))
        .map_err(|e| Refusal::bad_request(e.message().to_owned()))
    }

    async fn auth(&self, target: &Target) -> Result<HeaderMap, FetchFailure> {
        self.tokens
            .headers(
                &self.context.upstream,
                target.upstream,
                self.root(target),
                &target.repository,
            )
            .await
    }

    /// An upstream that answered 401 refused the token (expired early, revoked): the next
    /// request asks for a new one.
    fn note_refusal(&self, target: &Target, error: &UpstreamError) {
        if matches!(error, UpstreamError::Status { status: 401, .. }) {
            self.tokens.refused(target.upstream, &target.repository);
        }
    }

    /// The headers authorizing the upstream request of document `key`: none when the kept copy
    /// is fresh (no upstream request follows, so no token is asked for on a hit); the token
    /// service's failure too, kept to be answered only if the document cannot be had without
    /// it (the kept copy is then served stale, as for any upstream failure).
    async fn document_auth(&self, target: &Target, key: &str) -> (HeaderMap, Option<FetchFailure>) {
        if self.context.documents.fresh(key).is_some() {
            return (HeaderMap::new(), None);
        }
        match self.auth(target).await {
            Ok(headers) => (headers, None),
            Err(failure) => (HeaderMap::new(), Some(failure)),
        }
    }

    /// Document `key` from `url`, authorized as [`Self::document_auth`] says.
    async fn authorized_document(
        &self,
        target: &Target,
        key: &str,
        url: &str,
        accept: &str,
    ) -> Result<(Arc<Document>, Freshness), Reply> {
        let (headers, auth_failure) = self.document_auth(target, key).await;
        let request = DocumentRequest {
            key,
            url,
            accept,
            check: json_body,
            headers: Some(&headers),
        };
        self.context
            .documents
            .get(&request, false)
            .await
            .map_err(|e| {
                self.note_refusal(target, &e);
                auth_failure.unwrap_or_else(|| FetchFailure::from(e)).into()
            })
    }

    async fn manifest_by_tag(&self, target: Target, tag: String, headers: &HeaderMap) -> Reply {
        let types = accepted(headers);
        let accept = types.join(", ");
        let variant: String = MANIFEST_TYPES
            .iter()
            .map(|t| if types.contains(t) { '1' } else { '0' })
            .collect();
        let key = format!(
            "tag/{}/{}/{tag}/{variant}",
            self.registries[target.upstream].name, target.repository
        );
        let url = format!(
            "{}/v2/{}/manifests/{tag}",
            self.root(&target),
            target.repository
        );
        let (doc, freshness) = match self.authorized_document(&target, &key, &url, &accept).await {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        if doc.body.len() > MAX_MANIFEST {
            return Refusal::upstream("the upstream manifest is larger than 4 MiB").into();
        }
        // Rendered once per manifest, not per request: its digest, media type, and what it
        // teaches about its blobs.
        self.context
            .documents
            .reply(&key, "", &doc, freshness, |doc| {
                let kind = media_type(doc.content_type.as_deref(), &doc.body);
                let digest = Digest::sha256_of(&doc.body);
                self.learn_blob_types(&doc.body);
                self.seen.insert(
                    digest.to_string(),
                    Arc::new((kind.clone(), doc.body.clone())),
                );
                let content_type = HeaderValue::from_str(&kind)
                    .map_err(|_| "the manifest's media type is not a header value".to_owned())?;
                let digest = HeaderValue::from_str(&digest.to_string())
                    .map_err(|_| "a digest is a header value".to_owned())?;
                let mut reply = DocumentReply::new(content_type, doc.body.clone(), 0)
                    .with_header(DOCKER_CONTENT_DIGEST, digest)
                    .varies_by_accept();
                reply.last_modified = doc.last_modified.clone();
                Ok(reply)
            })
    }

    async fn resolve_manifest(
        self: Arc<Self>,
        target: Target,
        digest: Digest,
        key: ObjectKey,
    ) -> Result<Fetch, FetchFailure> {
        let url = format!(
            "{}/v2/{}/manifests/{digest}",
            self.root(&target),
            target.repository
        );
        let missing = format!(
            "manifest/{}/{}/{digest}",
            self.registries[target.upstream].name, target.repository
        );
        let (content_type, body) = match self.seen.get(&digest.to_string()) {
            Some(seen) => (seen.0.clone(), seen.1.clone()),
            None if self.context.documents.known_missing(&missing) => {
                return Err(FetchFailure::not_found(format!(
                    "the upstream has no manifest {digest} (remembered for metadata_ttl)"
                )));
            }
            None => {
                let mut headers = self.auth(&target).await?;
                let accept = MANIFEST_TYPES.join(", ");
                headers.insert(
                    header::ACCEPT,
                    HeaderValue::from_str(&accept).unwrap_or(HeaderValue::from_static("*/*")),
                );
                let answer = self
                    .context
                    .upstream
                    .document_with(&url, &accept, &headers, None, None)
                    .await
                    .map_err(|e| {
                        self.note_refusal(&target, &e);
                        if matches!(e, UpstreamError::NotFound(_)) {
                            self.context.documents.note_missing(&missing);
                        }
                        FetchFailure::from(e)
                    })?;
                let UpstreamResponse::Body {
                    body, content_type, ..
                } = answer
                else {
                    return Err(FetchFailure::upstream("the upstream answered 304 unasked"));
                };
                if body.len() > MAX_MANIFEST {
                    return Err(FetchFailure::upstream(
                        "the upstream manifest is larger than 4 MiB",
                    ));
                }
                (media_type(content_type.as_deref(), &body), body)
            }
        };
        // Checked here, before anything is stored, and again by the verifier as it streams.
        if digest.of(&body) != digest {
            return Err(FetchFailure::upstream(format!(
                "upstream manifest {digest} does not match its declared {} digest",
                digest.algorithm
            )));
        }
        self.learn_blob_types(&body);
        let spec = ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            name: target.repository.clone(),
            version: digest.to_string(),
            filename: format!("{}.json", digest.hex),
            content_type,
            upstream_url: url,
            verifier: expected(&digest).map(|d| d.boxed_verifier()),
        };
        Ok(Fetch {
            spec,
            source: one_chunk(body),
        })
    }

    async fn resolve_blob(
        self: Arc<Self>,
        target: Target,
        digest: Digest,
        key: ObjectKey,
    ) -> Result<Fetch, FetchFailure> {
        let missing = format!(
            "blob/{}/{}/{digest}",
            self.registries[target.upstream].name, target.repository
        );
        if self.context.documents.known_missing(&missing) {
            return Err(FetchFailure::not_found(format!(
                "the upstream has no blob {digest} (remembered for metadata_ttl)"
            )));
        }
        let headers = self.auth(&target).await?;
        let spec = ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            name: target.repository.clone(),
            version: digest.to_string(),
            filename: digest.hex.clone(),
            content_type: self
                .blob_types
                .get(&digest.to_string())
                .map_or_else(|| "application/octet-stream".to_owned(), |t| t.to_string()),
            upstream_url: format!(
                "{}/v2/{}/blobs/{digest}",
                self.root(&target),
                target.repository
            ),
            verifier: expected(&digest).map(|d| d.boxed_verifier()),
        };
        let fetch = self.context.upstream.fetch_with(spec, headers);
        // A 404 is remembered, so that asking again costs no upstream request.
        let documents = self.context.documents.clone();
        let source = fetch.source;
        Ok(Fetch {
            spec: fetch.spec,
            source: Box::pin(async move {
                let answer = source.await;
                if answer
                    .as_ref()
                    .is_err_and(|f| f.kind == proxyd_ecosystem::FailureKind::NotFound)
                {
                    documents.note_missing(&missing);
                }
                answer
            }),
        })
    }

    async fn tags(&self, target: Target) -> Reply {
        let key = format!(
            "tags/{}/{}",
            self.registries[target.upstream].name, target.repository
        );
        let url = format!("{}/v2/{}/tags/list", self.root(&target), target.repository);
        let (doc, freshness) = match self
            .authorized_document(&target, &key, &url, "application/json")
            .await
        {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        self.context
            .documents
            .reply(&key, "", &doc, freshness, |doc| {
                Ok(DocumentReply::new(
                    HeaderValue::from_static("application/json"),
                    doc.body.clone(),
                    0,
                ))
            })
    }

    fn stored(
        self: &Arc<Self>,
        key: ObjectKey,
        digest: &Digest,
        resolve: proxyd_ecosystem::Resolver,
        never_redirect: bool,
    ) -> Reply {
        let mut reply = StoredReply::immutable(key, resolve);
        reply.freshness = FreshnessRule::ContentAddressed;
        reply.never_redirect = never_redirect;
        if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
            reply.headers.insert(DOCKER_CONTENT_DIGEST, v);
        }
        Reply::Stored(reply)
    }
}

fn expected(digest: &Digest) -> Option<ExpectedDigest> {
    match digest.algorithm {
        "sha512" => ExpectedDigest::sha512_hex(&digest.hex),
        _ => ExpectedDigest::sha256_hex(&digest.hex),
    }
}

impl Ecosystem for OciRegistry {
    type Op = OciOp;

    fn route(&self, method: &Method, path: &str) -> Result<OciOp, Refusal> {
        read_only(method)?;
        if path == "/" || path.is_empty() {
            return Ok(OciOp::Base);
        }
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let (name, last) = match part_of(trimmed) {
            Part::Tags => (trimmed.strip_suffix("/tags/list").unwrap_or(""), ""),
            Part::Manifest => trimmed.rsplit_once("/manifests/").unwrap_or(("", "")),
            Part::Blob => trimmed.rsplit_once("/blobs/").unwrap_or(("", "")),
            Part::Other => {
                return Err(Refusal::not_found(
                    "not an OCI distribution pull route (/v2/{name}/manifests/{reference}, /v2/{name}/blobs/{digest}, /v2/{name}/tags/list)",
                ));
            }
        };
        check_repository(name).map_err(Refusal::bad_request)?;
        let target = self.target(name)?;
        check_repository(&target.repository).map_err(Refusal::bad_request)?;
        match part_of(trimmed) {
            Part::Tags => Ok(OciOp::Tags(target)),
            Part::Manifest => match Reference::parse(last).map_err(Refusal::bad_request)? {
                Reference::Tag(tag) => Ok(OciOp::ManifestByTag(target, tag)),
                Reference::Digest(digest) => {
                    let key = self.key("manifests", &digest)?;
                    Ok(OciOp::ManifestByDigest(target, digest, key))
                }
            },
            _ => {
                let digest = Digest::parse(last).map_err(Refusal::bad_request)?;
                let key = self.key("blobs", &digest)?;
                Ok(OciOp::Blob(target, digest, key))
            }
        }
    }

    async fn handle(self: Arc<Self>, op: OciOp, request: EcosystemRequest<'_>) -> Reply {
        match op {
            OciOp::Base => Reply::Document(
                DocumentReply::new(
                    HeaderValue::from_static("application/json"),
                    Bytes::from_static(b"{}"),
                    0,
                )
                .with_header(API_VERSION, HeaderValue::from_static("registry/2.0")),
            ),
            OciOp::ManifestByTag(target, tag) => {
                Box::pin(self.manifest_by_tag(target, tag, request.headers)).await
            }
            OciOp::Tags(target) => Box::pin(self.tags(target)).await,
            OciOp::ManifestByDigest(target, digest, key) => {
                let this = self.clone();
                let d = digest.clone();
                self.stored(
                    key,
                    &digest,
                    Box::new(move |k| Box::pin(this.resolve_manifest(target, d, k))),
                    true,
                )
            }
            OciOp::Blob(target, digest, key) => {
                let this = self.clone();
                let d = digest.clone();
                self.stored(
                    key,
                    &digest,
                    Box::new(move |k| Box::pin(this.resolve_blob(target, d, k))),
                    false,
                )
            }
        }
    }

    fn error_body(&self, path: &str, status: u16, reason: &str) -> Option<(HeaderValue, Bytes)> {
        let part = part_of(path);
        let code = match (status, part) {
            (400, Part::Blob) => "DIGEST_INVALID",
            (400, Part::Manifest) if reason.contains("digest") => "DIGEST_INVALID",
            (400, _) if reason.contains("repository name") => "NAME_INVALID",
            (400, Part::Manifest) => "MANIFEST_INVALID",
            (400, _) => "NAME_INVALID",
            (404, Part::Manifest) => "MANIFEST_UNKNOWN",
            (404, Part::Blob) => "BLOB_UNKNOWN",
            (404, Part::Tags) => "NAME_UNKNOWN",
            (404 | 405, Part::Other) | (405, _) => "UNSUPPORTED",
            (401, _) => "UNAUTHORIZED",
            (403, _) => "DENIED",
            (429, _) => "TOOMANYREQUESTS",
            _ => "UNKNOWN",
        };
        let body = serde_json::json!({
            "errors": [{"code": code, "message": reason, "detail": null}]
        });
        Some((
            HeaderValue::from_static("application/json"),
            Bytes::from(body.to_string()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_manifest_types() {
        let mut h = HeaderMap::new();
        assert_eq!(accepted(&h).len(), 4, "no Accept: every kind");
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json; q=0.9"),
        );
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json, */*"),
        );
        assert_eq!(
            accepted(&h),
            [MANIFEST_TYPES[2], MANIFEST_TYPES[3]],
            "in proxyd's order"
        );
        assert_eq!(
            media_type(Some("application/vnd.oci.image.index.v1+json"), b"{}"),
            MANIFEST_TYPES[0]
        );
        assert_eq!(
            media_type(
                Some("application/octet-stream"),
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            MANIFEST_TYPES[3]
        );
    }

    #[test]
    fn settings_take_one_url_or_names() {
        let one: OciConfig =
            serde_json::from_value(serde_json::json!({"upstream": "http://a:5000/"})).unwrap();
        let r = registries(&one).unwrap();
        assert_eq!(
            (r[0].name.as_str(), r[0].root.as_str()),
            ("default", "http://a:5000")
        );
        let many: OciConfig = serde_json::from_value(serde_json::json!({"upstream": {
            "default": "http://hub/v2/", "ghcr": "https://ghcr.example"
        }}))
        .unwrap();
        let r = registries(&many).unwrap();
        assert_eq!(r[0].name, "ghcr");
        assert_eq!(r[1].root, "http://hub");
        let bad: OciConfig =
            serde_json::from_value(serde_json::json!({"upstream": {"Bad_Name": "http://x"}}))
                .unwrap();
        assert!(registries(&bad).is_err());
    }
}
