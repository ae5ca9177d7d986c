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

struct Handlers {
    npm: proxyd_npm::Npm,
    pypi: proxyd_pypi::PyPi,
    cargo: proxyd_cargo::CargoRegistry,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

fn handlers() -> &'static Handlers {
    static HANDLERS: OnceLock<Handlers> = OnceLock::new();
    HANDLERS.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().to_owned();
        let (npm, pypi, cargo) = runtime.block_on(async move {
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
            let npm = proxyd_npm::NpmKind::build(
                proxyd_npm::NpmConfig {
                    upstream: "http://127.0.0.1:9".into(),
                },
                context("npm"),
            )
            .expect("npm");
            let pypi = proxyd_pypi::PyPiKind::build(
                proxyd_pypi::PyPiConfig {
                    upstream: "http://127.0.0.1:9/simple".into(),
                },
                context("pypi"),
            )
            .expect("pypi");
            let cargo = proxyd_cargo::CargoKind::build(
                proxyd_cargo::CargoConfig {
                    upstream: "sparse+http://127.0.0.1:9/index/".into(),
                },
                context("cargo"),
            )
            .expect("cargo");
            (npm, pypi, cargo)
        });
        Handlers {
            npm,
            pypi,
            cargo,
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
    let method = match selector / 3 % 3 {
        0 => Method::GET,
        1 => Method::HEAD,
        _ => Method::POST,
    };
    let h = handlers();
    let _accepted = match selector % 3 {
        0 => check_route(&h.npm, "npm", &method, &path, |op| match op {
            proxyd_npm::NpmOp::Tarball(key) => Some(key),
            _ => None,
        }),
        1 => check_route(&h.pypi, "pypi", &method, &path, |op| match op {
            proxyd_pypi::PyPiOp::File(key) => Some(key),
            _ => None,
        }),
        _ => check_route(&h.cargo, "cargo", &method, &path, |op| match op {
            proxyd_cargo::CargoOp::Download { key, .. } => Some(key),
            _ => None,
        }),
    };
});
