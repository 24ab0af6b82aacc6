//! The ledger: every account's balance (`saldo`) in memory, sharded for
//! concurrency, with the one operation that changes money: check-and-debit.
//!
//! Accounts live in `shard_count` hash tables, each behind its own mutex and
//! padded to its own cache line, so debits of different accounts on different
//! cores rarely touch the same line. A name is hashed once (ahash); that hash
//! picks the shard and finds the slot.
//!
//! Invariants:
//! - A balance is never negative: a debit is applied only when `monto <= saldo`,
//!   checked and applied under the shard's lock.
//! - Reading never writes: an account absent from the tables has the opening
//!   balance, and only its first debit inserts it.
//! - The number of stored accounts never exceeds `accounts_max`.
//!
//! The ledger does no I/O and never blocks on anything but a shard lock held for
//! a few hundred nanoseconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::usuario::Usuario;

/// The most shards a ledger may have.
pub const SHARDS_MAX: usize = 1 << 16;

/// The largest opening or seeded balance: 2^53 − 1, the largest integer every
/// JSON client (JavaScript included) reads exactly.
pub const SALDO_MAX: u64 = (1 << 53) - 1;

/// Why a debit was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `monto` exceeds the balance; nothing changed.
    #[error("insufficient balance: {saldo_disponible} available")]
    SaldoInsuficiente {
        /// The balance at the moment of the check.
        saldo_disponible: u64,
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
    /// The account tables; `shards.len()` is a power of two.
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Keyed hasher for account names, random per process.
    hasher: ahash::RandomState,
    /// See [`Limits::opening_saldo`].
    opening_saldo: u64,
    /// See [`Limits::accounts_max`].
    accounts_max: usize,
    /// Accounts stored across all shards; only grows.
    accounts_stored: AtomicUsize,
}

#[derive(Default)]
struct Shard {
    accounts: HashTable<Account>,
}

struct Account {
    usuario: Box<str>,
    saldo: u64,
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
        let shards = (0..limits.shard_count)
            .map(|_| CachePadded::new(Mutex::new(Shard::default())))
            .collect();
        Self {
            shards,
            hasher: ahash::RandomState::new(),
            opening_saldo: limits.opening_saldo,
            accounts_max: limits.accounts_max,
            accounts_stored: AtomicUsize::new(0),
        }
    }

    /// Sets an account's balance, as seeding a fresh data directory does.
    pub fn seed(&self, usuario: &Usuario, saldo: u64) -> Result<(), Error> {
        assert!(saldo <= SALDO_MAX);
        self.update(usuario, |_| Ok(saldo)).map(|_| ())
    }

    /// The account's balance (the opening balance if it was never stored).
    pub fn saldo(&self, usuario: &Usuario) -> u64 {
        let (hash, shard) = self.shard_for(usuario);
        let name = usuario.as_str();
        shard
            .accounts
            .find(hash, |account| &*account.usuario == name)
            .map_or(self.opening_saldo, |account| account.saldo)
    }

    /// Atomically checks `monto <= saldo` and subtracts it.
    pub fn debit(&self, usuario: &Usuario, monto: u64) -> Result<Debit, Error> {
        debug_assert!(monto > 0);
        let debit = self.update(usuario, |saldo_disponible| {
            saldo_disponible
                .checked_sub(monto)
                .ok_or(Error::SaldoInsuficiente { saldo_disponible })
        })?;
        debug_assert_eq!(debit.saldo_anterior - debit.nuevo_saldo, monto);
        Ok(debit)
    }

    /// Number of accounts stored (seeded or debited at least once).
    pub fn accounts_stored(&self) -> usize {
        self.accounts_stored.load(Ordering::Relaxed)
    }

    /// The one place a name is hashed: the hash picks the shard (bits 32..)
    /// and is reused for the table lookup (which uses the low and top bits).
    fn shard_for(&self, usuario: &Usuario) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(usuario.as_str());
        let index = (hash >> 32) as usize & (self.shards.len() - 1);
        // A poisoned shard still holds consistent balances: every write to an
        // account is a single assignment made after all checks.
        let shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (hash, shard)
    }

    /// Replaces an account's balance with `next(saldo)` under its shard's lock,
    /// with one table lookup. An absent account starts at the opening balance
    /// and is stored only when `next` succeeds and the ledger has room.
    fn update(
        &self,
        usuario: &Usuario,
        next: impl FnOnce(u64) -> Result<u64, Error>,
    ) -> Result<Debit, Error> {
        let (hash, mut shard) = self.shard_for(usuario);
        let name = usuario.as_str();
        let rehash = |account: &Account| self.hasher.hash_one(&*account.usuario);
        match shard
            .accounts
            .entry(hash, |account| &*account.usuario == name, rehash)
        {
            Entry::Occupied(mut entry) => {
                let saldo = &mut entry.get_mut().saldo;
                let saldo_anterior = *saldo;
                *saldo = next(saldo_anterior)?;
                Ok(Debit {
                    saldo_anterior,
                    nuevo_saldo: *saldo,
                })
            }
            Entry::Vacant(entry) => {
                let saldo_anterior = self.opening_saldo;
                let nuevo_saldo = next(saldo_anterior)?;
                if self.accounts_stored.fetch_add(1, Ordering::Relaxed) >= self.accounts_max {
                    self.accounts_stored.fetch_sub(1, Ordering::Relaxed);
                    return Err(Error::LedgerFull);
                }
                entry.insert(Account {
                    usuario: name.into(),
                    saldo: nuevo_saldo,
                });
                Ok(Debit {
                    saldo_anterior,
                    nuevo_saldo,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
