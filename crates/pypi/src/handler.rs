use std::sync::Arc;

use proxyd_ecosystem::http::{HeaderValue, Method, header};
use proxyd_ecosystem::names::is_safe_file_name;
use proxyd_ecosystem::serde::Deserialize;
use proxyd_ecosystem::{
    ArtifactSpec, Bytes, Document, DocumentReply, DocumentRequest, Ecosystem, EcosystemContext,
    EcosystemKind, EcosystemRequest, ExpectedDigest, Fetch, FetchFailure, ObjectKey, Refusal,
    RefusalKind, Reply, StoredReply, Url, read_only, settings,
};

use crate::name::{is_valid, normalize};
use crate::simple::{MetadataFlag, Page, parse_html, parse_json, render_html, render_json};

const JSON: &str = "application/vnd.pypi.simple.v1+json";
const HTML: &str = "application/vnd.pypi.simple.v1+html";
const ACCEPT_UPSTREAM: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// Settings of a PyPI instance (`upstream.pypi`, or an `ecosystems.<name>` of kind `pypi`).
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "proxyd_ecosystem::serde", deny_unknown_fields)]
pub struct PyPiConfig {
    /// Root of the upstream simple index: the page of `PROJECT` is `{upstream}/PROJECT/`.
    pub upstream: String,
}

/// The PyPI kind: register it with `registry.register::<PyPiKind>()`.
#[derive(Debug)]
pub struct PyPiKind;

impl EcosystemKind for PyPiKind {
    const KIND: &'static str = "pypi";
    type Config = PyPiConfig;
    type Handler = PyPi;

    fn upstream(config: &PyPiConfig) -> Result<Option<Url>, String> {
        settings::upstream_url(&config.upstream).map(Some)
    }

    fn build(config: PyPiConfig, context: EcosystemContext) -> Result<PyPi, String> {
        Ok(PyPi {
            upstream: config.upstream.trim_end_matches('/').to_owned(),
            context,
        })
    }
}

/// A project page is whole when it parses (JSON) or closes what it opened (HTML): a page cut
/// short would otherwise lose the files after the cut.
fn whole_page(body: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return proxyd_ecosystem::json_body(body);
    }
    let lower = trimmed.to_ascii_lowercase();
    for (open, close) in [("<html", "</html>"), ("<body", "</body>")] {
        if lower.contains(open) && !lower.contains(close) {
            return Err(format!(
                "the page has {open}> but no {close}: it was cut short"
            ));
        }
    }
    Ok(())
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
    upstream: String,
    context: EcosystemContext,
}

/// What a PyPI request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum PyPiOp {
    /// A project page (the name normalised).
    Page(String),
    /// The canonical URL of a page asked for under another spelling.
    Canonical(String),
    /// A distribution or its PEP 658 metadata, under its storage key
    /// (`{instance}/{project}/{file}`).
    File(ObjectKey),
}

impl PyPi {
    fn page_url(&self, project: &str) -> String {
        format!("{}/{project}/", self.upstream)
    }

    fn page_request<'a>(&self, key: &'a str, url: &'a str) -> DocumentRequest<'a> {
        DocumentRequest {
            key,
            url,
            accept: ACCEPT_UPSTREAM,
            check: whole_page,
            headers: None,
        }
    }

