//! PostgreSQL storage (SPEC section 8): balances, idempotency keys and the
//! audit trail of debits in one database that any number of instances share.
//! Nothing is answered from this process's memory.
//!
//! - [`connect`]: where the database is, TLS, credentials.
//! - `iam`: RDS IAM authentication tokens (`--db-auth rds-iam`).
//! - [`schema`]: embedded migrations under an advisory lock; fixed settings.
//! - `queue`: bounded queues from requests to the connections.
//! - `writer`: debit batches, one round trip and one commit each.
//! - `reader`: balance reads, batched, and the feed's queries.
//! - `feed`: movements, events and consumer positions (SPEC section 9);
//!   the listener that wakes feed readers on any instance's commit and
//!   announces this instance's.
//! - `sweeper`: expired keys and old batch rows, deleted in bounded batches.
//!
//! Connections: half (rounded up) of `--db-connections` write debits, the
//! rest read. Every connection of the service holds a place among
//! `--db-connections` + [`CONNECTIONS_SPARE`] (the sweeper's, the feed's
//! listener, and a writer's fence while its old connection is being
//! cancelled) until its socket
//! closes, so the database never sees more from one instance, whatever
//! fails. Migrations run on a connection of their own before any of them.

mod connect;
mod feed;
mod iam;
mod queue;
mod reader;
mod schema;
mod sweeper;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashbrown::HashSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use connect::Session;
pub use connect::Target;

use crate::config::{DatabaseArgs, MigrateArgs};
use crate::metrics;
use crate::principal::Principal;
use crate::seam::Unavailable;
use crate::seam::{Answer, Order, Refusal};
use crate::usuario::Usuario;

/// Pause before trying a lost connection again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Debits waiting for a writer, at most.
const QUEUE_DEBITS_MAX: usize = 16_384;

/// Reads waiting for a reader, at most.
const QUEUE_READS_MAX: usize = 16_384;

/// Keys of this instance's requests in flight, at most (each holds a queue
/// place or a batch place, so this bound is never the tighter one).
const KEYS_IN_FLIGHT_MAX: usize = 2 * QUEUE_DEBITS_MAX;

/// The longest the readiness probe waits for the database.
const HEALTH_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// The principal of every request while authentication is off.
const NO_PRINCIPAL: &str = "";

/// Connections an instance may hold beyond `--db-connections`: the
/// sweeper's, the feed's listener (which also announces this instance's
/// commits), and one for fencing while a timed-out connection is being
/// cancelled. `terraform/observability.tf` counts them in its alarm.
pub const CONNECTIONS_SPARE: usize = 3;

/// A writer busy with one batch for longer than this many `--db-timeout`s
/// is stuck (every wait it makes is bounded by one): liveness fails, and the
/// task is replaced.
const STUCK_AFTER_TIMEOUTS: u32 = 4;

/// `saldos migrate`: the first pause between attempts to reach the database,
/// doubled up to [`MIGRATE_RETRY_PAUSE_MAX`].
const MIGRATE_RETRY_PAUSE: Duration = Duration::from_millis(500);
const MIGRATE_RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A database setting is wrong.
    #[error("{0}")]
    Setting(String),
    /// The database refused or failed.
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// Credentials for IAM authentication could not be had.
    #[error("database credentials: {0}")]
    Credentials(String),
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?} (--db-timeout)")]
    Timeout(Duration),
    /// Every connection place is taken (old connections still closing).
    #[error("all {0} database connection places are taken")]
    Saturated(usize),
    /// The schema is newer than this binary.
    #[error("the database schema is at version {found}, this binary knows up to {known}")]
    SchemaAhead {
        /// The schema's version.
        found: i32,
        /// The newest this binary has.
        known: i32,
    },
    /// The schema is behind and this role may not migrate it.
    #[error(
        "the database schema is behind and this role cannot migrate it ({reason}); \
         run `saldos migrate` as the database owner"
    )]
    SchemaBehind {
        /// The database's refusal.
        reason: String,
    },
    /// The audit trail holds a row this binary cannot read.
    #[error("unreadable audit row: {0}")]
    Corrupt(String),
    /// The opening balance or the seed differ from the recorded ones.
    #[error("refusing to start: {reason}")]
    SettingsChanged {
        /// Which setting and how.
        reason: String,
    },
}

/// The share of the time left before the service stops waiting that a
/// write's lock waits (and a position store's statements) may take on the
/// server: 1/2, so the server refuses what it cannot do in time before the
/// service answers 503, and nothing refused commits after that answer.
const SERVER_BOUND_SHARE: u32 = 2;

