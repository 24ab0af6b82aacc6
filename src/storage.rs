//! The storage seam: what handlers call to read balances, debit them and
//! settle idempotency keys, whatever keeps them. Each storage decides keys,
//! replays and debits its own way; handlers only render the answer.
//!
//! - `memory`: the ledger alone; a debit is applied at once; lost at exit.
//! - `journal`: a debit is reserved in the ledger and its record queued for
//!   the journal's writer (under the account's lock, so records of one account
//!   are in debit order); its answer waits until the writer has synced the
//!   record and applied it. A refusal made while debits of the account are
//!   still pending waits for them too, so the balance it shows is durable.
//! - `postgres`: balances, keys and the audit trail live in the database
//!   ([`crate::postgres`]); nothing is answered from this process's memory.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::clock;
use crate::idempotency::{Begin, InFlightGuard, Remembered, Scoped, Table};
use crate::journal::{Journal, Key, Queued, Record, Unavailable};
use crate::ledger::{self, DebitKind, Ledger, Outcome};
use crate::postgres::Postgres;
use crate::principal::Principal;
use crate::usuario::Usuario;

/// A validated debit request.
pub struct Order<'a> {
    /// The endpoint.
    pub kind: DebitKind,
    /// The account.
    pub usuario: Usuario,
    /// The amount, 1 ..= 10^12.
    pub monto: u64,
    /// Who asks (recorded with the debit, and the scope of its key);
    /// `None` without authentication.
    pub principal: Option<&'a Principal>,
    /// Its idempotency key and the request's fingerprint, if it sent one.
    pub key: Option<KeyRequest<'a>>,
}

/// An `Idempotency-Key` as a request sent it.
#[derive(Debug, Clone, Copy)]
pub struct KeyRequest<'a> {
    /// The key.
    pub key: &'a str,
    /// The request's fingerprint.
    pub fingerprint: u64,
}

/// How a debit request was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Decided now: debited or refused.
    Fresh(Outcome),
    /// Its key was settled before with the same request: answer that again.
    Replay(Remembered),
}

/// Why a debit request got no outcome; nothing was applied for it, except
/// [`Refusal::Unavailable`] after a commit whose outcome could not be learned
/// (SPEC section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The storage cannot take the debit now: 503.
    Unavailable,
    /// Its key was used before with a different request: 422.
    KeyConflict,
    /// Its key's first request is still being processed: 409.
    KeyInFlight,
}

impl From<Unavailable> for Refusal {
    fn from(_: Unavailable) -> Self {
        Self::Unavailable
    }
}

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
        Self::local(Local {
            ledger,
            keys,
            journal: None,
        })
    }

    /// Durable storage: `journal` was opened over `ledger` and `keys`.
    pub fn journal(ledger: Arc<Ledger>, keys: Arc<Table>, journal: Journal) -> Self {
        Self::local(Local {
            ledger,
            keys,
            journal: Some(journal),
        })
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
            Backend::Local(local) => local.debit_request(order).await,
            Backend::Postgres(postgres) => postgres.debit(order).await,
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
    /// The durable journal; `None` for memory storage.
    journal: Option<Journal>,
}

impl Local {
    /// The account's durable balance.
    pub fn saldo(&self, usuario: &Usuario) -> u64 {
        self.ledger.saldo(usuario)
    }

    /// Accounts stored (seeded or debited).
    pub fn accounts_stored(&self) -> usize {
        self.ledger.accounts_stored()
    }

    /// Registers the journal's metric families, if durable.
    fn register_metrics(&self, registry: &mut Registry) {
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
    async fn debit_request(&self, order: Order<'_>) -> Result<Answer, Refusal> {
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
        let outcome = match self.ledger.debit(&order.usuario, order.monto) {
            Ok(debit) => Outcome::Debited {
                nuevo_saldo: debit.nuevo_saldo,
            },
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
