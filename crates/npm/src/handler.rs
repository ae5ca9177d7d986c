use std::sync::Arc;

use bytes::Bytes;
use proxyd_cache::{ArtifactSpec, FetchFailure};
use proxyd_ecosystem::names::{decode_slashes_only, is_safe_file_name};
use proxyd_ecosystem::{
    ArtifactReply, DocumentReply, Ecosystem, EcosystemRequest, Freshness, MetadataCache,
    RenderCache, Reply,
};
use proxyd_storage_core::ObjectKey;

use crate::name::{upstream_path, validate};
use crate::rewrite::{find_tarball, rewrite_packument};

const ABBREVIATED: &str = "application/vnd.npm.install-v1+json";
const ACCEPT_ABBREVIATED: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
const ACCEPT_FULL: &str = "application/json";

/// Settings of the npm handler.
#[derive(Debug, Clone)]
pub struct NpmConfig {
    /// Upstream registry root (packument at `{upstream}/{name}`), without trailing slash.
    pub upstream: String,
    /// proxyd's public URL, without trailing slash.
    pub base_url: String,
}

/// The npm handler.
#[derive(Debug)]
pub struct Npm {
    config: NpmConfig,
    metadata: Arc<MetadataCache>,
    rendered: RenderCache<String>,
}

#[derive(Clone, Copy)]
enum Variant {
    Full,
    Abbreviated,
}

impl Variant {
    fn doc_key(self, name: &str) -> String {
        match self {
            Self::Full => format!("npm/full/{name}"),
            Self::Abbreviated => format!("npm/abbreviated/{name}"),
        }
    }
    fn accept(self) -> &'static str {
        match self {
            Self::Full => ACCEPT_FULL,
            Self::Abbreviated => ACCEPT_ABBREVIATED,
        }
    }
    fn content_type(self) -> &'static str {
        match self {
            Self::Full => "application/json",
            Self::Abbreviated => ABBREVIATED,
        }
    }
}

impl Npm {
    /// A handler for `config.upstream`, caching documents in `metadata`.
    pub fn new(mut config: NpmConfig, metadata: Arc<MetadataCache>) -> Self {
        config.upstream = config.upstream.trim_end_matches('/').to_owned();
        config.base_url = config.base_url.trim_end_matches('/').to_owned();
        Self {
            config,
            metadata,
            rendered: RenderCache::default(),
        }
    }

    fn packument_url(&self, name: &str) -> String {
        format!("{}/{}", self.config.upstream, upstream_path(name))
    }

    async fn packument(&self, name: &str, variant: Variant) -> Reply {
        let key = variant.doc_key(name);
        let url = self.packument_url(name);
        let (doc, freshness) = match self
            .metadata
            .get("npm", &key, &url, variant.accept(), false)
            .await
        {
            Ok(found) => found,
            Err(err) => {
                let failure = FetchFailure::from(&err);
                return Reply::Error(failure.status, failure.message);
            }
        };
        let rendered = self.rendered.get_or_render(key, &doc, |doc| {
            let body = Bytes::from(rewrite_packument(&doc.body, name, &self.config.base_url)?);
            Ok(DocumentReply::new(variant.content_type(), body, 60))
        });
        let mut reply = match rendered {
            Ok(reply) => reply,
            Err(err) => return Reply::Error(502, err),
        };
        reply.stale = freshness == Freshness::Stale;
        Reply::Document(reply)
    }

    /// Where upstream has `file` of `name`, from the upstream's own packument.
    async fn resolve(
        self: Arc<Self>,
        name: String,
        file: String,
        key: ObjectKey,
    ) -> Result<ArtifactSpec, FetchFailure> {
        // Whichever packument is fresh in memory serves, full or abbreviated.
        for variant in [Variant::Abbreviated, Variant::Full] {
            if let Some(doc) = self.metadata.fresh(&variant.doc_key(&name))
                && let Ok(Some(info)) = find_tarball(&doc.body, &file)
            {
                return spec_from(info, name, file, key);
            }
        }
        let url = self.packument_url(&name);
        for force in [false, true] {
            let variant = Variant::Abbreviated;
            let (doc, freshness) = self
                .metadata
                .get(
                    "npm",
                    &variant.doc_key(&name),
                    &url,
                    variant.accept(),
                    force,
                )
                .await
                .map_err(|e| FetchFailure::from(&e))?;
            let info = find_tarball(&doc.body, &file).map_err(|e| FetchFailure::new(502, e))?;
            if let Some(info) = info {
                return spec_from(info, name, file, key);
            }
            // A version published after the cached packument: look once more, upstream.
            if matches!(freshness, Freshness::Fetched | Freshness::Stale) {
                break;
            }
        }
        Err(FetchFailure::new(
            404,
            format!("no version of {name} has the tarball {file}"),
        ))
    }
}

fn spec_from(
    info: crate::rewrite::TarballInfo,
    name: String,
    file: String,
    key: ObjectKey,
) -> Result<ArtifactSpec, FetchFailure> {
    if !(info.url.starts_with("http://") || info.url.starts_with("https://")) {
        return Err(FetchFailure::new(
            502,
            "upstream packument has a non-HTTP tarball URL",
        ));
    }
    Ok(ArtifactSpec {
        key,
        ecosystem: "npm",
        name,
        version: info.version,
        filename: file,
        content_type: "application/octet-stream".into(),
        upstream_url: info.url,
        expected: info.expected,
    })
}

/// `name/-/file` split at its first `/-/` (a byte scan: this runs on every tarball request).
fn split_tarball_path(path: &str) -> Option<(&str, &str)> {
    let at = path.as_bytes().windows(3).position(|w| w == b"/-/")?;
    Some((&path[..at], &path[at + 3..]))
}

#[async_trait::async_trait]
impl Ecosystem for Npm {
    fn name(&self) -> &'static str {
        "npm"
    }

    async fn handle(self: Arc<Self>, request: EcosystemRequest<'_>) -> Reply {
        let raw = request.path.trim_start_matches('/');
        let path = match decode_slashes_only(raw) {
            Ok(path) => path,
            Err(reason) => return Reply::bad_request(reason),
        };
        if let Some((name, file)) = split_tarball_path(&path) {
            if let Err(reason) = validate(name) {
                return Reply::bad_request(reason);
            }
            if !is_safe_file_name(file) || !file.ends_with(".tgz") {
                return Reply::bad_request(format!("{file:?} is not an npm tarball file name"));
            }
            let mut key = String::with_capacity(8 + name.len() + file.len());
            for part in ["npm/", name, "/-/", file] {
                key.push_str(part);
            }
            let key = match ObjectKey::new(key) {
                Ok(key) => key,
                Err(err) => return Reply::bad_request(err.message().to_owned()),
            };
            let this = self.clone();
            let miss_key = key.clone();
            // Name and file are taken back out of the key on a miss, so a hit copies neither.
            let resolve: proxyd_ecosystem::Resolver = Box::new(move || {
                let (name, file) = miss_key
                    .as_str()
                    .strip_prefix("npm/")
                    .and_then(|rest| rest.split_once("/-/"))
                    .map(|(n, f)| (n.to_owned(), f.to_owned()))
                    .unwrap_or_default();
                Box::pin(this.resolve(name, file, miss_key))
            });
            return Reply::Artifact(ArtifactReply { key, resolve });
        }
        if let Err(reason) = validate(&path) {
            return Reply::bad_request(reason);
        }
        let abbreviated = request
            .headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains(ABBREVIATED));
        let variant = if abbreviated {
            Variant::Abbreviated
        } else {
            Variant::Full
        };
        self.packument(&path, variant).await
    }
}
