//! The storage seam: what handlers call to read balances, debit them and
//! settle idempotency keys, whatever keeps them. It only dispatches: each
//! storage ([`Local`] for memory and journal, [`Postgres`]) decides keys,
//! replays and debits its own way, in its own module, speaking the
//! vocabulary of [`crate::seam`]; handlers only render the answer.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::idempotency::Table;
use crate::journal::Journal;
use crate::ledger::Ledger;
use crate::local::Local;
use crate::postgres::Postgres;
use crate::seam::{
    Answer, Consumer, Event, EventId, FeedError, HistoryPage, Order, Refusal, Unavailable,
};
use crate::usuario::Usuario;

/// Where balances, debits and keys are kept.
pub struct Storage {
    backend: Backend,
}

enum Backend {
    Local(Local),
    Postgres(Postgres),
}

impl Storage {
    /// Storage in RAM only: state is lost when the process exits.
    pub fn memory(ledger: Arc<Ledger>, keys: Arc<Table>) -> Self {
        Self::local(Local::memory(ledger, keys))
    }

    /// Durable storage: `journal` was opened over `ledger` and `keys`.
    pub fn journal(ledger: Arc<Ledger>, keys: Arc<Table>, journal: Journal) -> Self {
        Self::local(Local::journal(ledger, keys, journal))
    }

    /// Storage in PostgreSQL.
    pub fn postgres(postgres: Postgres) -> Self {
        Self {
            backend: Backend::Postgres(postgres),
        }
    }

    fn local(local: Local) -> Self {
        Self {
            backend: Backend::Local(local),
        }
    }

    /// The in-process ledger and keys (memory and journal storage).
    pub fn as_local(&self) -> Option<&Local> {
        match &self.backend {
            Backend::Local(local) => Some(local),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL storage, when it is the one.
    pub fn postgres_handle(&self) -> Option<&Postgres> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Postgres(postgres) => Some(postgres),
        }
    }

    /// The journal, when storage is durable and local.
    pub fn journal_handle(&self) -> Option<&Journal> {
        self.as_local().and_then(Local::journal_handle)
    }

    /// The account's durable balance.
    pub async fn read_saldo(&self, usuario: &Usuario) -> Result<u64, Unavailable> {
        match &self.backend {
            Backend::Local(local) => Ok(local.saldo(usuario)),
            Backend::Postgres(postgres) => postgres.saldo(usuario).await,
        }
    }

    /// Settles one debit request: its key first (replay, conflict, in
    /// flight), then the check-and-debit, durable when this returns.
    pub async fn debit(&self, order: Order<'_>) -> Result<Answer, Refusal> {
        match &self.backend {
            Backend::Local(local) => local.debit(order).await,
            Backend::Postgres(postgres) => postgres.debit(order).await,
        }
    }

    /// The account's movements older than `before` (all when `None`),
    /// newest first, at most `limit` (1 ..= [`crate::seam::HISTORY_PAGE_MAX`]).
    pub async fn history(
        &self,
        usuario: &Usuario,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, Unavailable> {
        debug_assert!((1..=crate::seam::HISTORY_PAGE_MAX).contains(&limit));
        match &self.backend {
            Backend::Local(local) => Ok(local.history(usuario, before, limit)),
            Backend::Postgres(postgres) => postgres.history(usuario, before, limit).await,
        }
    }

    /// Events after `after` (from the oldest kept when `None`), in feed
    /// order, at most `limit` (1 ..= [`crate::seam::EVENTS_PAGE_MAX`]); only
    /// durable ones.
    pub async fn events(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Event>, FeedError> {
        debug_assert!((1..=crate::seam::EVENTS_PAGE_MAX).contains(&limit));
        match &self.backend {
            Backend::Local(local) => local.events(after, limit).await,
            Backend::Postgres(postgres) => postgres.events(after, limit).await,
        }
    }

    /// A subscription woken after commits that may have made events
    /// visible: subscribe, then read, then wait on it.
    pub fn feed_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.backend {
            Backend::Local(local) => local.feed_changes(),
            Backend::Postgres(postgres) => postgres.feed_changes(),
        }
    }

    /// The stored position of a named consumer, if it stored one.
    pub async fn consumer_position(
        &self,
        consumer: &Consumer,
    ) -> Result<Option<EventId>, Unavailable> {
        match &self.backend {
            Backend::Local(local) => Ok(local.consumer_position(consumer)),
            Backend::Postgres(postgres) => postgres.consumer_position(consumer).await,
        }
    }

    /// Stores a named consumer's position durably.
    pub async fn store_consumer_position(
        &self,
        consumer: &Consumer,
        id: EventId,
    ) -> Result<(), Unavailable> {
        match &self.backend {
            Backend::Local(local) => local.store_consumer_position(consumer, id).await,
            Backend::Postgres(postgres) => postgres.store_consumer_position(consumer, id).await,
        }
    }

    /// Readiness as last seen, without waiting (for a metrics scrape): the
    /// journal's state, or whether the last database round trip succeeded.
    pub fn was_ready(&self) -> bool {
        match &self.backend {
            Backend::Local(local) => local.is_live(),
            Backend::Postgres(postgres) => postgres.was_ready(),
        }
    }

    /// Accounts stored, when this process holds them.
    pub fn accounts_stored(&self) -> Option<usize> {
        self.as_local().map(Local::accounts_stored)
    }

    /// Idempotency keys remembered, when this process holds them.
    pub fn keys_stored(&self) -> Option<usize> {
        self.as_local().map(|local| local.keys().keys_stored())
    }

    /// Registers this storage's own metric families (SPEC section 7): the
    /// one place a storage adds what only it can measure.
    pub fn register_metrics(&self, registry: &mut Registry) {
        match &self.backend {
            Backend::Local(local) => local.register_metrics(registry),
            Backend::Postgres(postgres) => postgres.stats().register(registry),
        }
    }

    /// Readiness: debits can be applied now.
    pub async fn is_ready(&self) -> bool {
        match &self.backend {
            Backend::Local(local) => local.is_live(),
            Backend::Postgres(postgres) => postgres.is_ready().await,
        }
    }

    /// Liveness: false only when the process itself must be replaced.
    pub fn is_live(&self) -> bool {
        match &self.backend {
            Backend::Local(local) => local.is_live(),
            // An unreachable database never fails liveness (SPEC section 3):
            // only a dead or stuck writer or reader does.
            Backend::Postgres(postgres) => postgres.is_live(),
        }
    }
}
