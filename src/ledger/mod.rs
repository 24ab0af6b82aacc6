//! The ledger: every account's balance (`saldo`) in memory, sharded for
//! concurrency, with the one operation that changes money: check-and-debit.
//!
//! Accounts live in `shard_count` hash tables, each behind its own mutex and
//! padded to its own cache line, so debits of accounts of different shards on
//! different cores touch no common line. Accounts of one shard share its lock's
//! line: two cores debiting them in turn pass it back and forth (the
//! `distinct_accounts_shared_shards_threads` bench shows the cost). A name is
//! hashed once (ahash); that hash picks the shard and finds the slot.
//!
//! Each account has a durable balance (`saldo`) and the sum of its debits
//! still on their way to stable storage (`pendiente`). With durable storage a
//! debit is first reserved (checked against `saldo - pendiente`, added to
//! `pendiente`), then settled once its journal batch is synced: applied to
//! `saldo`, or released. Reads show `saldo` only, so no read shows a debit a
//! crash could take back. Memory storage debits `saldo` directly.
//!
//! Each account also keeps the number of the last journal record applied to
//! its `saldo` (`last_record`): a snapshot taken while debits go on stores it
//! beside the balance, so recovery replays exactly the records the snapshot
//! does not hold yet, account by account.
//!
//! Invariants:
//! - A balance is never negative: `pendiente <= saldo` always, and a debit is
//!   reserved only when `monto <= saldo - pendiente`, under the shard's lock.
//! - Reading never writes: an account absent from the tables has the opening
//!   balance, and only its first debit inserts it.
//! - The number of stored accounts never exceeds `accounts_max`.
//!
//! The ledger does no I/O and never blocks on anything but a shard lock held for
//! a few hundred nanoseconds.

use std::collections::VecDeque;

use hashbrown::hash_table::Entry;

use crate::sharded::Sharded;
use crate::usuario::Usuario;

mod chunks;

pub use chunks::{Chunk, ShardCursor};

/// The most shards a ledger may have.
pub const SHARDS_MAX: usize = 1 << 16;

/// The largest `monto` of one debit: 10^12 CLP.
pub const MONTO_MAX: u64 = 1_000_000_000_000;

/// The most movements `--history-per-account` may keep per account.
pub const HISTORY_PER_ACCOUNT_MAX: usize = 1000;

/// The largest opening or seeded balance: 2^53 − 1, the largest integer every
/// JSON client (JavaScript included) reads exactly.
pub const SALDO_MAX: u64 = (1 << 53) - 1;

/// Why a debit was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `monto` exceeds the balance; nothing changed.
    #[error("insufficient balance: {saldo_disponible} available")]
    SaldoInsuficiente {
        /// The balance net of pending debits at the moment of the check.
        saldo_disponible: u64,
        /// Debits of this account not yet durable when it was checked.
        pendiente: u64,
    },
    /// The debit would add an account past `accounts_max`; nothing changed.
    #[error("the ledger holds its maximum number of accounts")]
    LedgerFull,
}

/// The shape of a ledger, fixed at construction.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Number of shards: a power of two, 1 ..= [`SHARDS_MAX`].
    pub shard_count: usize,
    /// Balance of every account that was never debited nor seeded.
    pub opening_saldo: u64,
    /// Most accounts the ledger stores (seeded plus debited).
    pub accounts_max: usize,
    /// The newest movements each account keeps, 0 ..=
    /// [`HISTORY_PER_ACCOUNT_MAX`].
    pub history_per_account: usize,
}

/// What a debit request asked for: `pago` and `retiro` are the same
/// check-and-debit under two names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebitKind {
    /// `POST /pago`.
    Pago,
    /// `POST /retiro`.
    Retiro,
}

/// How a check-and-debit ended: the two answers worth remembering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; the account's balance after it.
    Debited {
        /// Balance after the debit.
        nuevo_saldo: u64,
    },
    /// Refused for insufficient balance; nothing changed.
    Refused {
        /// Balance available when refused.
        saldo_disponible: u64,
    },
}

/// An applied debit as its account's history keeps it, packed in 24 bytes:
/// the balance after it is derived from the account's current balance and
/// the newer movements' amounts, so it is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Its event id (the journal's record number, or the memory storage's
    /// counter).
    id: u64,
    /// When it was applied, in ms since the Unix epoch.
    time_ms: u64,
    /// The amount (at most [`MONTO_MAX`], under 2^40), and the kind in the
    /// top bit.
    monto_kind: u64,
}

impl Stamp {
    const RETIRO_BIT: u64 = 1 << 63;

    /// Packs a movement.
    pub fn new(id: u64, kind: DebitKind, monto: u64, time_ms: u64) -> Self {
        assert!(monto <= MONTO_MAX);
        let kind_bit = match kind {
            DebitKind::Pago => 0,
            DebitKind::Retiro => Self::RETIRO_BIT,
        };
        Self {
            id,
            time_ms,
            monto_kind: monto | kind_bit,
        }
    }

