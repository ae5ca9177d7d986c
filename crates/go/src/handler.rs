use std::sync::Arc;

use proxyd_ecosystem::http::{HeaderValue, Method};
use proxyd_ecosystem::serde::Deserialize;
use proxyd_ecosystem::{
    ArtifactSpec, DocumentCheck, DocumentReply, DocumentRequest, Ecosystem, EcosystemContext,
    EcosystemKind, EcosystemRequest, FailureKind, Fetch, FetchFailure, ObjectKey, Refusal, Reply,
    StoredReply, Url, Verifier, any_body, json_body, read_only, settings,
};

use crate::hash::{GoModVerifier, ZipVerifier};
use crate::path::{ModulePath, ModuleVersion};
use crate::sumdb::{Records, VerifierKey, tree_of};
use crate::tlog;

/// Why a record could not be proven in its tree.
enum Proof {
    /// A tile could not be fetched.
    Fetch(FetchFailure),
    /// The database's answers do not prove it.
    Wrong(String),
}

/// Settings of a Go module proxy instance (`upstream.go`, `upstream.go_sumdb`, … or an
/// `ecosystems.<name>` of kind `go`).
#[derive(Debug, Clone, Deserialize)]
#[serde(crate = "proxyd_ecosystem::serde", deny_unknown_fields)]
pub struct GoConfig {
    /// A Go module proxy root (`{upstream}/{module}/@v/list`, …).
    pub upstream: String,
    /// A checksum database root: proxied at `/go/sumdb/{name}/`, and every `.zip` and `.mod`
    /// proxyd keeps is verified against its `h1:` hashes.
    #[serde(default)]
    pub go_sumdb: Option<String>,
    /// The database's name as clients know it (`GOSUMDB`); default: the host of `go_sumdb`.
    #[serde(default)]
    pub go_sumdb_name: Option<String>,
    /// The database's verifier key as written in `GOSUMDB` (`name+hash+key`): when set, the
    /// tree head of every lookup proxyd verifies with must carry the database's signature.
    #[serde(default)]
    pub go_sumdb_key: Option<String>,
}

#[derive(Debug)]
struct SumDb {
    root: String,
    name: String,
    key: Option<VerifierKey>,
}

fn sumdb_of(config: &GoConfig) -> Result<Option<SumDb>, String> {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|t| !t.trim().is_empty());
    let Some(text) = config.go_sumdb.as_deref().filter(|t| !t.trim().is_empty()) else {
        if set(&config.go_sumdb_key) || set(&config.go_sumdb_name) {
            return Err(
                "go_sumdb_key and go_sumdb_name need go_sumdb (the checksum database's URL)".into(),
            );
        }
        return Ok(None);
    };
    let url = settings::upstream_url(text).map_err(|e| format!("go_sumdb: {e}"))?;
    let key = config
        .go_sumdb_key
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .map(VerifierKey::parse)
        .transpose()
        .map_err(|e| format!("go_sumdb_key: {e}"))?;
    let name = match (&config.go_sumdb_name, &key) {
        (Some(name), _) if !name.trim().is_empty() => name.trim().to_owned(),
        (_, Some(key)) => key.name().to_owned(),
        _ => url.host_str().unwrap_or_default().to_owned(),
    };
    if let Some(key) = &key
        && key.name() != name
    {
        return Err(format!(
            "go_sumdb_key: the key is for {}, not {name}",
            key.name()
        ));
    }
    if name.is_empty() || name.contains(['/', '%']) {
        return Err(format!("go_sumdb_name: {name:?} is not a database name"));
    }
    Ok(Some(SumDb {
        root: url.as_str().trim_end_matches('/').to_owned(),
        name,
        key,
    }))
}

/// The Go kind: register it with `registry.register::<GoKind>()`.
#[derive(Debug)]
pub struct GoKind;

impl EcosystemKind for GoKind {
    const KIND: &'static str = "go";
    const UPSTREAM_SETTINGS: &'static [&'static str] =
        &["go_sumdb", "go_sumdb_name", "go_sumdb_key"];
    type Config = GoConfig;
    type Handler = GoProxy;

    fn upstream(config: &GoConfig) -> Result<Option<Url>, String> {
        sumdb_of(config)?;
        settings::upstream_url(&config.upstream).map(Some)
    }

    fn more_upstreams(config: &GoConfig) -> Vec<Url> {
        config
            .go_sumdb
            .as_deref()
            .and_then(|t| settings::upstream_url(t).ok())
            .into_iter()
            .collect()
    }

    fn build(config: GoConfig, context: EcosystemContext) -> Result<GoProxy, String> {
        let upstream = settings::upstream_url(&config.upstream)?
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        Ok(GoProxy {
            upstream,
            sumdb: sumdb_of(&config)?,
            context,
        })
    }
}

