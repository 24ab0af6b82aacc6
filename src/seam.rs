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
