use std::sync::Arc;

use bytes::Bytes;
use proxyd_cache::{ArtifactSpec, Document, ExpectedDigest, FetchFailure};
use proxyd_ecosystem::names::is_safe_file_name;
use proxyd_ecosystem::{
    ArtifactReply, DocumentReply, Ecosystem, EcosystemRequest, Freshness, MetadataCache,
    RenderCache, Reply,
};
use proxyd_storage_core::ObjectKey;
use url::Url;

use crate::name::{is_valid, normalize};
use crate::simple::{MetadataFlag, Page, parse_html, parse_json, render_html, render_json};

const JSON: &str = "application/vnd.pypi.simple.v1+json";
const HTML: &str = "application/vnd.pypi.simple.v1+html";
const ACCEPT_UPSTREAM: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// Settings of the PyPI handler.
#[derive(Debug, Clone)]
pub struct PyPiConfig {
    /// Root of the upstream simple index (`{upstream}/{project}/`), without trailing slash.
    pub upstream: String,
    /// proxyd's public URL, without trailing slash.
    pub base_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Format {
    Json,
    /// PEP 503 HTML, labelled with the content type the client asked for.
    Html(&'static str),
}

/// Pick the page format from `Accept` (highest q wins; JSON on a tie; HTML when nothing says).
fn negotiate(accept: Option<&str>) -> Option<Format> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Format::Html("text/html"));
    };
    let mut best: Option<(f32, Format)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let format =
            match media.as_str() {
                "application/vnd.pypi.simple.v1+json"
                | "application/vnd.pypi.simple.latest+json" => Format::Json,
                "application/vnd.pypi.simple.v1+html"
                | "application/vnd.pypi.simple.latest+html" => Format::Html(HTML),
                "text/html" | "*/*" | "text/*" => Format::Html("text/html"),
                _ => continue,
            };
        if q <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((bq, bf)) => q > bq || (q == bq && format == Format::Json && bf != Format::Json),
        };
        if better {
            best = Some((q, format));
        }
    }
    best.map(|(_, f)| f)
}

/// The PyPI handler.
#[derive(Debug)]
pub struct PyPi {
    config: PyPiConfig,
    metadata: Arc<MetadataCache>,
    rendered: RenderCache<(String, Format)>,
}

impl PyPi {
    /// A handler for `config.upstream`, caching pages in `metadata`.
    pub fn new(mut config: PyPiConfig, metadata: Arc<MetadataCache>) -> Self {
        config.upstream = config.upstream.trim_end_matches('/').to_owned();
        config.base_url = config.base_url.trim_end_matches('/').to_owned();
        Self {
            config,
            metadata,
            rendered: RenderCache::default(),
        }
    }

    fn page_url(&self, project: &str) -> String {
        format!("{}/{project}/", self.config.upstream)
    }

    async fn page_doc(
        &self,
        project: &str,
        force: bool,
    ) -> Result<(Arc<Document>, Freshness), FetchFailure> {
        let key = format!("pypi/simple/{project}");
        self.metadata
            .get(
                "pypi",
                &key,
                &self.page_url(project),
                ACCEPT_UPSTREAM,
                force,
            )
            .await
            .map_err(|e| FetchFailure::from(&e))
    }

