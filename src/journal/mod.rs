//! The write-ahead journal: every settled debit request is one checksummed
//! record in a segment file of the data directory, on stable storage before
//! its answer is sent.
//!
//! - `record`: the byte format, apart from files.
//! - `writer`: the one thread that appends: group commit (many records, one
//!   write, one `fdatasync`), then settles the ledger and the idempotency table.
//! - `snapshot`: all balances and remembered keys at a segment boundary, so
//!   restarts replay only what came after.
//! - `recovery`: the data directory (lock, metadata, files), snapshot load and
//!   replay at start.
//!
//! Invariant: the ledger's durable balances (`saldo`) and the idempotency
//! table's settled keys change only on the writer thread, after the record
//! that justifies the change is synced, in journal order.

mod record;
mod recovery;
mod snapshot;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

pub use record::{DecodeError, Key, Record};
pub use recovery::{Options, Recovered, open};

/// Records queued for the writer at most; more requests wait for a slot.
pub const QUEUE_RECORDS_MAX: usize = 16 * 1024;

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
    /// Damage that is not a torn tail: the start stops rather than lose data.
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

/// The debit's record could not be made durable; nothing was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the journal cannot make records durable")]
pub struct Unavailable;

/// Failures the journal's medium can be told to have, to prove the failure
/// path (fault injection through the storage seam, used by tests and drills).
#[derive(Debug, Default)]
pub struct Faults {
    /// The next batch's write fails.
    pub fail_write: AtomicBool,
    /// The next batch's `fdatasync` fails.
    pub fail_sync: AtomicBool,
}

/// Counters of the writer's work.
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches written and synced.
    pub batches: AtomicU64,
    /// Records in those batches.
    pub records: AtomicU64,
    /// Snapshots made durable.
    pub snapshots: AtomicU64,
}

/// A record waiting for the writer, or a barrier (`record: None`) that is
/// answered once everything queued before it is durable.
pub struct Pending {
    /// What to append.
    pub record: Option<Record>,
    /// Answered after the batch holding the record is synced and settled.
    pub reply: oneshot::Sender<Result<(), Unavailable>>,
    /// The queue slot this record holds; freed when the writer is done with it.
    pub slot: OwnedSemaphorePermit,
}

/// The running journal: hands records to the writer thread.
pub struct Journal {
    queue: crossbeam_channel::Sender<Pending>,
    slots: Arc<Semaphore>,
    failed: Arc<AtomicBool>,
    faults: Arc<Faults>,
    stats: Arc<Stats>,
    writer: Option<JoinHandle<()>>,
}

impl Journal {
    /// Waits for a queue slot (bounded back-pressure, no thread blocked).
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, Unavailable> {
        if self.has_failed() {
            return Err(Unavailable);
        }
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Unavailable)
    }

    /// Queues a record; never blocks (the slot guarantees room).
    pub fn submit(&self, pending: Pending) -> Result<(), Unavailable> {
        self.queue.try_send(pending).map_err(|_| Unavailable)
    }

    /// True once a write or sync failed: nothing more is acknowledged until a
    /// restart, because the kernel may have dropped the unsynced pages.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
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
    /// Stops taking records, lets the writer make everything queued durable,
    /// and waits for it (and so releases the directory's lock).
    fn drop(&mut self) {
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.queue, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}
