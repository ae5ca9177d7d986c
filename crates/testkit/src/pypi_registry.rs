//! A PyPI simple index on 127.0.0.1 for tests, serving real wheels and sdists (built with the
//! standard library of the machine's python3) as PEP 503 HTML with relative links, or as PEP 691
//! JSON.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::static_server::StaticServer;

/// How the index speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageFormat {
    /// PEP 503 HTML only (whatever the client asks), links relative to the page.
    Html,
    /// PEP 691 JSON only, absolute URLs.
    Json,
}

/// A distribution to build.
#[derive(Debug, Clone)]
pub struct Dist {
    pub name: String,
    pub version: String,
    pub sdist: bool,
    pub requires: Vec<String>,
}

impl Dist {
    pub fn wheel(name: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            sdist: false,
            requires: Vec::new(),
        }
    }

    pub fn sdist(name: &str, version: &str) -> Self {
        Self {
            sdist: true,
            ..Self::wheel(name, version)
        }
    }

    pub fn requires(mut self, req: &str) -> Self {
        self.requires.push(req.into());
        self
    }
}

/// A built file.
#[derive(Debug, Clone)]
pub struct File {
    pub project: String,
    pub filename: String,
    pub bytes: Bytes,
    pub metadata: Option<Bytes>,
}

const BUILD: &str = r#"
import base64, hashlib, io, json, sys, tarfile, zipfile
out, specs = sys.argv[1], json.loads(sys.argv[2])
for s in specs:
    name, ver, reqs = s["name"], s["version"], s["requires"]
    dist = name.replace("-", "_")
    mod = dist.lower()
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n" + "".join(f"Requires-Dist: {r}\n" for r in reqs)
    if s["sdist"]:
        fn = f"{dist}-{ver}.tar.gz"
        files = {
            f"{dist}-{ver}/PKG-INFO": meta,
            f"{dist}-{ver}/setup.py": f"from setuptools import setup\nsetup(name={name!r}, version={ver!r}, packages=[{mod!r}], install_requires={reqs!r})\n",
            f"{dist}-{ver}/{mod}/__init__.py": f"VALUE = {name + ' ' + ver!r}\n",
        }
        with tarfile.open(f"{out}/{fn}", "w:gz") as t:
            for path, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(path); info.size = len(data); info.mtime = 1700000000
                t.addfile(info, io.BytesIO(data))
    else:
        fn = f"{dist}-{ver}-py3-none-any.whl"
        di = f"{dist}-{ver}.dist-info"
        files = {
            f"{mod}/__init__.py": f"VALUE = {name + ' ' + ver!r}\n",
            f"{di}/METADATA": meta,
            f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: proxyd-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        }
        record = ""
        for path, text in files.items():
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
            record += f"{path},sha256={digest},{len(text.encode())}\n"
        record += f"{di}/RECORD,,\n"
        files[f"{di}/RECORD"] = record
        with zipfile.ZipFile(f"{out}/{fn}", "w") as z:
            for path, text in files.items():
                z.writestr(path, text)
        open(f"{out}/{fn}.metadata", "w").write(meta)
    print(fn)
"#;

/// Build `dists` into files with python3.
pub fn build(dists: &[Dist]) -> Vec<File> {
    let dir = tempfile::tempdir().unwrap();
    let specs: Vec<_> = dists
        .iter()
        .map(|d| serde_json::json!({"name": d.name, "version": d.version, "sdist": d.sdist, "requires": d.requires}))
        .collect();
    let out = Command::new("python3")
        .args(["-c", BUILD])
        .arg(dir.path())
        .arg(serde_json::Value::Array(specs).to_string())
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed to build test distributions: {e}"));
    assert!(
        out.status.success(),
        "building distributions failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names = String::from_utf8(out.stdout).unwrap();
    names
        .lines()
        .zip(dists)
        .map(|(filename, d)| {
            let bytes = Bytes::from(std::fs::read(dir.path().join(filename)).unwrap());
            let metadata = std::fs::read(dir.path().join(format!("{filename}.metadata")))
                .ok()
                .map(Bytes::from);
            File {
                project: normalize(&d.name),
                filename: filename.to_owned(),
                bytes,
                metadata,
            }
        })
        .collect()
}

/// A wheel file from disk (for example setuptools, for builds in isolation).
pub fn wheel_from_disk(path: &Path) -> File {
    let filename = path.file_name().unwrap().to_string_lossy().into_owned();
    let project = normalize(filename.split('-').next().unwrap());
    File {
        project,
        filename,
        bytes: Bytes::from(std::fs::read(path).unwrap()),
        metadata: None,
    }
}

fn normalize(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The index. Stops when dropped.
pub struct PyPiRegistry {
    pub server: StaticServer,
    format: PageFormat,
    files: Vec<File>,
}

impl PyPiRegistry {
    /// Start serving `files` in `format`.
    pub async fn start(format: PageFormat, files: Vec<File>) -> Self {
        let registry = Self {
            server: StaticServer::start().await,
            format,
            files,
        };
        registry.render();
        registry
    }

    fn render(&self) {
        let mut projects: std::collections::BTreeMap<&str, Vec<&File>> = Default::default();
        for f in &self.files {
            projects.entry(&f.project).or_default().push(f);
            self.server.put(
                &format!("/files/{}", f.filename),
                f.bytes.clone(),
                "application/octet-stream",
            );
            if let Some(m) = &f.metadata {
                self.server.put(
                    &format!("/files/{}.metadata", f.filename),
                    m.clone(),
                    "text/plain",
                );
            }
        }
        for (project, files) in projects {
            let sha = |b: &Bytes| hex::encode(Sha256::digest(b));
            let (body, content_type) = match self.format {
                PageFormat::Html => {
                    let mut html = String::from("<!DOCTYPE html><html><body>\n");
                    for f in files {
                        let meta = f.metadata.as_ref().map_or(String::new(), |m| {
                            format!(" data-dist-info-metadata=\"sha256={}\"", sha(m))
                        });
                        html.push_str(&format!(
                            "<a href=\"../../files/{0}#sha256={1}\" data-requires-python=\"&gt;=3.7\"{meta}>{0}</a><br/>\n",
                            f.filename,
                            sha(&f.bytes)
                        ));
                    }
                    html.push_str("</body></html>\n");
                    (html, "text/html")
                }
                PageFormat::Json => {
                    let entries: Vec<_> = files
                        .iter()
                        .map(|f| {
                            let mut e = serde_json::json!({
                                "filename": f.filename,
                                "url": format!("{}/files/{}", self.server.url(), f.filename),
                                "hashes": {"sha256": sha(&f.bytes)},
                                "requires-python": ">=3.7",
                            });
                            if let Some(m) = &f.metadata {
                                e["core-metadata"] = serde_json::json!({"sha256": sha(m)});
                            }
                            e
                        })
                        .collect();
                    let doc = serde_json::json!({"meta": {"api-version": "1.0"}, "name": project, "files": entries});
                    (doc.to_string(), "application/vnd.pypi.simple.v1+json")
                }
            };
            self.server
                .put(&format!("/simple/{project}/"), body, content_type);
        }
    }

    /// The simple index root, `http://127.0.0.1:PORT/simple`.
    pub fn index_url(&self) -> String {
        format!("{}/simple", self.server.url())
    }

    /// The built files.
    pub fn files(&self) -> &[File] {
        &self.files
    }
}