/// The server-side bound of a write the service waits for until `until`
/// (see [`SERVER_BOUND_SHARE`]).
fn server_bound(until: Instant) -> Duration {
    until.saturating_duration_since(Instant::now()) / SERVER_BOUND_SHARE
}

/// True when `error` means the connection is gone (closed, reset, or the
/// server shutting down or terminating it), so the outcome of what was in
/// flight on it is not known from the error itself.
fn is_connection_lost(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 57: operator intervention
            // (admin shutdown, crash shutdown, terminated backend).
            class == "08" || class == "57"
        }
    }
}

/// Counts of the database work, for metrics.
#[derive(Debug)]
pub struct Stats {
    /// Seconds from sending each debit batch to its commit's answer.
    batch_seconds: Histogram,
    /// Debits in each committed batch.
    batch_debits: Histogram,
    /// Connections not opened or lost, statements failed.
    errors: Counter,
    /// The last write (a batch, a fence, the readiness probe) committed,
    /// and no round trip failed since.
    ready: AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            batch_seconds: Histogram::new(metrics::SYNC_BOUNDS_SECONDS),
            batch_debits: Histogram::new(metrics::BATCH_BOUNDS_RECORDS),
            errors: Counter::default(),
            ready: AtomicBool::new(true),
        }
    }
}

impl Stats {
    /// Registers the PostgreSQL storage's own metric families.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            metrics::DB_BATCH_DURATION,
            "Time from sending each debit batch to its commit.",
            self.batch_seconds.clone(),
        );
        registry.register(
            metrics::DB_BATCH_DEBITS,
            "Debits in each committed batch (one commit each).",
            self.batch_debits.clone(),
        );
        registry.register(
            metrics::counter_base(metrics::DB_ERRORS),
            "Database connections not opened or lost, and statements failed.",
            self.errors.clone(),
        );
    }

    /// A committed batch of `debits` that took `seconds`.
    fn batch(&self, debits: usize, seconds: f64) {
        self.batch_debits.observe(debits as f64);
        self.batch_seconds.observe(seconds);
        self.ready.store(true, Ordering::Relaxed);
    }

    /// A write that committed.
    fn answered(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// A failure of the database or of the way to it.
    fn failed(&self) {
        self.errors.inc();
        self.ready.store(false, Ordering::Relaxed);
    }
}

/// Failures the storage can be told to have, to prove the failure paths
/// (fault injection through the storage seam, used by tests and drills).
#[derive(Debug, Default)]
pub struct Faults {
    /// The next writer to take a batch panics (its task ends).
    pub panic_writer: AtomicBool,
}

/// What the connections' tasks share.
struct Shared {
    target: Target,
    /// One permit per connection the service may hold.
    places: Arc<Semaphore>,
    /// How many permits `places` started with.
    places_max: usize,
    /// Counts for metrics.
    stats: Stats,
    /// `--db-timeout`.
    timeout: Duration,
    /// The opening balance, as the database stores amounts.
    opening_saldo: i64,
    /// `--idempotency-ttl` in ms.
    key_ttl_ms: i64,
    /// Injected failures.
    faults: Faults,
    /// Woken when a commit may have made events visible.
    commits: crate::seam::Commits,
    /// This instance's commits that debited, for the other instances.
    announcer: feed::Announcer,
    /// The last event page found committed rows it could not list yet (a
    /// transaction below them still running): the listener wakes readers
    /// again until they are listed.
    feed_held_back: AtomicBool,
}

impl Shared {
    fn opening_saldo_u64(&self) -> u64 {
        writer::saldo_u64(self.opening_saldo)
    }

    /// A batch that debited committed: this instance's feed readers are
    /// woken now, the other instances' once the listener announced it.
    fn debited(&self) {
        self.commits.committed();
        self.announcer.committed();
    }

    /// A bounded service connection, opened by `deadline`: first a place
    /// among the connections, then the connection itself.
    async fn connect(&self, deadline: Instant) -> Result<Client, Error> {
        let place = self.place(deadline).await?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.target.connect(timeout, Session::Service(place)).await
    }

    /// A place among the connections, by `deadline`.
    async fn place(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Error> {
        let place = tokio::time::timeout_at(deadline.into(), self.places.clone().acquire_owned())
            .await
            .map_err(|_| Error::Saturated(self.places_max))?
            .expect("the places semaphore is never closed");
        Ok(place)
    }
}

/// When each writer took its current batch (ms since `epoch`, 0 idle).
struct Progress {
    epoch: Instant,
    busy_since_ms: Vec<AtomicU64>,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        // 0 means idle: a batch taken in the first millisecond counts as 1.
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }
}

