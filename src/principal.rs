//! The principal: who made a request, as its access token names it (the
//! token's `sub`, or `client_id`/`azp` for a service client). Recorded with
//! each debit (the audit trail) and scoping idempotency keys.
//!
//! Validated once, where a verified token yields it; then shared (`Arc`), so
//! the verification cache, the key table and a journal record hold the same
//! bytes without copying them. This module knows nothing of tokens.

use std::fmt;
use std::sync::Arc;

/// The longest principal, in UTF-8 bytes (SPEC section 6).
pub const PRINCIPAL_BYTES_MAX: usize = 128;

/// A valid principal: 1 to [`PRINCIPAL_BYTES_MAX`] bytes of UTF-8 without a
/// control character (it is written to logs and records as is).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    /// Validates a principal; `None` when it breaks the rules.
    pub fn new(name: &str) -> Option<Self> {
        let is_valid =
            (1..=PRINCIPAL_BYTES_MAX).contains(&name.len()) && !name.chars().any(char::is_control);
        is_valid.then(|| Self(name.into()))
    }

    /// The principal's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_bounded_and_printable() {
        assert!(Principal::new("usuario1").is_some());
        assert!(Principal::new(&"é".repeat(64)).is_some());
        for bad in ["", "a\nb", "\u{7f}", &"a".repeat(PRINCIPAL_BYTES_MAX + 1)] {
            assert!(Principal::new(bad).is_none(), "{bad:?}");
        }
    }
}
