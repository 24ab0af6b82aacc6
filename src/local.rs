//! Memory and journal storage: balances and keys in this process.
//!
//! - memory: the ledger alone; a debit is applied at once; lost at exit.
//! - journal: a debit is reserved in the ledger and its record queued for
//!   the journal's writer (under the account's lock, so records of one account
//!   are in debit order); its answer waits until the writer has synced the
//!   record and applied it. A refusal made while debits of the account are
//!   still pending waits for them too, so the balance it shows is durable.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::clock;
use crate::feed::Feed;
use crate::idempotency::{Begin, InFlightGuard, Remembered, Scoped, Table};
use crate::journal::{Consumers, Journal, Key, Queued, Record};
use crate::ledger::{self, Ledger, Outcome, Stamp};
use crate::seam::{
    Answer, Consumer, Event, EventId, FeedError, HistoryPage, KeyRequest, Movement, Order, Refusal,
    Unavailable,
};
use crate::usuario::Usuario;

/// An idempotency key in flight in the local table.
struct Keyed<'a> {
    key: Scoped<'a>,
    fingerprint: u64,
    /// Forgets the key if the debit is dropped before it is queued.
    guard: InFlightGuard<'a>,
}

/// Memory and journal storage: balances and keys in this process.
pub struct Local {
    /// Balances; every read is answered from here.
    ledger: Arc<Ledger>,
    /// Remembered idempotency keys.
    keys: Arc<Table>,
    /// Applied debits as events (the journal's, or memory's own).
    feed: Arc<Feed>,
    /// The feed's named consumers (in the data directory, or memory).
    consumers: Arc<Consumers>,
    /// The durable journal; `None` for memory storage.
    journal: Option<Journal>,
}

impl Local {
    /// Storage in RAM only: state is lost when the process exits.
    pub fn memory(ledger: Arc<Ledger>, keys: Arc<Table>) -> Self {
        Self {
            ledger,
            keys,
            feed: Arc::new(Feed::new(EventId(0))),
            consumers: Arc::new(Consumers::in_memory()),
            journal: None,
        }
    }

    /// Durable storage: `journal` was opened over `ledger` and `keys`.
    pub fn journal(ledger: Arc<Ledger>, keys: Arc<Table>, journal: Journal) -> Self {
        Self {
            ledger,
            keys,
            feed: journal.feed().clone(),
            consumers: journal.consumers().clone(),
            journal: Some(journal),
        }
    }

    /// The account's movements older than `before`, newest first: the
    /// kept ones, each `saldo` derived from the current balance and the
    /// newer movements' amounts.
    pub fn history(&self, usuario: &Usuario, before: Option<EventId>, limit: usize) -> HistoryPage {
        let history = self.ledger.history(usuario);
        let mut saldo = history.saldo;
        let mut movements = Vec::with_capacity(limit);
        let mut more = false;
        for stamp in history.stamps.iter().rev() {
            let movement = Movement {
                id: EventId(stamp.id()),
                kind: stamp.kind(),
                monto: stamp.monto(),
                saldo,
                time_ms: stamp.time_ms(),
            };
            saldo += stamp.monto();
            if before.is_some_and(|before| movement.id >= before) {
                continue;
            }
            if movements.len() == limit {
                more = true;
                break;
            }
            movements.push(movement);
        }
        HistoryPage { movements, more }
    }

    /// Durable events after `after`, in commit order: memory storage's
    /// from memory; the journal's from memory or, on a blocking thread,
    /// from its segments.
    pub async fn events(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Event>, FeedError> {
        let Some(journal) = &self.journal else {
            return self.feed.read(after, limit);
        };
        let events = journal.events().clone();
        tokio::task::spawn_blocking(move || events.read(after, limit))
            .await
            .map_err(|_| FeedError::Unavailable)?
    }

    /// Woken after each commit that made events.
    pub fn feed_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.changes()
    }

    /// A named consumer's stored position.
    pub fn consumer_position(&self, consumer: &Consumer) -> Option<EventId> {
        self.consumers.position(consumer)
    }

    /// Stores a named consumer's position (durably, with the journal: on a
    /// blocking thread, as it syncs a file).
    pub async fn store_consumer_position(
        &self,
        consumer: &Consumer,
        id: EventId,
    ) -> Result<(), Unavailable> {
        let consumers = self.consumers.clone();
        let consumer = consumer.clone();
        tokio::task::spawn_blocking(move || consumers.store(&consumer, id))
            .await
            .map_err(|_| Unavailable)?
    }

    /// The account's durable balance.
    pub fn saldo(&self, usuario: &Usuario) -> u64 {
        self.ledger.saldo(usuario)
    }

    /// Accounts stored (seeded or debited).
    pub fn accounts_stored(&self) -> usize {
        self.ledger.accounts_stored()
    }

    /// Registers the journal's metric families, if durable.
    pub fn register_metrics(&self, registry: &mut Registry) {
        if let Some(journal) = &self.journal {
            journal.stats().register(registry);
        }
    }

    /// The idempotency keys.
    pub fn keys(&self) -> &Table {
        &self.keys
    }

