//! The writer thread: group commit.
//!
//! It blocks until entries arrive, then takes everything queued (up to
//! `batch::RECORDS_MAX`): while one batch is being synced the next one
//! accumulates, so batches grow with load and no timer adds latency when idle.
//! Each batch is one frame, one `write` and one `fdatasync`; only then are its
//! debits applied to the ledger (in journal order), its keys settled, and its
//! requests woken, all at once.
//!
//! On a failed write or sync nothing of the batch is applied, every request
//! in it and after it gets `Unavailable`, and the segment is cut back to its
//! last synced length (best effort): after `fsync` fails the page cache can no
//! longer be trusted, so only a restart (which replays what is really on
//! disk) may acknowledge debits again.
//!
//! A full segment is closed and a snapshot of the state as of its end is
//! written by a second thread while batches go on; the writer joins it before
//! it ends, so both are done before the directory's lock is released.
//!
//! Room: after a batch is answered, the writer keeps zeros written ahead of
//! the segment's end (and their writeback started). The next batch's
//! `fdatasync` makes them durable with the file's new length; every batch
//! after that lands in blocks the file system has already allocated, in a
//! file whose length is already durable, so its `fdatasync` flushes data
//! blocks only, not metadata through the file system's journal (on ext4 this
//! halves the CPU and the time of a small sync). Old bytes are never read as
//! records: room is zeros, which no batch header matches, and recovery
//! accepts nothing but zeros after a segment's last batch (or, in the last
//! segment, a torn final batch). Room is only written while the segment is
//! below its size, so the batch that fills a segment has made all of its
//! room durable before the next segment is started.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::data_dir::DataDir;
use super::events::event_of;
use super::medium::MediumFile;
use super::queue::{Queue, Queued};
use super::{Faults, Stats, Unavailable, batch, snapshot};
use crate::feed::Feed;
use crate::idempotency::Table;
use crate::ledger::{Ledger, Outcome, Stamp};
use crate::seam::Event;

/// Room is written this much at a time (see the module's comment).
pub const ROOM_STEP_BYTES: u64 = 1 << 20;

/// Room is written once less than this is left ahead of the segment's end.
pub const ROOM_LOW_BYTES: u64 = 256 << 10;

/// The zeros room is written from (in `.bss`: it costs no binary size).
static ZEROS: [u8; ROOM_STEP_BYTES as usize] = [0; ROOM_STEP_BYTES as usize];

/// Where the journal's end is: the segment being appended and the numbering.
pub struct Tail {
    /// The open segment.
    pub segment: Box<dyn MediumFile>,
    /// Its index.
    pub segment_index: u64,
    /// Bytes of it known to be on stable storage: its batches.
    pub segment_bytes: u64,
    /// The file's length: its batches, then the zeros of room written ahead.
    pub segment_file_bytes: u64,
    /// The number the next record gets.
    pub next_record: u64,
}

/// What the writer shares with the rest of the journal.
pub struct Shared {
    /// The data directory (and its lock).
    pub dir: Arc<DataDir>,
    /// Balances to settle.
    pub ledger: Arc<Ledger>,
    /// Keys to settle.
    pub keys: Arc<Table>,
    /// Entries in, completions out.
    pub queue: Arc<Queue>,
    /// Injected failures.
    pub faults: Arc<Faults>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Where synced debits become events.
    pub feed: Arc<Feed>,
    /// The number of the last synced record, for readers of the segments.
    pub durable_through: Arc<AtomicU64>,
}

/// The appending side of the journal, owned by its thread.
pub struct Writer {
    shared: Shared,
    tail: Tail,
    /// A segment this large is closed and snapshotted.
    segment_bytes_max: u64,
    /// See [`super::Options::events_retention`].
    events_retention: Duration,
    /// The snapshot being written, at most one at a time.
    snapshot: Option<JoinHandle<()>>,
    /// The last rotation failed (its warning was logged).
    rotation_failing: bool,
    /// Writing room failed in this segment (its warning was logged): batches
    /// grow the file, as without room, until the next segment.
    room_failing: bool,
    /// A batch's events on their way to the feed (kept to reuse its room).
    events: Vec<Event>,
}

impl Writer {
    /// A writer appending at `tail`.
    pub fn new(
        shared: Shared,
        tail: Tail,
        segment_bytes_max: u64,
        events_retention: Duration,
    ) -> Self {
        Self {
            shared,
            tail,
            segment_bytes_max,
            events_retention,
            snapshot: None,
            rotation_failing: false,
            room_failing: false,
            events: Vec::new(),
        }
    }

