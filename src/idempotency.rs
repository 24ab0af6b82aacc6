//! Idempotency keys: the remembered outcome of each keyed debit, so a retry
//! replays its first answer instead of debiting twice.
//!
//! A key is `InFlight` from the moment its first request passes validation
//! until its outcome is settled (durable, with the journal), then `Done` until
//! its TTL passes. The table is sharded like the ledger and bounded: when it
//! holds `keys_max` live keys, expired ones are swept; if none can go, new keys
//! are refused (503) rather than forgetting a live one, and counted.
//!
//! A key belongs to its principal ([`Scoped`]): the same key sent by two
//! principals is two keys, so one client can neither replay nor block
//! another's. Without authentication every key has the same (absent) principal.
//!
//! The table does no I/O: the journal persists outcomes and restores them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ledger::{DebitKind, Outcome};
use crate::principal::Principal;
use crate::sharded::Sharded;
use crate::usuario::Usuario;

/// The longest key, in bytes (SPEC section 1).
pub const KEY_BYTES_MAX: usize = 255;

/// The header carrying the key.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// A stable 64-bit fingerprint of a request (FNV-1a over method, path and
/// body): stable across processes and versions, since it is persisted.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for part in [method.as_bytes(), b"\0", path.as_bytes(), b"\0", body] {
        for byte in part {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(PRIME);
        }
    }
    hash
}

/// True when `key` is 1 to 255 visible ASCII characters.
pub fn is_valid_key(key: &[u8]) -> bool {
    crate::header::is_visible_ascii(key, KEY_BYTES_MAX)
}

/// A settled keyed request: enough to render its answer again, byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// Fingerprint of the request that produced it.
    pub fingerprint: u64,
    /// The endpoint.
    pub kind: DebitKind,
    /// The account.
    pub usuario: Usuario,
    /// The amount asked for.
    pub monto: u64,
    /// What happened.
    pub outcome: Outcome,
    /// When its request was accepted (reserved), in ms since the Unix epoch;
    /// the TTL counts from here.
    pub time_ms: u64,
}

/// An idempotency key within its principal's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scoped<'a> {
    /// Who sent the key; `None` without authentication.
    pub principal: Option<&'a Principal>,
    /// The key, 1 to 255 visible ASCII characters.
    pub key: &'a str,
}

enum Entry {
    InFlight { fingerprint: u64 },
    Done(Remembered),
}

/// A key and its state, as a shard stores it.
struct Slot {
    principal: Option<Principal>,
    key: Box<str>,
    entry: Entry,
}

impl Slot {
    fn new(scoped: Scoped<'_>, entry: Entry) -> Self {
        Self {
            principal: scoped.principal.cloned(),
            key: scoped.key.into(),
            entry,
        }
    }

    fn scoped(&self) -> Scoped<'_> {
        Scoped {
            principal: self.principal.as_ref(),
            key: &self.key,
        }
    }
}

/// What a keyed request should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// First time: go ahead; the key is now in flight.
    Started,
    /// Seen and settled with the same request: answer this again.
    Replay(Remembered),
    /// Seen with a different request: 422.
    Conflict,
    /// Its first request is still being processed: 409.
    InFlight,
    /// The table is full of live keys: 503.
    Full,
}

/// All remembered keys.
pub struct Table {
    /// The keys (in flight or done), bounded by `keys_max`.
    keys: Sharded<Slot>,
    ttl_ms: u64,
    /// New keys refused because the table was full.
    refused_full: AtomicU64,
    /// No settled key expires before this time (ms): sweeping sooner frees
    /// nothing.
    next_sweep_ms: AtomicU64,
}

impl Table {
    /// An empty table.
    pub fn new(shard_count: usize, ttl: Duration, keys_max: usize) -> Self {
        Self {
            keys: Sharded::new(shard_count, keys_max),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            refused_full: AtomicU64::new(0),
            next_sweep_ms: AtomicU64::new(0),
        }
    }

