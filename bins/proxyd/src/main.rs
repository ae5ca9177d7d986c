//! proxyd: a caching proxy for package registries. This binary only reads settings, installs
//! logging and metrics, composes the library crates and runs them.

mod metrics;
mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use proxyd_cache::{Cache, CacheSettings, Index};
use proxyd_ecosystem::{MetadataCache, Planned, Registry, SharedContext, UpstreamClients};
use proxyd_http_front::{DirectServeSettings, DisabledMount, Front, FrontSettings};
use proxyd_index_postgres::{PostgresIndex, PostgresOptions};
use proxyd_index_sqlite::SqliteIndex;
use settings::{Database, Flags, LogFormat, Settings};

/// The ecosystem kinds this binary serves: one line each.
pub(crate) fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<proxyd_npm::NpmKind>();
    registry.register::<proxyd_pypi::PyPiKind>();
    registry.register::<proxyd_cargo::CargoKind>();
    registry.register::<proxyd_maven::MavenKind>();
    registry.register::<proxyd_go::GoKind>();
    registry.register::<proxyd_oci::OciKind>();
    registry.register::<proxyd_gradle::GradleKind>();
    registry.register::<proxyd_debian::DebianKind>();
    registry
}

/// Threads for file I/O. Each keeps allocator caches, so the bound is a memory bound too; disk
/// reads and writes gain nothing from more threads than this.
const MAX_BLOCKING_THREADS: usize = 16;

