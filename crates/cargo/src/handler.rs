use std::sync::Arc;

use proxyd_ecosystem::http::{HeaderValue, Method};
use proxyd_ecosystem::serde::Deserialize;
use proxyd_ecosystem::{
    ArtifactSpec, Bytes, Document, DocumentReply, DocumentRequest, Ecosystem, EcosystemContext,
    EcosystemKind, EcosystemRequest, ExpectedDigest, Fetch, FetchFailure, Freshness, ObjectKey,
    Refusal, Reply, StoredReply, Url, json_body, read_only, serde_json, settings,
};

use crate::index::{download_url, find_version, index_path, valid_name, valid_version};

const INDEX_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Settings of a Cargo instance (`upstream.cargo`, or an `ecosystems.<name>` of kind `cargo`).
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "proxyd_ecosystem::serde", deny_unknown_fields)]
pub struct CargoConfig {
    /// The upstream sparse index root, with or without `sparse+` and the trailing slash;
    /// downloads follow its `config.json` `dl` template.
    pub upstream: String,
}

fn sparse_root(upstream: &str) -> &str {
    let upstream = upstream.trim();
    upstream
        .strip_prefix("sparse+")
        .unwrap_or(upstream)
        .trim_end_matches('/')
}

/// The Cargo kind: register it with `registry.register::<CargoKind>()`.
#[derive(Debug)]
pub struct CargoKind;

impl EcosystemKind for CargoKind {
    const KIND: &'static str = "cargo";
    type Config = CargoConfig;
    type Handler = CargoRegistry;

    fn upstream(config: &CargoConfig) -> Result<Option<Url>, String> {
        settings::upstream_url(sparse_root(&config.upstream)).map(Some)
    }

    fn build(config: CargoConfig, context: EcosystemContext) -> Result<CargoRegistry, String> {
        let body = Bytes::from(
            serde_json::json!({
                "dl": format!("{}/crates/{{crate}}/{{version}}/download", context.mount_url)
            })
            .to_string(),
        );
        Ok(CargoRegistry {
            upstream: sparse_root(&config.upstream).to_owned(),
            config_json: DocumentReply::new(
                HeaderValue::from_static("application/json"),
                body,
                300,
            ),
            context,
        })
    }
}

/// An index file is whole when every line is a JSON object and the last one ends: a file cut
/// short would otherwise hide the newest versions or end in half a line.
fn whole_index_file(body: &[u8]) -> Result<(), String> {
    if body.is_empty() {
        return Ok(());
    }
    if !body.ends_with(b"\n") {
        return Err("the last line does not end: the file was cut short".into());
    }
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if serde_json::from_slice::<serde_json::Value>(line).map_or(true, |v| !v.is_object()) {
            return Err(format!("line {} is not a JSON object", n + 1));
        }
    }
    Ok(())
}

/// The Cargo sparse-index handler.
#[derive(Debug)]
pub struct CargoRegistry {
    upstream: String,
    context: EcosystemContext,
    config_json: DocumentReply,
}

/// What a Cargo request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum CargoOp {
    /// `config.json`, whose `dl` points at proxyd.
    Config,
    /// The index file of a crate.
    IndexFile(String),
    /// A `.crate`, under its storage key (`{instance}/{name}/{name}-{version}.crate`), with the
    /// name and version as asked.
    Download {
        /// Storage key.
        key: ObjectKey,
        /// Crate name as asked.
        name: String,
        /// Version.
        version: String,
    },
}

impl CargoRegistry {
    fn index_request<'a>(&self, key: &'a str, url: &'a str) -> DocumentRequest<'a> {
        DocumentRequest {
            key,
            url,
            accept: "*/*",
            check: whole_index_file,
            headers: None,
        }
    }

    async fn index_doc(
        &self,
        name: &str,
        force: bool,
    ) -> Result<(Arc<Document>, Freshness), FetchFailure> {
        let path = index_path(name);
        let (key, url) = (format!("index/{path}"), format!("{}/{path}", self.upstream));
        self.context
            .documents
            .get(&self.index_request(&key, &url), force)
            .await
            .map_err(FetchFailure::from)
    }

    async fn index_file(&self, name: &str) -> Reply {
        let (doc, freshness) = match self.index_doc(name, false).await {
            Ok(found) => found,
            Err(f) => return f.into(),
        };
        let key = format!("index/{}", index_path(name));
        self.context
            .documents
            .reply(&key, "", &doc, freshness, |doc| {
                let mut reply = DocumentReply::new(
                    HeaderValue::from_static(INDEX_CONTENT_TYPE),
                    doc.body.clone(),
                    0,
                );
                reply.last_modified = doc.last_modified.clone();
                Ok(reply)
            })
    }