    /// Looks `key` up and, when it is new, marks it in flight.
    pub fn begin(&self, key: Scoped<'_>, fingerprint: u64, now_ms: u64) -> Begin {
        let hash = self.keys.hash(&key);
        let mut shard = self.keys.lock(hash);
        if let Some(slot) = shard.find_mut(hash, |slot| slot.scoped() == key) {
            return self.begin_seen(&mut slot.entry, fingerprint, now_ms);
        }
        if self.keys.is_full() && self.is_sweep_due(now_ms) {
            // Full: expired keys of every shard make room, not only this
            // one's. No shard lock is held while sweeping the others.
            drop(shard);
            self.sweep(now_ms);
            shard = self.keys.lock(hash);
            if let Some(slot) = shard.find_mut(hash, |slot| slot.scoped() == key) {
                return self.begin_seen(&mut slot.entry, fingerprint, now_ms);
            }
        }
        if !self.keys.take_room() {
            self.refused_full.fetch_add(1, Ordering::Relaxed);
            return Begin::Full;
        }
        let slot = Slot::new(key, Entry::InFlight { fingerprint });
        shard.insert_unique(hash, slot, |slot| self.keys.hash(&slot.scoped()));
        Begin::Started
    }

    fn begin_seen(&self, entry: &mut Entry, fingerprint: u64, now_ms: u64) -> Begin {
        let begin = match entry {
            Entry::InFlight { fingerprint: seen } if *seen != fingerprint => Begin::Conflict,
            Entry::InFlight { .. } => Begin::InFlight,
            Entry::Done(done) if self.is_expired(done, now_ms) => Begin::Started,
            Entry::Done(done) if done.fingerprint == fingerprint => Begin::Replay(*done),
            Entry::Done(_) => Begin::Conflict,
        };
        // An expired key is reused in place: no new allocation, no new room.
        if begin == Begin::Started {
            *entry = Entry::InFlight { fingerprint };
        }
        begin
    }

    /// Records the settled outcome of a key (in flight, or being restored).
    pub fn finish(&self, key: Scoped<'_>, remembered: Remembered) {
        // A key settled now may expire before the next planned sweep (its
        // time is when its request was reserved, a while ago).
        self.next_sweep_ms
            .fetch_min(self.expiry_ms(&remembered), Ordering::Relaxed);
        let hash = self.keys.hash(&key);
        let mut shard = self.keys.lock(hash);
        match shard.find_mut(hash, |slot| slot.scoped() == key) {
            Some(slot) => slot.entry = Entry::Done(remembered),
            None => {
                // Restoring at start: the table is sized for what was saved.
                self.keys.count_restored();
                let slot = Slot::new(key, Entry::Done(remembered));
                shard.insert_unique(hash, slot, |slot| self.keys.hash(&slot.scoped()));
            }
        }
    }

    /// Forgets a key whose request ended without an outcome.
    pub fn abandon(&self, key: Scoped<'_>) {
        let hash = self.keys.hash(&key);
        let mut shard = self.keys.lock(hash);
        let in_flight =
            |slot: &Slot| slot.scoped() == key && matches!(slot.entry, Entry::InFlight { .. });
        if let Ok(found) = shard.find_entry(hash, in_flight) {
            found.remove();
            self.keys.give_back(1);
        }
    }

    /// Removes every expired key; returns how many went. Notes when the next
    /// key can expire, so a full table does not sweep again before then.
    pub fn sweep(&self, now_ms: u64) -> usize {
        // Recomputed from scratch below; `finish` may lower it meanwhile.
        self.next_sweep_ms.store(u64::MAX, Ordering::Relaxed);
        let mut next_expiry_ms = now_ms.saturating_add(self.ttl_ms);
        let removed = (0..self.keys.shard_count())
            .map(|index| {
                let mut shard = self.keys.lock_index(index);
                let before = shard.len();
                shard.retain(|slot| match &slot.entry {
                    Entry::Done(done) if self.is_expired(done, now_ms) => false,
                    Entry::Done(done) => {
                        next_expiry_ms = next_expiry_ms.min(self.expiry_ms(done));
                        true
                    }
                    Entry::InFlight { .. } => true,
                });
                before - shard.len()
            })
            .sum();
        self.keys.give_back(removed);
        // Keys settled meanwhile lowered it already (`finish`): keep theirs.
        self.next_sweep_ms
            .fetch_min(next_expiry_ms, Ordering::Relaxed);
        removed
    }

