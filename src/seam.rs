//! The storage seam's vocabulary: what handlers ask of a storage and what
//! it answers, whichever storage it is. Both sides import this module; it
//! imports neither (the layering ARCHITECTURE.md draws: `api` → `storage` →
//! `local` | `postgres` → `seam`).

use crate::idempotency::Remembered;
use crate::ledger::{DebitKind, Outcome};
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

/// The storage could not do what was asked; nothing was applied, except
/// after a commit whose outcome could not be learned (SPEC section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the storage is unavailable")]
pub struct Unavailable;

impl From<Unavailable> for Refusal {
    fn from(_: Unavailable) -> Self {
        Self::Unavailable
    }
}

/// An event's id: its place in the feed of applied debits (SPEC section 9),
/// also the id of the movement it is in its account's history. Ids grow in
/// commit order but need not be consecutive; `0` is before every event.
///
/// Each storage decides what the number is: the journal's record number,
/// or in PostgreSQL the committing transaction's id and the debit's place in
/// its batch. Clients see an opaque decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId(pub u64);

impl EventId {
    /// Parses an id as the API shows it: a [`parse_decimal`] number.
    pub fn parse(text: &str) -> Option<Self> {
        parse_decimal(text).map(Self)
    }
}

/// The most digits a decimal the API reads has (`u64::MAX` has 20).
const DECIMAL_DIGITS_MAX: usize = 20;

/// A number as the API spells it in ids, query parameters and cursors: 1 to
/// 20 ASCII digits, no sign, no leading zero (each number has one
/// spelling), at most `u64::MAX`.
pub fn parse_decimal(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let well_formed = (1..=DECIMAL_DIGITS_MAX).contains(&bytes.len())
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes[0] != b'0' || bytes.len() == 1);
    if !well_formed {
        return None;
    }
    text.parse().ok()
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One applied debit as its account's history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Movement {
    /// Its event's id.
    pub id: EventId,
    /// The endpoint that made it.
    pub kind: DebitKind,
    /// The amount debited.
    pub monto: u64,
    /// The account's balance right after it.
    pub saldo: u64,
    /// When it was applied, in ms since the Unix epoch.
    pub time_ms: u64,
}

/// One applied debit as the feed shows it: a movement, with its account and
/// who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The debit.
    pub movement: Movement,
    /// Its account.
    pub usuario: Usuario,
    /// Who made it; `None` without authentication.
    pub principal: Option<Principal>,
}

/// The most movements one history page holds (SPEC section 9).
pub const HISTORY_PAGE_MAX: usize = 100;

/// The most events one feed page holds (SPEC section 9).
pub const EVENTS_PAGE_MAX: usize = 1000;

/// A page of an account's history, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// At most the limit asked for, newest first.
    pub movements: Vec<Movement>,
    /// Whether older movements than the last listed exist.
    pub more: bool,
}

/// Why events cannot be listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedError {
    /// The storage cannot answer now: 503.
    Unavailable,
    /// Events after the cursor are no longer kept: 410 (SPEC section 9).
    Expired,
}

impl From<Unavailable> for FeedError {
    fn from(_: Unavailable) -> Self {
        Self::Unavailable
    }
}

/// A named consumer of the feed, whose position a storage keeps: 1 to 64
/// bytes of ASCII letters, digits, `.`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Consumer(String);

impl Consumer {
    /// The longest name, in bytes.
    pub const NAME_BYTES_MAX: usize = 64;

    /// A consumer's name, if it follows the rules.
    pub fn parse(name: &str) -> Option<Self> {
        let valid = (1..=Self::NAME_BYTES_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
        valid.then(|| Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_have_one_spelling() {
        assert_eq!(EventId::parse("0"), Some(EventId(0)));
        assert_eq!(
            EventId::parse("18446744073709551615"),
            Some(EventId(u64::MAX))
        );
        for bad in [
            "",
            "01",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1.0",
            "18446744073709551616",
            "1e3",
            "٣",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn consumer_names_are_short_and_plain() {
        assert!(Consumer::parse("notificaciones-1.a_b").is_some());
        assert!(Consumer::parse(&"a".repeat(64)).is_some());
        for bad in ["", "a b", "a/b", "ñ", "a%20", &"a".repeat(65)] {
            assert!(Consumer::parse(bad).is_none(), "{bad:?}");
        }
    }
}

/// Tells waiting feed readers that events may have become visible: each
/// storage bumps it after commits (the journal's writer after a batch is
/// applied; PostgreSQL on a commit notification), and a reader waits on a
/// subscription instead of polling the storage.
#[derive(Debug)]
pub struct Commits(tokio::sync::watch::Sender<u64>);

impl Default for Commits {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl Commits {
    /// Wakes every subscriber.
    pub fn committed(&self) {
        self.0.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Whether anyone holds a subscription now.
    pub fn has_subscribers(&self) -> bool {
        self.0.receiver_count() > 0
    }

    /// A subscription: `changed()` completes after the next commit.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}
