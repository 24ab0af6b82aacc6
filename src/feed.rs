//! The in-process feed of events (SPEC section 9) for the memory and
//! journal storages: the newest events in a bounded ring, in commit order,
//! and the signal that wakes readers waiting for more.
//!
//! - memory storage: each debit takes the next id here, under its account's
//!   lock and the ring's, so ids follow commit order and an account's events
//!   follow its balance; what left the ring is gone (410).
//! - journal storage: the writer appends each synced batch's debits with
//!   their record numbers as ids, after settling them; events older than the
//!   ring (or from before a restart) are not served from memory (410).
//!
//! Memory: at most [`EVENTS_IN_MEMORY_MAX`] events.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::seam::{Commits, Event, EventId, FeedError};

/// The most events kept in memory.
pub const EVENTS_IN_MEMORY_MAX: usize = 65_536;

/// The newest events, and who waits for them.
#[derive(Debug)]
pub struct Feed {
    ring: Mutex<Ring>,
    commits: Commits,
}

#[derive(Debug)]
struct Ring {
    /// Ids increasing, at most [`EVENTS_IN_MEMORY_MAX`].
    events: VecDeque<Event>,
    /// Every event with an id at most this one has left the ring (or came
    /// before this process): a reader after an older id cannot be served.
    gone_through: EventId,
    /// The id the memory storage's next event takes.
    next_id: u64,
}

impl Feed {
    /// An empty feed whose events so far, up to `gone_through`, are not
    /// kept in memory (the journal's records before this start).
    pub fn new(gone_through: EventId) -> Self {
        Self {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                gone_through,
                next_id: gone_through.0 + 1,
            }),
            commits: Commits::default(),
        }
    }

    /// Memory storage: appends the event `build` makes with the next id,
    /// and returns that id. Called under the account's lock, so an
    /// account's events are in balance order.
    pub fn record(&self, build: impl FnOnce(EventId) -> Event) -> EventId {
        let mut ring = self.lock();
        let id = EventId(ring.next_id);
        ring.next_id += 1;
        ring.push(build(id));
        id
    }

    /// Journal storage: appends a synced batch's events (ids increasing,
    /// above every kept one).
    pub fn extend(&self, events: impl IntoIterator<Item = Event>) {
        let mut ring = self.lock();
        for event in events {
            ring.push(event);
        }
    }

    /// Wakes the readers waiting for events: after a commit, outside every
    /// lock.
    pub fn committed(&self) {
        self.commits.committed();
    }

    /// A subscription woken by [`Feed::committed`].
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// At most `limit` events after `after` (from the oldest kept when
    /// `None`); [`FeedError::Expired`] when some after it left memory.
    pub fn read(&self, after: Option<EventId>, limit: usize) -> Result<Vec<Event>, FeedError> {
        let ring = self.lock();
        let after = match after {
            Some(after) if after < ring.gone_through => return Err(FeedError::Expired),
            Some(after) => after,
            None => ring.gone_through,
        };
        let start = ring
            .events
            .partition_point(|event| event.movement.id <= after);
        Ok(ring.events.range(start..).take(limit).cloned().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the ring leaves it whole: every change is
        // one push or pop.
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Ring {
    fn push(&mut self, event: Event) {
        assert!(event.movement.id > self.gone_through);
        debug_assert!(
            self.events
                .back()
                .is_none_or(|newest| newest.movement.id < event.movement.id)
        );
        if self.events.len() == EVENTS_IN_MEMORY_MAX
            && let Some(oldest) = self.events.pop_front()
        {
            self.gone_through = oldest.movement.id;
        }
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::DebitKind;
    use crate::seam::Movement;
    use crate::usuario::Usuario;

    fn event(id: EventId) -> Event {
        Event {
            movement: Movement {
                id,
                kind: DebitKind::Pago,
                monto: 1,
                saldo: 0,
                time_ms: 0,
            },
            usuario: Usuario::new("a").unwrap(),
            principal: None,
        }
    }

    #[test]
    fn pages_follow_ids_and_the_ring_forgets_the_oldest() {
        let feed = Feed::new(EventId(0));
        for _ in 0..EVENTS_IN_MEMORY_MAX + 10 {
            feed.record(event);
        }
        assert_eq!(feed.read(Some(EventId(0)), 5), Err(FeedError::Expired));
        assert_eq!(feed.read(Some(EventId(9)), 5), Err(FeedError::Expired));
        let page = feed.read(Some(EventId(10)), 3).unwrap();
        let ids: Vec<u64> = page.iter().map(|event| event.movement.id.0).collect();
        assert_eq!(ids, [11, 12, 13]);
        let oldest = feed.read(None, 1).unwrap();
        assert_eq!(oldest[0].movement.id, EventId(11));
        let last = EventId((EVENTS_IN_MEMORY_MAX + 10) as u64);
        assert!(feed.read(Some(last), 5).unwrap().is_empty());
    }

    #[test]
    fn a_journal_feed_starts_after_what_came_before() {
        let feed = Feed::new(EventId(100));
        assert_eq!(feed.read(Some(EventId(99)), 5), Err(FeedError::Expired));
        assert!(feed.read(Some(EventId(100)), 5).unwrap().is_empty());
        feed.extend([event(EventId(103)), event(EventId(105))]);
        let ids: Vec<u64> = feed
            .read(None, 10)
            .unwrap()
            .iter()
            .map(|event| event.movement.id.0)
            .collect();
        assert_eq!(ids, [103, 105]);
    }
}
