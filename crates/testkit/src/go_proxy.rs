//! A Go module proxy upstream (the GOPROXY protocol served from memory) with a stand-in
//! checksum database at `/sumdb/` for the conformance suite, the genuine modules `scripts/test`
//! downloads, and the real checksum database server (`sumdbd`, golang.org/x/mod's) for the
//! tests of the go command.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::static_server::StaticServer;

const SETUP_HINT: &str = "run scripts/test once (it installs golang-go and golang-golang-x-mod-dev, \
     builds sumdbd into ~/.cache/proxyd-dev/tools/bin and downloads the module sources into \
     ~/.cache/proxyd-dev/tools/go-src)";

/// `path` with upper case written `!x`, as module paths and versions appear in URLs.
pub fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// One module version: its files, zip, `go.mod`, `.info` and checksum database hashes.
#[derive(Debug, Clone)]
pub struct GoModule {
    pub path: String,
    pub version: String,
    pub go_mod: Bytes,
    pub zip: Bytes,
    pub info: Bytes,
    /// The `h1:` hash of the zip's files, and of the `go.mod`.
    pub zip_hash: String,
    pub mod_hash: String,
}

fn h1(lines: &[(String, &[u8])]) -> String {
    let mut sorted: Vec<&(String, &[u8])> = lines.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let summary: String = sorted
        .iter()
        .map(|(name, body)| format!("{}  {name}\n", hex::encode(Sha256::digest(body))))
        .collect();
    format!("h1:{}", STANDARD.encode(Sha256::digest(summary.as_bytes())))
}

impl GoModule {
    /// `path@version` made of `files` (names relative to the module root); its go.mod is the
    /// file named `go.mod`, or `module {path}` when there is none.
    pub fn new(path: &str, version: &str, files: &[(String, Bytes)]) -> Self {
        let prefix = format!("{path}@{version}/");
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        // Stored, not deflated: the zip is as large as the files, for tests that want a size.
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut named = Vec::new();
        for (name, body) in files {
            writer
                .start_file(format!("{prefix}{name}"), options)
                .unwrap();
            writer.write_all(body).unwrap();
            named.push((format!("{prefix}{name}"), &body[..]));
        }
        let zip = Bytes::from(writer.finish().unwrap().into_inner());
        let go_mod = files
            .iter()
            .find(|(n, _)| n == "go.mod")
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| Bytes::from(format!("module {path}\n")));
        Self {
            path: path.to_owned(),
            version: version.to_owned(),
            zip_hash: h1(&named),
            mod_hash: h1(&[("go.mod".to_owned(), &go_mod[..])]),
            go_mod,
            zip,
            info: Bytes::from(format!(
                "{{\"Version\":\"{version}\",\"Time\":\"2023-01-01T00:00:00Z\"}}"
            )),
        }
    }

    /// `path@version` made from the source tree `dir` as the go command zips a module: regular
    /// files only, without version control folders, `vendor` or nested modules.
    pub fn from_dir(path: &str, version: &str, dir: &Path) -> Self {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Bytes)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let p = entry.path();
                let kind = entry.file_type().unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                if kind.is_dir() {
                    if matches!(name.as_str(), ".git" | ".hg" | ".svn" | ".bzr" | "vendor")
                        || p.join("go.mod").exists()
                    {
                        continue;
                    }
                    walk(root, &p, out);
                } else if kind.is_file() {
                    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                    out.push((rel, Bytes::from(std::fs::read(&p).unwrap())));
                }
            }
        }
        let mut files = Vec::new();
        walk(dir, dir, &mut files);
        Self::new(path, version, &files)
    }

    /// The genuine modules `scripts/test` downloads: `github.com/pkg/errors v0.9.1` and
    /// `github.com/google/uuid v1.3.0`, as their upstream releases.
    pub fn genuine() -> Vec<Self> {
        let x = crate::tools_dir().join("go-src/x");
        let find = |prefix: &str| -> PathBuf {
            std::fs::read_dir(&x)
                .unwrap_or_else(|e| panic!("{} is missing ({e}): {SETUP_HINT}", x.display()))
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
                })
                .unwrap_or_else(|| panic!("no {prefix}* in {}: {SETUP_HINT}", x.display()))
        };
        vec![
            Self::from_dir("github.com/pkg/errors", "v0.9.1", &find("errors-")),
            Self::from_dir("github.com/google/uuid", "v1.3.0", &find("uuid-")),
        ]
    }

    /// Where its files are on a proxy: `{escaped path}/@v/{escaped version}`.
    pub fn base(&self) -> String {
        format!("/{}/@v/{}", escape(&self.path), escape(&self.version))
    }
}

