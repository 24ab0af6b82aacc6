//! `saldos`: Banco Etheria's balance and payments service.
//!
//! Layout (see ARCHITECTURE.md for the request path and the invariants):
//! - [`config`]: flags and environment variables, validated before start.
//! - [`server`]: accept loop, connection limits and timeouts, drain.
//! - [`router`]: method and path to handler; `X-Request-Id`.
//! - [`api`]: one module per endpoint family, and the SPEC's error table.
//! - [`auth`]: bearer tokens, the issuer's keys, who may read or debit what.
//! - [`principal`]: who made a request, recorded with debits and keys.
//! - [`storage`]: the seam handlers call to read and debit balances.
//! - [`journal`]: write-ahead journal, group commit, snapshots, recovery.
//! - [`postgres`]: PostgreSQL storage: batched debits and reads, migrations.
//! - [`idempotency`]: remembered outcomes of keyed requests.
//! - [`ledger`]: sharded in-memory balances and check-and-debit; no I/O.
//! - [`sharded`]: the bounded, sharded hash tables the ledger and the keys share.
//! - [`usuario`]: account names and their rules.
//! - [`render`]: response bytes without per-response allocation.
//! - [`metrics`], [`traces`]: Prometheus metrics and their listener,
//!   OpenTelemetry traces.
//! - [`request_id`], [`header`], [`logging`], [`healthcheck`], [`http_get`], [`clock`]:
//!   cross-cutting.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod feed;
pub mod header;
pub mod healthcheck;
pub mod http_get;
pub mod idempotency;
pub mod journal;
pub mod ledger;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod postgres;
pub mod principal;
pub mod render;
pub mod request_id;
pub mod router;
pub mod scrape;
pub mod seam;
pub mod server;
pub mod sharded;
pub mod storage;
pub mod traces;
pub mod usuario;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::auth::Auth;
use crate::config::{AuthArgs, AuthMode, MigrateArgs, ServeArgs, StorageKind};
use crate::ledger::{Ledger, Limits};
use crate::metrics::Recorder;
use crate::router::App;
use crate::storage::Storage;
use crate::traces::Sampling;

/// Pending connections the kernel queues while all permits are taken.
const LISTEN_BACKLOG: u32 = 4096;