    /// Its three words as a snapshot stores them: id, time, amount with
    /// the kind.
    pub fn words(self) -> [u64; 3] {
        [self.id, self.time_ms, self.monto_kind]
    }

    /// A movement from its three [`Stamp::words`], if the amount is in range.
    pub fn from_words([id, time_ms, monto_kind]: [u64; 3]) -> Option<Self> {
        let monto = monto_kind & !Self::RETIRO_BIT;
        (1..=MONTO_MAX).contains(&monto).then_some(Self {
            id,
            time_ms,
            monto_kind,
        })
    }

    /// Its event id.
    pub fn id(self) -> u64 {
        self.id
    }

    /// When it was applied, in ms since the Unix epoch.
    pub fn time_ms(self) -> u64 {
        self.time_ms
    }

    /// The amount debited.
    pub fn monto(self) -> u64 {
        self.monto_kind & !Self::RETIRO_BIT
    }

    /// The endpoint that made it.
    pub fn kind(self) -> DebitKind {
        if self.monto_kind & Self::RETIRO_BIT == 0 {
            DebitKind::Pago
        } else {
            DebitKind::Retiro
        }
    }
}

/// An account's kept movements with the balance after the newest, as
/// stored: what a history page is computed from, under the account's lock.
#[derive(Debug, Clone, Copy)]
pub struct History<'a> {
    /// The durable balance, which the newest movement left.
    pub saldo: u64,
    /// Oldest first; `None`: the account never moved.
    pub stamps: Option<&'a VecDeque<Stamp>>,
}

impl History<'_> {
    /// The kept movements, newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = Stamp> + '_ {
        self.stamps.into_iter().flatten().rev().copied()
    }
}

/// A successful debit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debit {
    /// The balance before the debit.
    pub saldo_anterior: u64,
    /// The balance after the debit.
    pub nuevo_saldo: u64,
}

/// All balances. Shared by reference between every request.
pub struct Ledger {
    /// The accounts, bounded by [`Limits::accounts_max`]; only grows.
    accounts: Sharded<Account>,
    /// See [`Limits::opening_saldo`].
    opening_saldo: u64,
    /// See [`Limits::history_per_account`].
    history_per_account: usize,
}

struct Account {
    usuario: Box<str>,
    /// Durable balance.
    saldo: u64,
    /// Reserved debits not yet settled; never above `saldo`.
    pendiente: u64,
    /// The journal record that last changed `saldo` (0: none).
    last_record: u64,
    /// The newest movements, oldest first, at most
    /// [`Limits::history_per_account`]; boxed so an account that never
    /// moved pays one pointer.
    history: Option<Box<Kept>>,
}

/// An account's kept movements, oldest first.
#[derive(Debug, Default)]
struct Kept(VecDeque<Stamp>);

impl Account {
    /// Keeps `stamp` as the newest movement, forgetting the oldest beyond
    /// `kept_max`.
    fn remember(&mut self, stamp: Stamp, kept_max: usize) {
        if kept_max == 0 {
            return;
        }
        let Kept(history) = &mut **self.history.get_or_insert_with(Box::default);
        debug_assert!(history.back().is_none_or(|newest| newest.id < stamp.id));
        if history.len() == kept_max {
            history.pop_front();
        }
        history.push_back(stamp);
    }
}

/// Finds a reserved account again without hashing its name twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountRef {
    hash: u64,
}

/// One account as a snapshot stores it.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// The name.
    pub usuario: &'a str,
    /// The durable balance.
    pub saldo: u64,
    /// The journal record that last changed it (0: none).
    pub last_record: u64,
    /// Its kept movements, oldest first (`None`: none).
    pub history: Option<&'a VecDeque<Stamp>>,
}

/// Why a journal record cannot be replayed over the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The replayed debit does not leave the balance the record says.
    #[error("debit of {monto} leaves {usuario} at {found} but the journal says {recorded}")]
    Disagrees {
        /// The account.
        usuario: Usuario,
        /// The amount.
        monto: u64,
        /// What the replay computed.
        found: u64,
        /// What the record says.
        recorded: u64,
    },
    /// The debit exceeds the balance.
    #[error("debit of {monto} from {usuario} exceeds its balance of {saldo}")]
    Exceeds {
        /// The account.
        usuario: Usuario,
        /// The amount.
        monto: u64,
        /// The balance.
        saldo: u64,
    },
    /// The record would store one account more than `--max-accounts` allows.
    #[error(
        "the data directory holds more accounts than --max-accounts ({accounts_max}) allows: raise it"
    )]
    TooManyAccounts {
        /// The configured limit.
        accounts_max: usize,
    },
}

