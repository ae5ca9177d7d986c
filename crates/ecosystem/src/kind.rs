//! Ecosystem kinds and their instances: each kind (a crate) declares its name, its settings and
//! how it is built; the binary registers kinds one line each; settings name instances, each
//! with its own mount, metrics label, storage-key prefix and upstream.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use url::Url;

use crate::settings::{field_names, parse_bool, parse_duration, scalar_text};
use crate::{
    Documents, Ecosystem, Handler, MetadataCache, Upstream, UpstreamClients, UpstreamLimits,
};

/// One ecosystem protocol, as a crate provides it.
pub trait EcosystemKind: 'static {
    /// The kind's name: the default instance's name, mount, metrics label and key prefix, and
    /// the `upstream.<KIND>` setting.
    const KIND: &'static str;
    /// Whether an instance without an upstream is disabled (answering 503 naming the setting).
    const NEEDS_UPSTREAM: bool = true;
    /// The first path segment of the default instance, when it is not `KIND` (OCI's `v2`).
    const DEFAULT_MOUNT: Option<&'static str> = None;
    /// Whether its stored files are always streamed, never redirected to storage whatever
    /// `direct_serve` says (Gradle's build cache).
    const NEVER_REDIRECT: bool = false;
    /// Further `upstream.<field>` settings its default instance takes as the config field of
    /// the same name (Go's `upstream.go_sumdb`); each is also `ecosystems.<name>.<field>`.
    const UPSTREAM_SETTINGS: &'static [&'static str] = &[];
    /// Whether `upstream.<KIND>` is a mapping of names to URLs (OCI's `upstream.oci.<name>`)
    /// rather than one URL; it reaches the config's `upstream` field as that mapping.
    const UPSTREAM_MAP: bool = false;
    /// The kind's own settings (`#[serde(deny_unknown_fields)]`, documented per field).
    type Config: DeserializeOwned + std::fmt::Debug;
    /// The handler.
    type Handler: Ecosystem;

    /// The upstream URL in `config`, checked (the origin that URLs from its metadata are
    /// compared with); `Err` with a reason when it is not a URL proxyd can use.
    fn upstream(config: &Self::Config) -> Result<Option<Url>, String>;

    /// Further upstreams in `config`, tried after the first (Maven's list of repositories):
    /// trusted like it by the egress rule. None by default.
    fn more_upstreams(config: &Self::Config) -> Vec<Url> {
        let _ = config;
        Vec::new()
    }

    /// Build the handler of one instance.
    fn build(config: Self::Config, context: EcosystemContext) -> Result<Self::Handler, String>;
}

/// What an instance is built with.
#[derive(Debug, Clone)]
pub struct EcosystemContext {
    /// Instance name: metrics label and storage-key prefix (`npm`, `npm-internal`).
    pub instance: &'static str,
    /// First path segment it is mounted at (`npm`; `v2` for OCI).
    pub mount: &'static str,
    /// proxyd's public URL, without a trailing slash.
    pub base_url: String,
    /// `base_url` plus the mount (`https://proxy.example/npm`): where rewritten links point.
    pub mount_url: String,
    /// The instance's upstream client.
    pub upstream: Upstream,
    /// The instance's metadata documents.
    pub documents: Documents,
}

impl EcosystemContext {
    /// The context of instance `instance` mounted at `mount` under `base_url`, with its
    /// upstream client and the metadata store every instance shares.
    pub fn new(
        instance: &'static str,
        mount: &'static str,
        base_url: &str,
        upstream: Upstream,
        store: Arc<MetadataCache>,
    ) -> Self {
        Self {
            instance,
            mount,
            base_url: base_url.to_owned(),
            mount_url: format!("{base_url}/{mount}"),
            documents: Documents::new(store, upstream.clone(), instance),
            upstream,
        }
    }
}

/// Settings every instance takes, whatever its kind.
pub const COMMON_FIELDS: &[&str] = &[
    "kind",
    "mount",
    "direct_serve",
    "upstream_timeout",
    "upstream_deadline",
    "upstream_retries",
    "upstream_concurrency",
];

/// Segments that are never a mount.
const RESERVED: &[&str] = &["health", "metrics", "stats"];

type Check = fn(&serde_json::Value) -> Result<(Option<Url>, Vec<Url>), String>;
type Build = fn(serde_json::Value, EcosystemContext) -> Result<Arc<dyn Handler>, String>;