    /// The upstream `dl` template.
    async fn dl_template(&self) -> Result<String, FetchFailure> {
        let url = format!("{}/config.json", self.upstream);
        let request = DocumentRequest {
            key: "config.json",
            url: &url,
            accept: "application/json",
            check: json_body,
            headers: None,
        };
        let (doc, _) = self.context.documents.get(&request, false).await?;
        let v: serde_json::Value = serde_json::from_slice(&doc.body)
            .map_err(|e| FetchFailure::upstream(format!("upstream config.json: {e}")))?;
        v.get("dl")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| FetchFailure::upstream("upstream config.json has no dl"))
    }

    async fn resolve(
        self: Arc<Self>,
        key: ObjectKey,
        name: String,
        version: String,
    ) -> Result<Fetch, FetchFailure> {
        let path = index_path(&name);
        let (doc_key, url) = (format!("index/{path}"), format!("{}/{path}", self.upstream));
        let found = self
            .context
            .documents
            .find(&self.index_request(&doc_key, &url), &version, |doc| {
                Ok(find_version(&doc.body, &version))
            })
            .await?;
        let Some(entry) = found else {
            return Err(FetchFailure::not_found(format!(
                "the index has no version {version} of {name}"
            )));
        };
        let expected = ExpectedDigest::sha256_hex(&entry.cksum)
            .ok_or_else(|| FetchFailure::upstream("upstream index line has a malformed cksum"))?;
        let dl = self.dl_template().await?;
        let url = download_url(&dl, &entry.name, &version, &entry.cksum);
        Ok(self.context.upstream.fetch(ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            filename: format!("{}-{version}.crate", entry.name),
            name: entry.name,
            version,
            content_type: "application/gzip".into(),
            upstream_url: url,
            verifier: Some(expected.boxed_verifier()),
        }))
    }
}

impl Ecosystem for CargoRegistry {
    type Op = CargoOp;

    fn route(&self, method: &Method, path: &str) -> Result<CargoOp, Refusal> {
        read_only(method)?;
        let path = path.strip_prefix('/').unwrap_or(path);
        if path.contains('%') {
            return Err(Refusal::bad_request(
                "percent-escapes are not accepted in Cargo paths",
            ));
        }
        if path == "config.json" {
            return Ok(CargoOp::Config);
        }
        let segments: Vec<&str> = path.split('/').collect();
        if let ["crates", name, version, "download"] = segments.as_slice() {
            if !valid_name(name) || !valid_version(version) {
                return Err(Refusal::bad_request(format!(
                    "{name:?} {version:?} is not a crate name and version"
                )));
            }
            let lower = name.to_ascii_lowercase();
            let key = ObjectKey::new(format!(
                "{}/{lower}/{lower}-{version}.crate",
                self.context.instance
            ))
            .map_err(|e| Refusal::bad_request(e.message().to_owned()))?;
            return Ok(CargoOp::Download {
                key,
                name: (*name).to_owned(),
                version: (*version).to_owned(),
            });
        }
        let Some(name) = segments.last().copied() else {
            return Err(Refusal::not_found("no such index file"));
        };
        if !valid_name(name) {
            return Err(Refusal::bad_request(format!(
                "{name:?} is not a crate name"
            )));
        }
        if index_path(name) != path {
            return Err(Refusal::not_found(format!(
                "{path} is not the index path of {name}"
            )));
        }
        Ok(CargoOp::IndexFile(name.to_owned()))
    }

    async fn handle(self: Arc<Self>, op: CargoOp, _request: EcosystemRequest<'_>) -> Reply {
        match op {
            CargoOp::Config => Reply::Document(self.config_json.clone()),
            CargoOp::IndexFile(name) => Box::pin(self.index_file(&name)).await,
            CargoOp::Download { key, name, version } => {
                let this = self.clone();
                Reply::Stored(StoredReply::immutable(
                    key,
                    Box::new(move |key| Box::pin(this.resolve(key, name, version))),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_files_cut_short_are_refused() {
        assert!(whole_index_file(b"{\"name\":\"a\"}\n{\"name\":\"a\"}\n").is_ok());
        assert!(whole_index_file(b"").is_ok());
        assert!(whole_index_file(b"{\"name\":\"a\"}\n{\"name\":").is_err());
        assert!(whole_index_file(b"{\"name\":\"a\"}\n{\"na\n").is_err());
        assert!(whole_index_file(b"[1]\n").is_err());
    }
}
