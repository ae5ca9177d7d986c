//! Settings: embedded defaults < file < environment < flags, merged by one pure function.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, File, FileFormat, Value, ValueKind};

/// Ecosystems proxyd knows; each has `upstream.<name>` and `ecosystems.<name>.direct_serve`.
pub(crate) const ECOSYSTEMS: &[&str] = &["npm", "pypi", "cargo"];

/// The effective settings.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) base_url: String,
    pub(crate) storage_url: String,
    pub(crate) max_size: Option<u64>,
    pub(crate) direct_serve: bool,
    pub(crate) direct_serve_ttl: Duration,
    pub(crate) direct_serve_base_url: Option<String>,
    pub(crate) verify_interval: Duration,
    pub(crate) database_path: PathBuf,
    pub(crate) upstreams: BTreeMap<String, String>,
    pub(crate) metadata_ttl: Duration,
    pub(crate) log_level: String,
    pub(crate) log_format: LogFormat,
    pub(crate) ecosystem_direct_serve: BTreeMap<String, bool>,
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
    "database.path",
    "metadata_ttl",
    "log.level",
    "log.format",
];

/// Every accepted key path.
pub(crate) fn known_keys() -> Vec<String> {
    let mut keys: Vec<String> = SCALAR_KEYS.iter().map(|k| (*k).to_owned()).collect();
    for eco in ECOSYSTEMS {
        keys.push(format!("upstream.{eco}"));
        keys.push(format!("ecosystems.{eco}.direct_serve"));
    }
    keys
}

/// `storage.direct_serve_ttl` → `PROXYD_STORAGE_DIRECT_SERVE_TTL`.
pub(crate) fn env_name(key: &str) -> String {
    format!("PROXYD_{}", key.replace('.', "_").to_uppercase())
}

/// Parse `30s`, `15m`, `1h`, `7d` (or plain seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 1h or 7d"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 30s, 15m, 1h or 7d"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

/// Parse `500MB`, `10GB`, `1TB` (decimal), `512MiB` (binary) or plain bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 500MB or 10GB"))?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => return Err(format!("{text:?} is not a size like 500MB or 10GB")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
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