    /// Runs until the queue is closed and empty, then waits for the snapshot.
    pub fn run(mut self) {
        let mut batch: Vec<Queued> = Vec::with_capacity(batch::RECORDS_MAX);
        let mut bytes = Vec::new();
        while let Some(first) = self.shared.queue.take(&mut batch, batch::RECORDS_MAX) {
            if self
                .shared
                .faults
                .panic_writer
                .swap(false, Ordering::Relaxed)
            {
                panic!("injected writer panic");
            }
            let records = self.encode(&batch, &mut bytes);
            self.shared.queue.writing(first, batch.len());
            let durable = self.append(&bytes).is_ok();
            if durable {
                // Before the feed's readers are woken (by `settle`): a reader
                // of the segments may read up to here once it is synced.
                let last = self.tail.next_record + records - 1;
                self.shared.durable_through.store(last, Ordering::Release);
            }
            self.settle(&batch, durable);
            if durable {
                self.tail.next_record += records;
                let stats = &self.shared.stats;
                stats.records.fetch_add(records, Ordering::Relaxed);
                if records > 0 {
                    stats.batch_records.observe(records as f64);
                }
            }
            // Last: a woken request sees the batch settled and counted.
            self.shared.queue.complete(first, batch.len(), durable);
            batch.clear();
            if durable && self.tail.segment_bytes >= self.segment_bytes_max {
                self.rotate();
            } else if durable {
                self.make_room();
            }
        }
        if let Some(snapshot) = self.snapshot.take() {
            let _ = snapshot.join();
        }
        tracing::info!(
            batches = self.shared.stats.batches.load(Ordering::Relaxed),
            records = self.shared.stats.records.load(Ordering::Relaxed),
            "journal closed"
        );
    }

    /// Frames the batch's records into `bytes` (empty for barriers only);
    /// returns how many records it holds.
    fn encode(&self, batch: &[Queued], bytes: &mut Vec<u8>) -> u64 {
        bytes.clear();
        let start = batch::start(bytes);
        let mut records = 0u32;
        for record in batch.iter().filter_map(|queued| queued.record.as_ref()) {
            record.encode(bytes);
            records += 1;
        }
        if records == 0 {
            bytes.clear();
        } else {
            batch::finish(bytes, start, self.tail.next_record, records);
        }
        u64::from(records)
    }

