use std::sync::Arc;

use bytes::Bytes;
use proxyd_cache::{ArtifactSpec, Document, ExpectedDigest, FetchFailure};
use proxyd_ecosystem::{
    ArtifactReply, DocumentReply, Ecosystem, EcosystemRequest, Freshness, MetadataCache,
    RenderCache, Reply,
};
use proxyd_storage_core::ObjectKey;

use crate::index::{download_url, find_version, index_path, valid_name, valid_version};

const INDEX_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Settings of the Cargo handler.
#[derive(Debug, Clone)]
pub struct CargoConfig {
    /// Upstream sparse index root, with or without `sparse+` and the trailing slash.
    pub upstream: String,
    /// proxyd's public URL, without trailing slash.
    pub base_url: String,
}

/// The Cargo sparse-index handler.
#[derive(Debug)]
pub struct CargoRegistry {
    upstream: String,
    metadata: Arc<MetadataCache>,
    config_json: DocumentReply,
    rendered: RenderCache<String>,
}

impl CargoRegistry {
    /// A handler for the sparse index at `config.upstream`.
    pub fn new(config: CargoConfig, metadata: Arc<MetadataCache>) -> Self {
        let CargoConfig { upstream, base_url } = config;
        let upstream = upstream.strip_prefix("sparse+").unwrap_or(&upstream);
        let upstream = upstream.trim_end_matches('/').to_owned();
        let base_url = base_url.trim_end_matches('/').to_owned();
        let body = Bytes::from(
            serde_json::json!({ "dl": format!("{base_url}/cargo/crates/{{crate}}/{{version}}/download") })
                .to_string(),
        );
        let config_json = DocumentReply::new("application/json", body, 300);
        Self {
            upstream,
            metadata,
            config_json,
            rendered: RenderCache::default(),
        }
    }

    async fn index_doc(
        &self,
        name: &str,
        force: bool,
    ) -> Result<(Arc<Document>, Freshness), FetchFailure> {
        let path = index_path(name);
        self.metadata
            .get(
                "cargo",
                &format!("cargo/index/{path}"),
                &format!("{}/{path}", self.upstream),
                "*/*",
                force,
            )
            .await
            .map_err(|e| FetchFailure::from(&e))
    }

    async fn index_file(&self, name: &str) -> Reply {
        let (doc, freshness) = match self.index_doc(name, false).await {
            Ok(found) => found,
            Err(f) => return Reply::Error(f.status, f.message),
        };
        let rendered = self
            .rendered
            .get_or_render(name.to_ascii_lowercase(), &doc, |doc| {
                let mut reply = DocumentReply::new(INDEX_CONTENT_TYPE, doc.body.clone(), 0);
                reply.last_modified = doc.last_modified.clone();
                Ok(reply)
            });
        let mut reply = match rendered {
            Ok(reply) => reply,
            Err(err) => return Reply::Error(502, err),
        };
        reply.stale = freshness == Freshness::Stale;
        Reply::Document(reply)
    }

    /// The upstream `dl` template.
    async fn dl_template(&self) -> Result<String, FetchFailure> {
        let url = format!("{}/config.json", self.upstream);
        let (doc, _) = self
            .metadata
            .get(
                "cargo",
                "cargo/config.json",
                &url,
                "application/json",
                false,
            )
            .await
            .map_err(|e| FetchFailure::from(&e))?;
        let v: serde_json::Value = serde_json::from_slice(&doc.body)
            .map_err(|e| FetchFailure::new(502, format!("upstream config.json: {e}")))?;
        v.get("dl")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| FetchFailure::new(502, "upstream config.json has no dl"))
    }

    async fn resolve(
        self: Arc<Self>,
        name: String,
        version: String,
        key: ObjectKey,
    ) -> Result<ArtifactSpec, FetchFailure> {
        for force in [false, true] {
            let (doc, freshness) = self.index_doc(&name, force).await?;
            if let Some(entry) = find_version(&doc.body, &version) {
                let expected = ExpectedDigest::sha256_hex(&entry.cksum).ok_or_else(|| {
                    FetchFailure::new(502, "upstream index line has a malformed cksum")
                })?;
                let dl = self.dl_template().await?;
                let url = download_url(&dl, &entry.name, &version, &entry.cksum);
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(FetchFailure::new(
                        502,
                        "upstream dl template is not an HTTP URL",
                    ));
                }
                return Ok(ArtifactSpec {
                    key,
                    ecosystem: "cargo",
                    filename: format!("{}-{version}.crate", entry.name),
                    name: entry.name,
                    version,
                    content_type: "application/gzip".into(),
                    upstream_url: url,
                    expected: Some(expected),
                });
            }
            if matches!(freshness, Freshness::Fetched | Freshness::Stale) {
                break;
            }
        }
        Err(FetchFailure::new(
            404,
            format!("the index has no version {version} of {name}"),
        ))
    }
}

#[async_trait::async_trait]
impl Ecosystem for CargoRegistry {
    fn name(&self) -> &'static str {
        "cargo"
    }

    async fn handle(self: Arc<Self>, request: EcosystemRequest<'_>) -> Reply {
        let path = request.path.trim_start_matches('/');
        if path.contains('%') {
            return Reply::bad_request("percent-escapes are not accepted in Cargo paths");
        }
        if path == "config.json" {
            return Reply::Document(self.config_json.clone());
        }
        let segments: Vec<&str> = path.split('/').collect();
        if let ["crates", name, version, "download"] = segments.as_slice() {
            if !valid_name(name) || !valid_version(version) {
                return Reply::bad_request(format!(
                    "{name:?} {version:?} is not a crate name and version"
                ));
            }
            let lower = name.to_ascii_lowercase();
            let key = match ObjectKey::new(format!("cargo/{lower}/{lower}-{version}.crate")) {
                Ok(key) => key,
                Err(err) => return Reply::bad_request(err.message().to_owned()),
            };
            let this = self.clone();
            let (miss_name, miss_version, miss_key) =
                ((*name).to_owned(), (*version).to_owned(), key.clone());
            let resolve: proxyd_ecosystem::Resolver =
                Box::new(move || Box::pin(this.resolve(miss_name, miss_version, miss_key)));
            return Reply::Artifact(ArtifactReply { key, resolve });
        }
        let Some(name) = segments.last().copied() else {
            return Reply::not_found("no such index file");
        };
        if !valid_name(name) {
            return Reply::bad_request(format!("{name:?} is not a crate name"));
        }
        if index_path(name) != path {
            return Reply::not_found(format!("{path} is not the index path of {name}"));
        }
        self.index_file(name).await
    }
}
