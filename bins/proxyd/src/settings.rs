//! Settings: embedded defaults < file < environment < flags, merged by one pure function.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, File, FileFormat, Value, ValueKind};
use proxyd_ecosystem::serde_json;
use proxyd_ecosystem::settings::{parse_bool, parse_duration, parse_size, scalar_text};
use proxyd_ecosystem::{Credential, Planned, Registry, UpstreamAuth, UpstreamSettings};

/// The fields of `upstream.auth.<name>`.
const AUTH_FIELDS: &[&str] = &[
    "url",
    "type",
    "username",
    "password",
    "token",
    "header_name",
    "header_value",
];

/// The effective settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) base_url: String,
    pub(crate) storage_url: String,
    pub(crate) max_size: Option<u64>,
    pub(crate) direct_serve: bool,
    pub(crate) direct_serve_ttl: Duration,
    pub(crate) direct_serve_base_url: Option<String>,
    pub(crate) verify_interval: Duration,
    pub(crate) interrupted_age: Duration,
    pub(crate) hot_cache_size: u64,
    pub(crate) hot_cache_max_object: u64,
    pub(crate) database: Database,
    /// How long a node's claim on an artifact it fetches lasts without renewal (a dead node's
    /// fetch is taken over after it).
    pub(crate) fetch_lease: Duration,
    pub(crate) metadata_ttl: Duration,
    pub(crate) metadata_cache_size: u64,
    /// Memory for index entries in front of the database.
    pub(crate) database_cache_size: u64,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) log_level: String,
    pub(crate) log_format: LogFormat,
    /// Every ecosystem instance, enabled or not.
    pub(crate) ecosystems: Vec<Planned>,
    /// Trust, egress and credentials of upstream requests.
    pub(crate) upstream: UpstreamSettings,
}

/// Where the index lives (`database.driver`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Database {
    /// The embedded SQLite file of one node (`database.path`).
    Sqlite { path: PathBuf },
    /// A PostgreSQL database shared by several nodes (`database.url`).
    Postgres { url: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Default, Clone)]
pub(crate) struct Flags {
    pub(crate) config: Option<PathBuf>,
    pub(crate) listen: Option<String>,
    pub(crate) base_url: Option<String>,
    pub(crate) storage_url: Option<String>,
    pub(crate) log_level: Option<String>,
    pub(crate) log_format: Option<String>,
}

/// Every bad key, each with its reason.
#[derive(Debug)]
pub(crate) struct SettingsError(pub(crate) Vec<String>);

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid settings:")?;
        for problem in &self.0 {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingsError {}

const SCALAR_KEYS: &[&str] = &[
    "listen",
    "base_url",
    "storage.url",
    "storage.max_size",
    "storage.direct_serve",
    "storage.direct_serve_ttl",
    "storage.direct_serve_base_url",
    "storage.verify_interval",
    "storage.interrupted_age",
    "storage.hot_cache_size",
    "storage.hot_cache_max_object",
    "database.driver",
    "database.path",
    "database.url",
    "database.fetch_lease",
    "server.header_read_timeout",
    "server.max_connections",
    "upstream.ca_file",
    "upstream.allowed_hosts",
    "metadata_ttl",
    "metadata_cache_size",
    "database.cache_size",
    "log.level",
    "log.format",
];

/// Every accepted key path: proxyd's own, `upstream.<kind>` for each kind, the fields of each
/// instance (the default one of each kind and those `instances` names, with their kinds), and
/// the fields of each credential `auth_names` names.
pub(crate) fn known_keys(
    registry: &Registry,
    instances: &BTreeMap<String, String>,
    auth_names: &BTreeSet<String>,
    upstream_names: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut keys: Vec<String> = SCALAR_KEYS.iter().map(|k| (*k).to_owned()).collect();
    for kind in registry.kinds() {
        keys.push(format!("upstream.{kind}"));
    }
    for field in registry.upstream_settings() {
        keys.push(format!("upstream.{field}"));
    }
    for (kind, name) in upstream_names {
        keys.push(format!("upstream.{kind}.{name}"));
    }
    let mut all: BTreeMap<String, String> = registry
        .kinds()
        .map(|k| (k.to_owned(), k.to_owned()))
        .collect();
    all.extend(instances.clone());
    for (name, kind) in &all {
        for field in registry.fields(kind) {
            keys.push(format!("ecosystems.{name}.{field}"));
        }
    }
    for name in auth_names {
        for field in AUTH_FIELDS {
            keys.push(format!("upstream.auth.{name}.{field}"));
        }
    }
    keys
}

/// `storage.direct_serve_ttl` → `PROXYD_STORAGE_DIRECT_SERVE_TTL`.
pub(crate) fn env_name(key: &str) -> String {
    proxyd_ecosystem::env_name(key)
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match &value.kind {
        ValueKind::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), value.clone());
        }
    }
}

