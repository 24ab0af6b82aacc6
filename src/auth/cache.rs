//! Successful verifications, remembered so steady traffic pays one signature
//! check per token per instance.
//!
//! A token is found by a 64-bit keyed hash (ahash, seeded at random per
//! process: a client that cannot know the seed cannot aim tokens at one set
//! to evict others' entries), and a hit is confirmed by comparing the whole
//! token, so no collision can ever pass for another token. The cache is a
//! fixed array of sets of [`WAYS`] entries (entries are bounded at start and
//! never grow; each holds its token, at most [`super::TOKEN_BYTES_MAX`]
//! bytes); an entry is valid until its token's `exp`, and entries made with a
//! key that left the JWKS are dropped ([`Cache::retain_keys`]). Failures are
//! not cached: a flood of bad tokens leaves no trace here.

use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_utils::CachePadded;

use super::Access;
use super::keys::{Key, KeySet};

/// Sets in the cache; a power of two.
pub const SETS: usize = 4096;

/// Entries per set.
pub const WAYS: usize = 4;

/// One remembered verification; the fields a hit reads come first.
struct Entry {
    /// The token's hash in this cache.
    hash: u64,
    /// The token's `exp`, in seconds since the Unix epoch.
    expires_s: u64,
    /// The token itself, compared in full on a hit.
    token: Box<str>,
    /// What it grants, inline: a hit clones it without another pointer.
    access: Access,
    /// The key that verified it.
    key: Arc<Key>,
}

/// The entries one hash may occupy.
type Set = Mutex<[Option<Entry>; WAYS]>;

/// Remembered verifications, bounded at [`SETS`] × [`WAYS`].
pub struct Cache {
    hasher: ahash::RandomState,
    sets: Box<[CachePadded<Set>]>,
}

/// A verification to remember.
pub struct Verified<'a> {
    /// The token, as sent.
    pub token: &'a str,
    /// Its hash ([`Cache::hash`]).
    pub hash: u64,
    /// What it grants.
    pub access: Access,
    /// The key that verified it.
    pub key: Arc<Key>,
    /// Its `exp`, in seconds since the Unix epoch.
    pub expires_s: u64,
}

impl Default for Cache {
    /// An empty cache with a fresh random seed.
    fn default() -> Self {
        const { assert!(SETS.is_power_of_two()) };
        Self {
            hasher: ahash::RandomState::new(),
            sets: (0..SETS)
                .map(|_| CachePadded::new(Mutex::new(Default::default())))
                .collect(),
        }
    }
}

impl Cache {
    /// The token's hash in this cache.
    pub fn hash(&self, token: &str) -> u64 {
        self.hasher.hash_one(token.as_bytes())
    }

    fn set(&self, hash: u64) -> &Set {
        &self.sets[hash as usize & (SETS - 1)]
    }

    /// The remembered access of `token` (whose hash is `hash`), while its
    /// `exp` is not past.
    pub fn get(&self, hash: u64, token: &str, now_s: u64) -> Option<Access> {
        let set = self
            .set(hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.iter()
            .flatten()
            .find(|entry| entry.hash == hash && now_s < entry.expires_s && *entry.token == *token)
            .map(|entry| entry.access.clone())
    }

    /// Remembers a verification; replaces the same token's entry or an
    /// expired one, else the one expiring first.
    pub fn insert(&self, verified: Verified<'_>, now_s: u64) {
        let mut set = self
            .set(verified.hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rank = |slot: &Option<Entry>| match slot {
            None => 0,
            Some(entry) if entry.expires_s <= now_s => 0,
            Some(entry) if entry.hash == verified.hash && *entry.token == *verified.token => 0,
            Some(entry) => entry.expires_s,
        };
        if let Some(slot) = set.iter_mut().min_by_key(|slot| rank(slot)) {
            *slot = Some(Entry {
                hash: verified.hash,
                expires_s: verified.expires_s,
                token: verified.token.into(),
                access: verified.access,
                key: verified.key,
            });
        }
    }

    /// Drops every entry verified with a key that `keys` no longer holds.
    pub fn retain_keys(&self, keys: &KeySet) -> usize {
        let mut dropped = 0;
        for set in &self.sets {
            let mut set = set.lock().unwrap_or_else(PoisonError::into_inner);
            for slot in set.iter_mut() {
                if slot.as_ref().is_some_and(|entry| !keys.holds(&entry.key)) {
                    *slot = None;
                    dropped += 1;
                }
            }
        }
        dropped
    }
}
