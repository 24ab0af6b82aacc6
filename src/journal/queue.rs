//! The hand-off between requests and the writer thread: entries in, in the
//! order they were queued (under the account's lock); completions out, one
//! per batch; and the journal's failed state.
//!
//! Each entry gets a ticket, its position in the queue. The writer takes the
//! entries in order, makes them durable and settled, then publishes the last
//! ticket of the batch (`done`) and wakes the batch's requests, each once: a
//! request whose ticket is at or below `done` is durable. No allocation, no
//! channel per request: a waiting request leaves its waker in the ticket's
//! place of a ring as large as the queue's bound, so a completion wakes
//! exactly its own requests, never the ones of the batches still in flight
//! (which would be polled for nothing, several times each under load).
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
use std::task::{Context, Poll, Waker};

use tokio::sync::Semaphore;

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
    /// Where each waiting request's waker is: ticket `t` at `t % ENTRIES_MAX`.
    waiting: Box<[Mutex<Waiting>]>,
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
            waiting: (0..ENTRIES_MAX)
                .map(|_| Mutex::new(Waiting::default()))
                .collect(),
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
        std::future::poll_fn(|context| self.poll_wait(ticket, context)).await
    }

    fn poll_wait(&self, ticket: Ticket, context: &Context<'_>) -> Poll<Result<(), Unavailable>> {
        if let Poll::Ready(answer) = self.outcome(ticket) {
            return Poll::Ready(answer);
        }
        self.place(ticket).park(ticket, context.waker());
        // Checked again after parking: a completion between the first check
        // and the parking found no waker, but it is seen here.
        self.outcome(ticket)
    }

    fn outcome(&self, ticket: Ticket) -> Poll<Result<(), Unavailable>> {
        if self.done.load(Ordering::Acquire) >= ticket.0 {
            Poll::Ready(Ok(()))
        } else if ticket.0 > self.lost_after.load(Ordering::Acquire) {
            Poll::Ready(Err(Unavailable))
        } else {
            Poll::Pending
        }
    }

    fn place(&self, ticket: Ticket) -> MutexGuard<'_, Waiting> {
        self.waiting[(ticket.0 % ENTRIES_MAX as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the request waiting with each ticket of `tickets`.
    fn wake(&self, tickets: std::ops::RangeInclusive<u64>) {
        for ticket in tickets {
            let waker = self.place(Ticket(ticket)).take(Ticket(ticket));
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Wakes every waiting request (the journal failed: each finds out how).
    fn wake_all(&self) {
        for place in &self.waiting {
            let waker = place
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .waker
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
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
        self.wake_all();
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
        let last = first.0 + count as u64 - 1;
        if durable {
            self.done.store(last, Ordering::Release);
            self.wake(first.0..=last);
        } else {
            // Nothing is appended after a failure: whatever was not durable
            // by now never will be.
            self.lost_after
                .store(self.done.load(Ordering::Acquire), Ordering::Release);
            self.fail();
            self.wake_all();
        }
        // Last: a ticket reusing one of these places is given only now.
        self.slots.add_permits(count);
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One place of the ring of waiting requests.
#[derive(Default)]
struct Waiting {
    /// The ticket whose waker this is (a place is reused by the ticket
    /// `ENTRIES_MAX` later, once this one's slot was given back).
    ticket: u64,
    waker: Option<Waker>,
}

impl Waiting {
    /// Leaves `waker` for `ticket`, unless a later ticket already uses the
    /// place (this request then finds itself done when it checks again).
    fn park(&mut self, ticket: Ticket, waker: &Waker) {
        if self.ticket > ticket.0 {
            return;
        }
        match &mut self.waker {
            Some(parked) if self.ticket == ticket.0 && parked.will_wake(waker) => {}
            _ => {
                self.ticket = ticket.0;
                self.waker = Some(waker.clone());
            }
        }
    }

    /// The waker left for `ticket`, if any.
    fn take(&mut self, ticket: Ticket) -> Option<Waker> {
        if self.ticket == ticket.0 {
            self.waker.take()
        } else {
            None
        }
    }
}

impl Default for Queue {
    fn default() -> Self {
        Self::new()
    }
}