impl Ledger {
    /// An empty ledger: every account at the opening balance.
    pub fn new(limits: Limits) -> Self {
        assert!(
            limits.shard_count.is_power_of_two(),
            "shard count must be a power of two"
        );
        assert!(limits.shard_count <= SHARDS_MAX);
        assert!(limits.opening_saldo <= SALDO_MAX);
        assert!(limits.history_per_account <= HISTORY_PER_ACCOUNT_MAX);
        Self {
            accounts: Sharded::new(limits.shard_count, limits.accounts_max),
            opening_saldo: limits.opening_saldo,
            history_per_account: limits.history_per_account,
        }
    }

    /// Sets an account's balance, as seeding a fresh data directory does.
    pub fn seed(&self, usuario: &Usuario, saldo: u64) -> Result<(), Error> {
        self.restore(usuario, saldo, 0, &[])
    }

    /// Sets an account as a snapshot stored it: balance, last record and
    /// kept movements (oldest first; the newest `history_per_account` of
    /// them are kept).
    pub fn restore(
        &self,
        usuario: &Usuario,
        saldo: u64,
        last_record: u64,
        history: &[Stamp],
    ) -> Result<(), Error> {
        assert!(saldo <= SALDO_MAX);
        let kept_max = self.history_per_account;
        self.update(usuario, |account| {
            debug_assert_eq!(account.pendiente, 0);
            account.saldo = saldo;
            account.last_record = last_record;
            account.history = None;
            for stamp in history {
                account.remember(*stamp, kept_max);
            }
            Ok(())
        })
    }

    /// Replays journal record `stamp.id()` (a debit that left
    /// `nuevo_saldo`), unless the account already holds it (from a snapshot
    /// taken after it).
    pub fn replay(
        &self,
        usuario: &Usuario,
        stamp: Stamp,
        nuevo_saldo: u64,
    ) -> Result<(), ReplayError> {
        let (record, monto) = (stamp.id(), stamp.monto());
        let kept_max = self.history_per_account;
        let replayed = self.update(usuario, |account| {
            if record <= account.last_record {
                return Ok(Ok(()));
            }
            let Some(found) = account.saldo.checked_sub(monto) else {
                return Ok(Err(ReplayError::Exceeds {
                    usuario: *usuario,
                    monto,
                    saldo: account.saldo,
                }));
            };
            if found != nuevo_saldo {
                return Ok(Err(ReplayError::Disagrees {
                    usuario: *usuario,
                    monto,
                    found,
                    recorded: nuevo_saldo,
                }));
            }
            account.saldo = found;
            account.last_record = record;
            account.remember(stamp, kept_max);
            Ok(Ok(()))
        });
        match replayed {
            Ok(result) => result,
            Err(_) => Err(ReplayError::TooManyAccounts {
                accounts_max: self.accounts_max(),
            }),
        }
    }

    /// The account's balance (the opening balance if it was never stored).
    pub fn saldo(&self, usuario: &Usuario) -> u64 {
        let name = usuario.as_str();
        let hash = self.accounts.hash(name);
        self.accounts
            .lock(hash)
            .find(hash, |account| &*account.usuario == name)
            .map_or(self.opening_saldo, |account| account.saldo)
    }

    /// Atomically checks `monto <= saldo` and subtracts it (memory storage:
    /// nothing is pending), then, still under the shard's lock, calls
    /// `applied`, whose stamp the account's history keeps: so whatever it
    /// records is ordered like the debits of this account.
    pub fn debit(
        &self,
        usuario: &Usuario,
        monto: u64,
        applied: impl FnOnce(Debit) -> Stamp,
    ) -> Result<Debit, Error> {
        let kept_max = self.history_per_account;
        self.update(usuario, |account| {
            let debit = check(account, monto)?;
            account.saldo -= monto;
            let stamp = applied(debit);
            debug_assert_eq!(stamp.monto(), monto);
            account.remember(stamp, kept_max);
            Ok(debit)
        })
    }

    /// Atomically checks `monto <= saldo - pendiente` and reserves it, then
    /// calls `reserved` still under the shard's lock, so that whatever it
    /// enqueues is ordered like the debits of this account.
    pub fn reserve<R>(
        &self,
        usuario: &Usuario,
        monto: u64,
        reserved: impl FnOnce(Debit, AccountRef) -> R,
    ) -> Result<R, Error> {
        let hash = self.accounts.hash(usuario.as_str());
        self.update_hashed(hash, usuario, |account| {
            let debit = check(account, monto)?;
            account.pendiente += monto;
            debug_assert!(account.pendiente <= account.saldo);
            Ok(reserved(debit, AccountRef { hash }))
        })
    }