    /// Number of shards, for [`Table::for_each_remembered_in_shard`].
    pub fn shard_count(&self) -> usize {
        self.keys.shard_count()
    }

    /// Calls `visit` with every settled, unexpired key of shard `index`, under
    /// its lock (for a snapshot, one shard at a time).
    pub fn for_each_remembered_in_shard(
        &self,
        index: usize,
        now_ms: u64,
        mut visit: impl FnMut(Scoped<'_>, &Remembered),
    ) {
        for slot in self.keys.lock_index(index).iter() {
            if let Entry::Done(done) = &slot.entry
                && !self.is_expired(done, now_ms)
            {
                visit(slot.scoped(), done);
            }
        }
    }

    /// Keys stored now (in flight or settled).
    pub fn keys_stored(&self) -> usize {
        self.keys.stored()
    }

    /// New keys refused so far because the table was full.
    pub fn refused_full(&self) -> u64 {
        self.refused_full.load(Ordering::Relaxed)
    }

    /// Whether `remembered` is past its TTL at `now_ms`.
    pub fn is_expired(&self, remembered: &Remembered, now_ms: u64) -> bool {
        self.expiry_ms(remembered) <= now_ms
    }

    fn expiry_ms(&self, remembered: &Remembered) -> u64 {
        remembered.time_ms.saturating_add(self.ttl_ms)
    }

    /// True when a sweep could free a key now.
    fn is_sweep_due(&self, now_ms: u64) -> bool {
        self.next_sweep_ms.load(Ordering::Relaxed) <= now_ms
    }
}

/// Forgets an in-flight key when its request is dropped before the key's
/// outcome was handed on (a client that hung up, a 503). Disarmed once the
/// outcome is settled or on its way to be.
pub struct InFlightGuard<'a> {
    table: &'a Table,
    key: Option<Scoped<'a>>,
}

impl<'a> InFlightGuard<'a> {
    /// Guards `key`, just marked in flight in `table`.
    pub fn new(table: &'a Table, key: Scoped<'a>) -> Self {
        Self {
            table,
            key: Some(key),
        }
    }

    /// The key's outcome is taken care of: keep it.
    pub fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.table.abandon(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::Kind;

    fn unscoped(key: &str) -> Scoped<'_> {
        Scoped {
            principal: None,
            key,
        }
    }

    fn remembered(fingerprint: u64, time_ms: u64) -> Remembered {
        Remembered {
            fingerprint,
            kind: DebitKind::Pago,
            usuario: Usuario::new("ana").unwrap(),
            monto: 5,
            outcome: Outcome::Debited { nuevo_saldo: 95 },
            time_ms,
        }
    }

    // Each rule of SPEC section 1's idempotency, at the table level.
    #[test]
    fn keys_go_from_started_to_in_flight_to_replay() {
        let table = Table::new(4, Duration::from_secs(10), 100);
        assert_eq!(table.begin(unscoped("k"), 1, 0), Begin::Started);
        assert_eq!(table.begin(unscoped("k"), 1, 0), Begin::InFlight);
        assert_eq!(table.begin(unscoped("k"), 2, 0), Begin::Conflict);
        table.finish(unscoped("k"), remembered(1, 0));
        assert_eq!(
            table.begin(unscoped("k"), 1, 9_999),
            Begin::Replay(remembered(1, 0))
        );
        assert_eq!(table.begin(unscoped("k"), 2, 9_999), Begin::Conflict);
        // Past the TTL the key is new again.
        assert_eq!(table.begin(unscoped("k"), 2, 10_000), Begin::Started);
        assert_eq!(table.keys_stored(), 1);
    }