/// The file's own values (for finding the instances and credentials it names before the
/// environment is mapped to keys).
fn file_values(path: &std::path::Path, format: FileFormat) -> BTreeMap<String, Value> {
    let mut values = BTreeMap::new();
    if let Ok(config) = Config::builder()
        .add_source(File::from(path).format(format).required(true))
        .build()
        && matches!(config.cache.kind, ValueKind::Table(_))
    {
        flatten("", &config.cache, &mut values);
    }
    values
}

/// What the file and the environment declare by name.
struct Declared {
    /// Instances: name → kind.
    instances: BTreeMap<String, String>,
    /// Credential names.
    auth: BTreeSet<String>,
    /// Named upstreams of kinds that take a mapping (`upstream.oci.<name>`): (kind, name).
    upstream_names: BTreeSet<(String, String)>,
}

/// Instances (name → kind), credential names and named upstreams the file and the
/// environment declare.
fn declared(
    registry: &Registry,
    file: &BTreeMap<String, Value>,
    env: &HashMap<String, String>,
) -> Declared {
    let mut instances = BTreeMap::new();
    let mut auth = BTreeSet::new();
    let mut upstream_names = BTreeSet::new();
    let maps: Vec<&str> = registry.upstream_maps().collect();
    for (key, value) in file {
        let parts: Vec<&str> = key.split('.').collect();
        match parts.as_slice() {
            ["ecosystems", name, field] => {
                let kind = file
                    .get(&format!("ecosystems.{name}.kind"))
                    .and_then(|v| v.clone().into_string().ok())
                    .unwrap_or_else(|| (*name).to_owned());
                instances.insert((*name).to_owned(), kind);
                let _ = (field, value);
            }
            ["upstream", "auth", name, _] => {
                auth.insert((*name).to_owned());
            }
            ["upstream", kind, name] if maps.contains(kind) => {
                upstream_names.insert(((*kind).to_owned(), (*name).to_owned()));
            }
            _ => {}
        }
    }
    for (var, value) in env {
        if let Some(rest) = var.strip_prefix("PROXYD_ECOSYSTEMS_")
            && let Some(name) = rest.strip_suffix("_KIND")
        {
            instances.insert(name.to_ascii_lowercase().replace('_', "-"), value.clone());
        }
        for kind in &maps {
            let prefix = format!("PROXYD_UPSTREAM_{}_", kind.to_ascii_uppercase());
            if let Some(name) = var.strip_prefix(&prefix)
                && !name.is_empty()
            {
                upstream_names.insert(((*kind).to_owned(), name.to_ascii_lowercase()));
            }
        }
        if let Some(rest) = var.strip_prefix("PROXYD_UPSTREAM_AUTH_") {
            for field in AUTH_FIELDS {
                let suffix = format!("_{}", field.to_ascii_uppercase());
                if let Some(name) = rest.strip_suffix(&suffix)
                    && !name.is_empty()
                {
                    auth.insert(name.to_ascii_lowercase());
                    break;
                }
            }
        }
    }
    for kind in registry.kinds() {
        instances.remove(kind);
    }
    Declared {
        instances,
        auth,
        upstream_names,
    }
}

/// `${VAR}` in a credential replaced by the variable's value.
fn expand(text: &str, env: &HashMap<String, String>, key: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            return Err(format!("{key}: unclosed ${{ in the value"));
        };
        let var = &rest[at + 2..at + end];
        let value = env
            .get(var)
            .ok_or_else(|| format!("{key}: the environment variable {var} is not set"))?;
        out.push_str(value);
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `upstream.auth.<name>` as a credential.
fn credential(
    name: &str,
    fields: &BTreeMap<String, String>,
    env: &HashMap<String, String>,
) -> Result<UpstreamAuth, String> {
    let key = |f: &str| format!("upstream.auth.{name}.{f}");
    let get = |f: &str| -> Result<String, String> {
        let raw = fields
            .get(f)
            .ok_or_else(|| format!("{}: missing", key(f)))?;
        expand(raw, env, &key(f))
    };
    let url_prefix = get("url")?;
    if !(url_prefix.starts_with("http://") || url_prefix.starts_with("https://")) {
        return Err(format!(
            "{}: {url_prefix:?} must be an http:// or https:// URL prefix",
            key("url")
        ));
    }
    let kind = fields.get("type").map_or("basic", String::as_str);
    let credential = match kind {
        "basic" => Credential::Basic {
            username: get("username")?,
            password: get("password")?,
        },
        "bearer" => Credential::Bearer {
            token: get("token")?,
        },
        "header" => {
            let header_name = get("header_name")?;
            let name = proxyd_ecosystem::http::HeaderName::from_bytes(header_name.as_bytes())
                .map_err(|_| format!("{}: not a header name", key("header_name")))?;
            let value = proxyd_ecosystem::http::HeaderValue::from_str(&get("header_value")?)
                .map_err(|_| format!("{}: not a header value", key("header_value")))?;
            Credential::Header { name, value }
        }
        other => {
            return Err(format!(
                "{}: {other:?} is not basic, bearer or header",
                key("type")
            ));
        }
    };
    Ok(UpstreamAuth {
        name: name.to_owned(),
        url_prefix,
        credential,
    })
}