/// A Go module proxy in front of one upstream proxy (and its checksum database).
#[derive(Debug)]
pub struct GoProxy {
    /// The upstream proxy root, without a trailing slash.
    upstream: String,
    sumdb: Option<SumDb>,
    context: EcosystemContext,
}

/// Which file of a module version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoFile {
    /// `.info` (JSON: version and time).
    Info,
    /// `.mod` (the go.mod).
    Mod,
    /// `.zip` (the module's files).
    Zip,
}

impl GoFile {
    fn extension(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Mod => "mod",
            Self::Zip => "zip",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Info => "application/json",
            Self::Mod => "text/plain; charset=utf-8",
            Self::Zip => "application/zip",
        }
    }
}

/// What a Go request asks for.
#[derive(Debug)]
pub enum GoOp {
    /// `@v/list`: revalidated.
    List(ModulePath),
    /// `@latest`: revalidated.
    Latest(ModulePath),
    /// `.info` of a version query (`master`): revalidated.
    Query(ModulePath, ModuleVersion),
    /// `.info`, `.mod` or `.zip` of a canonical version: immutable, kept in storage.
    File {
        /// Storage key.
        key: ObjectKey,
        /// The module.
        module: ModulePath,
        /// The version.
        version: ModuleVersion,
        /// Which file.
        file: GoFile,
    },
    /// `sumdb/{name}/supported`.
    SumDbSupported,
    /// `sumdb/{name}/{rest}` kept as a document (`latest`, `lookup/…`, a partial tile).
    SumDbDocument(String),
    /// `sumdb/{name}/tile/…` of a complete tile: immutable, kept in storage.
    SumDbTile {
        /// Storage key.
        key: ObjectKey,
        /// The path under the database root.
        rest: String,
    },
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// `@v/list` is one version per line: a line cut short is not a version.
fn list_body(body: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "a version list is UTF-8 text")?;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let version = line.split(' ').next().unwrap_or_default();
        if !ModuleVersion::parse(version).is_ok_and(|v| v.canonical) {
            return Err(format!(
                "the version list holds {version:?}, not a version: cut short or not a list"
            ));
        }
    }
    Ok(())
}

/// A lookup ends with its signed tree head.
fn lookup_body(body: &[u8]) -> Result<(), String> {
    Records::parse(body, "", "").map(|_| ())
}

/// A signed note (the database's `latest`): text, a blank line, signatures.
fn note_body(body: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(body).map_err(|_| "a signed note is UTF-8 text")?;
    if text.contains("\n\n") && text.ends_with('\n') {
        Ok(())
    } else {
        Err("a signed note ends with its signature lines: this one was cut short".into())
    }
}

/// Whether `rest` (after `tile/`) names a tile: `H/L/N…[.p/W]`, with `L` a level or `data`.
fn tile_path(rest: &str) -> Option<bool> {
    let (path, partial) = match rest.split_once(".p/") {
        Some((path, width)) => {
            let w: u16 = width.parse().ok()?;
            ((1..256).contains(&w)).then_some(())?;
            (path, true)
        }
        None => (rest, false),
    };
    let mut parts = path.split('/');
    let height: u8 = parts.next()?.parse().ok()?;
    ((1..=30).contains(&height)).then_some(())?;
    let level = parts.next()?;
    if level != "data" && level.parse::<u8>().ok()? > 63 {
        return None;
    }
    let index: Vec<&str> = parts.collect();
    if index.is_empty() || index.len() > 8 {
        return None;
    }
    let (last, dirs) = index.split_last()?;
    let three = |s: &str| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit());
    (three(last) && dirs.iter().all(|d| d.strip_prefix('x').is_some_and(three))).then_some(partial)
}