    fn parse(&self, project: &str, doc: &Document) -> Result<Page, String> {
        let page_url =
            Url::parse(&self.page_url(project)).map_err(|e| format!("bad upstream URL: {e}"))?;
        let is_json = doc
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.contains("json"));
        let mut page = if is_json {
            parse_json(&doc.body, &page_url)?
        } else {
            parse_html(&String::from_utf8_lossy(&doc.body), &page_url)
        };
        page.retain_servable();
        Ok(page)
    }

    async fn project_page(&self, project: &str, format: Format) -> Reply {
        let (key, url) = (format!("simple/{project}"), self.page_url(project));
        let (doc, freshness) = match self
            .context
            .documents
            .get(&self.page_request(&key, &url), false)
            .await
        {
            Ok(found) => found,
            Err(err) => return FetchFailure::from(&err).into(),
        };
        let variant = match format {
            Format::Json => JSON,
            Format::Html(ct) => ct,
        };
        self.context
            .documents
            .reply(&key, variant, &doc, freshness, |doc| {
                let page = self.parse(project, doc)?;
                let (content_type, body) = match format {
                    Format::Json => (JSON, render_json(&page, project, &self.context.mount_url)),
                    Format::Html(ct) => (ct, render_html(&page, project, &self.context.mount_url)),
                };
                let reply = DocumentReply::new(
                    HeaderValue::from_static(content_type),
                    Bytes::from(body),
                    60,
                );
                Ok(reply.varies_by_accept())
            })
    }

    /// Where upstream has the file of `key` (or its PEP 658 metadata), from the upstream's own
    /// page.
    async fn resolve(self: Arc<Self>, key: ObjectKey) -> Result<Fetch, FetchFailure> {
        let (project, filename) = key
            .as_str()
            .strip_prefix(self.context.instance)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.split_once('/'))
            .map(|(p, f)| (p.to_owned(), f.to_owned()))
            .unwrap_or_default();
        let (dist, is_metadata) = match filename.strip_suffix(".metadata") {
            Some(dist) => (dist.to_owned(), true),
            None => (filename.clone(), false),
        };
        let (doc_key, url) = (format!("simple/{project}"), self.page_url(&project));
        let found = self
            .context
            .documents
            .find(&self.page_request(&doc_key, &url), &dist, |doc| {
                Ok(self.parse(&project, doc)?.file(&dist).cloned())
            })
            .await?;
        let Some(file) = found else {
            return Err(FetchFailure::not_found(format!(
                "{project} has no file {dist} upstream"
            )));
        };
        let (url, expected) = if is_metadata {
            let Some(flag) = &file.core_metadata else {
                return Err(FetchFailure::not_found(format!(
                    "upstream offers no metadata file for {dist}"
                )));
            };
            let expected = match flag {
                MetadataFlag::Hashes(h) => {
                    h.get("sha256").and_then(|v| ExpectedDigest::sha256_hex(v))
                }
                MetadataFlag::Present => None,
            };
            (format!("{}.metadata", file.url), expected)
        } else {
            let expected = file
                .hashes
                .get("sha256")
                .and_then(|v| ExpectedDigest::sha256_hex(v));
            (file.url.clone(), expected)
        };
        let content_type = if is_metadata {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        Ok(self.context.upstream.fetch(ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            name: project,
            version: String::new(),
            filename,
            content_type: content_type.into(),
            upstream_url: url,
            verifier: expected.map(|d| d.boxed_verifier()),
        }))
    }
}

const NO_LIST: &str = "the project list is not served; ask for /simple/{project}/";

impl Ecosystem for PyPi {
    type Op = PyPiOp;

    fn route(&self, method: &Method, path: &str) -> Result<PyPiOp, Refusal> {
        read_only(method)?;
        if path.contains('%') {
            return Err(Refusal::bad_request(
                "percent-escapes are not accepted in PyPI paths",
            ));
        }
        if let Some(rest) = path.strip_prefix("/simple/") {
            let name = rest.strip_suffix('/').unwrap_or(rest);
            if name.is_empty() {
                return Err(Refusal::not_found(NO_LIST));
            }
            if name.contains('/') || !is_valid(name) {
                return Err(Refusal::bad_request(format!(
                    "{name:?} is not a valid project name"
                )));
            }
            let normalized = normalize(name);
            if normalized != name || !rest.ends_with('/') {
                return Ok(PyPiOp::Canonical(normalized));
            }
            return Ok(PyPiOp::Page(normalized));
        }
        if path == "/simple" {
            return Err(Refusal::not_found(NO_LIST));
        }
        if let Some(rest) = path.strip_prefix("/packages/") {
            let Some((project, filename)) = rest.split_once('/') else {
                return Err(Refusal::bad_request("expected /packages/{project}/{file}"));
            };
            if !is_valid(project) || normalize(project) != project {
                return Err(Refusal::bad_request(format!(
                    "{project:?} is not a normalised project name"
                )));
            }
            if !is_safe_file_name(filename) {
                return Err(Refusal::bad_request(format!(
                    "{filename:?} is not a distribution file name"
                )));
            }
            return ObjectKey::new(format!("{}/{project}/{filename}", self.context.instance))
                .map(PyPiOp::File)
                .map_err(|e| Refusal::bad_request(e.message().to_owned()));
        }
        Err(Refusal::not_found(format!("no PyPI route for {path}")))
    }

    async fn handle(self: Arc<Self>, op: PyPiOp, request: EcosystemRequest<'_>) -> Reply {
        match op {
            PyPiOp::Canonical(normalized) => Reply::Redirect {
                location: format!("{}/simple/{normalized}/", self.context.mount_url),
                permanent: true,
            },
            PyPiOp::Page(project) => {
                let accept = request
                    .headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let Some(format) = negotiate(accept) else {
                    return Refusal::new(
                        RefusalKind::NotAcceptable,
                        format!("acceptable types are {JSON}, {HTML} and text/html"),
                    )
                    .into();
                };
                Box::pin(self.project_page(&project, format)).await
            }
            PyPiOp::File(key) => {
                let this = self.clone();
                Reply::Stored(StoredReply::immutable(
                    key,
                    Box::new(move |key| Box::pin(this.resolve(key))),
                ))
            }
        }
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
