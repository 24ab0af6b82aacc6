//! The shape the ledger and the idempotency table share: entries named by a
//! string, hashed once (ahash, random per process), kept in `shard_count`
//! hashbrown tables each behind its own mutex padded to its own cache line,
//! and bounded across shards (room is taken before an insert and given back
//! when the insert does not happen).
//!
//! One hash per lookup: bits 32.. pick the shard, and the same hash finds the
//! slot (hashbrown uses the low and top bits).

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;

/// Bounded, sharded hash tables of `T`.
pub struct Sharded<T> {
    shards: Box<[CachePadded<Mutex<HashTable<T>>>]>,
    hasher: ahash::RandomState,
    /// Entries stored across shards, counting room taken for an insert.
    stored: AtomicUsize,
    /// The most entries stored.
    stored_max: usize,
}

impl<T> Sharded<T> {
    /// Empty tables: `shard_count` is a power of two.
    pub fn new(shard_count: usize, stored_max: usize) -> Self {
        assert!(
            shard_count.is_power_of_two(),
            "shard count must be a power of two"
        );
        Self {
            shards: (0..shard_count)
                .map(|_| CachePadded::new(Mutex::new(HashTable::new())))
                .collect(),
            hasher: ahash::RandomState::new(),
            stored: AtomicUsize::new(0),
            stored_max,
        }
    }

    /// The one hash of a name, for [`Sharded::lock`] and the table lookup.
    pub fn hash(&self, name: &(impl Hash + ?Sized)) -> u64 {
        self.hasher.hash_one(name)
    }

    /// The shard holding `hash`, locked. A poisoned shard still holds
    /// consistent entries: every change to one is an assignment made after
    /// all checks.
    pub fn lock(&self, hash: u64) -> MutexGuard<'_, HashTable<T>> {
        self.lock_index(self.shard_index(hash))
    }

    /// The index of the shard holding `hash`.
    pub fn shard_index(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.shards.len() - 1)
    }

    /// Shard `index`, locked (to visit every shard in turn).
    pub fn lock_index(&self, index: usize) -> MutexGuard<'_, HashTable<T>> {
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Counts one more entry if there is room.
    pub fn take_room(&self) -> bool {
        if self.stored.fetch_add(1, Ordering::Relaxed) >= self.stored_max {
            self.stored.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts `count` entries fewer: removed, or room taken but not used.
    pub fn give_back(&self, count: usize) {
        let before = self.stored.fetch_sub(count, Ordering::Relaxed);
        debug_assert!(before >= count, "more given back than taken");
    }

    /// Counts an entry stored whatever the bound (restoring what was saved).
    pub fn count_restored(&self) {
        self.stored.fetch_add(1, Ordering::Relaxed);
    }

    /// Entries stored now.
    pub fn stored(&self) -> usize {
        self.stored.load(Ordering::Relaxed)
    }

    /// True when no room is left.
    pub fn is_full(&self) -> bool {
        self.stored() >= self.stored_max
    }

    /// The most entries stored.
    pub fn stored_max(&self) -> usize {
        self.stored_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_bounded_and_given_back() {
        let sharded: Sharded<u8> = Sharded::new(4, 2);
        assert!(sharded.take_room() && sharded.take_room());
        assert!(!sharded.take_room());
        assert!(sharded.is_full());
        sharded.give_back(1);
        assert_eq!(sharded.stored(), 1);
        assert!(sharded.take_room());
    }

    #[test]
    fn one_hash_picks_the_same_shard_every_time() {
        let sharded: Sharded<u64> = Sharded::new(8, 100);
        let hash = sharded.hash("ana");
        assert_eq!(hash, sharded.hash("ana"));
        sharded.lock(hash).insert_unique(hash, 7, |v| *v);
        assert_eq!(sharded.lock(hash).find(hash, |v| *v == 7), Some(&7));
    }
}