impl GoProxy {
    fn sumdb_route(&self, name: &str, rest: &str) -> Result<GoOp, Refusal> {
        let sumdb = self
            .sumdb
            .as_ref()
            .filter(|db| db.name == name)
            .ok_or_else(|| {
                Refusal::not_found(format!(
                    "proxyd does not proxy the checksum database {name:?}"
                ))
            })?;
        match rest {
            "supported" => Ok(GoOp::SumDbSupported),
            "latest" => Ok(GoOp::SumDbDocument(rest.to_owned())),
            _ => {
                if let Some(query) = rest.strip_prefix("lookup/") {
                    let (module, version) = query.rsplit_once('@').ok_or_else(|| {
                        Refusal::bad_request("a lookup is lookup/{module}@{version}")
                    })?;
                    ModulePath::parse(module).map_err(Refusal::bad_request)?;
                    ModuleVersion::parse(version).map_err(Refusal::bad_request)?;
                    return Ok(GoOp::SumDbDocument(rest.to_owned()));
                }
                let tile = rest
                    .strip_prefix("tile/")
                    .and_then(tile_path)
                    .ok_or_else(|| {
                        Refusal::not_found(format!("{rest:?} is not a checksum database path"))
                    })?;
                if tile {
                    return Ok(GoOp::SumDbDocument(rest.to_owned()));
                }
                let key = ObjectKey::new(format!(
                    "{}/sumdb/{}/{rest}",
                    self.context.instance, sumdb.name
                ))
                .map_err(|e| Refusal::bad_request(e.message().to_owned()))?;
                Ok(GoOp::SumDbTile {
                    key,
                    rest: rest.to_owned(),
                })
            }
        }
    }

    /// The upstream proxy's document at `path` (`{module}/@v/list`, `{module}/@latest`, …).
    async fn proxy_document(
        &self,
        path: &str,
        check: DocumentCheck,
        content_type: &'static str,
    ) -> Reply {
        let url = format!("{}/{path}", self.upstream);
        self.document(&format!("proxy/{path}"), &url, check, content_type)
            .await
    }

    fn sumdb(&self) -> Result<&SumDb, FetchFailure> {
        self.sumdb
            .as_ref()
            .ok_or_else(|| FetchFailure::not_found("no checksum database is configured"))
    }

    async fn document(
        &self,
        key: &str,
        url: &str,
        check: DocumentCheck,
        content_type: &'static str,
    ) -> Reply {
        let request = DocumentRequest {
            key,
            url,
            accept: "*/*",
            check,
            headers: None,
        };
        let (doc, freshness) = match self.context.documents.get(&request, false).await {
            Ok(found) => found,
            Err(e) => return FetchFailure::from(e).into(),
        };
        let kind = HeaderValue::from_static(content_type);
        self.context
            .documents
            .reply(key, "", &doc, freshness, |doc| {
                let mut reply = DocumentReply::new(kind, doc.body.clone(), 0);
                reply.last_modified = doc.last_modified.clone();
                Ok(reply)
            })
    }

    /// The checksum database's hashes for `module` at `version`, from the lookup clients use
    /// too (kept as a document); its tree head's signature checked when the key is configured.
    async fn records(
        &self,
        module: &ModulePath,
        version: &ModuleVersion,
    ) -> Result<Records, FetchFailure> {
        let sumdb = self.sumdb()?;
        let rest = format!("lookup/{}@{}", module.escaped, version.escaped);
        let request = DocumentRequest {
            key: &format!("sumdb/{rest}"),
            url: &format!("{}/{rest}", sumdb.root),
            accept: "*/*",
            check: lookup_body,
            headers: None,
        };
        let (doc, _) =
            self.context.documents.get(&request, false).await.map_err(
                |e| match FetchFailure::from(e) {
                    f if f.kind == FailureKind::NotFound => FetchFailure::not_found(format!(
                        "the checksum database has no record of {}@{}",
                        module.path, version.version
                    )),
                    f => f,
                },
            )?;
        let lookup = Records::lookup(&doc.body, &module.path, &version.version)
            .map_err(FetchFailure::upstream)?;
        if let Some(key) = &sumdb.key {
            let refused = |e: String| {
                FetchFailure::upstream(format!(
                    "checksum database lookup of {}@{}: {e}",
                    module.path, version.version
                ))
            };
            key.verify_note(lookup.note).map_err(refused)?;
            let (size, root) = tree_of(lookup.note).map_err(refused)?;
            self.prove(sumdb, lookup.id, lookup.data, size, root)
                .await
                .map_err(|e| match e {
                    Proof::Fetch(f) => f,
                    Proof::Wrong(e) => refused(e),
                })?;
        }
        Ok(lookup.records)
    }