/// How long tasks cut at the end of the drain may take to drop.
const RUNTIME_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// How often expired idempotency keys are swept.
const KEY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Why the service could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The seed does not fit the ledger.
    #[error("cannot seed the ledger: {0}")]
    Seed(ledger::Error),
    /// The data directory cannot be used.
    #[error("cannot open the journal: {0}")]
    Journal(#[from] journal::Error),
    /// The database cannot be used.
    #[error("cannot open the PostgreSQL storage: {0}")]
    Postgres(#[from] postgres::Error),
    /// Authentication is on and its keys cannot be had.
    #[error("cannot start authentication: {0}")]
    Auth(String),
}

/// The authentication the arguments describe (already validated): with
/// `jwt`, its keys loaded (the service does not start without them).
pub async fn open_auth(args: &AuthArgs) -> Result<Auth, StartError> {
    if args.mode == AuthMode::None {
        tracing::warn!(
            "authentication is off (--auth none): every account is open to anyone who reaches the service"
        );
        return Ok(Auth::Open);
    }
    let missing = || StartError::Auth("issuer, audience or keys missing".into());
    let settings = auth::Settings {
        issuer: args.jwt_issuer.clone().ok_or_else(missing)?,
        audience: args.jwt_audience.clone().ok_or_else(missing)?,
        algorithms: args.jwt_algorithms.0.clone(),
        leeway: args.jwt_leeway,
    };
    let source = match (&args.jwks_url, &args.jwks_file) {
        (Some(url), _) => auth::keys::Source::url(url.clone()).map_err(StartError::Auth)?,
        (None, Some(path)) => auth::keys::Source::file(path.clone()),
        (None, None) => return Err(missing()),
    };
    let verifier = auth::Verifier::start(settings, source)
        .await
        .map_err(StartError::Auth)?;
    Ok(Auth::Jwt(verifier))
}

/// Builds the storage the arguments describe: seeded, and with the journal
/// recovered from the data directory, or the database migrated and checked.
pub async fn open_storage(args: &ServeArgs) -> Result<Storage, StartError> {
    match args.storage {
        StorageKind::Postgres => {
            let options = postgres::Options {
                database: &args.database,
                opening_saldo: args.opening_balance,
                seed: &args.seed.0,
                key_ttl: args.idempotency_ttl,
            };
            Ok(Storage::postgres(postgres::Postgres::open(&options).await?))
        }
        StorageKind::Memory | StorageKind::Journal => open_local(args),
    }
}

/// The ledger and keys in this process, seeded; recovered from the journal
/// when durable.
fn open_local(args: &ServeArgs) -> Result<Storage, StartError> {
    let ledger = Arc::new(Ledger::new(Limits {
        shard_count: args.shard_count(),
        opening_saldo: args.opening_balance,
        accounts_max: usize::try_from(args.max_accounts).unwrap_or(usize::MAX),
        history_per_account: usize::from(args.history_per_account),
    }));
    let keys = Arc::new(idempotency::Table::new(
        args.shard_count(),
        args.idempotency_ttl,
        usize::try_from(args.idempotency_max_keys).unwrap_or(usize::MAX),
    ));
    for (usuario, saldo) in &args.seed.0 {
        ledger.seed(usuario, *saldo).map_err(StartError::Seed)?;
    }
    if args.storage != StorageKind::Journal {
        return Ok(Storage::memory(ledger, keys));
    }
    let options = journal::Options {
        dir: &args.data_dir,
        opening_saldo: args.opening_balance,
        seed: &args.seed.0,
        segment_bytes_max: args.journal_segment_bytes,
        events_retention: args.events_retention,
    };
    let recovered = journal::open(&options, ledger.clone(), keys.clone())?;
    tracing::info!(
        data_dir = %args.data_dir.display(),
        snapshot = recovered.snapshot,
        records_replayed = recovered.records_replayed,
        torn_bytes = recovered.torn_bytes,
        accounts = ledger.accounts_stored(),
        keys = keys.keys_stored(),
        elapsed_ms = recovered.elapsed.as_millis() as u64,
        "journal recovered"
    );
    Ok(Storage::journal(ledger, keys, recovered.journal))
}

/// Binds the listening socket with a deep backlog.
pub fn listen(address: SocketAddr) -> Result<TcpListener, StartError> {
    let listen = || {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| StartError::Listen { address, source })
}

/// What every request is served with, as the arguments describe it;
/// `sampling`: which requests get a span (`None`: tracing is off).
pub fn app(args: &ServeArgs, storage: Arc<Storage>, auth: Auth, sampling: Option<Sampling>) -> App {
    let metrics = match args.metrics_addr.0 {
        Some(_) => Recorder::new(args.worker_count()),
        None => Recorder::off(),
    };
    App {
        storage,
        metrics: Arc::new(metrics),
        slow_request: args.slow_request,
        sampling,
        auth,
    }
}

/// Binds the metrics listener when metrics are on and serves it in a task
/// (of the current runtime); returns the address it listens on.
pub async fn spawn_metrics(args: &ServeArgs, app: &App) -> Result<Option<SocketAddr>, StartError> {
    let Some(address) = args.metrics_addr.0 else {
        return Ok(None);
    };
    let listen_error = |source| StartError::Listen { address, source };
    let listener = TcpListener::bind(address).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    let registry = scrape::registry(app.metrics.clone(), &app.storage);
    tokio::spawn(metrics::serve(listener, Arc::new(registry)));
    Ok(Some(bound))
}

/// Runs the service until SIGTERM or SIGINT, then drains. Blocks.
/// `sampling`: which requests get a span (`None`: tracing is off).
pub fn serve(args: ServeArgs, sampling: Option<Sampling>) -> Result<(), StartError> {
    let workers = args.worker_count();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    let storage = runtime.block_on(async {
        let storage = Arc::new(open_storage(&args).await?);
        let auth = open_auth(&args.auth).await?;
        let listener = listen(SocketAddr::new(args.bind, args.port))?;
        let address = listener.local_addr().map_err(|source| StartError::Listen {
            address: SocketAddr::new(args.bind, args.port),
            source,
        })?;
        tracing::info!(
            %address,
            storage = ?args.storage,
            auth = ?args.auth.mode,
            workers,
            shards = args.shard_count(),
            seeded = args.seed.0.len(),
            traced = sampling.is_some(),
            "listening"
        );
        let app = Arc::new(app(&args, storage.clone(), auth, sampling));
        if let Some(metrics_address) = spawn_metrics(&args, &app).await? {
            tracing::info!(address = %metrics_address, "serving metrics");
        }
        let settings = server::Settings::new(args.max_connections as usize, args.shutdown_grace);
        if storage.as_local().is_some() {
            tokio::spawn(sweep_expired_keys(storage.clone()));
        }
        let drained = server::run(listener, app, settings, shutdown_signal()).await;
        tracing::info!(connections_cut = drained.connections_cut, "stopped");
        Ok::<_, StartError>(storage)
    });
    // Connections cut at the end of the grace period are dropped here; then
    // the last reference to the storage closes the journal: the writer makes
    // everything queued durable and releases the data directory.
    runtime.shutdown_timeout(RUNTIME_STOP_TIMEOUT);
    drop(storage?);
    tracing::info!("exited cleanly");
    Ok(())
}

/// `saldos migrate`: applies the PostgreSQL migrations, then exits: 0 when
/// the schema is current, 1 when it could not be brought there.
pub fn migrate(args: &MigrateArgs) -> std::process::ExitCode {
    logging::init(config::LogFormat::Text, None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let migrated = match runtime {
        Ok(runtime) => runtime.block_on(postgres::migrate(args)),
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match migrated {
        Ok(applied) => {
            tracing::info!(applied, "database schema is current");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "cannot migrate");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Forgets expired idempotency keys now and then, so the table's memory
/// follows the live keys rather than the keys ever seen, and reports new keys
/// refused because the table was full of live ones.
async fn sweep_expired_keys(storage: Arc<Storage>) {
    let mut interval = tokio::time::interval(KEY_SWEEP_INTERVAL);
    let mut refused_reported = 0;
    loop {
        interval.tick().await;
        let Some(keys) = storage.as_local().map(local::Local::keys) else {
            return;
        };
        let swept = keys.sweep(clock::unix_ms());
        if swept > 0 {
            tracing::debug!(swept, "expired idempotency keys swept");
        }
        let refused_full = keys.refused_full();
        if refused_full > refused_reported {
            tracing::warn!(
                refused_full,
                keys = keys.keys_stored(),
                "idempotency table full: new keys refused with 503; raise --idempotency-max-keys"
            );
            refused_reported = refused_full;
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
}
