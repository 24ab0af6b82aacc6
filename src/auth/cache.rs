//! Successful verifications, remembered so steady traffic pays one signature
//! check per token per instance.
//!
//! A token is known by its HMAC-SHA256 under a key drawn at start: 256 bits
//! compared in full on a hit, and a client that cannot know the key cannot
//! aim tokens at one set to evict others' entries. The cache is a fixed array
//! of sets of [`WAYS`] entries (memory is bounded at start and never grows);
//! an entry is valid until its token's `exp`, and entries made with a key
//! that left the JWKS are dropped ([`Cache::retain_keys`]). Failures are not
//! cached: a flood of bad tokens leaves no trace here.

use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use crossbeam_utils::CachePadded;

use super::Access;
use super::keys::{Key, KeySet};

/// Sets in the cache; a power of two.
pub const SETS: usize = 4096;

/// Entries per set.
pub const WAYS: usize = 4;

/// A token's identity: its keyed 256-bit digest.
pub type Digest = [u8; 32];

/// One remembered verification.
struct Entry {
    digest: Digest,
    access: Arc<Access>,
    /// The key that verified it.
    key: Arc<Key>,
    /// The token's `exp`, in seconds since the Unix epoch.
    expires_s: u64,
}

/// The entries one digest may occupy.
type Set = Mutex<[Option<Entry>; WAYS]>;

/// Remembered verifications, bounded at [`SETS`] × [`WAYS`].
pub struct Cache {
    hmac_key: hmac::Key,
    sets: Box<[CachePadded<Set>]>,
}

impl Default for Cache {
    /// An empty cache with a fresh random key.
    fn default() -> Self {
        const { assert!(SETS.is_power_of_two()) };
        let hmac_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .unwrap_or_else(|_| panic!("the system random source failed"));
        Self {
            hmac_key,
            sets: (0..SETS)
                .map(|_| CachePadded::new(Mutex::new(Default::default())))
                .collect(),
        }
    }
}

impl Cache {
    /// The token's identity in this cache.
    pub fn digest(&self, token: &str) -> Digest {
        let tag = hmac::sign(&self.hmac_key, token.as_bytes());
        let mut digest = [0; 32];
        digest.copy_from_slice(tag.as_ref());
        digest
    }

    fn set(&self, digest: &Digest) -> &Set {
        let index = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
        &self.sets[index as usize & (SETS - 1)]
    }

    /// The remembered access of the token, while its `exp` is not past.
    pub fn get(&self, digest: &Digest, now_s: u64) -> Option<Arc<Access>> {
        let set = self
            .set(digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.iter()
            .flatten()
            .find(|entry| entry.digest == *digest && now_s < entry.expires_s)
            .map(|entry| entry.access.clone())
    }

    /// Remembers a verification; replaces an expired entry, else the one
    /// expiring first.
    pub fn insert(
        &self,
        digest: Digest,
        access: Arc<Access>,
        key: Arc<Key>,
        expires_s: u64,
        now_s: u64,
    ) {
        let mut set = self
            .set(&digest)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rank = |slot: &Option<Entry>| match slot {
            None => 0,
            Some(entry) if entry.digest == digest || entry.expires_s <= now_s => 0,
            Some(entry) => entry.expires_s,
        };
        if let Some(slot) = set.iter_mut().min_by_key(|slot| rank(slot)) {
            *slot = Some(Entry {
                digest,
                access,
                key,
                expires_s,
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