    /// Prove that record `id` (`data`) is in the tree of `size` leaves whose root is `root`,
    /// with the database's tiles (kept as documents).
    async fn prove(
        &self,
        sumdb: &SumDb,
        id: u64,
        data: &[u8],
        size: u64,
        root: tlog::Hash,
    ) -> Result<(), Proof> {
        let mut hashes = std::collections::HashMap::new();
        for subtree in tlog::proof_subtrees(id, size) {
            let (tile, range) = tlog::Tile::of(subtree, size);
            let path = tile.path();
            let request = DocumentRequest {
                key: &format!("sumdb/{path}"),
                url: &format!("{}/{path}", sumdb.root),
                accept: "*/*",
                check: any_body,
                headers: None,
            };
            let (doc, _) = self
                .context
                .documents
                .get(&request, false)
                .await
                .map_err(|e| Proof::Fetch(FetchFailure::from(e)))?;
            if doc.body.len() as u64 != tile.width * 32 {
                return Err(Proof::Wrong(format!(
                    "tile {path} is not {} hashes",
                    tile.width
                )));
            }
            let piece: Vec<tlog::Hash> = doc.body[range.start * 32..range.end * 32]
                .chunks(32)
                .filter_map(|c| c.try_into().ok())
                .collect();
            let hash = tlog::hash_up(&piece)
                .ok_or_else(|| Proof::Wrong(format!("tile {path} is malformed")))?;
            hashes.insert(subtree, hash);
        }
        let computed = tlog::root_with(id, size, tlog::record_hash(data), &|s| {
            hashes.get(&s).copied()
        });
        if computed == Some(root) {
            Ok(())
        } else {
            Err(Proof::Wrong(format!(
                "record {id} is not in the signed tree of {size} records"
            )))
        }
    }

    async fn resolve(
        self: Arc<Self>,
        key: ObjectKey,
        module: ModulePath,
        version: ModuleVersion,
        file: GoFile,
    ) -> Result<Fetch, FetchFailure> {
        let verifier: Option<Box<dyn Verifier>> = match (file, &self.sumdb) {
            (GoFile::Info, _) | (_, None) => None,
            (GoFile::Mod, Some(_)) => {
                let records = self.records(&module, &version).await?;
                let h1 = records.go_mod.ok_or_else(|| {
                    FetchFailure::upstream("the checksum database's lookup has no go.mod hash")
                })?;
                Some(Box::new(GoModVerifier::new(h1)))
            }
            (GoFile::Zip, Some(_)) => {
                let records = self.records(&module, &version).await?;
                let h1 = records.zip.ok_or_else(|| {
                    FetchFailure::upstream("the checksum database's lookup has no zip hash")
                })?;
                Some(Box::new(ZipVerifier::new(h1)))
            }
        };
        let spec = ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            name: module.path.clone(),
            version: version.version.clone(),
            filename: format!("{}.{}", version.version, file.extension()),
            content_type: file.content_type().into(),
            upstream_url: format!(
                "{}/{}/@v/{}.{}",
                self.upstream,
                module.escaped,
                version.escaped,
                file.extension()
            ),
            verifier,
        };
        Ok(self.context.upstream.fetch(spec))
    }

    async fn resolve_tile(
        self: Arc<Self>,
        key: ObjectKey,
        rest: String,
    ) -> Result<Fetch, FetchFailure> {
        let sumdb = self.sumdb()?;
        let spec = ArtifactSpec {
            key,
            ecosystem: self.context.instance,
            name: format!("sumdb/{}", sumdb.name),
            version: String::new(),
            filename: rest.rsplit('/').next().unwrap_or_default().to_owned(),
            content_type: "application/octet-stream".into(),
            upstream_url: format!("{}/{rest}", sumdb.root),
            verifier: None,
        };
        Ok(self.context.upstream.fetch(spec))
    }
}

impl Ecosystem for GoProxy {
    type Op = GoOp;