    /// Ends a reservation of `monto` on a stored account: applies it to the
    /// durable balance as journal record `applied.id()` (kept in its
    /// history), or releases it (`None`).
    /// Only looks up: a reserved account is stored, so nothing is inserted.
    ///
    /// # Panics
    /// If the account is not stored or holds less than `monto` in reserve: a
    /// broken invariant, which stops the journal's writer (and so marks the
    /// journal failed) rather than apply a wrong balance.
    pub fn settle(
        &self,
        account: AccountRef,
        usuario: &Usuario,
        monto: u64,
        applied: Option<Stamp>,
    ) {
        let mut shard = self.accounts.lock(account.hash);
        let name = usuario.as_str();
        let stored = shard
            .find_mut(account.hash, |stored| &*stored.usuario == name)
            .expect("a reserved account is stored");
        assert!(stored.pendiente >= monto, "settling more than was reserved");
        stored.pendiente -= monto;
        if let Some(stamp) = applied {
            assert!(
                stamp.id() > stored.last_record,
                "records settle in journal order"
            );
            debug_assert_eq!(stamp.monto(), monto);
            stored.saldo -= monto;
            stored.last_record = stamp.id();
            stored.remember(stamp, self.history_per_account);
        }
    }

    /// Calls `read` with the account's history under its shard's lock (so
    /// nothing is copied but what `read` keeps).
    pub fn history<R>(&self, usuario: &Usuario, read: impl FnOnce(History<'_>) -> R) -> R {
        let name = usuario.as_str();
        let hash = self.accounts.hash(name);
        let shard = self.accounts.lock(hash);
        let history = match shard.find(hash, |account| &*account.usuario == name) {
            None => History {
                saldo: self.opening_saldo,
                stamps: None,
            },
            Some(account) => History {
                saldo: account.saldo,
                stamps: account.history.as_deref().map(|Kept(history)| history),
            },
        };
        read(history)
    }

    /// The index of the shard holding `usuario`: benches and tests give
    /// threads accounts of disjoint shards with it.
    pub fn shard_of(&self, usuario: &Usuario) -> usize {
        self.accounts
            .shard_index(self.accounts.hash(usuario.as_str()))
    }

    /// Number of shards, for [`Ledger::visit_chunk`].
    pub fn shard_count(&self) -> usize {
        self.accounts.shard_count()
    }

    /// The most accounts the ledger stores.
    pub fn accounts_max(&self) -> usize {
        self.accounts.stored_max()
    }

    /// Number of accounts stored (seeded or debited at least once).
    pub fn accounts_stored(&self) -> usize {
        self.accounts.stored()
    }

    /// Runs `change` on an account under its shard's lock, with one table
    /// lookup. An absent account starts at the opening balance and is stored
    /// only when `change` succeeds and the ledger has room.
    fn update<R>(
        &self,
        usuario: &Usuario,
        change: impl FnOnce(&mut Account) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.update_hashed(self.accounts.hash(usuario.as_str()), usuario, change)
    }

    fn update_hashed<R>(
        &self,
        hash: u64,
        usuario: &Usuario,
        change: impl FnOnce(&mut Account) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut shard = self.accounts.lock(hash);
        let name = usuario.as_str();
        let rehash = |account: &Account| self.accounts.hash(&account.usuario);
        match shard.entry(hash, |account| &*account.usuario == name, rehash) {
            Entry::Occupied(mut entry) => change(entry.get_mut()),
            Entry::Vacant(entry) => {
                // Room is taken before `change` runs: it may enqueue work that
                // must not happen for an account the ledger then refuses.
                if !self.accounts.take_room() {
                    return Err(Error::LedgerFull);
                }
                // The name is copied to the heap only once the account is kept:
                // refused debits of unknown accounts allocate nothing.
                let mut account = Account {
                    usuario: Box::default(),
                    saldo: self.opening_saldo,
                    pendiente: 0,
                    last_record: 0,
                    history: None,
                };
                match change(&mut account) {
                    Ok(result) => {
                        account.usuario = name.into();
                        entry.insert(account);
                        Ok(result)
                    }
                    Err(error) => {
                        self.accounts.give_back(1);
                        Err(error)
                    }
                }
            }
        }
    }
}

/// The check of check-and-debit: `monto` against the balance net of pending
/// debits.
fn check(account: &Account, monto: u64) -> Result<Debit, Error> {
    debug_assert!(monto > 0);
    debug_assert!(account.pendiente <= account.saldo);
    let saldo_anterior = account.saldo - account.pendiente;
    let nuevo_saldo = saldo_anterior
        .checked_sub(monto)
        .ok_or(Error::SaldoInsuficiente {
            saldo_disponible: saldo_anterior,
            pendiente: account.pendiente,
        })?;
    Ok(Debit {
        saldo_anterior,
        nuevo_saldo,
    })
}

#[cfg(test)]
mod tests;