    fn parse(&self, project: &str, doc: &Document) -> Result<Page, FetchFailure> {
        let page_url = Url::parse(&self.page_url(project))
            .map_err(|e| FetchFailure::new(502, format!("bad upstream URL: {e}")))?;
        let is_json = doc
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.contains("json"));
        let mut page = if is_json {
            parse_json(&doc.body, &page_url).map_err(|e| FetchFailure::new(502, e))?
        } else {
            parse_html(&String::from_utf8_lossy(&doc.body), &page_url)
        };
        page.retain_servable();
        Ok(page)
    }

    async fn project_page(&self, project: &str, format: Format) -> Reply {
        let (doc, freshness) = match self.page_doc(project, false).await {
            Ok(found) => found,
            Err(f) => return Reply::Error(f.status, f.message),
        };
        let rendered = self
            .rendered
            .get_or_render((project.to_owned(), format), &doc, |doc| {
                let page = self.parse(project, doc).map_err(|f| f.message)?;
                let (content_type, body) = match format {
                    Format::Json => (JSON, render_json(&page, project, &self.config.base_url)),
                    Format::Html(ct) => (ct, render_html(&page, project, &self.config.base_url)),
                };
                let body = Bytes::from(body);
                Ok(DocumentReply::new(content_type, body, 60))
            });
        let mut reply = match rendered {
            Ok(reply) => reply,
            Err(err) => return Reply::Error(502, err),
        };
        reply.stale = freshness == Freshness::Stale;
        Reply::Document(reply)
    }

    /// Where upstream has `filename` of `project` (or its PEP 658 metadata), from the
    /// upstream's own page.
    async fn resolve(
        self: Arc<Self>,
        project: String,
        filename: String,
        key: ObjectKey,
    ) -> Result<ArtifactSpec, FetchFailure> {
        let (dist, is_metadata) = match filename.strip_suffix(".metadata") {
            Some(dist) => (dist.to_owned(), true),
            None => (filename.clone(), false),
        };
        for force in [false, true] {
            let (doc, freshness) = self.page_doc(&project, force).await?;
            let page = self.parse(&project, &doc)?;
            if let Some(file) = page.file(&dist) {
                let (url, expected) = if is_metadata {
                    let Some(flag) = &file.core_metadata else {
                        return Err(FetchFailure::new(
                            404,
                            format!("upstream offers no metadata file for {dist}"),
                        ));
                    };
                    let expected = match flag {
                        MetadataFlag::Hashes(h) => {
                            h.get("sha256").and_then(|v| ExpectedDigest::sha256_hex(v))
                        }
                        MetadataFlag::Present => None,
                    };
                    (format!("{}.metadata", file.url), expected)
                } else {
                    (
                        file.url.clone(),
                        file.hashes
                            .get("sha256")
                            .and_then(|v| ExpectedDigest::sha256_hex(v)),
                    )
                };
                return Ok(ArtifactSpec {
                    key,
                    ecosystem: "pypi",
                    name: project,
                    version: String::new(),
                    filename,
                    content_type: if is_metadata {
                        "text/plain; charset=utf-8"
                    } else {
                        "application/octet-stream"
                    }
                    .into(),
                    upstream_url: url,
                    expected,
                });
            }
            if matches!(freshness, Freshness::Fetched | Freshness::Stale) {
                break;
            }
        }
        Err(FetchFailure::new(
            404,
            format!("{project} has no file {dist} upstream"),
        ))
    }
}

#[async_trait::async_trait]
impl Ecosystem for PyPi {
    fn name(&self) -> &'static str {
        "pypi"
    }

    async fn handle(self: Arc<Self>, request: EcosystemRequest<'_>) -> Reply {
        let path = request.path;
        if path.contains('%') {
            return Reply::bad_request("percent-escapes are not accepted in PyPI paths");
        }
        if let Some(rest) = path.strip_prefix("/simple/") {
            let name = rest.strip_suffix('/').unwrap_or(rest);
            if name.is_empty() {
                return Reply::not_found(
                    "the project list is not served; ask for /pypi/simple/{project}/",
                );
            }
            if name.contains('/') || !is_valid(name) {
                return Reply::bad_request(format!("{name:?} is not a valid project name"));
            }
            let normalized = normalize(name);
            if normalized != name || !rest.ends_with('/') {
                return Reply::Redirect(format!(
                    "{}/pypi/simple/{normalized}/",
                    self.config.base_url
                ));
            }
            let accept = request
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let Some(format) = negotiate(accept) else {
                return Reply::Error(
                    406,
                    format!("acceptable types are {JSON}, {HTML} and text/html"),
                );
            };
            return self.project_page(&normalized, format).await;
        }
        if path == "/simple" {
            return Reply::not_found(
                "the project list is not served; ask for /pypi/simple/{project}/",
            );
        }
        if let Some(rest) = path.strip_prefix("/packages/") {
            let Some((project, filename)) = rest.split_once('/') else {
                return Reply::bad_request("expected /pypi/packages/{project}/{file}");
            };
            if !is_valid(project) || normalize(project) != project {
                return Reply::bad_request(format!("{project:?} is not a normalised project name"));
            }
            if !is_safe_file_name(filename) {
                return Reply::bad_request(format!("{filename:?} is not a distribution file name"));
            }
            let key = match ObjectKey::new(format!("pypi/{project}/{filename}")) {
                Ok(key) => key,
                Err(err) => return Reply::bad_request(err.message().to_owned()),
            };
            let this = self.clone();
            let (miss_name, miss_file, miss_key) =
                (project.to_owned(), filename.to_owned(), key.clone());
            let resolve: proxyd_ecosystem::Resolver =
                Box::new(move || Box::pin(this.resolve(miss_name, miss_file, miss_key)));
            return Reply::Artifact(ArtifactReply { key, resolve });
        }
        Reply::not_found(format!("no PyPI route for {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let pip = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
        assert_eq!(negotiate(Some(pip)), Some(Format::Json));
        assert_eq!(
            negotiate(Some("text/html")),
            Some(Format::Html("text/html"))
        );
        assert_eq!(
            negotiate(Some("application/vnd.pypi.simple.v1+html")),
            Some(Format::Html(HTML))
        );
        assert_eq!(negotiate(None), Some(Format::Html("text/html")));
        assert_eq!(negotiate(Some("application/xml")), None);
        assert_eq!(
            negotiate(Some("application/vnd.pypi.simple.v1+json;q=0")),
            None
        );
    }
}
