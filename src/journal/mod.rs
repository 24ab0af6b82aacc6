//! The write-ahead journal: every settled debit request is one checksummed
//! record in a batch of a segment file of the data directory, on stable
//! storage before its answer is sent.
//!
//! - `record`: a record's byte format, apart from files.
//! - `batch`: the frame around each group commit's records.
//! - `medium`: the file operations, real ([`Os`]) or simulated ([`PowerCut`]).
//! - `data_dir`: the directory: lock, metadata, numbered files, and every
//!   durable creation, rename and removal.
//! - `queue`: requests hand entries to the writer and wait for their batch.
//! - `writer`: the one thread that appends: group commit (many records, one
//!   write, one `fdatasync`), then settles the ledger and the idempotency table.
//! - `snapshot`: balances and remembered keys as of a segment boundary,
//!   written while commits go on, so restarts replay only what came after.
//! - `recovery`: snapshot load and replay at start, the torn-batch rule.
//!
//! Invariant: the ledger's durable balances (`saldo`) and the idempotency
//! table's settled keys change only on the writer thread, after the record
//! that justifies the change is synced, in journal order.

pub mod batch;
mod consumers;
mod data_dir;
mod events;
pub mod medium;
mod queue;
mod record;
mod recovery;
mod snapshot;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use consumers::{CONSUMERS_MAX, Consumers};
pub use data_dir::FileKind;
pub use events::Events;
pub use medium::{Medium, Os, PowerCut};
pub use queue::{ENTRIES_MAX, Queued, Slot, Ticket};
pub use record::{DecodeError, Key, Record};

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::feed::Feed;
use crate::idempotency::Table;
use crate::ledger::{Ledger, ReplayError};
use crate::metrics;
use crate::seam::EventId;
use crate::seam::Unavailable;
use crate::usuario::Usuario;
use data_dir::{DataDir, Fixed};
use events::SegmentEvents;
use queue::Queue;
use writer::{DeathWatch, Shared, Writer};

/// Why the journal cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Another process owns the data directory.
    #[error("data directory {path} is in use by process {holder}")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The owner's PID, as it wrote it.
        holder: String,
    },
    /// The data directory was created with other settings.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The metadata file.
        path: PathBuf,
        /// Which setting differs, and how.
        reason: String,
    },
    /// The data directory holds more than a setting allows.
    #[error("{path}: {reason}")]
    Exceeds {
        /// The file being loaded.
        path: PathBuf,
        /// Which setting, and what to do.
        reason: String,
    },
    /// Damage that is not a torn final batch: the start stops rather than
    /// lose data.
    #[error("{path} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// A record or snapshot entry at `offset` of `path` that does not apply
    /// over the ledger: too many accounts is a setting to raise, anything else
    /// is damage.
    fn replay(path: PathBuf, offset: u64, error: ReplayError) -> Self {
        match error {
            ReplayError::TooManyAccounts { .. } => Self::Exceeds {
                path,
                reason: error.to_string(),
            },
            _ => Self::Corrupt {
                path,
                offset,
                reason: error.to_string(),
            },
        }
    }
}

/// Failures the journal can be told to have, to prove the failure paths
/// (fault injection through the storage seam, used by tests and drills).
#[derive(Debug, Default)]
pub struct Faults {
    /// The next batch's write fails.
    pub fail_write: AtomicBool,
    /// The next batch's `fdatasync` fails.
    pub fail_sync: AtomicBool,
    /// The writer thread panics at its next batch.
    pub panic_writer: AtomicBool,
}

/// Counters of the writer's work.
#[derive(Debug)]
pub struct Stats {
    /// Batches written and synced.
    pub batches: AtomicU64,
    /// Records in those batches.
    pub records: AtomicU64,
    /// Snapshots made durable.
    pub snapshots: AtomicU64,
    /// Seconds each batch's write and `fdatasync` took (observed by the
    /// writer alone, once per batch).
    pub sync_seconds: Histogram,
    /// Records in each batch written.
    pub batch_records: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            batches: AtomicU64::default(),
            records: AtomicU64::default(),
            snapshots: AtomicU64::default(),
            sync_seconds: Histogram::new(metrics::SYNC_BOUNDS_SECONDS),
            batch_records: Histogram::new(metrics::BATCH_BOUNDS_RECORDS),
        }
    }
}

impl Stats {
    /// Registers the journal's own metric families.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            metrics::JOURNAL_SYNC_DURATION,
            "Time of each group commit's write and fdatasync.",
            self.sync_seconds.clone(),
        );
        registry.register(
            metrics::JOURNAL_BATCH_RECORDS,
            "Records in each group commit.",
            self.batch_records.clone(),
        );
    }
}

/// What the data directory must hold, from the configuration.
pub struct Options<'a> {
    /// The data directory.
    pub dir: &'a Path,
    /// Opening balance of implicit accounts.
    pub opening_saldo: u64,
    /// Seeded accounts, as the ledger was seeded with them.
    pub seed: &'a [(Usuario, u64)],
    /// A segment this large is closed and snapshotted.
    pub segment_bytes_max: u64,
    /// Segments a snapshot covers are removed only once their records are
    /// older than this (the feed of events reads them).
    pub events_retention: Duration,
}