fn to_json(value: &Value) -> serde_json::Value {
    value
        .clone()
        .try_deserialize::<serde_json::Value>()
        .unwrap_or(serde_json::Value::Null)
}

/// Merge defaults, the file, the environment (`env`) and `flags` into settings, reporting
/// every bad key at once. Unknown `PROXYD_*` variables are returned as warnings. The
/// ecosystem settings are checked by the kinds in `registry`.
pub(crate) fn load(
    flags: &Flags,
    env: &HashMap<String, String>,
    registry: &Registry,
) -> Result<(Settings, Vec<String>), SettingsError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut builder = Config::builder();
    let mut file = BTreeMap::new();
    if let Some(path) = &flags.config {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Some(FileFormat::Yaml),
            Some("toml") => Some(FileFormat::Toml),
            _ => None,
        };
        match format {
            Some(format) => {
                file = file_values(path, format);
                builder = builder.add_source(File::from(path.clone()).format(format).required(true))
            }
            None => problems.push(format!(
                "config file {}: the name must end in .yaml, .yml or .toml",
                path.display()
            )),
        }
    }
    let Declared {
        instances,
        auth: auth_names,
        upstream_names,
    } = declared(registry, &file, env);
    let known = known_keys(registry, &instances, &auth_names, &upstream_names);
    let by_env: HashMap<String, &String> = known.iter().map(|k| (env_name(k), k)).collect();
    let mut env_keys: Vec<_> = env.keys().filter(|k| k.starts_with("PROXYD_")).collect();
    env_keys.sort();
    for name in env_keys {
        match by_env.get(name.as_str()) {
            Some(key) => {
                builder = builder
                    .set_override(key.as_str(), env[name].clone())
                    .map_err(|e| SettingsError(vec![format!("{key}: {e}")]))?;
            }
            None => warnings.push(format!("ignoring unknown environment variable {name}")),
        }
    }
    let flag_values = [
        ("listen", &flags.listen),
        ("base_url", &flags.base_url),
        ("storage.url", &flags.storage_url),
        ("log.level", &flags.log_level),
        ("log.format", &flags.log_format),
    ];
    for (key, value) in flag_values {
        if let Some(value) = value {
            builder = builder
                .set_override(key, value.clone())
                .map_err(|e| SettingsError(vec![e.to_string()]))?;
        }
    }
    let merged = match builder.build() {
        Ok(config) => config,
        Err(err) => {
            problems.push(err.to_string());
            return Err(SettingsError(problems));
        }
    };
    let mut values = BTreeMap::new();
    match merged.cache.kind {
        ValueKind::Table(_) => flatten("", &merged.cache, &mut values),
        ValueKind::Nil => {}
        _ => problems.push("the settings file must hold a mapping of keys".into()),
    }
    for key in values.keys() {
        // Instance settings are checked by their kind, which names an unknown field.
        let instance_key = key.starts_with("ecosystems.") && key.matches('.').count() == 2;
        if !instance_key && !known.contains(key) {
            problems.push(format!("{key}: unknown setting"));
        }
    }

    let text = |key: &str| -> Option<String> {
        values
            .get(key)
            .and_then(|v| v.clone().into_string().ok())
            .filter(|s| !s.is_empty())
    };
    let parse = |key: &str, problems: &mut Vec<String>| -> Option<String> {
        match values.get(key) {
            None => None,
            Some(v) => match v.clone().into_string() {
                Ok(s) => Some(s),
                Err(_) => {
                    problems.push(format!("{key}: must be a single value"));
                    None
                }
            },
        }
    };
    let boolean = |key: &str, raw: Option<String>, problems: &mut Vec<String>| -> Option<bool> {
        let raw = raw?;
        parse_bool(&raw)
            .map_err(|e| problems.push(format!("{key}: {e}")))
            .ok()
    };
    let duration = |key: &str, raw: Option<String>, default: &str, problems: &mut Vec<String>| {
        let raw = raw.unwrap_or_else(|| default.to_owned());
        parse_duration(&raw).unwrap_or_else(|e| {
            problems.push(format!("{key}: {e}"));
            Duration::ZERO
        })
    };

    let listen_raw = parse("listen", &mut problems).unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen: SocketAddr = listen_raw.parse().unwrap_or_else(|_| {
        problems.push(format!(
            "listen: {listen_raw:?} is not an address like 127.0.0.1:8080"
        ));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    let base_url = parse("base_url", &mut problems)
        .unwrap_or_else(|| format!("http://{listen}"))
        .trim_end_matches('/')
        .to_owned();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        problems.push(format!(
            "base_url: {base_url:?} must start with http:// or https://"
        ));
    }
    let storage_url =
        parse("storage.url", &mut problems).unwrap_or_else(|| "file://./data/artifacts".into());
    let max_size = parse("storage.max_size", &mut problems).and_then(|raw| {
        parse_size(&raw)
            .map_err(|e| problems.push(format!("storage.max_size: {e}")))
            .ok()
    });
    let ds_raw = parse("storage.direct_serve", &mut problems);
    let direct_serve = boolean("storage.direct_serve", ds_raw, &mut problems).unwrap_or(false);
    let ttl_raw = parse("storage.direct_serve_ttl", &mut problems);
    let direct_serve_ttl = duration("storage.direct_serve_ttl", ttl_raw, "15m", &mut problems);
    if direct_serve_ttl < Duration::from_secs(1)
        || direct_serve_ttl > Duration::from_secs(7 * 86_400)
    {
        problems.push("storage.direct_serve_ttl: must be between 1s and 7d".into());
    }
    let direct_serve_base_url = text("storage.direct_serve_base_url");
    let vi_raw = parse("storage.verify_interval", &mut problems);
    let verify_interval = duration("storage.verify_interval", vi_raw, "10m", &mut problems);
    let ia_raw = parse("storage.interrupted_age", &mut problems);
    let interrupted_age = duration("storage.interrupted_age", ia_raw, "1h", &mut problems);
    let size = |key: &str, default: u64, problems: &mut Vec<String>| {
        parse(key, problems)
            .map_or(Ok(default), |raw| parse_size(&raw))
            .unwrap_or_else(|e| {
                problems.push(format!("{key}: {e}"));
                0
            })
    };
    let hot_cache_size = size("storage.hot_cache_size", 8 << 20, &mut problems);
    let hot_cache_max_object = size("storage.hot_cache_max_object", 64 << 10, &mut problems);
    let database_path = PathBuf::from(
        parse("database.path", &mut problems).unwrap_or_else(|| "./data/proxyd.db".into()),
    );
    let fl_raw = parse("database.fetch_lease", &mut problems);
    let fetch_lease = duration("database.fetch_lease", fl_raw, "30s", &mut problems);
    if fetch_lease < Duration::from_secs(3) || fetch_lease > Duration::from_secs(600) {
        problems.push("database.fetch_lease: must be between 3s and 10m".into());
    }
    let database_url = text("database.url");
    let database = match parse("database.driver", &mut problems).as_deref() {
        None | Some("sqlite") => {
            if database_url.is_some() {
                problems.push(
                    "database.url: set, but database.driver is sqlite (set database.driver: postgres to use it)"
                        .into(),
                );
            }
            Database::Sqlite {
                path: database_path,
            }
        }
        Some("postgres") => match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Database::Postgres { url }
            }
            Some(url) => {
                problems.push(format!(
                    "database.url: {:?} must start with postgres:// (postgres://USER:PASSWORD@HOST:PORT/DB)",
                    redact_database_url(&url)
                ));
                Database::Sqlite {
                    path: database_path,
                }
            }
            None => {
                problems.push(
                    "database.url: required when database.driver is postgres (postgres://USER:PASSWORD@HOST:PORT/DB)"
                        .into(),
                );
                Database::Sqlite {
                    path: database_path,
                }
            }
        },
        Some(other) => {
            problems.push(format!(
                "database.driver: {other:?} is not sqlite or postgres"
            ));
            Database::Sqlite {
                path: database_path,
            }
        }
    };
    let mt_raw = parse("metadata_ttl", &mut problems);
    let metadata_ttl = duration("metadata_ttl", mt_raw, "5m", &mut problems);
    let metadata_cache_size = size("metadata_cache_size", 256_000_000, &mut problems);
    let database_cache_size = size("database.cache_size", 4 << 20, &mut problems);
    let hrt_raw = parse("server.header_read_timeout", &mut problems);
    let header_read_timeout = duration("server.header_read_timeout", hrt_raw, "10s", &mut problems);
    if header_read_timeout.is_zero() {
        problems.push("server.header_read_timeout: must be at least 1s".into());
    }
    let max_connections = match parse("server.max_connections", &mut problems) {
        None => 4096,
        Some(raw) => match raw.trim().parse::<usize>() {
            Ok(n) if (1..=1_000_000).contains(&n) => n,
            _ => {
                problems.push(format!(
                    "server.max_connections: {raw:?} is not a number from 1 to 1000000"
                ));
                1
            }
        },
    };
    let log_level = parse("log.level", &mut problems).unwrap_or_else(|| "info".into());
    let log_format = match parse("log.format", &mut problems).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems.push(format!("log.format: {other:?} is not text or json"));
            LogFormat::Text
        }
    };

    // Upstream trust, egress and credentials.
    let ca_file = text("upstream.ca_file").map(PathBuf::from);
    let allowed_hosts: Vec<String> = match values.get("upstream.allowed_hosts") {
        None => Vec::new(),
        Some(v) => match v.clone().into_array() {
            Ok(items) => items
                .into_iter()
                .filter_map(|i| i.into_string().ok())
                .collect(),
            Err(_) => v
                .clone()
                .into_string()
                .unwrap_or_default()
                .split(',')
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect(),
        },
    };
    let mut auth = Vec::new();
    for name in &auth_names {
        let prefix = format!("upstream.auth.{name}.");
        let fields: BTreeMap<String, String> = values
            .iter()
            .filter_map(|(k, v)| {
                let field = k.strip_prefix(&prefix)?;
                Some((field.to_owned(), v.clone().into_string().ok()?))
            })
            .collect();
        match credential(name, &fields, env) {
            Ok(rule) => auth.push(rule),
            Err(e) => problems.push(e),
        }
    }

    // Ecosystem instances, checked by their kinds.
    let mut tree = serde_json::Map::new();
    let mut upstreams = BTreeMap::new();
    for (key, value) in &values {
        let parts: Vec<&str> = key.splitn(3, '.').collect();
        match parts.as_slice() {
            ["ecosystems", name, field] => {
                let entry = tree
                    .entry((*name).to_owned())
                    .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                if let serde_json::Value::Object(map) = entry {
                    map.insert((*field).to_owned(), to_json(value));
                }
            }
            ["upstream", kind]
                if registry.kinds().any(|k| k == *kind)
                    || registry.upstream_settings().any(|k| k == *kind) =>
            {
                let json = to_json(value);
                if scalar_text(&json).is_some_and(|t| !t.is_empty()) || json.is_array() {
                    upstreams.insert((*kind).to_owned(), json);
                }
            }
            ["upstream", kind, name] if registry.upstream_maps().any(|k| k == *kind) => {
                let json = to_json(value);
                if scalar_text(&json).is_some_and(|t| !t.is_empty()) {
                    let entry = upstreams
                        .entry((*kind).to_owned())
                        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                    if let serde_json::Value::Object(map) = entry {
                        map.insert((*name).to_owned(), json);
                    }
                }
            }
            _ => {}
        }
    }
    let ecosystems = match registry.plan(&tree, &upstreams) {
        Ok(planned) => planned,
        Err(mut bad) => {
            problems.append(&mut bad);
            Vec::new()
        }
    };
    if !problems.is_empty() {
        return Err(SettingsError(problems));
    }
    Ok((
        Settings {
            listen,
            base_url,
            storage_url,
            max_size,
            direct_serve,
            direct_serve_ttl,
            direct_serve_base_url,
            verify_interval,
            interrupted_age,
            hot_cache_size,
            hot_cache_max_object,
            database,
            fetch_lease,
            metadata_ttl,
            metadata_cache_size,
            database_cache_size,
            header_read_timeout,
            max_connections,
            log_level,
            log_format,
            ecosystems,
            upstream: UpstreamSettings {
                ca_file,
                allowed_hosts,
                auth,
            },
        },
        warnings,
    ))
}

