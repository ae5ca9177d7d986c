//! The simple repository model, read from PEP 503 HTML or PEP 691 JSON and written as either.

use std::collections::BTreeMap;

use proxyd_ecosystem::Url;
use proxyd_ecosystem::names::is_safe_file_name;
use proxyd_ecosystem::serde_json::{self, Map, Value, json};

/// `true`, or a set of hashes (`data-core-metadata="sha256=..."`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetadataFlag {
    Present,
    Hashes(BTreeMap<String, String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Yanked {
    No,
    Yes,
    Reason(String),
}

/// One distribution file of a project page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileEntry {
    pub(crate) filename: String,
    /// Absolute upstream URL, without fragment.
    pub(crate) url: String,
    pub(crate) hashes: BTreeMap<String, String>,
    pub(crate) requires_python: Option<String>,
    pub(crate) yanked: Yanked,
    pub(crate) core_metadata: Option<MetadataFlag>,
    pub(crate) gpg_sig: Option<bool>,
}

/// A project page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) files: Vec<FileEntry>,
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `name="v"`, `name='v'`, `name=v` and bare `name` attributes of one tag.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let bytes = tag.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' {
            i += 1;
        }
        let name = tag[start..i].to_ascii_lowercase();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                let quote = bytes[i];
                i += 1;
                let vstart = i;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                value = decode_entities(&tag[vstart..i]);
                i += 1;
            } else {
                let vstart = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = decode_entities(&tag[vstart..i]);
            }
        }
        if !name.is_empty() {
            out.insert(name, value);
        }
    }
    out
}

fn hash_pair(s: &str) -> Option<(String, String)> {
    let (alg, value) = s.split_once('=')?;
    let ok = !alg.is_empty() && value.chars().all(|c| c.is_ascii_hexdigit()) && !value.is_empty();
    ok.then(|| (alg.to_ascii_lowercase(), value.to_ascii_lowercase()))
}

fn metadata_flag_from_attr(value: &str) -> Option<MetadataFlag> {
    match value.trim() {
        "" | "false" => None,
        "true" => Some(MetadataFlag::Present),
        other => Some(match hash_pair(other) {
            Some((a, v)) => MetadataFlag::Hashes(BTreeMap::from([(a, v)])),
            None => MetadataFlag::Present,
        }),
    }
}

fn resolve(page_url: &Url, href: &str) -> Option<(String, Option<String>)> {
    let joined = page_url.join(href).ok()?;
    if !matches!(joined.scheme(), "http" | "https") {
        return None;
    }
    let fragment = joined.fragment().map(str::to_owned);
    let mut url = joined;
    url.set_fragment(None);
    Some((url.to_string(), fragment))
}

fn filename_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.rsplit('/').next().unwrap_or("");
    last.to_owned()
}

/// Read a PEP 503 HTML page found at `page_url`.
pub(crate) fn parse_html(body: &str, page_url: &Url) -> Page {
    let lower = body.to_ascii_lowercase();
    let mut files = Vec::new();
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("<a") {
        let start = pos + found;
        let after = start + 2;
        if !lower[after..].starts_with(|c: char| c.is_ascii_whitespace()) {
            pos = after;
            continue;
        }
        let Some(tag_end) = lower[after..].find('>').map(|e| after + e) else {
            break;
        };
        let attrs = attributes(&body[after..tag_end]);
        let text_end = lower[tag_end..]
            .find("</a")
            .map_or(body.len(), |e| tag_end + e);
        let text = decode_entities(body[tag_end + 1..text_end].trim());
        pos = text_end;
        let Some(href) = attrs.get("href") else {
            continue;
        };
        let Some((url, fragment)) = resolve(page_url, href) else {
            continue;
        };
        let filename = if text.is_empty() {
            filename_of(&url)
        } else {
            text
        };
        let mut hashes = BTreeMap::new();
        if let Some((alg, value)) = fragment.as_deref().and_then(hash_pair) {
            hashes.insert(alg, value);
        }
        let yanked = match attrs.get("data-yanked") {
            None => Yanked::No,
            Some(r) if r.is_empty() => Yanked::Yes,
            Some(r) => Yanked::Reason(r.clone()),
        };
        let core_metadata = attrs
            .get("data-core-metadata")
            .or_else(|| attrs.get("data-dist-info-metadata"))
            .and_then(|v| metadata_flag_from_attr(v));
        let gpg_sig = attrs.get("data-gpg-sig").map(|v| v == "true");
        files.push(FileEntry {
            filename,
            url,
            hashes,
            requires_python: attrs.get("data-requires-python").cloned(),
            yanked,
            core_metadata,
            gpg_sig,
        });
    }
    Page { files }
}

