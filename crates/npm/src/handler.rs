use std::sync::Arc;

use proxyd_ecosystem::http::{HeaderValue, Method, header};
use proxyd_ecosystem::names::{decode_slashes_only, is_safe_file_name};
use proxyd_ecosystem::serde::Deserialize;
use proxyd_ecosystem::{
    ArtifactSpec, Bytes, DocumentReply, DocumentRequest, Ecosystem, EcosystemContext,
    EcosystemKind, EcosystemRequest, Fetch, FetchFailure, ObjectKey, Refusal, Reply, StoredReply,
    Url, json_body, read_only, settings,
};

use crate::name::{upstream_path, validate};
use crate::rewrite::{TarballInfo, find_tarball, rewrite_packument};

const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";
const ACCEPT_ABBREVIATED: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
const ACCEPT_FULL: &str = "application/json";

/// Settings of an npm instance (`upstream.npm`, or an `ecosystems.<name>` of kind `npm`).
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "proxyd_ecosystem::serde", deny_unknown_fields)]
pub struct NpmConfig {
    /// The registry root: the packument of `NAME` is `{upstream}/NAME`.
    pub upstream: String,
}

/// The npm kind: register it with `registry.register::<NpmKind>()`.
#[derive(Debug)]
pub struct NpmKind;

impl EcosystemKind for NpmKind {
    const KIND: &'static str = "npm";
    type Config = NpmConfig;
    type Handler = Npm;

    fn upstream(config: &NpmConfig) -> Result<Option<Url>, String> {
        settings::upstream_url(&config.upstream).map(Some)
    }

    fn build(config: NpmConfig, context: EcosystemContext) -> Result<Npm, String> {
        Ok(Npm {
            upstream: config.upstream.trim_end_matches('/').to_owned(),
            context,
        })
    }
}

/// The npm handler.
#[derive(Debug)]
pub struct Npm {
    upstream: String,
    context: EcosystemContext,
}

/// What an npm request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum NpmOp {
    /// A packument.
    Packument(String),
    /// A tarball, under its storage key (`{instance}/{name}/-/{file}`).
    Tarball(ObjectKey),
}

#[derive(Clone, Copy)]
enum Variant {
    Full,
    Abbreviated,
}

impl Variant {
    fn doc_key(self, name: &str) -> String {
        match self {
            Self::Full => format!("full/{name}"),
            Self::Abbreviated => format!("abbreviated/{name}"),
        }
    }
    fn accept(self) -> &'static str {
        match self {
            Self::Full => ACCEPT_FULL,
            Self::Abbreviated => ACCEPT_ABBREVIATED,
        }
    }
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Full => "application/json",
            Self::Abbreviated => ABBREVIATED,
        })
    }
}

/// `name/-/file` split at its first `/-/` (a byte scan: this runs on every tarball request).
fn split_tarball_path(path: &str) -> Option<(&str, &str)> {
    let at = path.as_bytes().windows(3).position(|w| w == b"/-/")?;
    Some((&path[..at], &path[at + 3..]))
}

impl Npm {
    fn packument_url(&self, name: &str) -> String {
        format!("{}/{}", self.upstream, upstream_path(name))
    }

    async fn packument(&self, name: &str, variant: Variant) -> Reply {
        let key = variant.doc_key(name);
        let url = self.packument_url(name);
        let request = DocumentRequest {
            key: &key,
            url: &url,
            accept: variant.accept(),
            check: json_body,
            headers: None,
        };
        let (doc, freshness) = match self.context.documents.get(&request, false).await {
            Ok(found) => found,
            Err(err) => return FetchFailure::from(&err).into(),
        };
        self.context
            .documents
            .reply(&key, "", &doc, freshness, |doc| {
                let body =
                    Bytes::from(rewrite_packument(&doc.body, name, &self.context.mount_url)?);
                Ok(DocumentReply::new(variant.content_type(), body, 60).varies_by_accept())
            })
    }

    /// Where upstream has `file` of `name`, from the upstream's own packument.
    async fn resolve(self: Arc<Self>, key: ObjectKey) -> Result<Fetch, FetchFailure> {
        let (name, file) = key
            .as_str()
            .strip_prefix(self.context.instance)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(split_tarball_path)
            .map(|(n, f)| (n.to_owned(), f.to_owned()))
            .unwrap_or_default();
        // Whichever packument is fresh in memory serves, full or abbreviated.
        for variant in [Variant::Abbreviated, Variant::Full] {
            if let Some(doc) = self.context.documents.fresh(&variant.doc_key(&name))
                && let Ok(Some(info)) = find_tarball(&doc.body, &file)
            {
                return self.fetch(info, name, file, key);
            }
        }
        let variant = Variant::Abbreviated;
        let (doc_key, url) = (variant.doc_key(&name), self.packument_url(&name));
        let request = DocumentRequest {
            key: &doc_key,
            url: &url,
            accept: variant.accept(),
            check: json_body,
            headers: None,
        };
        match self
            .context
            .documents
            .find(&request, &file, |doc| find_tarball(&doc.body, &file))
            .await?
        {
            Some(info) => self.fetch(info, name, file, key),
            None => Err(FetchFailure::not_found(format!(
                "no version of {name} has the tarball {file}"
            ))),
        }
    }

    fn fetch(
        &self,
        info: TarballInfo,
        name: String,
        file: String,
        key: ObjectKey,
    ) -> Result<Fetch, FetchFailure> {
        Ok(self.context.upstream.fetch(ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            name,
            version: info.version,
            filename: file,
            content_type: "application/octet-stream".into(),
            upstream_url: info.url,
            verifier: info.expected.map(|d| d.boxed_verifier()),
        }))
    }
}

impl Ecosystem for Npm {
    type Op = NpmOp;

    fn route(&self, method: &Method, path: &str) -> Result<NpmOp, Refusal> {
        read_only(method)?;
        let raw = path.strip_prefix('/').unwrap_or(path);
        let path = decode_slashes_only(raw).map_err(Refusal::bad_request)?;
        if let Some((name, file)) = split_tarball_path(&path) {
            validate(name).map_err(Refusal::bad_request)?;
            if !is_safe_file_name(file) || !file.ends_with(".tgz") {
                return Err(Refusal::bad_request(format!(
                    "{file:?} is not an npm tarball file name"
                )));
            }
            let mut key =
                String::with_capacity(self.context.instance.len() + 5 + name.len() + file.len());
            for part in [self.context.instance, "/", name, "/-/", file] {
                key.push_str(part);
            }
            return ObjectKey::new(key)
                .map(NpmOp::Tarball)
                .map_err(|e| Refusal::bad_request(e.message().to_owned()));
        }
        validate(&path).map_err(Refusal::bad_request)?;
        Ok(NpmOp::Packument(path.into_owned()))
    }

    async fn handle(self: Arc<Self>, op: NpmOp, request: EcosystemRequest<'_>) -> Reply {
        match op {
            NpmOp::Tarball(key) => {
                let this = self.clone();
                Reply::Stored(StoredReply::immutable(
                    key,
                    Box::new(move |key| Box::pin(this.resolve(key))),
                ))
            }
            NpmOp::Packument(name) => {
                let abbreviated = request
                    .headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains(ABBREVIATED));
                let variant = if abbreviated {
                    Variant::Abbreviated
                } else {
                    Variant::Full
                };
                // Boxed: the packument's future is large, and inline it would make every
                // tarball request allocate and copy its size (1.5 % of a redirect's CPU time).
                Box::pin(self.packument(&name, variant)).await
            }
        }
    }
}