    #[test]
    fn abandoned_keys_can_start_again() {
        let table = Table::new(1, Duration::from_secs(10), 100);
        assert_eq!(table.begin(unscoped("k"), 1, 0), Begin::Started);
        drop(InFlightGuard::new(&table, unscoped("k")));
        assert_eq!(table.keys_stored(), 0);
        assert_eq!(table.begin(unscoped("k"), 1, 0), Begin::Started);
        InFlightGuard::new(&table, unscoped("k")).disarm();
        assert_eq!(table.begin(unscoped("k"), 1, 0), Begin::InFlight);
    }

    // Full of live keys: new ones are refused and counted; expired ones make room.
    #[test]
    fn a_full_table_refuses_then_sweeps_expired_keys() {
        let table = Table::new(1, Duration::from_secs(10), 2);
        for key in ["a", "b"] {
            assert_eq!(table.begin(unscoped(key), 1, 0), Begin::Started);
            table.finish(unscoped(key), remembered(1, 0));
        }
        assert_eq!(table.begin(unscoped("c"), 1, 5_000), Begin::Full);
        assert_eq!(table.refused_full(), 1);
        assert_eq!(table.begin(unscoped("c"), 1, 10_000), Begin::Started);
        assert_eq!(table.keys_stored(), 1);
        assert_eq!(table.sweep(10_000), 0);
    }

    // A full table makes room from expired keys of every shard, not only the
    // new key's own.
    #[test]
    fn a_full_table_sweeps_every_shard() {
        let table = Table::new(64, Duration::from_secs(10), 8);
        for n in 0..8 {
            let key = format!("old-{n}");
            assert_eq!(table.begin(unscoped(&key), 1, 0), Begin::Started);
            table.finish(unscoped(&key), remembered(1, 0));
        }
        for n in 0..8 {
            assert_eq!(
                table.begin(unscoped(&format!("new-{n}")), 1, 10_000),
                Begin::Started,
                "{n}"
            );
        }
        assert_eq!(table.keys_stored(), 8);
        assert_eq!(table.begin(unscoped("one-more"), 1, 10_000), Begin::Full);
    }

    // The same key from two principals (or none) is three keys.
    #[test]
    fn keys_are_scoped_to_their_principal() {
        let table = Table::new(4, Duration::from_secs(10), 100);
        let (ana, beto) = (
            Principal::new(Kind::Customer, "ana").unwrap(),
            Principal::new(Kind::Customer, "beto").unwrap(),
        );
        let scoped = |principal| Scoped {
            principal,
            key: "k",
        };
        assert_eq!(table.begin(scoped(Some(&ana)), 1, 0), Begin::Started);
        table.finish(scoped(Some(&ana)), remembered(1, 0));
        assert_eq!(table.begin(scoped(Some(&beto)), 2, 0), Begin::Started);
        assert_eq!(table.begin(scoped(None), 3, 0), Begin::Started);
        assert_eq!(
            table.begin(scoped(Some(&ana)), 1, 0),
            Begin::Replay(remembered(1, 0))
        );
        assert_eq!(table.begin(scoped(Some(&beto)), 2, 0), Begin::InFlight);
        assert_eq!(table.keys_stored(), 3);
    }

    #[test]
    fn keys_and_fingerprints() {
        assert!(is_valid_key(b"a"));
        assert!(is_valid_key("k".repeat(255).as_bytes()));
        assert!(!is_valid_key(b""));
        assert!(!is_valid_key("k".repeat(256).as_bytes()));
        assert!(!is_valid_key(b"with space"));
        assert!(!is_valid_key("ñ".as_bytes()));
        let a = fingerprint("POST", "/pago", b"{}");
        assert_eq!(a, fingerprint("POST", "/pago", b"{}"));
        assert_ne!(a, fingerprint("POST", "/retiro", b"{}"));
        assert_ne!(a, fingerprint("POST", "/pago", b"{ }"));
        // Stable across builds: persisted fingerprints must keep matching.
        assert_eq!(a, 0xda7a_5ac7_ea8d_40b5);
    }
}