#[derive(Clone)]
struct KindEntry {
    needs_upstream: bool,
    never_redirect: bool,
    default_mount: Option<&'static str>,
    upstream_settings: &'static [&'static str],
    upstream_map: bool,
    fields: &'static [&'static str],
    check: Check,
    build: Build,
}

fn check<K: EcosystemKind>(value: &serde_json::Value) -> Result<(Option<Url>, Vec<Url>), String> {
    let config: K::Config = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    Ok((K::upstream(&config)?, K::more_upstreams(&config)))
}

fn build<K: EcosystemKind>(
    value: serde_json::Value,
    context: EcosystemContext,
) -> Result<Arc<dyn Handler>, String> {
    let config: K::Config = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(Arc::new(K::build(config, context)?))
}

/// The kinds the binary knows.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindEntry>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

/// One instance, checked, ready to build.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Name (label, key prefix).
    pub name: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Mount segment.
    pub mount: &'static str,
    /// `direct_serve` override.
    pub direct_serve: Option<bool>,
    /// Upstream limits.
    pub limits: UpstreamLimits,
    /// The upstream URL, if configured.
    pub upstream: Option<Url>,
    /// Further upstreams, tried after the first.
    pub more_upstreams: Vec<Url>,
    config: serde_json::Value,
}

/// What settings make of one instance.
#[derive(Debug, Clone)]
pub enum Planned {
    /// Configured: build it.
    Enabled(InstanceSpec),
    /// Not configured: its mount answers 503 naming the setting.
    Disabled {
        /// Name.
        name: &'static str,
        /// Mount segment.
        mount: &'static str,
        /// The setting (and its environment variable) that would enable it.
        setting: String,
    },
}

/// A built instance, as the front mounts it.
#[derive(Debug, Clone)]
pub struct MountedInstance {
    /// Name (metrics label).
    pub name: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// First path segment.
    pub mount: &'static str,
    /// `direct_serve` override.
    pub direct_serve: Option<bool>,
    /// The handler.
    pub handler: Arc<dyn Handler>,
}

/// What every instance shares when it is built.
#[derive(Debug, Clone)]
pub struct SharedContext {
    /// proxyd's public URL, without a trailing slash.
    pub base_url: String,
    /// The upstream HTTP clients.
    pub clients: Arc<UpstreamClients>,
    /// The metadata documents of every instance.
    pub documents: Arc<MetadataCache>,
}