/// `url` with any `user:password@` removed, for printing.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}://<redacted>@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// A database URL with its password removed, wherever it is given (`user:password@` or a
/// `password=` parameter); the user name stays, it says which role connects.
pub(crate) fn redact_database_url(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = url[s + 3..at].split(':').next().unwrap_or("");
            format!("{}://{user}:<redacted>@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], query.join("&"));
    }
    out
}

impl Settings {
    /// The effective settings as `key = value` lines, secrets redacted.
    pub(crate) fn render(&self) -> String {
        let mut lines = vec![
            format!("listen = {}", self.listen),
            format!("base_url = {}", self.base_url),
            format!("storage.url = {}", redact_url(&self.storage_url)),
            format!(
                "storage.max_size = {}",
                self.max_size
                    .map_or("unbounded".to_owned(), |s| format!("{s} bytes"))
            ),
            format!("storage.direct_serve = {}", self.direct_serve),
            format!(
                "storage.direct_serve_ttl = {}s",
                self.direct_serve_ttl.as_secs()
            ),
            format!(
                "storage.direct_serve_base_url = {}",
                self.direct_serve_base_url.as_deref().unwrap_or("unset")
            ),
            format!(
                "storage.verify_interval = {}s",
                self.verify_interval.as_secs()
            ),
            format!(
                "storage.interrupted_age = {}s",
                self.interrupted_age.as_secs()
            ),
            format!("storage.hot_cache_size = {} bytes", self.hot_cache_size),
            format!(
                "storage.hot_cache_max_object = {} bytes",
                self.hot_cache_max_object
            ),
            match &self.database {
                Database::Sqlite { path } => {
                    format!(
                        "database.driver = sqlite\ndatabase.path = {}",
                        path.display()
                    )
                }
                Database::Postgres { url } => format!(
                    "database.driver = postgres\ndatabase.url = {}",
                    redact_database_url(url)
                ),
            },
            format!("database.fetch_lease = {}s", self.fetch_lease.as_secs()),
            format!("metadata_ttl = {}s", self.metadata_ttl.as_secs()),
            format!("metadata_cache_size = {} bytes", self.metadata_cache_size),
            format!("database.cache_size = {} bytes", self.database_cache_size),
            format!(
                "server.header_read_timeout = {}s",
                self.header_read_timeout.as_secs()
            ),
            format!("server.max_connections = {}", self.max_connections),
            format!("log.level = {}", self.log_level),
            format!("log.format = {:?}", self.log_format).to_lowercase(),
        ];
        if let Some(ca) = &self.upstream.ca_file {
            lines.push(format!("upstream.ca_file = {}", ca.display()));
        }
        if !self.upstream.allowed_hosts.is_empty() {
            lines.push(format!(
                "upstream.allowed_hosts = {}",
                self.upstream.allowed_hosts.join(",")
            ));
        }
        for rule in &self.upstream.auth {
            lines.push(format!(
                "upstream.auth.{} = {:?} for {}",
                rule.name, rule.credential, rule.url_prefix
            ));
        }
        for planned in &self.ecosystems {
            match planned {
                Planned::Disabled { name, setting, .. } => {
                    lines.push(format!("{name}: disabled (set {setting})"));
                }
                Planned::Enabled(spec) => {
                    let upstream = spec.upstream.as_ref().map_or("none".to_owned(), |u| {
                        redact_url(u.as_str().trim_end_matches('/'))
                    });
                    let key = if spec.name == spec.kind {
                        format!("upstream.{}", spec.kind)
                    } else {
                        format!("ecosystems.{}.upstream", spec.name)
                    };
                    let more: Vec<String> = spec
                        .more_upstreams
                        .iter()
                        .map(|u| redact_url(u.as_str().trim_end_matches('/')))
                        .collect();
                    if more.is_empty() {
                        lines.push(format!("{key} = {upstream}"));
                    } else {
                        // Maven's further repositories, OCI's other registries, Go's checksum
                        // database: all trusted by the egress rule.
                        lines.push(format!("{key} = {upstream} (also {})", more.join(", ")));
                    }
                    lines.push(format!(
                        "ecosystems.{} = kind {}, mount /{}/, direct_serve {}, upstream timeout {}s, deadline {}s, retries {}, concurrency {}",
                        spec.name,
                        spec.kind,
                        spec.mount,
                        spec.direct_serve.unwrap_or(self.direct_serve),
                        spec.limits.timeout.as_secs(),
                        spec.limits.deadline.as_secs(),
                        spec.limits.retries,
                        spec.limits.concurrency
                    ));
                }
            }
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(
        flags: &Flags,
        env: &HashMap<String, String>,
    ) -> Result<(Settings, Vec<String>), SettingsError> {
        super::load(flags, env, &crate::registry())
    }

    fn file(name: &str, text: &str) -> (tempfile::TempDir, Flags) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        (dir, flags)
    }

    fn enabled<'a>(s: &'a Settings, name: &str) -> &'a proxyd_ecosystem::InstanceSpec {
        s.ecosystems
            .iter()
            .find_map(|p| match p {
                Planned::Enabled(spec) if spec.name == name => Some(spec),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} is not enabled: {:?}", s.ecosystems))
    }