    fn route(&self, method: &Method, path: &str) -> Result<GoOp, Refusal> {
        read_only(method)?;
        let path = path.strip_prefix('/').unwrap_or(path);
        if let Some(rest) = path.strip_prefix("sumdb/") {
            let (name, rest) = rest
                .split_once('/')
                .ok_or_else(|| Refusal::not_found("a checksum database path is sumdb/{name}/…"))?;
            return self.sumdb_route(name, rest);
        }
        if let Some(module) = path.strip_suffix("/@latest") {
            return Ok(GoOp::Latest(
                ModulePath::parse(module).map_err(Refusal::bad_request)?,
            ));
        }
        let (module, file) = path.rsplit_once("/@v/").ok_or_else(|| {
            Refusal::not_found("a Go module proxy path is {module}/@v/… or {module}/@latest")
        })?;
        let module = ModulePath::parse(module).map_err(Refusal::bad_request)?;
        if file == "list" {
            return Ok(GoOp::List(module));
        }
        let (version, file) = [
            (".info", GoFile::Info),
            (".mod", GoFile::Mod),
            (".zip", GoFile::Zip),
        ]
        .into_iter()
        .find_map(|(ext, f)| file.strip_suffix(ext).map(|v| (v, f)))
        .ok_or_else(|| Refusal::not_found(format!("{file:?} is not list, .info, .mod or .zip")))?;
        let version = ModuleVersion::parse(version).map_err(Refusal::bad_request)?;
        if !version.canonical {
            return match file {
                GoFile::Info => Ok(GoOp::Query(module, version)),
                _ => Err(Refusal::bad_request(format!(
                    "{:?} is not a canonical version: .mod and .zip are asked for by one",
                    version.version
                ))),
            };
        }
        let key = ObjectKey::new(format!(
            "{}/{}/@v/{}.{}",
            self.context.instance,
            module.escaped,
            version.escaped,
            file.extension()
        ))
        .map_err(|e| Refusal::bad_request(e.message().to_owned()))?;
        Ok(GoOp::File {
            key,
            module,
            version,
            file,
        })
    }

    async fn handle(self: Arc<Self>, op: GoOp, _request: EcosystemRequest<'_>) -> Reply {
        match op {
            GoOp::List(m) => {
                Box::pin(self.proxy_document(&format!("{}/@v/list", m.escaped), list_body, TEXT))
                    .await
            }
            GoOp::Latest(m) => {
                Box::pin(self.proxy_document(&format!("{}/@latest", m.escaped), json_body, JSON))
                    .await
            }
            GoOp::Query(m, v) => {
                let path = format!("{}/@v/{}.info", m.escaped, v.escaped);
                Box::pin(self.proxy_document(&path, json_body, JSON)).await
            }
            GoOp::SumDbSupported => Reply::Document(DocumentReply::new(
                HeaderValue::from_static("text/plain; charset=utf-8"),
                proxyd_ecosystem::Bytes::new(),
                0,
            )),
            GoOp::SumDbDocument(rest) => {
                let Ok(sumdb) = self.sumdb() else {
                    return Refusal::not_found("no checksum database is configured").into();
                };
                let url = format!("{}/{rest}", sumdb.root);
                let check: DocumentCheck = if rest.starts_with("lookup/") {
                    lookup_body
                } else if rest == "latest" {
                    note_body
                } else {
                    any_body
                };
                let content_type = if rest.starts_with("tile/") {
                    "application/octet-stream"
                } else {
                    "text/plain; charset=utf-8"
                };
                Box::pin(self.document(&format!("sumdb/{rest}"), &url, check, content_type)).await
            }
            GoOp::SumDbTile { key, rest } => {
                let this = self.clone();
                Reply::Stored(StoredReply::immutable(
                    key,
                    Box::new(move |key| Box::pin(this.resolve_tile(key, rest))),
                ))
            }
            GoOp::File {
                key,
                module,
                version,
                file,
            } => {
                let this = self.clone();
                Reply::Stored(StoredReply::immutable(
                    key,
                    Box::new(move |key| Box::pin(this.resolve(key, module, version, file))),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_cut_short_are_refused() {
        assert!(list_body(b"v1.0.0\nv1.1.0\n").is_ok());
        assert!(list_body(b"").is_ok());
        assert!(list_body(b"v1.0.0\nv1.").is_err());
        assert!(list_body(b"<html>").is_err());
        assert!(note_body(b"go.sum database tree\n1\nAA=\n\n\xe2\x80\x94 x abc\n").is_ok());
        assert!(note_body(b"go.sum database tree\n1\n").is_err());
    }

    #[test]
    fn tiles_are_told_complete_or_partial() {
        assert_eq!(tile_path("8/0/001"), Some(false));
        assert_eq!(tile_path("8/0/x001/234"), Some(false));
        assert_eq!(tile_path("8/data/000.p/5"), Some(true));
        assert_eq!(tile_path("8/1/000.p/255"), Some(true));
        for bad in [
            "8/0/1",
            "8/0/../001",
            "99/0/001",
            "8/0/001.p/0",
            "8/0/001.p/x",
            "8/0/",
            "8",
        ] {
            assert_eq!(tile_path(bad), None, "{bad}");
        }
    }
}
