//! The ledger: every account's balance (`saldo`) in memory, sharded for
//! concurrency, with the one operation that changes money: check-and-debit.
//!
//! Accounts live in `shard_count` hash tables, each behind its own mutex and
//! padded to its own cache line, so debits of different accounts on different
//! cores rarely touch the same line. A name is hashed once (ahash); that hash
//! picks the shard and finds the slot.
//!
//! Each account has a durable balance (`saldo`) and the sum of its debits
//! still on their way to stable storage (`pendiente`). With durable storage a
//! debit is first reserved (checked against `saldo - pendiente`, added to
//! `pendiente`), then settled once its journal batch is synced: applied to
//! `saldo`, or released. Reads show `saldo` only, so no read shows a debit a
//! crash could take back. Memory storage debits `saldo` directly.
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
    /// Durable balance.
    saldo: u64,
    /// Reserved debits not yet settled; never above `saldo`.
    pendiente: u64,
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
        self.update(usuario, |account| {
            debug_assert_eq!(account.pendiente, 0);
            account.saldo = saldo;
            Ok(())
        })
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

    /// Atomically checks `monto <= saldo` and subtracts it (memory storage
    /// and journal replay: nothing is pending).
    pub fn debit(&self, usuario: &Usuario, monto: u64) -> Result<Debit, Error> {
        self.update(usuario, |account| {
            let debit = check(account, monto)?;
            account.saldo -= monto;
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
        reserved: impl FnOnce(&Debit) -> R,
    ) -> Result<(Debit, R), Error> {
        self.update(usuario, |account| {
            let debit = check(account, monto)?;
            account.pendiente += monto;
            debug_assert!(account.pendiente <= account.saldo);
            Ok((debit, reserved(&debit)))
        })
    }

    /// Ends a reservation: applies it to the durable balance (`applied`) or
    /// releases it.
    pub fn settle(&self, usuario: &Usuario, monto: u64, applied: bool) {
        let settled = self.update(usuario, |account| {
            assert!(
                account.pendiente >= monto,
                "settling more than was reserved"
            );
            account.pendiente -= monto;
            if applied {
                account.saldo -= monto;
            }
            Ok(())
        });
        debug_assert!(settled.is_ok(), "a reserved account is stored");
    }

    /// Calls `visit` with every stored account's name and durable balance,
    /// one shard at a time, each locked only while it is visited.
    pub fn for_each_saldo(&self, mut visit: impl FnMut(&str, u64)) {
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for account in shard.accounts.iter() {
                visit(&account.usuario, account.saldo);
            }
        }
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

    /// Runs `change` on an account under its shard's lock, with one table
    /// lookup. An absent account starts at the opening balance and is stored
    /// only when `change` succeeds and the ledger has room.
    fn update<R>(
        &self,
        usuario: &Usuario,
        change: impl FnOnce(&mut Account) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let (hash, mut shard) = self.shard_for(usuario);
        let name = usuario.as_str();
        let rehash = |account: &Account| self.hasher.hash_one(&*account.usuario);
        match shard
            .accounts
            .entry(hash, |account| &*account.usuario == name, rehash)
        {
            Entry::Occupied(mut entry) => change(entry.get_mut()),
            Entry::Vacant(entry) => {
                // Room is taken before `change` runs: it may enqueue work that
                // must not happen for an account the ledger then refuses.
                if self.accounts_stored.fetch_add(1, Ordering::Relaxed) >= self.accounts_max {
                    self.accounts_stored.fetch_sub(1, Ordering::Relaxed);
                    return Err(Error::LedgerFull);
                }
                // The name is copied to the heap only once the account is kept:
                // refused debits of unknown accounts allocate nothing.
                let mut account = Account {
                    usuario: Box::default(),
                    saldo: self.opening_saldo,
                    pendiente: 0,
                };
                match change(&mut account) {
                    Ok(result) => {
                        account.usuario = name.into();
                        entry.insert(account);
                        Ok(result)
                    }
                    Err(error) => {
                        self.accounts_stored.fetch_sub(1, Ordering::Relaxed);
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