    #[test]
    fn go_and_oci_upstreams_from_the_environment_and_the_file() {
        let (s, warnings) = load(
            &Flags::default(),
            &env(&[
                ("PROXYD_UPSTREAM_GO", "http://127.0.0.1:1/"),
                ("PROXYD_UPSTREAM_GO_SUMDB", "http://127.0.0.1:2"),
                ("PROXYD_UPSTREAM_GO_SUMDB_NAME", "sum.test"),
                ("PROXYD_UPSTREAM_OCI_DEFAULT", "http://127.0.0.1:3"),
                ("PROXYD_UPSTREAM_OCI_GHCR", "http://127.0.0.1:4"),
            ]),
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let go = enabled(&s, "go");
        assert_eq!(
            go.upstream.as_ref().unwrap().as_str(),
            "http://127.0.0.1:1/"
        );
        assert_eq!(
            go.more_upstreams[0].as_str(),
            "http://127.0.0.1:2/",
            "the database is trusted"
        );
        let oci = enabled(&s, "oci");
        assert_eq!(oci.mount, "v2");
        assert_eq!(
            oci.upstream.as_ref().unwrap().as_str(),
            "http://127.0.0.1:4/"
        );
        assert_eq!(oci.more_upstreams[0].as_str(), "http://127.0.0.1:3/");
        let (_dir, flags) = file(
            "proxyd.yaml",
            "upstream:\n  oci:\n    default: http://127.0.0.1:3\n  go: http://127.0.0.1:1\n  go_sumdb_key: nonsense\n",
        );
        let err = load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("go_sumdb_key"), "{err}");
        let (_dir, flags) = file(
            "proxyd.yaml",
            "upstream:\n  oci:\n    Bad_Name: http://127.0.0.1:3\n",
        );
        assert!(load(&flags, &env(&[])).is_err());
    }