/// Merge defaults, the file, the environment (`env`) and `flags` into settings, reporting
/// every bad key at once. Unknown `PROXYD_*` variables are returned as warnings.
pub(crate) fn load(
    flags: &Flags,
    env: &HashMap<String, String>,
) -> Result<(Settings, Vec<String>), SettingsError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut builder = Config::builder();
    if let Some(path) = &flags.config {
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Some(FileFormat::Yaml),
            Some("toml") => Some(FileFormat::Toml),
            _ => None,
        };
        match format {
            Some(format) => {
                builder = builder.add_source(File::from(path.clone()).format(format).required(true))
            }
            None => problems.push(format!(
                "config file {}: the name must end in .yaml, .yml or .toml",
                path.display()
            )),
        }
    }
    let known = known_keys();
    let by_env: HashMap<String, &String> = known.iter().map(|k| (env_name(k), k)).collect();
    let mut env_keys: Vec<_> = env.keys().filter(|k| k.starts_with("PROXYD_")).collect();
    env_keys.sort();
    for name in env_keys {
        match by_env.get(name.as_str()) {
            Some(key) => {
                builder = builder
                    .set_override(key.as_str(), env[name].clone())
                    .map_err(|e| SettingsError(vec![e.to_string()]))?;
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
        if !known.contains(key) {
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
        match raw.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => None,
            Some("true" | "1" | "yes" | "on") => Some(true),
            Some("false" | "0" | "no" | "off") => Some(false),
            Some(other) => {
                problems.push(format!("{key}: {other:?} is not true or false"));
                None
            }
        }
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
    let database_path = PathBuf::from(
        parse("database.path", &mut problems).unwrap_or_else(|| "./data/proxyd.db".into()),
    );
    let mt_raw = parse("metadata_ttl", &mut problems);
    let metadata_ttl = duration("metadata_ttl", mt_raw, "5m", &mut problems);
    let log_level = parse("log.level", &mut problems).unwrap_or_else(|| "info".into());
    let log_format = match parse("log.format", &mut problems).as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            problems.push(format!("log.format: {other:?} is not text or json"));
            LogFormat::Text
        }
    };
    let mut upstreams = BTreeMap::new();
    let mut ecosystem_direct_serve = BTreeMap::new();
    for eco in ECOSYSTEMS {
        if let Some(url) = text(&format!("upstream.{eco}")) {
            if url.starts_with("http://")
                || url.starts_with("https://")
                || url.starts_with("sparse+http")
            {
                upstreams.insert((*eco).to_owned(), url.trim_end_matches('/').to_owned());
            } else {
                problems.push(format!(
                    "upstream.{eco}: {url:?} must be an http:// or https:// URL"
                ));
            }
        }
        let key = format!("ecosystems.{eco}.direct_serve");
        let raw = parse(&key, &mut problems);
        if let Some(on) = boolean(&key, raw, &mut problems) {
            ecosystem_direct_serve.insert((*eco).to_owned(), on);
        }
    }
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
            database_path,
            upstreams,
            metadata_ttl,
            log_level,
            log_format,
            ecosystem_direct_serve,
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
            format!("database.path = {}", self.database_path.display()),
            format!("metadata_ttl = {}s", self.metadata_ttl.as_secs()),
            format!("log.level = {}", self.log_level),
            format!("log.format = {:?}", self.log_format).to_lowercase(),
        ];
        for eco in ECOSYSTEMS {
            lines.push(format!(
                "upstream.{eco} = {}",
                self.upstreams
                    .get(*eco)
                    .map_or("unset (disabled)".to_owned(), |u| redact_url(u))
            ));
            if let Some(on) = self.ecosystem_direct_serve.get(*eco) {
                lines.push(format!("ecosystems.{eco}.direct_serve = {on}"));
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

    #[test]
    fn defaults() {
        let (s, warnings) = load(&Flags::default(), &env(&[])).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.base_url, "http://127.0.0.1:8080");
        assert_eq!(s.storage_url, "file://./data/artifacts");
        assert_eq!(s.direct_serve_ttl, Duration::from_secs(900));
        assert_eq!(s.metadata_ttl, Duration::from_secs(300));
        assert!(s.upstreams.is_empty());
        assert!(!s.direct_serve);
    }

    #[test]
    fn precedence_flags_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxyd.yaml");
        std::fs::write(
            &path,
            "listen: 127.0.0.1:9000\nstorage:\n  direct_serve: true\n  max_size: 10GB\nupstream:\n  npm: http://127.0.0.1:1/\nmetadata_ttl: 1h\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path),
            listen: Some("127.0.0.1:9100".into()),
            ..Flags::default()
        };
        let (s, _) = load(
            &flags,
            &env(&[
                ("PROXYD_LISTEN", "127.0.0.1:9050"),
                ("PROXYD_STORAGE_DIRECT_SERVE_TTL", "30s"),
                ("PROXYD_METADATA_TTL", "2m"),
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
        assert_eq!(s.upstreams["npm"], "http://127.0.0.1:1");
    }

    #[test]
    fn every_bad_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxyd.toml");
        std::fs::write(
            &path,
            "lisen = \"x\"\nmetadata_ttl = \"5 minutes\"\n[storage]\ndirect_serve = \"maybe\"\nmax_size = \"lots\"\n[upstream]\nnpm = \"ftp://x\"\nbogus = \"http://x\"\n",
        )
        .unwrap();
        let err = load(
            &Flags {
                config: Some(path),
                ..Flags::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "lisen",
            "metadata_ttl",
            "storage.direct_serve",
            "storage.max_size",
            "upstream.npm",
            "upstream.bogus",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn unknown_env_is_a_warning() {
        let (_, warnings) = load(&Flags::default(), &env(&[("PROXYD_FOO", "1")])).unwrap();
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("ten").is_err());
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("5x").is_err());
        assert_eq!(redact_url("http://u:p@h/x"), "http://<redacted>@h/x");
    }
}
