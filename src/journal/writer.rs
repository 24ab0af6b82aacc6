//! The writer thread: group commit.
//!
//! It blocks for one record, then takes whatever else is queued (up to
//! `BATCH_RECORDS_MAX` records or `BATCH_BYTES_MAX` bytes): while one batch is
//! being synced, the next one accumulates, so batches grow with load and no
//! timer adds latency when idle. Each batch is one `write` and one
//! `fdatasync`; only then are its debits applied to the ledger, its keys
//! settled, and its requests answered.
//!
//! On a failed write or sync nothing of the batch is applied, every request
//! in it and after it gets `Unavailable`, and the segment is cut back to its
//! last synced length (best effort): after `fsync` fails the page cache can no
//! longer be trusted, so only a restart (which replays what is really on
//! disk) may acknowledge debits again.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Receiver;

use super::{Faults, Pending, Record, Stats, Unavailable, recovery, snapshot};
use crate::clock;
use crate::idempotency::Table;
use crate::ledger::{Ledger, Outcome};

/// The most records in one batch.
const BATCH_RECORDS_MAX: usize = 4096;

/// The most bytes in one batch.
const BATCH_BYTES_MAX: usize = 1 << 20;

/// The appending side of the journal, owned by its thread.
pub(super) struct Writer {
    pub dir: PathBuf,
    pub segment: File,
    pub segment_index: u64,
    /// Bytes of the current segment known to be on stable storage.
    pub segment_bytes: u64,
    /// A segment this large is closed and a snapshot taken.
    pub segment_bytes_max: u64,
    pub queue: Receiver<Pending>,
    pub ledger: Arc<Ledger>,
    pub keys: Arc<Table>,
    pub failed: Arc<AtomicBool>,
    pub faults: Arc<Faults>,
    pub stats: Arc<Stats>,
    /// A snapshot is being written; at most one at a time.
    pub snapshotting: Arc<AtomicBool>,
}

impl Writer {
    /// Runs until every sender is gone and the queue is empty.
    pub fn run(mut self) {
        let mut batch: Vec<Pending> = Vec::with_capacity(BATCH_RECORDS_MAX);
        let mut bytes = Vec::with_capacity(BATCH_BYTES_MAX + 1024);
        while let Ok(first) = self.queue.recv() {
            bytes.clear();
            encode(&first, &mut bytes);
            batch.push(first);
            while batch.len() < BATCH_RECORDS_MAX && bytes.len() < BATCH_BYTES_MAX {
                let Ok(next) = self.queue.try_recv() else {
                    break;
                };
                encode(&next, &mut bytes);
                batch.push(next);
            }
            let result = self.append(&bytes);
            self.settle(&mut batch, result);
            if result.is_ok() && self.segment_bytes >= self.segment_bytes_max {
                self.rotate();
            }
        }
        tracing::info!(
            batches = self.stats.batches.load(Ordering::Relaxed),
            records = self.stats.records.load(Ordering::Relaxed),
            "journal closed"
        );
    }

    /// Writes and syncs one batch.
    fn append(&mut self, bytes: &[u8]) -> Result<(), Unavailable> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(Unavailable);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        match self.write_and_sync(bytes) {
            Ok(()) => {
                self.segment_bytes += bytes.len() as u64;
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.failed.store(true, Ordering::Relaxed);
                let cut = self
                    .segment
                    .set_len(self.segment_bytes)
                    .and_then(|()| self.segment.sync_data());
                tracing::error!(
                    %error,
                    segment = self.segment_index,
                    cut_back = cut.is_ok(),
                    "journal write failed: refusing debits until restart"
                );
                Err(Unavailable)
            }
        }
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.faults.fail_write.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected write failure"));
        }
        self.segment.write_all(bytes)?;
        if self.faults.fail_sync.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.segment.sync_data()
    }

    /// Applies (or rolls back) each record of the batch, then answers it.
    fn settle(&self, batch: &mut Vec<Pending>, result: Result<(), Unavailable>) {
        let records = batch
            .iter()
            .filter(|pending| pending.record.is_some())
            .count();
        if result.is_ok() {
            self.stats
                .records
                .fetch_add(records as u64, Ordering::Relaxed);
        }
        for pending in batch.drain(..) {
            if let Some(record) = &pending.record {
                self.settle_record(record, result.is_ok());
            }
            // A requester that went away no longer needs its answer.
            let _ = pending.reply.send(result);
        }
    }

    fn settle_record(&self, record: &Record, durable: bool) {
        if let Outcome::Debited { .. } = record.outcome {
            self.ledger.settle(&record.usuario, record.monto, durable);
        }
        if let Some((key, remembered)) = record.remembered() {
            if durable {
                self.keys.finish(key, remembered);
            } else {
                self.keys.abandon(key);
            }
        }
    }

    /// Starts the next segment and snapshots the state as of the end of the
    /// current one, unless a snapshot is still being written.
    fn rotate(&mut self) {
        if self.snapshotting.load(Ordering::Acquire) {
            return;
        }
        let next = self.segment_index + 1;
        let segment = match recovery::create_segment(&self.dir, next) {
            Ok(segment) => segment,
            Err(error) => {
                tracing::warn!(%error, "cannot start a new journal segment; keeping the current one");
                return;
            }
        };
        self.segment = segment;
        self.segment_index = next;
        self.segment_bytes = 0;
        // The writer is the only one changing durable state, and it is here:
        // the image is exactly the state after every segment before `next`.
        let image = snapshot::image(&self.ledger, &self.keys, next, clock::unix_ms());
        self.snapshotting.store(true, Ordering::Release);
        let (dir, snapshotting, stats) = (
            self.dir.clone(),
            self.snapshotting.clone(),
            self.stats.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("saldos-snapshot".into())
            .spawn(move || {
                match snapshot::persist(&dir, next, &image) {
                    Ok(()) => {
                        stats.snapshots.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            covers_segments_before = next,
                            bytes = image.len(),
                            "snapshot written"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, "snapshot failed; the journal keeps every segment")
                    }
                }
                snapshotting.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.snapshotting.store(false, Ordering::Release);
        }
    }
}

fn encode(pending: &Pending, bytes: &mut Vec<u8>) {
    if let Some(record) = &pending.record {
        record.encode(bytes);
    }
}