/// What opening the storage needs.
pub struct Options<'a> {
    /// How to reach the database.
    pub database: &'a DatabaseArgs,
    /// The opening balance.
    pub opening_saldo: u64,
    /// The seeded accounts.
    pub seed: &'a [(Usuario, u64)],
    /// How long idempotency keys are remembered.
    pub key_ttl: Duration,
}

/// The PostgreSQL storage: queues to the writer and reader connections.
pub struct Postgres {
    shared: Arc<Shared>,
    debits: queue::Sender<writer::Debit>,
    reads: queue::Sender<reader::Read>,
    /// Keys of this instance's requests in flight, with their principal: a
    /// second request with one gets 409 here; across instances the database
    /// decides.
    keys_in_flight: Mutex<HashSet<ScopedKey>>,
    /// The writer and reader tasks: one that ended (a panic) fails liveness.
    tasks: Vec<JoinHandle<()>>,
    /// Each writer's current batch, for liveness.
    progress: Arc<Progress>,
    sweeper: JoinHandle<()>,
    /// Wakes feed readers on commits (`feed::listen`).
    listener: JoinHandle<()>,
}

impl Postgres {
    /// Connects, migrates if behind, checks the fixed settings and starts
    /// the writer, reader and sweeper tasks.
    pub async fn open(options: &Options<'_>) -> Result<Self, Error> {
        let timeout = options.database.db_timeout;
        let target = Target::from_args(options.database)?;
        let mut client = target.connect(timeout, Session::Admin).await?;
        schema::migrate(&mut client).await?;
        let settings = schema::Settings {
            opening_saldo: options.opening_saldo,
            seed: options.seed,
        };
        schema::check_settings(&mut client, &settings).await?;
        drop(client);
        let connections = options.database.connection_count();
        let places_max = connections + CONNECTIONS_SPARE;
        let shared = Arc::new(Shared {
            target,
            places: Arc::new(Semaphore::new(places_max)),
            places_max,
            stats: Stats::default(),
            timeout,
            opening_saldo: i64::try_from(options.opening_saldo).unwrap_or(i64::MAX),
            key_ttl_ms: i64::try_from(options.key_ttl.as_millis()).unwrap_or(i64::MAX),
            faults: Faults::default(),
            commits: crate::seam::Commits::default(),
            announcer: feed::Announcer::default(),
            feed_held_back: AtomicBool::new(false),
        });
        // A service session now, so that settings the guarantees depend on
        // are checked before the first request, not at its first debit.
        drop(shared.connect(Instant::now() + timeout).await?);
        let writers = connections.div_ceil(2);
        let progress = Arc::new(Progress {
            epoch: Instant::now(),
            busy_since_ms: (0..writers).map(|_| AtomicU64::new(0)).collect(),
        });
        let (debits, debit_queue) = queue::bounded(QUEUE_DEBITS_MAX);
        let (reads, read_queue) = queue::bounded(QUEUE_READS_MAX);
        let mut tasks = Vec::with_capacity(connections);
        for index in 0..writers {
            let writer = writer::Writer::new(shared.clone(), progress.clone(), index);
            tasks.push(tokio::spawn(writer.run(debit_queue.clone())));
        }
        for _ in writers..connections {
            tasks.push(tokio::spawn(reader::run(
                shared.clone(),
                read_queue.clone(),
            )));
        }
        let sweeper = tokio::spawn(sweeper::run(shared.clone()));
        let listener = tokio::spawn(feed::listen(shared.clone()));
        Ok(Self {
            shared,
            debits,
            reads,
            keys_in_flight: Mutex::new(HashSet::new()),
            tasks,
            progress,
            sweeper,
            listener,
        })
    }

    /// Liveness: every writer and reader task runs, and no writer has been
    /// on one batch for longer than its bounded waits allow. The database's
    /// state never enters it (SPEC section 3).
    pub fn is_live(&self) -> bool {
        if self.tasks.iter().any(JoinHandle::is_finished) {
            return false;
        }
        let stuck_ms = (self.shared.timeout * STUCK_AFTER_TIMEOUTS).as_millis() as u64;
        let now_ms = self.progress.now_ms();
        self.progress.busy_since_ms.iter().all(|since| {
            let since = since.load(Ordering::Relaxed);
            since == 0 || now_ms.saturating_sub(since) < stuck_ms
        })
    }