/// A journal ready to take records, and what recovery did.
pub struct Opened {
    /// The running journal.
    pub journal: Journal,
    /// Records replayed from segments.
    pub records_replayed: u64,
    /// The snapshot loaded, by index, if any.
    pub snapshot: Option<u64>,
    /// Bytes of a torn final batch dropped from the last segment.
    pub torn_bytes: u64,
    /// How long recovery took.
    pub elapsed: Duration,
}

/// Opens (or creates) the data directory on the real file system; see
/// [`open_on`].
pub fn open(options: &Options<'_>, ledger: Arc<Ledger>, keys: Arc<Table>) -> Result<Opened, Error> {
    open_on(Arc::new(Os::new(options.dir)), options, ledger, keys)
}

/// Opens (or creates) the data directory on `medium`, restores the ledger
/// and the idempotency table, and starts the writer. The ledger arrives
/// seeded with `options.seed` (which the metadata check proves is the
/// directory's own); the snapshot and the journal are applied over it.
pub fn open_on(
    medium: Arc<dyn Medium>,
    options: &Options<'_>,
    ledger: Arc<Ledger>,
    keys: Arc<Table>,
) -> Result<Opened, Error> {
    let started = Instant::now();
    let dir = Arc::new(DataDir::open(medium, options.dir)?);
    let fixed = Fixed {
        opening_saldo: options.opening_saldo,
        seed: options.seed,
    };
    let recovered = recovery::recover(&dir, fixed, &ledger, &keys)?;
    let consumers = Arc::new(Consumers::load(dir.clone())?);
    let segment_events = SegmentEvents::new(dir.clone());
    let durable_through = Arc::new(AtomicU64::new(recovered.tail.next_record - 1));
    // Events before this start are the journal's, not memory's.
    let feed = Arc::new(Feed::new(EventId(recovered.tail.next_record - 1)));
    let queue = Arc::new(Queue::new());
    let faults = Arc::new(Faults::default());
    let stats = Arc::new(Stats::default());
    let shared = Shared {
        dir,
        ledger,
        keys,
        queue: queue.clone(),
        faults: faults.clone(),
        stats: stats.clone(),
        feed: feed.clone(),
        durable_through: durable_through.clone(),
    };
    let writer = Writer::new(
        shared,
        recovered.tail,
        options.segment_bytes_max,
        options.events_retention,
    );
    let thread_queue = queue.clone();
    let thread = std::thread::Builder::new()
        .name("saldos-journal".into())
        .spawn(move || {
            let _death = DeathWatch::writer(&thread_queue);
            writer.run();
        })
        .map_err(|source| Error::Io {
            path: options.dir.to_owned(),
            source,
        })?;
    Ok(Opened {
        journal: Journal {
            queue,
            faults,
            stats,
            events: Arc::new(Events::new(feed, segment_events, durable_through)),
            consumers,
            writer: Some(thread),
        },
        records_replayed: recovered.records_replayed,
        snapshot: recovered.snapshot,
        torn_bytes: recovered.torn_bytes,
        elapsed: started.elapsed(),
    })
}

/// The running journal: hands entries to the writer thread.
pub struct Journal {
    queue: Arc<Queue>,
    faults: Arc<Faults>,
    stats: Arc<Stats>,
    /// Synced debits, from memory or the segments.
    events: Arc<Events>,
    /// The feed's named consumers.
    consumers: Arc<Consumers>,
    writer: Option<JoinHandle<()>>,
}

impl Journal {
    /// Waits for a queue slot (bounded back-pressure, no thread blocked).
    pub async fn slot(&self) -> Result<Slot<'_>, Unavailable> {
        self.queue.slot().await
    }

    /// Queues an entry in its slot; never blocks. A debit is queued under its
    /// account's shard lock, so the entries of one account are in debit
    /// order; a refusal, which changes no balance, need not be.
    pub fn push(&self, slot: Slot<'_>, entry: Queued) -> Result<Ticket, Unavailable> {
        self.queue.push(slot, entry)
    }

    /// Waits until the entry of `ticket` is durable and settled.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), Unavailable> {
        self.queue.wait(ticket).await
    }

    /// True once a write or sync failed or a journal thread died: nothing
    /// more is acknowledged until a restart, because the kernel may have
    /// dropped the unsynced pages.
    pub fn has_failed(&self) -> bool {
        self.queue.has_failed()
    }

    /// The feed of synced debits: its newest, in memory.
    pub fn feed(&self) -> &Arc<Feed> {
        self.events.feed()
    }

    /// The synced debits, for readers of the feed.
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// The feed's named consumers, stored in the data directory.
    pub fn consumers(&self) -> &Arc<Consumers> {
        &self.consumers
    }

    /// The fault-injection switches.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The writer's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

impl Drop for Journal {
    /// Stops taking entries, lets the writer make everything queued durable
    /// and finish its snapshot, and waits for it (and so releases the
    /// directory's lock).
    fn drop(&mut self) {
        self.queue.close();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}
