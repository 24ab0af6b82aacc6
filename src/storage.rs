//! The storage seam: what handlers call to read balances, debit them and
//! remember idempotency keys, whatever keeps them.
//!
//! - `memory`: the ledger alone; a debit is applied at once; lost at exit.
//! - `journal`: a debit is reserved in the ledger and its record queued for
//!   the journal's writer (under the account's lock, so records of one account
//!   are in debit order); its answer waits until the writer has synced the
//!   record and applied it. A refusal made while debits of the account are
//!   still pending waits for them too, so the balance it shows is durable.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::clock;
use crate::idempotency::{InFlightGuard, Remembered, Table};
use crate::journal::{Journal, Key, Queued, Record, Unavailable};
use crate::ledger::{self, DebitKind, Ledger, Outcome};
use crate::usuario::Usuario;

/// A validated debit request.
pub struct Order<'a> {
    /// The endpoint.
    pub kind: DebitKind,
    /// The account.
    pub usuario: Usuario,
    /// The amount, 1 ..= 10^12.
    pub monto: u64,
    /// Its idempotency key, already marked in flight.
    pub key: Option<Keyed<'a>>,
}

/// An idempotency key in flight.
pub struct Keyed<'a> {
    /// The key.
    pub key: &'a str,
    /// The request's fingerprint.
    pub fingerprint: u64,
    /// Forgets the key if the debit is dropped before it is queued.
    pub guard: InFlightGuard<'a>,
}

/// Balances, their debits and the idempotency keys.
pub struct Storage {
    /// Balances; every read is answered from here.
    ledger: Arc<Ledger>,
    /// Remembered idempotency keys.
    keys: Arc<Table>,
    /// The durable journal; `None` for memory storage.
    journal: Option<Journal>,
}

impl Storage {
    /// Storage in RAM only: state is lost when the process exits.
    pub fn memory(ledger: Arc<Ledger>, keys: Arc<Table>) -> Self {
        Self {
            ledger,
            keys,
            journal: None,
        }
    }

    /// Durable storage: `journal` was opened over `ledger` and `keys`.
    pub fn journal(ledger: Arc<Ledger>, keys: Arc<Table>, journal: Journal) -> Self {
        Self {
            ledger,
            keys,
            journal: Some(journal),
        }
    }

    /// The account's durable balance.
    pub fn saldo(&self, usuario: &Usuario) -> u64 {
        self.ledger.saldo(usuario)
    }

    /// Accounts stored (seeded or debited).
    pub fn accounts_stored(&self) -> usize {
        self.ledger.accounts_stored()
    }

    /// Registers this storage's own metric families (SPEC section 7): the
    /// one place a storage adds what only it can measure.
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

    /// Readiness: debits can be applied now.
    pub fn is_ready(&self) -> bool {
        self.is_live()
    }

    /// Liveness: false once the journal failed or its writer died, which only
    /// a restart (recovery from what is really on disk) can mend.
    pub fn is_live(&self) -> bool {
        self.journal
            .as_ref()
            .is_none_or(|journal| !journal.has_failed())
    }

    /// Applies one check-and-debit; its outcome is durable (with the journal)
    /// when this returns. `Unavailable`: nothing was applied.
    pub async fn debit(&self, order: Order<'_>) -> Result<Outcome, Unavailable> {
        match &self.journal {
            None => self.debit_in_memory(order),
            Some(journal) => self.debit_durably(journal, order).await,
        }
    }

    fn debit_in_memory(&self, order: Order<'_>) -> Result<Outcome, Unavailable> {
        let outcome = match self.ledger.debit(&order.usuario, order.monto) {
            Ok(debit) => Outcome::Debited {
                nuevo_saldo: debit.nuevo_saldo,
            },
            Err(ledger::Error::SaldoInsuficiente {
                saldo_disponible, ..
            }) => Outcome::Refused { saldo_disponible },
            Err(ledger::Error::LedgerFull) => return Err(Unavailable),
        };
        if let Some(keyed) = order.key {
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
        order: Order<'_>,
    ) -> Result<Outcome, Unavailable> {
        let slot = journal.slot().await?;
        let key = order.key.as_ref().map(|keyed| Key {
            key: keyed.key.into(),
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
        if let Some(keyed) = order.key {
            // Queued: from here the writer settles or abandons the key.
            keyed.guard.disarm();
        }
        journal.wait(ticket).await?;
        Ok(outcome)
    }
}