    /// The account's committed balance, read from the database.
    pub async fn saldo(&self, usuario: &Usuario) -> Result<u64, Unavailable> {
        self.read(Some(*usuario), self.shared.timeout).await
    }

    /// Injects failures (tests and drills).
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// The database work's counts.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Whether the last write committed and no round trip failed since.
    pub fn was_ready(&self) -> bool {
        self.shared.stats.ready.load(Ordering::Relaxed)
    }

    /// Readiness: a debit could commit now. The probe is a real write and
    /// commit (a batch marker of no debits), so a database that answers
    /// reads but refuses writes (read-only, a standby, a full disk, a
    /// synchronous standby gone) is not ready.
    pub async fn is_ready(&self) -> bool {
        if !self.is_live() {
            return false;
        }
        let timeout = self.shared.timeout.min(HEALTH_TIMEOUT_MAX);
        self.read(None, timeout).await.is_ok()
    }

    async fn read(&self, usuario: Option<Usuario>, timeout: Duration) -> Result<u64, Unavailable> {
        let (answer, answered) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        let read = reader::Read {
            deadline,
            ask: reader::Ask::Saldo(usuario, answer),
        };
        self.reads.push(read).await?;
        // The reader answers every read it took by its deadline.
        answered.await.map_err(|_| Unavailable)?
    }

    /// Applies one debit request in the next batch; its key is settled in
    /// the same transaction.
    pub async fn debit(&self, order: Order<'_>) -> Result<Answer, Refusal> {
        let principal = order.principal.map_or(NO_PRINCIPAL, Principal::as_str);
        let in_flight = match order.key {
            None => None,
            Some(key) => Some(self.claim((principal.into(), key.key.into()))?),
        };
        let (answer, answered) = oneshot::channel();
        let debit = writer::Debit {
            kind: order.kind,
            usuario: order.usuario,
            monto: order.monto,
            key: order.key.map(|key| (key.key.into(), key.fingerprint)),
            principal: principal.into(),
            deadline: Instant::now() + self.shared.timeout,
            answer,
        };
        self.debits.push(debit).await?;
        let answer = answered.await.map_err(|_| Refusal::Unavailable)?;
        drop(in_flight);
        answer
    }

    /// Marks `key` in flight in this instance, or says why not.
    fn claim(&self, key: ScopedKey) -> Result<KeyInFlight<'_>, Refusal> {
        let mut keys = self.keys_in_flight.lock().expect("keys lock");
        if keys.contains(&key) {
            return Err(Refusal::KeyInFlight);
        }
        if keys.len() >= KEYS_IN_FLIGHT_MAX {
            return Err(Refusal::Unavailable);
        }
        keys.insert(key.clone());
        Ok(KeyInFlight {
            keys: &self.keys_in_flight,
            key,
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.sweeper.abort();
        self.listener.abort();
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// An idempotency key with its principal ('' without authentication).
type ScopedKey = (Box<str>, Box<str>);

/// A key in flight in this instance; forgotten when dropped.
struct KeyInFlight<'a> {
    keys: &'a Mutex<HashSet<ScopedKey>>,
    key: ScopedKey,
}

impl Drop for KeyInFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(&self.key);
        }
    }
}

/// `saldos migrate`: brings the schema up to date and grants the
/// application role, if one is named; returns how many migrations ran. A
/// database that cannot be reached yet (failing over, starting) is tried
/// again until `--db-wait` has passed.
pub async fn migrate(args: &MigrateArgs) -> Result<usize, Error> {
    let target = Target::from_args(&args.database)?;
    let mut client = connect_within(&target, args.db_wait).await?;
    let applied = schema::migrate(&mut client).await?;
    if let Some(role) = &args.app_role {
        schema::grant_app_role(&mut client, role).await?;
    }
    Ok(applied)
}

/// An admin connection, tried again with growing pauses while the database
/// cannot be reached, until `wait` has passed; a refusal that waiting cannot
/// change (a setting, a password) ends it at once.
async fn connect_within(target: &Target, wait: Duration) -> Result<Client, Error> {
    let deadline = Instant::now() + wait;
    let mut pause = MIGRATE_RETRY_PAUSE;
    loop {
        let error = match target.connect(target.db_timeout(), Session::Admin).await {
            Ok(client) => return Ok(client),
            Err(error) => error,
        };
        let transient = match &error {
            Error::Timeout(_) => true,
            Error::Database(error) => is_connection_lost(error),
            _ => false,
        };
        if !transient || Instant::now() + pause > deadline {
            return Err(error);
        }
        tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "database not reachable yet");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MIGRATE_RETRY_PAUSE_MAX);
    }
}