fn metadata_flag_from_json(v: &Value) -> Option<MetadataFlag> {
    match v {
        Value::Bool(true) => Some(MetadataFlag::Present),
        Value::Object(map) => Some(MetadataFlag::Hashes(
            map.iter()
                .filter_map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.to_ascii_lowercase(), s.to_ascii_lowercase()))
                })
                .collect(),
        )),
        _ => None,
    }
}

/// Read a PEP 691 JSON page found at `page_url`.
pub(crate) fn parse_json(body: &[u8], page_url: &Url) -> Result<Page, String> {
    let doc: Value =
        serde_json::from_slice(body).map_err(|e| format!("upstream JSON page: {e}"))?;
    let mut files = Vec::new();
    for f in doc
        .get("files")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(href) = f.get("url").and_then(Value::as_str) else {
            continue;
        };
        let Some((url, _)) = resolve(page_url, href) else {
            continue;
        };
        let filename = f
            .get("filename")
            .and_then(Value::as_str)
            .map_or_else(|| filename_of(&url), str::to_owned);
        let hashes = f
            .get("hashes")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        v.as_str()
                            .map(|s| (k.to_ascii_lowercase(), s.to_ascii_lowercase()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let yanked = match f.get("yanked") {
            Some(Value::Bool(true)) => Yanked::Yes,
            Some(Value::String(r)) => Yanked::Reason(r.clone()),
            _ => Yanked::No,
        };
        let core_metadata = f
            .get("core-metadata")
            .or_else(|| f.get("dist-info-metadata"))
            .or_else(|| f.get("data-dist-info-metadata"))
            .and_then(metadata_flag_from_json);
        files.push(FileEntry {
            filename,
            url,
            hashes,
            requires_python: f
                .get("requires-python")
                .and_then(Value::as_str)
                .map(str::to_owned),
            yanked,
            core_metadata,
            gpg_sig: f.get("gpg-sig").and_then(Value::as_bool),
        });
    }
    Ok(Page { files })
}

impl Page {
    /// Drop files whose names cannot be served safely.
    pub(crate) fn retain_servable(&mut self) {
        self.files.retain(|f| {
            let ok = is_safe_file_name(&f.filename);
            if !ok {
                proxyd_ecosystem::tracing::warn!(filename = %f.filename, "skipping an upstream file with an unusable name");
            }
            ok
        });
    }

    pub(crate) fn file(&self, filename: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.filename == filename)
    }
}

fn link(base: &str, project: &str, f: &FileEntry) -> String {
    format!("{base}/packages/{project}/{}", f.filename)
}

