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
//! Gathering: under load the writer does not take a batch at its first
//! entry (on a single core it would preempt the worker that is queueing the
//! rest, and most batches would hold one record, each paying a whole
//! `fdatasync`). Once batches hold [`GATHER_FROM_ENTRIES`] entries or more,
//! it waits for as many as the last batch held, or for [`GATHER_WAIT_MAX`],
//! whichever comes first. The target grows by half when it was reached, and
//! a batch cut by the wait sets it to what arrived and holds it there for
//! [`GATHER_PROBE_EVERY`] batches (so a steady load of a few clients does
//! not pay the wait every other batch). A quiet journal takes each entry at
//! once. Measured in README "Speed, round two".
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
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{Record, Unavailable};
use crate::ledger::AccountRef;

/// Entries queued for the writer at most; more requests wait for a slot.
pub const ENTRIES_MAX: usize = 16 * 1024;

/// The longest a batch is gathered once its first entry is queued: the
/// bound on the latency gathering adds to a request, and only under load.
pub const GATHER_WAIT_MAX: Duration = Duration::from_micros(1000);

/// Batches smaller than this mean a quiet journal: the next entry is taken
/// at once, no gathering.
pub const GATHER_FROM_ENTRIES: usize = 8;

/// After a batch cut by [`GATHER_WAIT_MAX`], this many batches keep its size
/// as their target before a larger one is tried again.
pub const GATHER_PROBE_EVERY: u32 = 1024;

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

struct Entries {
    waiting: Vec<Queued>,
    /// Entries the writer has taken so far.
    taken: u64,
    /// No more entries will come: the writer ends once `waiting` is empty.
    closed: bool,
    /// The writer is woken when this many entries wait (or at the first one
    /// while it waits for any): see the module's comment on gathering.
    wake_at: usize,
    /// Batches left before the target may grow again.
    probe_in: u32,
}

impl Entries {
    /// Sets the target of the next batch from the one just taken (`taken`
    /// entries; `reached`: the target was, before the wait ran out).
    fn aim(&mut self, taken: usize, reached: bool) {
        self.probe_in = self.probe_in.saturating_sub(1);
        if taken < GATHER_FROM_ENTRIES {
            self.wake_at = 1;
        } else if !reached {
            self.wake_at = taken;
            self.probe_in = GATHER_PROBE_EVERY;
        } else if self.probe_in == 0 {
            self.wake_at = (taken + taken / 2).min(ENTRIES_MAX);
        } else {
            self.wake_at = taken;
        }
    }
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
    /// Where each waiting request's waker is: ticket `t` at `t % ENTRIES_MAX`
    /// (about 32 bytes a place, 512 KiB in all).
    parked: Box<[Mutex<Parked>]>,
    /// Set once: a write or sync failed, or a journal thread died.
    failed: AtomicBool,
    /// Bounds the entries queued (and so the memory they take).
    slots: Semaphore,
}

impl Queue {
    /// An empty, open queue.
    pub fn new() -> Self {
        Self {
            entries: Mutex::new(Entries {
                waiting: Vec::new(),
                taken: 0,
                closed: false,
                wake_at: 1,
                probe_in: 0,
            }),
            arrived: Condvar::new(),
            done: AtomicU64::new(0),
            lost_after: AtomicU64::new(u64::MAX),
            written: AtomicU64::new(0),
            parked: (0..ENTRIES_MAX)
                .map(|_| Mutex::new(Parked::default()))
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
        let waiting = entries.waiting.len();
        if waiting == 1 || waiting == entries.wake_at {
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

    fn place(&self, ticket: Ticket) -> MutexGuard<'_, Parked> {
        self.parked[(ticket.0 % ENTRIES_MAX as u64) as usize]
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
        for place in &self.parked {
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

    /// The writer's side: blocks until entries arrive, gathers more while
    /// the journal is busy (see the module's comment), then moves up to
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
        let deadline = Instant::now() + GATHER_WAIT_MAX;
        let mut reached = true;
        while entries.waiting.len() < entries.wake_at.min(limit) && !entries.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                reached = false;
                break;
            }
            entries = self
                .arrived
                .wait_timeout(entries, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let first = Ticket(entries.taken + 1);
        let count = entries.waiting.len().min(limit);
        batch.extend(entries.waiting.drain(..count));
        entries.taken += count as u64;
        entries.aim(count, reached);
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

/// One place of the ring of parked requests' wakers.
#[derive(Default)]
struct Parked {
    /// The ticket whose waker this is (a place is reused by the ticket
    /// `ENTRIES_MAX` later, once this one's slot was given back).
    ticket: u64,
    waker: Option<Waker>,
}

impl Parked {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Entries {
        Entries {
            waiting: Vec::new(),
            taken: 0,
            closed: false,
            wake_at: 1,
            probe_in: 0,
        }
    }

    // Quiet: each entry at once. Busy: the target grows while it is reached,
    // holds at what arrived once the wait ran out, and is probed again only
    // after GATHER_PROBE_EVERY batches.
    #[test]
    fn gathering_aims_at_what_the_load_brings() {
        let mut entries = entries();
        entries.aim(GATHER_FROM_ENTRIES - 1, true);
        assert_eq!(entries.wake_at, 1);
        entries.aim(40, true);
        assert_eq!(entries.wake_at, 60);
        entries.aim(60, true);
        assert_eq!(entries.wake_at, 90);
        entries.aim(70, false);
        assert_eq!(entries.wake_at, 70);
        for _ in 1..GATHER_PROBE_EVERY {
            entries.aim(70, true);
            assert_eq!(entries.wake_at, 70);
        }
        entries.aim(70, true);
        assert_eq!(entries.wake_at, 105);
        entries.aim(ENTRIES_MAX, true);
        assert_eq!(entries.wake_at, ENTRIES_MAX);
        entries.aim(3, true);
        assert_eq!(entries.wake_at, 1);
    }

    fn push_barrier(queue: &Queue, runtime: &tokio::runtime::Runtime) {
        runtime.block_on(async {
            let slot = queue.slot().await.unwrap();
            let barrier = Queued {
                record: None,
                account: None,
            };
            queue.push(slot, barrier).unwrap();
        });
    }

    // Under a busy target, a lone entry is still taken once the wait runs
    // out, and a closed queue hands over what it holds without waiting.
    #[test]
    fn a_gathered_batch_never_waits_for_entries_that_do_not_come() {
        let queue = Queue::new();
        queue.lock().wake_at = 100;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        push_barrier(&queue, &runtime);
        let mut batch = Vec::new();
        assert_eq!(queue.take(&mut batch, 4096), Some(Ticket(1)));
        assert_eq!(batch.len(), 1);
        assert_eq!(queue.lock().wake_at, 1, "one entry: quiet again");
        queue.lock().wake_at = 100;
        push_barrier(&queue, &runtime);
        queue.close();
        batch.clear();
        assert_eq!(queue.take(&mut batch, 4096), Some(Ticket(2)));
        assert_eq!(queue.take(&mut batch, 4096), None);
    }
}
