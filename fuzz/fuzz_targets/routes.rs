//! Every ecosystem's `route` over arbitrary methods and paths, checked by the contract's own
//! `check_route` (no panic, only one-line 4xx refusals, nothing accepted for POST, every
//! accepted artifact under a valid storage key inside its instance's prefix). The handlers are
//! built once, with no network.
#![no_main]

use std::sync::{Arc, OnceLock};

use proxyd_cache::{Cache, CacheSettings};
use proxyd_ecosystem::http::Method;
use proxyd_ecosystem::route_check::check_route;
use proxyd_ecosystem::{
    EcosystemContext, EcosystemKind, MetadataCache, UpstreamClients, UpstreamLimits,
    UpstreamSettings,
};

/// One ecosystem's route check: method and path in, whether it was accepted.
type RouteCheck = Box<dyn Fn(&Method, &str) -> bool + Send + Sync>;

struct Handlers {
    checks: Vec<RouteCheck>,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

fn boxed<E: proxyd_ecosystem::Ecosystem>(
    eco: E,
    prefix: &'static str,
    key_of: fn(&E::Op) -> Option<&proxyd_ecosystem::ObjectKey>,
) -> RouteCheck {
    Box::new(move |method, path| check_route(&eco, prefix, method, path, key_of))
}

fn handlers() -> &'static Handlers {
    static HANDLERS: OnceLock<Handlers> = OnceLock::new();
    HANDLERS.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_owned();
        let checks = runtime.block_on(async move {
            let storage = proxyd_storage::open(
                &format!("file://{}", path.join("a").display()),
                &proxyd_storage::StorageOptions::default(),
                &|_: &str| None,
            )
            .await
            .expect("storage");
            let index =
                proxyd_index_sqlite::SqliteIndex::open(&path.join("index.db")).expect("index");
            let cache = Cache::open(storage, Arc::new(index), CacheSettings::default())
                .await
                .expect("cache");
            let clients =
                Arc::new(UpstreamClients::new(&UpstreamSettings::default()).expect("clients"));
            let store = Arc::new(MetadataCache::new(
                cache,
                std::time::Duration::from_secs(60),
                1 << 20,
            ));
            let context = |instance: &'static str| {
                let upstream = clients.for_instance(instance, None, UpstreamLimits::default());
                EcosystemContext::new(
                    instance,
                    instance,
                    "http://proxy.test",
                    upstream,
                    store.clone(),
                )
            };
            let up = "http://127.0.0.1:9";
            vec![
                boxed(
                    proxyd_npm::NpmKind::build(
                        proxyd_npm::NpmConfig {
                            upstream: up.into(),
                        },
                        context("npm"),
                    )
                    .expect("npm"),
                    "npm",
                    |op| match op {
                        proxyd_npm::NpmOp::Tarball(key) => Some(key),
                        _ => None,
                    },
                ),
                boxed(
                    proxyd_pypi::PyPiKind::build(
                        proxyd_pypi::PyPiConfig {
                            upstream: format!("{up}/simple"),
                        },
                        context("pypi"),
                    )
                    .expect("pypi"),
                    "pypi",
                    |op| match op {
                        proxyd_pypi::PyPiOp::File(key) => Some(key),
                        _ => None,
                    },
                ),
                boxed(
                    proxyd_cargo::CargoKind::build(
                        proxyd_cargo::CargoConfig {
                            upstream: format!("sparse+{up}/index/"),
                        },
                        context("cargo"),
                    )
                    .expect("cargo"),
                    "cargo",
                    |op| match op {
                        proxyd_cargo::CargoOp::Download { key, .. } => Some(key),
                        _ => None,
                    },
                ),
                boxed(
                    proxyd_maven::MavenKind::build(
                        proxyd_maven::MavenConfig {
                            upstream: vec![up.into()],
                        },
                        context("maven"),
                    )
                    .expect("maven"),
                    "maven",
                    |op| match op {
                        proxyd_maven::MavenOp::Artifact { key, .. } => Some(key),
                        _ => None,
                    },
                ),
                boxed(
                    proxyd_debian::DebianKind::build(
                        proxyd_debian::DebianConfig {
                            upstream: up.into(),
                        },
                        context("debian"),
                    )
                    .expect("debian"),
                    "debian",
                    |op| match op {
                        proxyd_debian::DebianOp::Dists { key, .. }
                        | proxyd_debian::DebianOp::Pool { key, .. } => Some(key),
                        _ => None,
                    },
                ),
                boxed(
                    proxyd_gradle::GradleKind::build(
                        proxyd_gradle::GradleConfig::default(),
                        context("gradle"),
                    )
                    .expect("gradle"),
                    "gradle",
                    |op| match op {
                        proxyd_gradle::GradleOp::Get(key) | proxyd_gradle::GradleOp::Put(key) => {
                            Some(key)
                        }
                    },
                ),
                boxed(
                    proxyd_go::GoKind::build(
                        proxyd_go::GoConfig {
                            upstream: up.into(),
                            go_sumdb: Some("http://127.0.0.1:8".into()),
                            go_sumdb_name: Some("sum.test".into()),
                            go_sumdb_key: None,
                        },
                        context("go"),
                    )
                    .expect("go"),
                    "go",
                    |op| match op {
                        proxyd_go::GoOp::File { key, .. }
                        | proxyd_go::GoOp::SumDbTile { key, .. } => Some(key),
                        _ => None,
                    },
                ),
                boxed(
                    proxyd_oci::OciKind::build(
                        proxyd_ecosystem::serde_json::from_value(
                            proxyd_ecosystem::serde_json::json!(
                                {"upstream": {"default": up, "ghcr": "http://127.0.0.1:8"}}
                            ),
                        )
                        .expect("oci settings"),
                        context("oci"),
                    )
                    .expect("oci"),
                    "oci",
                    |op| match op {
                        proxyd_oci::OciOp::Blob(_, _, key)
                        | proxyd_oci::OciOp::ManifestByDigest(_, _, key) => Some(key),
                        _ => None,
                    },
                ),
            ]
        });
        Handlers {
            checks,
            _dir: dir,
            _runtime: runtime,
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&selector, path)) = data.split_first() else {
        return;
    };
    let path = String::from_utf8_lossy(path);
    let method = match selector / 16 % 3 {
        0 => Method::GET,
        1 => Method::HEAD,
        _ => Method::POST,
    };
    let h = handlers();
    let check = &h.checks[usize::from(selector % 16) % h.checks.len()];
    let _accepted = check(&method, &path);
});