    /// The journal, when storage is durable.
    pub fn journal_handle(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Liveness: false once the journal failed or its writer died, which only
    /// a restart (recovery from what is really on disk) can mend.
    pub fn is_live(&self) -> bool {
        self.journal
            .as_ref()
            .is_none_or(|journal| !journal.has_failed())
    }

    /// The key's verdict from the table, then the debit.
    pub async fn debit(&self, order: Order<'_>) -> Result<Answer, Refusal> {
        let keyed = match order.key {
            None => None,
            Some(KeyRequest { key, fingerprint }) => {
                let key = Scoped {
                    principal: order.principal,
                    key,
                };
                match self.keys.begin(key, fingerprint, clock::unix_ms()) {
                    Begin::Started => Some(Keyed {
                        key,
                        fingerprint,
                        guard: InFlightGuard::new(&self.keys, key),
                    }),
                    Begin::Replay(remembered) => return Ok(Answer::Replay(remembered)),
                    Begin::Conflict => return Err(Refusal::KeyConflict),
                    Begin::InFlight => return Err(Refusal::KeyInFlight),
                    Begin::Full => return Err(Refusal::Unavailable),
                }
            }
        };
        let outcome = match &self.journal {
            None => self.debit_in_memory(&order, keyed),
            Some(journal) => self.debit_durably(journal, &order, keyed).await,
        }?;
        Ok(Answer::Fresh(outcome))
    }

    fn debit_in_memory(
        &self,
        order: &Order<'_>,
        keyed: Option<Keyed<'_>>,
    ) -> Result<Outcome, Unavailable> {
        let time_ms = clock::unix_ms();
        let debited = self.ledger.debit(&order.usuario, order.monto, |debit| {
            let id = self.feed.record(|id| Event {
                movement: Movement {
                    id,
                    kind: order.kind,
                    monto: order.monto,
                    saldo: debit.nuevo_saldo,
                    time_ms,
                },
                usuario: order.usuario,
                principal: order.principal.cloned(),
            });
            Stamp::new(id.0, order.kind, order.monto, time_ms)
        });
        let outcome = match debited {
            Ok(debit) => {
                self.feed.committed();
                Outcome::Debited {
                    nuevo_saldo: debit.nuevo_saldo,
                }
            }
            Err(ledger::Error::SaldoInsuficiente {
                saldo_disponible, ..
            }) => Outcome::Refused { saldo_disponible },
            Err(ledger::Error::LedgerFull) => return Err(Unavailable),
        };
        if let Some(keyed) = keyed {
            let remembered = Remembered {
                fingerprint: keyed.fingerprint,
                kind: order.kind,
                usuario: order.usuario,
                monto: order.monto,
                outcome,
                time_ms: clock::unix_ms(),
            };
            self.keys.finish(keyed.key, remembered);
            keyed.guard.disarm();
        }
        Ok(outcome)
    }

    async fn debit_durably(
        &self,
        journal: &Journal,
        order: &Order<'_>,
        keyed: Option<Keyed<'_>>,
    ) -> Result<Outcome, Unavailable> {
        let slot = journal.slot().await?;
        let key = keyed.as_ref().map(|keyed| Key {
            key: keyed.key.key.into(),
            fingerprint: keyed.fingerprint,
        });
        // Read before the shard lock is taken: nothing but the queueing
        // itself happens under it.
        let time_ms = clock::unix_ms();
        let record = |outcome, key| Record {
            kind: order.kind,
            usuario: order.usuario,
            monto: order.monto,
            outcome,
            time_ms,
            principal: order.principal.cloned(),
            key,
        };
        // Moved into the queue by whichever path pushes: the debit's, under
        // the account's lock, or the refusal's, after it.
        let mut parts = Some((slot, key));
        let reserved = self
            .ledger
            .reserve(&order.usuario, order.monto, |debit, account| {
                let outcome = Outcome::Debited {
                    nuevo_saldo: debit.nuevo_saldo,
                };
                // `reserve` calls this at most once, so the parts are here.
                let pushed = parts.take().map_or(Err(Unavailable), |(slot, key)| {
                    let entry = Queued {
                        record: Some(record(outcome, key)),
                        account: Some(account),
                    };
                    journal.push(slot, entry)
                });
                (outcome, account, pushed)
            });
        let (outcome, ticket) = match reserved {
            Ok((outcome, _, Ok(ticket))) => (outcome, ticket),
            Ok((_, account, Err(Unavailable))) => {
                // Not queued: the reservation is released at once.
                self.ledger
                    .settle(account, &order.usuario, order.monto, None);
                return Err(Unavailable);
            }
            Err(ledger::Error::SaldoInsuficiente {
                saldo_disponible,
                pendiente,
            }) => {
                let outcome = Outcome::Refused { saldo_disponible };
                let (slot, key) = parts.take().ok_or(Unavailable)?;
                if key.is_none() && pendiente == 0 {
                    // Nothing to remember and the balance shown is durable.
                    return Ok(outcome);
                }
                // A keyed refusal is remembered durably; a keyless one made
                // while debits are pending waits for them (a barrier).
                let entry = Queued {
                    record: key.is_some().then(|| record(outcome, key)),
                    account: None,
                };
                (outcome, journal.push(slot, entry)?)
            }
            Err(ledger::Error::LedgerFull) => return Err(Unavailable),
        };
        if let Some(keyed) = keyed {
            // Queued: from here the writer settles or abandons the key.
            keyed.guard.disarm();
        }
        journal.wait(ticket).await?;
        Ok(outcome)
    }
}