/// PEP 503 HTML, links pointing at proxyd.
pub(crate) fn render_html(page: &Page, project: &str, base: &str) -> String {
    let mut out = format!(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta name=\"pypi:repository-version\" content=\"1.0\">\n<title>Links for {0}</title>\n</head>\n<body>\n<h1>Links for {0}</h1>\n",
        escape(project)
    );
    for f in &page.files {
        let mut href = link(base, project, f);
        if let Some((alg, value)) = f
            .hashes
            .get_key_value("sha256")
            .or_else(|| f.hashes.iter().next())
        {
            href.push_str(&format!("#{alg}={value}"));
        }
        out.push_str(&format!("<a href=\"{}\"", escape(&href)));
        if let Some(rp) = &f.requires_python {
            out.push_str(&format!(" data-requires-python=\"{}\"", escape(rp)));
        }
        match &f.yanked {
            Yanked::No => {}
            Yanked::Yes => out.push_str(" data-yanked=\"\""),
            Yanked::Reason(r) => out.push_str(&format!(" data-yanked=\"{}\"", escape(r))),
        }
        if let Some(flag) = &f.core_metadata {
            let value = match flag {
                MetadataFlag::Present => "true".to_owned(),
                MetadataFlag::Hashes(h) => h
                    .get_key_value("sha256")
                    .or_else(|| h.iter().next())
                    .map_or("true".to_owned(), |(a, v)| format!("{a}={v}")),
            };
            // Both spellings: PEP 714 renamed the attribute and clients read either.
            out.push_str(&format!(
                " data-core-metadata=\"{0}\" data-dist-info-metadata=\"{0}\"",
                escape(&value)
            ));
        }
        if let Some(sig) = f.gpg_sig {
            out.push_str(&format!(" data-gpg-sig=\"{sig}\""));
        }
        out.push_str(&format!(">{}</a><br/>\n", escape(&f.filename)));
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// PEP 691 JSON, URLs pointing at proxyd.
pub(crate) fn render_json(page: &Page, project: &str, base: &str) -> String {
    let files: Vec<Value> = page
        .files
        .iter()
        .map(|f| {
            let mut o = Map::new();
            o.insert("filename".into(), f.filename.clone().into());
            o.insert("url".into(), link(base, project, f).into());
            o.insert("hashes".into(), json!(f.hashes));
            if let Some(rp) = &f.requires_python {
                o.insert("requires-python".into(), rp.clone().into());
            }
            match &f.yanked {
                Yanked::No => {}
                Yanked::Yes => {
                    o.insert("yanked".into(), true.into());
                }
                Yanked::Reason(r) => {
                    o.insert("yanked".into(), r.clone().into());
                }
            }
            if let Some(flag) = &f.core_metadata {
                let v = match flag {
                    MetadataFlag::Present => Value::Bool(true),
                    MetadataFlag::Hashes(h) => json!(h),
                };
                o.insert("core-metadata".into(), v.clone());
                o.insert("dist-info-metadata".into(), v);
            }
            if let Some(sig) = f.gpg_sig {
                o.insert("gpg-sig".into(), sig.into());
            }
            Value::Object(o)
        })
        .collect();
    json!({"meta": {"api-version": "1.0"}, "name": project, "files": files}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTML: &str = r#"<!DOCTYPE html><html><body>
<a href="../../packages/ab/demo-1.0-py3-none-any.whl#sha256=AABB" data-requires-python="&gt;=3.8" data-core-metadata="sha256=ccdd">demo-1.0-py3-none-any.whl</a><br/>
<A HREF='https://files.example.test/demo-1.0.tar.gz#sha256=eeff' data-yanked="broken build" data-gpg-sig="false">demo-1.0.tar.gz</A>
<a href="demo-0.9.tar.gz" data-yanked>demo-0.9.tar.gz</a>
</body></html>"#;

    #[test]
    fn html_round_trip_keeps_everything() {
        let page_url = Url::parse("http://up.test/simple/demo/").unwrap();
        let page = parse_html(HTML, &page_url);
        assert_eq!(page.files.len(), 3);
        let wheel = &page.files[0];
        assert_eq!(
            wheel.url,
            "http://up.test/packages/ab/demo-1.0-py3-none-any.whl"
        );
        assert_eq!(wheel.hashes["sha256"], "aabb");
        assert_eq!(wheel.requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(
            wheel.core_metadata,
            Some(MetadataFlag::Hashes(BTreeMap::from([(
                "sha256".into(),
                "ccdd".into()
            )])))
        );
        assert_eq!(page.files[1].yanked, Yanked::Reason("broken build".into()));
        assert_eq!(page.files[1].gpg_sig, Some(false));
        assert_eq!(page.files[2].yanked, Yanked::Yes);
        assert_eq!(
            page.files[2].url,
            "http://up.test/simple/demo/demo-0.9.tar.gz"
        );

        let html = render_html(&page, "demo", "http://proxy.test/pypi");
        assert!(html.contains("href=\"http://proxy.test/pypi/packages/demo/demo-1.0-py3-none-any.whl#sha256=aabb\""), "{html}");
        assert!(html.contains("data-requires-python=\"&gt;=3.8\""));
        assert!(html.contains(
            "data-core-metadata=\"sha256=ccdd\" data-dist-info-metadata=\"sha256=ccdd\""
        ));
        assert!(html.contains("data-yanked=\"broken build\""));
        assert!(html.contains("data-gpg-sig=\"false\""));
        let again = parse_html(
            &html,
            &Url::parse("http://proxy.test/pypi/simple/demo/").unwrap(),
        );
        assert_eq!(again.files.len(), 3);
        assert_eq!(again.files[0].hashes, page.files[0].hashes);
        assert_eq!(again.files[1].yanked, page.files[1].yanked);
    }

    #[test]
    fn json_round_trip() {
        let page_url = Url::parse("http://up.test/simple/demo/").unwrap();
        let page = parse_html(HTML, &page_url);
        let json = render_json(&page, "demo", "http://proxy.test/pypi");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["meta"]["api-version"], "1.0");
        assert_eq!(v["files"][0]["hashes"]["sha256"], "aabb");
        assert_eq!(v["files"][0]["requires-python"], ">=3.8");
        assert_eq!(v["files"][0]["core-metadata"]["sha256"], "ccdd");
        assert_eq!(v["files"][1]["yanked"], "broken build");
        assert_eq!(v["files"][2]["yanked"], true);
        let back = parse_json(
            json.as_bytes(),
            &Url::parse("http://proxy.test/pypi/simple/demo/").unwrap(),
        )
        .unwrap();
        assert_eq!(back.files.len(), 3);
        assert_eq!(back.files[0].core_metadata, page.files[0].core_metadata);
        assert_eq!(back.files[1].gpg_sig, Some(false));
    }
}