/// A Go module proxy serving modules from memory, with a stand-in checksum database at
/// `/sumdb` (lookups only, its tree head unsigned: for proxyd without `go_sumdb_key`).
pub struct GoProxyServer {
    pub server: StaticServer,
}

impl GoProxyServer {
    /// A proxy serving `modules`.
    pub async fn start(modules: &[GoModule]) -> Self {
        let this = Self {
            server: StaticServer::start().await,
        };
        for m in modules {
            this.publish(m);
        }
        this
    }

    /// Publish `m` (a new version is added to its list and becomes `@latest`).
    pub fn publish(&self, m: &GoModule) {
        let s = &self.server;
        let base = m.base();
        s.put(&format!("{base}.info"), m.info.clone(), "application/json");
        s.put(&format!("{base}.mod"), m.go_mod.clone(), "text/plain");
        s.put(&format!("{base}.zip"), m.zip.clone(), "application/zip");
        let list_path = format!("/{}/@v/list", escape(&m.path));
        let mut list = s
            .get(&list_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        list.push_str(&m.version);
        list.push('\n');
        s.put(&list_path, list, "text/plain");
        s.put(
            &format!("/{}/@latest", escape(&m.path)),
            m.info.clone(),
            "application/json",
        );
        let lookup = format!(
            "1\n{p} {v} {zh}\n{p} {v}/go.mod {mh}\n\ngo.sum database tree\n2\nAAAA\n\n\u{2014} stand-in AAAA\n",
            p = m.path,
            v = m.version,
            zh = m.zip_hash,
            mh = m.mod_hash
        );
        s.put(
            &format!("/sumdb/lookup/{}@{}", escape(&m.path), escape(&m.version)),
            lookup,
            "text/plain",
        );
    }

    /// The proxy root.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The stand-in checksum database's root.
    pub fn sumdb_url(&self) -> String {
        format!("{}/sumdb", self.server.url())
    }
}

/// `modules` in the GOPROXY directory layout under `dir` (what `sumdbd` reads).
pub fn write_dir(modules: &[GoModule], dir: &Path) {
    for m in modules {
        let base = dir.join(m.base().trim_start_matches('/'));
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        let with = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
        std::fs::write(with("zip"), &m.zip).unwrap();
        std::fs::write(with("mod"), &m.go_mod).unwrap();
        std::fs::write(with("info"), &m.info).unwrap();
    }
}

/// The real checksum database server (`sumdbd`: golang.org/x/mod/sumdb's server with a key
/// made at start) over a GOPROXY directory, on 127.0.0.1; killed (by PID) when dropped.
pub struct SumDbProcess {
    child: Child,
    /// The verifier key, as `GOSUMDB` takes it.
    pub key: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The database's name.
    pub name: String,
}

impl SumDbProcess {
    /// Serve the records of every module version in `modules_dir` as database `name`.
    pub fn start(modules_dir: &Path, name: &str) -> Self {
        let bin = crate::tools_dir().join("bin/sumdbd");
        let mut child = Command::new(&bin)
            .args(["-listen", "127.0.0.1:0", "-name", name, "-modules"])
            .arg(modules_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): {SETUP_HINT}", bin.display()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let key = lines
            .next()
            .and_then(Result::ok)
            .expect("sumdbd prints its key");
        let addr = lines
            .next()
            .and_then(Result::ok)
            .expect("sumdbd prints its address");
        Self {
            child,
            key,
            url: format!("http://{addr}"),
            name: name.to_owned(),
        }
    }

    /// Kill it (by PID) and wait.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SumDbProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