/// Instance names live as long as the process (they label metrics on every request); there
/// are as many as the settings name, made once at start-up.
fn leak(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

fn valid_segment(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The environment variable of a settings key (`ecosystems.npm-internal.upstream` →
/// `PROXYD_ECOSYSTEMS_NPM_INTERNAL_UPSTREAM`).
pub fn env_name(key: &str) -> String {
    format!("PROXYD_{}", key.replace(['.', '-'], "_").to_uppercase())
}

impl Registry {
    /// No kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add kind `K`.
    pub fn register<K: EcosystemKind>(&mut self) {
        self.kinds.insert(
            K::KIND,
            KindEntry {
                needs_upstream: K::NEEDS_UPSTREAM,
                never_redirect: K::NEVER_REDIRECT,
                default_mount: K::DEFAULT_MOUNT,
                upstream_settings: K::UPSTREAM_SETTINGS,
                upstream_map: K::UPSTREAM_MAP,
                fields: field_names::<K::Config>(),
                check: check::<K>,
                build: build::<K>,
            },
        );
    }

    /// The registered kinds.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }

    /// The `upstream.<field>` settings beyond `upstream.<kind>` (Go's `go_sumdb`).
    pub fn upstream_settings(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds
            .values()
            .flat_map(|e| e.upstream_settings.iter().copied())
    }

    /// The kinds whose `upstream.<kind>` is a mapping of names to URLs (OCI).
    pub fn upstream_maps(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds
            .iter()
            .filter(|(_, e)| e.upstream_map)
            .map(|(k, _)| *k)
    }

    /// Every key an instance of `kind` takes (common ones first).
    pub fn fields(&self, kind: &str) -> Vec<&'static str> {
        let mut fields = COMMON_FIELDS.to_vec();
        if let Some(entry) = self.kinds.get(kind) {
            for field in entry.fields {
                if !fields.contains(field) {
                    fields.push(field);
                }
            }
        }
        fields
    }

    /// The instances that `ecosystems` (instance name → its settings) and `upstreams`
    /// (`upstream.<kind>` values) describe: one default instance per kind plus every other
    /// instance named, each checked. Every bad key is named in the error. `upstreams` also
    /// holds the kinds' further `upstream.<field>` settings, under their field names.
    pub fn plan(
        &self,
        ecosystems: &serde_json::Map<String, serde_json::Value>,
        upstreams: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Vec<Planned>, Vec<String>> {
        let mut problems = Vec::new();
        // Default instances first, so a clash of mounts is blamed on the instance that moved.
        let mut names: Vec<String> = self.kinds.keys().map(|k| (*k).to_owned()).collect();
        let named: BTreeSet<&String> = ecosystems.keys().collect();
        names.extend(
            named
                .into_iter()
                .filter(|n| !self.kinds.contains_key(n.as_str()))
                .cloned(),
        );
        let mut mounts: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut planned = Vec::new();
        for name in names {
            let prefix = format!("ecosystems.{name}");
            let mut fields = match ecosystems.get(&name) {
                None => serde_json::Map::new(),
                Some(serde_json::Value::Object(map)) => map.clone(),
                Some(_) => {
                    problems.push(format!("{prefix}: must be a mapping of settings"));
                    continue;
                }
            };
            if !valid_segment(&name) || RESERVED.contains(&name.as_str()) {
                problems.push(format!(
                    "{prefix}: an instance name is 1-32 of a-z, 0-9 and -, and not health, metrics or stats"
                ));
                continue;
            }
            let kind_text = fields.remove("kind").and_then(|v| scalar_text(&v));
            let kind = match (
                kind_text.as_deref(),
                self.kinds.get_key_value(name.as_str()),
            ) {
                (None, Some((kind, _))) => *kind,
                (Some(k), Some((kind, _))) if k == *kind => *kind,
                (Some(k), Some((kind, _))) => {
                    problems.push(format!(
                        "{prefix}.kind: the instance {name} is of kind {kind}, not {k}"
                    ));
                    continue;
                }
                (Some(k), None) => match self.kinds.get_key_value(k) {
                    Some((kind, _)) => *kind,
                    None => {
                        problems.push(format!(
                            "{prefix}.kind: {k:?} is not a kind ({})",
                            self.kinds.keys().copied().collect::<Vec<_>>().join(", ")
                        ));
                        continue;
                    }
                },
                (None, None) => {
                    problems.push(format!(
                        "{prefix}.kind: missing (one of {})",
                        self.kinds.keys().copied().collect::<Vec<_>>().join(", ")
                    ));
                    continue;
                }
            };
            let entry = &self.kinds[kind];
            let is_default = name == kind;
            let mut legacy_upstream = false;
            if is_default
                && let Some(value) = upstreams.get(kind)
                && !fields.contains_key("upstream")
            {
                fields.insert("upstream".into(), value.clone());
                legacy_upstream = true;
            }
            if is_default {
                for field in entry.upstream_settings {
                    if let Some(value) = upstreams.get(*field)
                        && !fields.contains_key(*field)
                    {
                        fields.insert((*field).to_owned(), value.clone());
                    }
                }
            }
            let name: &'static str = leak(&name);
            let mount = match fields.remove("mount").map(|v| scalar_text(&v)) {
                None => match entry.default_mount {
                    Some(m) if is_default => m,
                    _ => name,
                },
                Some(Some(m)) => {
                    let m = m.trim_matches('/');
                    if !valid_segment(m) || RESERVED.contains(&m) {
                        problems.push(format!(
                            "{prefix}.mount: {m:?} is not one path segment of a-z, 0-9 and -"
                        ));
                        continue;
                    }
                    leak(m)
                }
                Some(None) => {
                    problems.push(format!("{prefix}.mount: must be a path segment"));
                    continue;
                }
            };
            if let Some(other) = mounts.insert(mount, name.to_owned()) {
                problems.push(format!(
                    "{prefix}.mount: /{mount} is already the mount of {other}"
                ));
                continue;
            }
            let mut text = |key: &str| -> Option<String> {
                let value = fields.remove(key)?;
                let text = scalar_text(&value);
                if text.is_none() {
                    problems.push(format!("{prefix}.{key}: must be a single value"));
                }
                text
            };
            let direct_serve = text("direct_serve");
            let timeout = text("upstream_timeout");
            let deadline = text("upstream_deadline");
            let retries = text("upstream_retries");
            let concurrency = text("upstream_concurrency");
            let mut limits = UpstreamLimits::default();
            let mut bad = |key: &str, e: String| problems.push(format!("{prefix}.{key}: {e}"));
            let direct_serve =
                direct_serve.and_then(|t| parse_bool(&t).map_err(|e| bad("direct_serve", e)).ok());
            let direct_serve = if entry.never_redirect {
                Some(false)
            } else {
                direct_serve
            };
            if let Some(t) = timeout {
                match parse_duration(&t) {
                    Ok(d) if !d.is_zero() => limits.timeout = d,
                    Ok(_) => bad("upstream_timeout", "must be at least 1s".into()),
                    Err(e) => bad("upstream_timeout", e),
                }
            }
            if let Some(t) = deadline {
                match parse_duration(&t) {
                    Ok(d) if !d.is_zero() => limits.deadline = d,
                    Ok(_) => bad("upstream_deadline", "must be at least 1s".into()),
                    Err(e) => bad("upstream_deadline", e),
                }
            }
            if let Some(t) = retries {
                match t.trim().parse::<u32>() {
                    Ok(n) if n <= 10 => limits.retries = n,
                    _ => bad(
                        "upstream_retries",
                        format!("{t:?} is not a number from 0 to 10"),
                    ),
                }
            }
            if let Some(t) = concurrency {
                match t.trim().parse::<usize>() {
                    Ok(n) if (1..=10_000).contains(&n) => limits.concurrency = n,
                    _ => bad(
                        "upstream_concurrency",
                        format!("{t:?} is not a number from 1 to 10000"),
                    ),
                }
            }
            let has_upstream = fields.get("upstream").is_some_and(|v| {
                !scalar_text(v).unwrap_or_default().is_empty()
                    || v.is_array()
                    || v.as_object().is_some_and(|m| !m.is_empty())
            });
            if entry.needs_upstream && !has_upstream {
                let setting = if is_default {
                    format!(
                        "upstream.{kind} ({})",
                        env_name(&format!("upstream.{kind}"))
                    )
                } else {
                    format!(
                        "{prefix}.upstream ({})",
                        env_name(&format!("{prefix}.upstream"))
                    )
                };
                if !is_default {
                    problems.push(format!("{prefix}.upstream: missing"));
                }
                for key in fields.keys() {
                    if !entry.fields.contains(&key.as_str()) {
                        problems.push(format!(
                            "{prefix}: unknown field `{key}`, expected one of {}",
                            self.fields(kind).join(", ")
                        ));
                    }
                }
                planned.push(Planned::Disabled {
                    name,
                    mount,
                    setting,
                });
                continue;
            }
            let config = serde_json::Value::Object(fields);
            match (entry.check)(&config) {
                Ok((upstream, more_upstreams)) => planned.push(Planned::Enabled(InstanceSpec {
                    name,
                    kind,
                    mount,
                    direct_serve,
                    limits,
                    upstream,
                    more_upstreams,
                    config,
                })),
                Err(e) if legacy_upstream => problems.push(format!("upstream.{kind}: {e}")),
                Err(e) => problems.push(format!("{prefix}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(planned)
        } else {
            Err(problems)
        }
    }

    /// Build one planned instance.
    pub fn build(
        &self,
        spec: InstanceSpec,
        shared: &SharedContext,
    ) -> Result<MountedInstance, String> {
        let entry = self
            .kinds
            .get(spec.kind)
            .ok_or_else(|| format!("no kind {}", spec.kind))?;
        let upstream = shared
            .clients
            .for_instance(spec.name, spec.upstream.clone(), spec.limits)
            .also_trusting(spec.more_upstreams.clone());
        let context = EcosystemContext::new(
            spec.name,
            spec.mount,
            &shared.base_url,
            upstream,
            shared.documents.clone(),
        );
        let handler = (entry.build)(spec.config, context)
            .map_err(|e| format!("ecosystems.{}: {e}", spec.name))?;
        Ok(MountedInstance {
            name: spec.name,
            kind: spec.kind,
            mount: spec.mount,
            direct_serve: spec.direct_serve,
            handler,
        })
    }
}