    #[test]
    fn defaults() {
        let (s, warnings) = load(&Flags::default(), &env(&[])).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.base_url, "http://127.0.0.1:8080");
        assert_eq!(s.storage_url, "file://./data/artifacts");
        assert_eq!(s.direct_serve_ttl, Duration::from_secs(900));
        assert_eq!(s.metadata_ttl, Duration::from_secs(300));
        assert_eq!(s.ecosystems.len(), 8);
        assert!(
            s.ecosystems.iter().all(|p| match p {
                Planned::Disabled { .. } => true,
                // The build cache needs no upstream: on by default.
                Planned::Enabled(spec) => spec.name == "gradle",
            }),
            "no upstream, no ecosystem but the build cache: {:?}",
            s.ecosystems
        );
        assert!(!s.direct_serve);
    }

    #[test]
    fn precedence_flags_env_file() {
        let (_dir, mut flags) = file(
            "proxyd.yaml",
            "listen: 127.0.0.1:9000\nstorage:\n  direct_serve: true\n  max_size: 10GB\nupstream:\n  npm: http://127.0.0.1:1/\nmetadata_ttl: 1h\n",
        );
        flags.listen = Some("127.0.0.1:9100".into());
        let (s, _) = load(
            &flags,
            &env(&[
                ("PROXYD_LISTEN", "127.0.0.1:9050"),
                ("PROXYD_STORAGE_DIRECT_SERVE_TTL", "30s"),
                ("PROXYD_METADATA_TTL", "2m"),
                ("PROXYD_UPSTREAM_PYPI", "http://127.0.0.1:2/simple/"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.listen.to_string(),
            "127.0.0.1:9100",
            "flag beats env and file"
        );
        assert_eq!(s.metadata_ttl, Duration::from_secs(120), "env beats file");
        assert_eq!(s.direct_serve_ttl, Duration::from_secs(30));
        assert!(s.direct_serve);
        assert_eq!(s.max_size, Some(10_000_000_000));
        let npm = enabled(&s, "npm");
        assert_eq!(
            npm.upstream.as_ref().unwrap().as_str(),
            "http://127.0.0.1:1/"
        );
        assert_eq!(npm.mount, "npm");
        assert_eq!(enabled(&s, "pypi").mount, "pypi");
    }

    #[test]
    fn every_bad_key_is_named() {
        let (_dir, flags) = file(
            "proxyd.toml",
            "lisen = \"x\"\nmetadata_ttl = \"5 minutes\"\n[storage]\ndirect_serve = \"maybe\"\nmax_size = \"lots\"\n[upstream]\nnpm = \"ftp://x\"\nbogus = \"http://x\"\n[ecosystems.pypi]\nupstrem = \"http://x\"\n[ecosystems.internal]\nupstream = \"http://x\"\n",
        );
        let err = load(&flags, &env(&[])).unwrap_err();
        let text = err.to_string();
        for needle in [
            "lisen",
            "metadata_ttl",
            "storage.direct_serve",
            "storage.max_size",
            "upstream.npm",
            "upstream.bogus",
            "ecosystems.pypi: unknown field `upstrem`",
            "ecosystems.internal.kind: missing",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn instances_mounts_and_their_environment() {
        let (_dir, flags) = file(
            "proxyd.yaml",
            "upstream:\n  npm: http://127.0.0.1:1\necosystems:\n  npm-internal:\n    kind: npm\n    upstream: http://127.0.0.1:2\n    direct_serve: false\n",
        );
        let (s, warnings) = load(
            &flags,
            &env(&[
                ("PROXYD_ECOSYSTEMS_NPM_INTERNAL_UPSTREAM_TIMEOUT", "5s"),
                ("PROXYD_ECOSYSTEMS_MIRROR_KIND", "cargo"),
                (
                    "PROXYD_ECOSYSTEMS_MIRROR_UPSTREAM",
                    "sparse+http://127.0.0.1:3/index/",
                ),
                ("PROXYD_ECOSYSTEMS_MIRROR_MOUNT", "crates"),
            ]),
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let internal = enabled(&s, "npm-internal");
        assert_eq!(
            (internal.kind, internal.mount, internal.direct_serve),
            ("npm", "npm-internal", Some(false))
        );
        assert_eq!(internal.limits.timeout, Duration::from_secs(5));
        let mirror = enabled(&s, "mirror");
        assert_eq!((mirror.kind, mirror.mount), ("cargo", "crates"));
        assert_eq!(
            mirror.upstream.as_ref().unwrap().as_str(),
            "http://127.0.0.1:3/index"
        );
        let (_dir, flags) = file(
            "clash.yaml",
            "ecosystems:\n  other:\n    kind: npm\n    upstream: http://127.0.0.1:2\n    mount: pypi\n",
        );
        let text = load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(text.contains("ecosystems.other.mount"), "{text}");
    }

    #[test]
    fn credentials_from_the_environment_never_printed() {
        let (_dir, flags) = file(
            "proxyd.yaml",
            "upstream:\n  npm: http://127.0.0.1:1\n  auth:\n    internal:\n      url: http://127.0.0.1:1/\n      type: bearer\n      token: ${NPM_TOKEN}\n",
        );
        let (s, _) = load(
            &flags,
            &env(&[
                ("NPM_TOKEN", "s3cr3t-token"),
                ("PROXYD_UPSTREAM_AUTH_FILES_URL", "https://files.example/"),
                ("PROXYD_UPSTREAM_AUTH_FILES_USERNAME", "me"),
                ("PROXYD_UPSTREAM_AUTH_FILES_PASSWORD", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(s.upstream.auth.len(), 2);
        let rendered = s.render();
        assert!(
            !rendered.contains("s3cr3t") && !rendered.contains("hunter2"),
            "{rendered}"
        );
        assert!(rendered.contains("upstream.auth.internal"), "{rendered}");
        let err = load(&flags, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("NPM_TOKEN is not set"), "{err}");
    }

    #[test]
    fn unknown_env_is_a_warning() {
        let (_, warnings) = load(&Flags::default(), &env(&[("PROXYD_FOO", "1")])).unwrap();
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("http://u:p@h/x"), "http://<redacted>@h/x");
        assert_eq!(
            redact_database_url("postgres://proxyd:s3cret@db:5432/p?sslmode=require"),
            "postgres://proxyd:<redacted>@db:5432/p?sslmode=require"
        );
        assert_eq!(
            redact_database_url("postgres://db/p?user=x&password=s3cret"),
            "postgres://db/p?user=x&password=<redacted>"
        );
    }

    #[test]
    fn the_database_driver_chooses_the_index() {
        let (s, _) = load(&Flags::default(), &env(&[])).unwrap();
        assert!(matches!(s.database, Database::Sqlite { .. }));
        let url = "postgres://proxyd:s3cret@127.0.0.1:5432/proxyd";
        let (s, _) = load(
            &Flags::default(),
            &env(&[
                ("PROXYD_DATABASE_DRIVER", "postgres"),
                ("PROXYD_DATABASE_URL", url),
            ]),
        )
        .unwrap();
        assert_eq!(s.database, Database::Postgres { url: url.into() });
        assert!(!s.render().contains("s3cret"), "{}", s.render());
        for (vars, says) in [
            (vec![("PROXYD_DATABASE_DRIVER", "postgres")], "required"),
            (
                vec![("PROXYD_DATABASE_DRIVER", "mysql")],
                "not sqlite or postgres",
            ),
            (
                vec![("PROXYD_DATABASE_URL", url)],
                "database.driver is sqlite",
            ),
            (
                vec![
                    ("PROXYD_DATABASE_DRIVER", "postgres"),
                    ("PROXYD_DATABASE_URL", "mysql://u:s3cret@h/d"),
                ],
                "must start with postgres://",
            ),
        ] {
            let err = load(&Flags::default(), &env(&vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }
}