/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    name = "proxyd",
    version,
    about = "A caching proxy for package registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default).
    Serve(ServeArgs),
    /// Validate the settings and print the effective values (secrets redacted).
    CheckConfig {
        /// Settings file (.yaml, .yml or .toml).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

#[derive(clap::Args, Debug, Default, Clone)]
struct ServeArgs {
    /// Settings file (.yaml, .yml or .toml).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Address to bind.
    #[arg(long)]
    listen: Option<String>,
    /// Public URL of proxyd.
    #[arg(long)]
    base_url: Option<String>,
    /// Storage URL (file://, s3://, azblob://).
    #[arg(long)]
    storage_url: Option<String>,
    /// Log level or filter.
    #[arg(long)]
    log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
}

impl From<ServeArgs> for Flags {
    fn from(a: ServeArgs) -> Self {
        Flags {
            config: a.config,
            listen: a.listen,
            base_url: a.base_url,
            storage_url: a.storage_url,
            log_level: a.log_level,
            log_format: a.log_format,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    match cli.command {
        Some(Command::CheckConfig { config }) => {
            let flags = Flags {
                config,
                ..Flags::default()
            };
            match settings::load(&flags, &env, &registry()) {
                Ok((settings, warnings)) => {
                    for w in warnings {
                        eprintln!("warning: {w}");
                    }
                    #[allow(clippy::print_stdout)]
                    {
                        println!("{}", settings.render());
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(err) => {
                    eprint!("{err}");
                    std::process::ExitCode::from(2)
                }
            }
        }
        Some(Command::Serve(args)) => run(&args.into(), &env),
        None => run(&cli.serve.into(), &env),
    }
}

fn run(flags: &Flags, env: &HashMap<String, String>) -> std::process::ExitCode {
    let registry = registry();
    let (settings, warnings) = match settings::load(flags, env, &registry) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprint!("{err}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&settings);
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Every connection holds a descriptor: take the hard limit, not the soft default.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(
                limit,
                max_connections = settings.max_connections,
                "open file limit"
            );
        }
        Err(err) => tracing::warn!(error = %err, "could not raise the open file limit"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("proxyd: cannot start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(settings, &registry, env)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("proxyd: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) {
    // The Azure SDK logs whole requests, `Authorization: SharedKey ...` included, at debug and
    // trace: its targets are capped whatever the operator asks for, so no credential reaches a
    // log at any level (proven at trace by tests/secrets.rs).
    const SDK_CAPS: &str =
        "azure_core=info,azure_storage=info,azure_storage_blobs=info,azure_svc_blobstorage=info";
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{},{SDK_CAPS}", settings.log_level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{SDK_CAPS}")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(
    settings: Settings,
    registry: &Registry,
    env: &HashMap<String, String>,
) -> anyhow::Result<()> {
    let recorder = metrics::Recorder::new();
    let render_metrics = recorder.renderer();
    ::metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("cannot install the metrics recorder: one is installed"))?;

    let extra_ca = match &settings.upstream.ca_file {
        Some(path) => Some(
            std::fs::read(path).with_context(|| format!("upstream.ca_file {}", path.display()))?,
        ),
        None => None,
    };
    let options = proxyd_storage::StorageOptions::with_public_base_url(
        settings.direct_serve_base_url.clone(),
    )
    .with_extra_ca_pem(extra_ca.clone());
    let lookup = |name: &str| env.get(name).cloned();
    let storage = proxyd_storage::open(&settings.storage_url, &options, &lookup)
        .await
        .with_context(|| format!("storage {}", settings::redact_url(&settings.storage_url)))?;
    let index: Arc<dyn Index> = match &settings.database {
        Database::Sqlite { path } => Arc::new(
            SqliteIndex::open(path).with_context(|| format!("database {}", path.display()))?,
        ),
        Database::Postgres { url } => {
            let options = PostgresOptions::default().with_extra_ca_pem(extra_ca);
            let index = PostgresIndex::connect(url, &options)
                .await
                .with_context(|| format!("database {}", settings::redact_database_url(url)))?;
            tracing::info!(
                database = index.target(),
                "index on PostgreSQL (shared by every node on it)"
            );
            Arc::new(index)
        }
    };
    if settings.max_size.is_none() {
        tracing::warn!(
            "storage.max_size is not set: the cache grows without bound until storage is full; set it (for example PROXYD_STORAGE_MAX_SIZE=50GB)"
        );
    }
    let cache_settings = CacheSettings {
        max_size: settings.max_size,
        entry_cache_bytes: settings.database_cache_size,
        fetch_lease: settings.fetch_lease,
        verify_interval: settings.verify_interval,
        interrupted_age: settings.interrupted_age,
        // A presigned URL handed out before an eviction stays good for its whole life, also
        // one another node handed out from an entry it kept in memory (for at most half the
        // grace) before it saw the mark: objects go two URL lifetimes after their mark.
        eviction_grace: settings.direct_serve_ttl * 2,
        hot_bytes: settings.hot_cache_size,
        hot_max_object: settings.hot_cache_max_object,
        owned_prefixes: settings
            .ecosystems
            .iter()
            .map(|p| match p {
                Planned::Enabled(spec) => spec.name.to_owned(),
                Planned::Disabled { name, .. } => (*name).to_owned(),
            })
            .collect(),
        ..CacheSettings::default()
    };
    let cache = Cache::open(storage, index, cache_settings)
        .await
        .context("cache index")?;
    let clients = Arc::new(UpstreamClients::new(&settings.upstream).context("upstream client")?);
    let shared = SharedContext {
        base_url: settings.base_url.clone(),
        clients,
        documents: Arc::new(MetadataCache::new(
            cache.clone(),
            settings.metadata_ttl,
            settings.metadata_cache_size,
        )),
    };
    let mut instances = Vec::new();
    let mut disabled = Vec::new();
    for planned in settings.ecosystems.clone() {
        match planned {
            Planned::Enabled(spec) => {
                let upstream = spec
                    .upstream
                    .as_ref()
                    .map(|u| settings::redact_url(u.as_str()));
                let instance = registry
                    .build(spec, &shared)
                    .map_err(|e| anyhow::anyhow!(e))?;
                tracing::info!(ecosystem = instance.name, kind = instance.kind, mount = %format!("/{}/", instance.mount), upstream = ?upstream, "ecosystem enabled");
                instances.push(instance);
            }
            Planned::Disabled {
                name,
                mount,
                setting,
            } => {
                tracing::warn!(ecosystem = name, setting = %setting, "ecosystem disabled: no upstream configured");
                disabled.push(DisabledMount {
                    mount,
                    name,
                    setting,
                });
            }
        }
    }

    let front_settings = FrontSettings {
        direct_serve: DirectServeSettings {
            enabled: settings.direct_serve,
            ttl: settings.direct_serve_ttl,
        },
    };
    let render = Arc::new(render_metrics);
    let front = Front::new(
        cache.clone(),
        instances,
        disabled,
        front_settings,
        Some(render),
    );

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    tracing::info!(listen = %listener.local_addr()?, base_url = %settings.base_url, "proxyd is serving");

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let background = cache.spawn_background(shutdown_rx.clone());
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = shutdown_tx.send(true);
    });
    let limits = proxyd_http_front::ServerLimits {
        header_read_timeout: settings.header_read_timeout,
        max_connections: settings.max_connections,
    };
    proxyd_http_front::serve(front, listener, shutdown_rx, DRAIN, limits).await;
    let _ = background.await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
