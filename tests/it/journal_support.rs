//! What the journal's storage-level tests share: journal storage over the
//! simulated file layer, a debit as the handler makes it, and a key's
//! remembered outcome.

use std::sync::Arc;
use std::time::Duration;

use saldos::idempotency::{Begin, InFlightGuard, Remembered, Scoped, Table};
use saldos::journal::{self, Medium, PowerCut};
use saldos::ledger::{DebitKind, Ledger, Limits, Outcome};
use saldos::seam::{Answer, KeyRequest, Order, Refusal};
use saldos::storage::Storage;
use saldos::usuario::Usuario;

/// Tiny segments: rotations and snapshots happen every few batches.
pub const SEGMENT_BYTES_MAX: u64 = 2048;
/// Every account can pay every debit of every round.
pub const OPENING: u64 = 1 << 52;
/// Seeded at zero: every debit of it is refused (and remembered when keyed).
pub const POBRE: &str = "pobre";
/// Seeded with a little: some debits of it go through, then refusals.
pub const JUSTO: &str = "justo";
/// `JUSTO`'s seeded balance.
pub const JUSTO_SALDO: u64 = 500;

/// An account name.
pub fn usuario(name: &str) -> Usuario {
    Usuario::new(name).unwrap()
}

/// A journal storage recovered from a medium.
pub struct Opened {
    /// The storage, with the journal running.
    pub storage: Storage,
    /// Bytes of a torn final batch recovery dropped.
    pub torn_bytes: u64,
}

/// Recovers journal storage from `medium`, with tiny segments, `pobre`
/// seeded at zero and `justo` with a little.
pub fn open(medium: &PowerCut) -> Result<Opened, journal::Error> {
    open_with_segments(medium, SEGMENT_BYTES_MAX)
}

/// [`open`] with segments of `segment_bytes_max`.
pub fn open_with_segments(
    medium: &PowerCut,
    segment_bytes_max: u64,
) -> Result<Opened, journal::Error> {
    let ledger = Arc::new(Ledger::new(Limits {
        shard_count: 4,
        opening_saldo: OPENING,
        accounts_max: 1_000,
        history_per_account: 0,
    }));
    let keys = Arc::new(Table::new(4, Duration::from_secs(24 * 3600), 100_000));
    let seed = [(usuario(POBRE), 0), (usuario(JUSTO), JUSTO_SALDO)];
    for (name, saldo) in &seed {
        ledger.seed(name, *saldo).unwrap();
    }
    let options = journal::Options {
        dir: std::path::Path::new("/power-cut"),
        opening_saldo: OPENING,
        seed: &seed,
        segment_bytes_max,
        events_retention: std::time::Duration::ZERO,
    };
    let medium: Arc<dyn Medium> = Arc::new(medium.clone());
    let opened = journal::open_on(medium, &options, ledger.clone(), keys.clone())?;
    Ok(Opened {
        torn_bytes: opened.torn_bytes,
        storage: Storage::journal(ledger, keys, opened.journal),
    })
}

/// The outcome a key replays, if it is remembered (a key found new is put
/// back as it was).
pub fn remembered(keys: &Table, key: &str, fingerprint: u64) -> Option<Outcome> {
    let key = unscoped(key);
    match keys.begin(key, fingerprint, saldos::clock::unix_ms()) {
        Begin::Replay(Remembered { outcome, .. }) => Some(outcome),
        Begin::Started => {
            drop(InFlightGuard::new(keys, key));
            None
        }
        other => panic!("key {key:?}: {other:?}"),
    }
}

/// A key sent without authentication.
pub fn unscoped(key: &str) -> Scoped<'_> {
    Scoped {
        principal: None,
        key,
    }
}

/// How a debit request through the storage seam ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debited {
    /// Applied or refused, durably.
    Answered(Outcome),
    /// 503: nothing acknowledged.
    Unavailable,
    /// The key decided (replay, conflict, in flight): nothing ran.
    Key(Begin),
}

/// A `retiro` as the handler makes it.
pub async fn debit(
    storage: &Storage,
    account: &str,
    monto: u64,
    key: Option<&str>,
    fingerprint: u64,
) -> Debited {
    let order = Order {
        kind: DebitKind::Retiro,
        usuario: usuario(account),
        monto,
        principal: None,
        key: key.map(|key| KeyRequest { key, fingerprint }),
    };
    match storage.debit(order).await {
        Ok(Answer::Fresh(outcome)) => Debited::Answered(outcome),
        Ok(Answer::Replay(remembered)) => Debited::Key(Begin::Replay(remembered)),
        Err(Refusal::KeyConflict) => Debited::Key(Begin::Conflict),
        Err(Refusal::KeyInFlight) => Debited::Key(Begin::InFlight),
        Err(Refusal::Unavailable) => Debited::Unavailable,
    }
}