    /// Writes and syncs one batch.
    fn append(&mut self, bytes: &[u8]) -> Result<(), Unavailable> {
        if self.shared.queue.has_failed() {
            return Err(Unavailable);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        match self.write_and_sync(bytes) {
            Ok(()) => {
                let tail = &mut self.tail;
                tail.segment_bytes += bytes.len() as u64;
                tail.segment_file_bytes = tail.segment_file_bytes.max(tail.segment_bytes);
                self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.shared.queue.fail();
                let segment = &mut self.tail.segment;
                let cut = segment
                    .set_len(self.tail.segment_bytes)
                    .and_then(|()| segment.sync_all());
                self.tail.segment_file_bytes = self.tail.segment_bytes;
                tracing::error!(
                    %error,
                    segment = self.tail.segment_index,
                    cut_back = cut.is_ok(),
                    "journal write failed: refusing debits until restart"
                );
                Err(Unavailable)
            }
        }
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> io::Result<()> {
        let faults = &self.shared.faults;
        if faults.fail_write.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected write failure"));
        }
        let started = Instant::now();
        let tail = &mut self.tail;
        tail.segment.write_at(tail.segment_bytes, bytes)?;
        if faults.fail_sync.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        tail.segment.sync_data()?;
        let stats = &self.shared.stats;
        stats.sync_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Applies (or releases) each entry in journal order; a durable
    /// batch's debits join the feed (which wakes its readers).
    fn settle(&mut self, batch: &[Queued], durable: bool) {
        let mut number = self.tail.next_record;
        let mut events = std::mem::take(&mut self.events);
        for queued in batch {
            let Some(record) = &queued.record else {
                continue;
            };
            if let (Some(account), Outcome::Debited { nuevo_saldo }) =
                (queued.account, record.outcome)
            {
                let applied =
                    durable.then(|| Stamp::new(number, record.kind, record.monto, record.time_ms));
                self.shared
                    .ledger
                    .settle(account, &record.usuario, record.monto, applied);
                if durable {
                    events.push(event_of(record, number, nuevo_saldo));
                }
            }
            if let Some((key, remembered)) = record.remembered() {
                if durable {
                    self.shared.keys.finish(key, remembered);
                } else {
                    self.shared.keys.abandon(key);
                }
            }
            number += 1;
        }
        self.shared.feed.extend(events.drain(..));
        self.events = events;
    }

    /// Writes zeros ahead of the segment's end once little room is left,
    /// never past the segment's size (see the module's comment).
    fn make_room(&mut self) {
        let tail = &mut self.tail;
        let wanted_end = (tail.segment_bytes + ROOM_LOW_BYTES).min(self.segment_bytes_max);
        if self.room_failing || tail.segment_file_bytes >= wanted_end {
            return;
        }
        let start = tail.segment_file_bytes;
        let len = ROOM_STEP_BYTES.min(self.segment_bytes_max - start);
        let zeros = &ZEROS[..len as usize];
        let written = tail
            .segment
            .write_at(start, zeros)
            .and_then(|()| tail.segment.start_writeback(start, len));
        match written {
            Ok(()) => tail.segment_file_bytes = start + len,
            Err(error) => {
                // Room only saves work: batches go on growing the file.
                tracing::warn!(%error, segment = tail.segment_index, "cannot write room ahead of the journal's end");
                self.room_failing = true;
            }
        }
    }

    /// Starts the next segment and has a snapshot of the state as of the end
    /// of the current one written, unless the previous snapshot is still
    /// being written (the segment then grows a little longer).
    fn rotate(&mut self) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|running| !running.is_finished())
        {
            return;
        }
        if let Some(finished) = self.snapshot.take() {
            let _ = finished.join();
        }
        let next = self.tail.segment_index + 1;
        let segment = match self.shared.dir.create_segment(next) {
            Ok(segment) => segment,
            Err(error) => {
                // Retried at every batch; said once until it works again.
                if !self.rotation_failing {
                    tracing::warn!(%error, "cannot start a new journal segment; keeping the current one");
                }
                self.rotation_failing = true;
                return;
            }
        };
        self.rotation_failing = false;
        self.room_failing = false;
        self.tail.segment = segment;
        self.tail.segment_index = next;
        self.tail.segment_bytes = 0;
        self.tail.segment_file_bytes = 0;
        let cut = snapshot::Cut {
            covers: next,
            next_record: self.tail.next_record,
        };
        let events_retention = self.events_retention;
        let (dir, ledger, keys, queue, stats) = (
            self.shared.dir.clone(),
            self.shared.ledger.clone(),
            self.shared.keys.clone(),
            self.shared.queue.clone(),
            self.shared.stats.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("saldos-snapshot".into())
            .spawn(move || {
                let _death = DeathWatch::snapshot(&queue);
                yield_to_requests();
                let started = std::time::Instant::now();
                match snapshot::write(&dir, cut, &ledger, &keys, events_retention) {
                    Ok(bytes) => {
                        stats.snapshots.fetch_add(1, Ordering::Relaxed);
                        let elapsed_ms = started.elapsed().as_millis() as u64;
                        tracing::info!(
                            covers_segments_before = next,
                            bytes,
                            elapsed_ms,
                            "snapshot written"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, "snapshot failed; the journal keeps every segment")
                    }
                }
            });
        match spawned {
            Ok(handle) => self.snapshot = Some(handle),
            Err(error) => tracing::warn!(%error, "cannot start the snapshot thread"),
        }
    }
}

/// Puts the calling thread in the idle scheduling class (Linux `SCHED_IDLE`):
/// on a task with one or two vCPUs the snapshot must not take CPU time from
/// the requests. It still gets the CPU whenever a request waits for a shard
/// it holds (the waiting thread sleeps), so it never holds a lock long, and
/// it progresses in the gaps of the load.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        let parameters = libc::sched_param { sched_priority: 0 };
        // SAFETY: sets the calling thread's (pid 0) policy from a valid,
        // initialized parameter block; no memory is shared with the kernel.
        let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &parameters) };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "snapshot thread keeps its priority");
        }
    }
}

/// Marks the journal failed when the thread holding it dies by a panic: a
/// dead writer or snapshot thread must show in the health probes, not leave
/// every debit waiting.
pub struct DeathWatch<'a> {
    queue: &'a Queue,
    is_writer: bool,
}

impl<'a> DeathWatch<'a> {
    /// Watches the writer thread: its death also answers the queued entries.
    pub fn writer(queue: &'a Queue) -> Self {
        Self {
            queue,
            is_writer: true,
        }
    }

    /// Watches the snapshot thread.
    pub fn snapshot(queue: &'a Queue) -> Self {
        Self {
            queue,
            is_writer: false,
        }
    }
}

impl Drop for DeathWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                thread = std::thread::current().name().unwrap_or("?"),
                "a journal thread died: refusing debits until restart"
            );
            if self.is_writer {
                self.queue.writer_died();
            } else {
                self.queue.fail();
            }
        }
    }
}
