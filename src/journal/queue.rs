//! The hand-off between requests and the writer thread: entries in, in the
//! order they were queued (under the account's lock); completions out, one
//! per batch; and the journal's failed state.
//!
//! Each entry gets a ticket, its position in the queue. The writer takes the
//! entries in order, makes them durable and settled, then publishes the last
//! ticket of the batch (`done`) and wakes the waiting requests once: a
//! request whose ticket is at or below `done` is durable. No allocation, no
//! channel per request.
//!
//! Only what is known not to be durable gets `Unavailable` ("nothing
//! applied"): tickets after `lost_after`. A failed write or sync sets it to
//! `done` (the writer appends nothing after a failure); a dead writer sets it
//! to the last ticket whose bytes it may have written, so a batch whose
//! outcome is unknown (its sync may have completed) is never answered: those requests wait
//! until the process is replaced and their connections are cut, which a
//! client reads as "outcome unknown", not as a refusal it may retry blindly.
//! A dead snapshot thread only marks the journal failed: batches in flight
//! complete as they would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, Semaphore};

use super::{Record, Unavailable};
use crate::ledger::AccountRef;

/// Entries queued for the writer at most; more requests wait for a slot.
pub const ENTRIES_MAX: usize = 16 * 1024;

/// One entry: a record to append, or a barrier (`record: None`) answered once
/// everything queued before it is durable.
pub struct Queued {
    /// What to append.
    pub record: Option<Record>,
    /// The reserved account, when the record is a debit to settle.
    pub account: Option<AccountRef>,
}

/// An entry's position in the queue, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// A queue slot taken and not yet used; given back when dropped unused.
pub struct Slot<'a>(&'a Queue);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.slots.add_permits(1);
    }
}

#[derive(Default)]
struct Entries {
    waiting: Vec<Queued>,
    /// Entries the writer has taken so far.
    taken: u64,
    /// No more entries will come: the writer ends once `waiting` is empty.
    closed: bool,
}

/// The queue, shared by the requests and the writer.
pub struct Queue {
    entries: Mutex<Entries>,
    /// Wakes the writer when entries arrive or the queue closes.
    arrived: Condvar,
    /// The last ticket made durable and settled.
    done: AtomicU64,
    /// Tickets after this one will never be durable (`u64::MAX`: none known).
    lost_after: AtomicU64,
    /// The last ticket whose record the writer may have written.
    written: AtomicU64,
    /// Wakes the requests waiting for `done` to move.
    completed: Notify,
    /// Set once: a write or sync failed, or a journal thread died.
    failed: AtomicBool,
    /// Bounds the entries queued (and so the memory they take).
    slots: Semaphore,
}

impl Queue {
    /// An empty, open queue.
    pub fn new() -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            arrived: Condvar::new(),
            done: AtomicU64::new(0),
            lost_after: AtomicU64::new(u64::MAX),
            written: AtomicU64::new(0),
            completed: Notify::new(),
            failed: AtomicBool::new(false),
            slots: Semaphore::new(ENTRIES_MAX),
        }
    }

    /// Waits for room in the queue (back-pressure without blocking a thread).
    pub async fn slot(&self) -> Result<Slot<'_>, Unavailable> {
        if self.has_failed() {
            return Err(Unavailable);
        }
        let permit = self.slots.acquire().await.map_err(|_| Unavailable)?;
        // The writer gives slots back by the batch (one lock per batch).
        permit.forget();
        Ok(Slot(self))
    }

    /// Queues an entry in the slot taken for it; never blocks.
    pub fn push(&self, slot: Slot<'_>, entry: Queued) -> Result<Ticket, Unavailable> {
        let mut entries = self.lock();
        if entries.closed || self.has_failed() {
            return Err(Unavailable);
        }
        std::mem::forget(slot);
        entries.waiting.push(entry);
        let ticket = Ticket(entries.taken + entries.waiting.len() as u64);
        if entries.waiting.len() == 1 {
            self.arrived.notify_one();
        }
        Ok(ticket)
    }

    /// Waits until the entry with `ticket` is durable, or the journal failed
    /// before it could be.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), Unavailable> {
        loop {
            // Registered before the check: a completion between the check and
            // the await still wakes it.
            let completed = self.completed.notified();
            if self.done.load(Ordering::Acquire) >= ticket.0 {
                return Ok(());
            }
            if ticket.0 > self.lost_after.load(Ordering::Acquire) {
                return Err(Unavailable);
            }
            completed.await;
        }
    }

    /// True once the journal cannot make anything durable any more.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the journal failed: the probes say so and new debits are
    /// refused at once (waiting for a slot included). Entries already queued
    /// are still written or released by the writer.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.slots.close();
    }

    /// The writer died: entries it never wrote are released, a batch it may
    /// have written is left unanswered (see the module's comment).
    pub fn writer_died(&self) {
        self.fail();
        let written = self.written.load(Ordering::Acquire);
        self.lost_after.store(
            written.max(self.done.load(Ordering::Acquire)),
            Ordering::Release,
        );
        self.completed.notify_waiters();
    }

    /// The writer's side: the batch from `first` of `count` entries is about
    /// to be written; from here its outcome is unknown until it completes.
    pub(super) fn writing(&self, first: Ticket, count: usize) {
        self.written
            .store(first.0 + count as u64 - 1, Ordering::Release);
    }

    /// Stops taking entries; the writer drains what is queued, then ends.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_one();
    }

    /// The writer's side: blocks until entries arrive, then moves up to
    /// `limit` of them into `batch`. Returns the first one's ticket, or
    /// `None` once the queue is closed and empty.
    pub(super) fn take(&self, batch: &mut Vec<Queued>, limit: usize) -> Option<Ticket> {
        let mut entries = self.lock();
        while entries.waiting.is_empty() {
            if entries.closed {
                return None;
            }
            entries = self
                .arrived
                .wait(entries)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let first = Ticket(entries.taken + 1);
        let count = entries.waiting.len().min(limit);
        batch.extend(entries.waiting.drain(..count));
        entries.taken += count as u64;
        Some(first)
    }

    /// The writer's side: the batch from `first` of `count` entries is settled
    /// (durable, or released after a failure); frees its slots and wakes the
    /// requests.
    pub(super) fn complete(&self, first: Ticket, count: usize, durable: bool) {
        if durable {
            self.done
                .store(first.0 + count as u64 - 1, Ordering::Release);
        } else {
            // Nothing is appended after a failure: whatever was not durable
            // by now never will be.
            self.lost_after
                .store(self.done.load(Ordering::Acquire), Ordering::Release);
            self.fail();
        }
        self.slots.add_permits(count);
        self.completed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Queue {
    fn default() -> Self {
        Self::new()
    }
}
