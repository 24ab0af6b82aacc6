//! Movements and events from the audit trail (SPEC section 9).

use tokio::sync::watch;

use super::Postgres;
use crate::seam::{Consumer, Event, EventId, FeedError, HistoryPage, Unavailable};
use crate::usuario::Usuario;

impl Postgres {
    /// The account's movements older than `before`, newest first.
    pub async fn history(
        &self,
        _usuario: &Usuario,
        _before: Option<EventId>,
        _limit: usize,
    ) -> Result<HistoryPage, Unavailable> {
        Err(Unavailable)
    }

    /// Durable events after `after`, in feed order.
    pub async fn events(
        &self,
        _after: Option<EventId>,
        _limit: usize,
    ) -> Result<Vec<Event>, FeedError> {
        Err(FeedError::Unavailable)
    }

    /// Woken after commits of any instance.
    pub fn feed_changes(&self) -> watch::Receiver<u64> {
        self.shared.commits.subscribe()
    }

    /// A named consumer's stored position.
    pub async fn consumer_position(
        &self,
        _consumer: &Consumer,
    ) -> Result<Option<EventId>, Unavailable> {
        Err(Unavailable)
    }

    /// Stores a named consumer's position.
    pub async fn store_consumer_position(
        &self,
        _consumer: &Consumer,
        _id: EventId,
    ) -> Result<(), Unavailable> {
        Err(Unavailable)
    }
}
