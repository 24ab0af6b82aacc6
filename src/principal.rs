//! The principal: who made a request, as its access token names it: a
//! customer (the token's `sub`) or a service client (`client_id`/`azp`).
//! Recorded with each debit (the audit trail) and scoping idempotency keys.
//!
//! The kind is part of the principal everywhere: a customer whose `sub`
//! equals a service's `client_id` is another principal. Its text, as logs,
//! journal records and database rows show it, is `customer:<sub>` or
//! `service:<client_id>`. A principal read from a record written before
//! kinds existed (journal format 2) has [`Kind::Unknown`] and its bare
//! name; what that means on replay is decided where keys are restored
//! (ARCHITECTURE.md, "Format changes").
//!
//! Validated once, where a verified token (or a record) yields it; then
//! shared (`Arc`), so the verification cache, the key table and a journal
//! record hold the same bytes without copying them. This module knows
//! nothing of tokens.

use std::fmt;
use std::sync::Arc;

/// The longest principal name (`sub`, `client_id`), in UTF-8 bytes (SPEC
/// section 6); its text adds the kind's prefix.
pub const PRINCIPAL_BYTES_MAX: usize = 128;

/// The longest principal text: the longest kind prefix and the longest name.
pub const PRINCIPAL_TEXT_BYTES_MAX: usize = "customer:".len() + PRINCIPAL_BYTES_MAX;

/// What kind of client a principal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A customer, named by the token's `sub`.
    Customer,
    /// A service client, named by `client_id` (or `azp`).
    Service,
    /// Read from a record of before kinds (journal format 2): either.
    Unknown,
}

impl Kind {
    /// The kinds a token can name.
    pub const KNOWN: [Self; 2] = [Self::Customer, Self::Service];

    /// The prefix of its principals' text.
    fn prefix(self) -> &'static str {
        match self {
            Self::Customer => "customer:",
            Self::Service => "service:",
            Self::Unknown => "",
        }
    }
}

/// A valid principal: a kind and a name of 1 to [`PRINCIPAL_BYTES_MAX`]
/// bytes of UTF-8 without a control character (it is written to logs and
/// records as is).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    kind: Kind,
    /// The kind's prefix, then the name.
    text: Arc<str>,
}

impl Principal {
    /// Validates a principal; `None` when the name breaks the rules.
    pub fn new(kind: Kind, name: &str) -> Option<Self> {
        let is_valid =
            (1..=PRINCIPAL_BYTES_MAX).contains(&name.len()) && !name.chars().any(char::is_control);
        is_valid.then(|| Self {
            kind,
            text: [kind.prefix(), name].concat().into(),
        })
    }

    /// The principal whose text is `text` (`customer:…` or `service:…`).
    pub fn parse(text: &str) -> Option<Self> {
        Kind::KNOWN.into_iter().find_map(|kind| {
            let name = text.strip_prefix(kind.prefix())?;
            Self::new(kind, name)
        })
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its name, without the kind.
    pub fn name(&self) -> &str {
        &self.text[self.kind.prefix().len()..]
    }

    /// The same name as another kind.
    pub fn with_kind(&self, kind: Kind) -> Self {
        Self {
            kind,
            text: [kind.prefix(), self.name()].concat().into(),
        }
    }

    /// The principal's text: the kind's prefix and the name.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_bounded_printable_and_kinded() {
        assert!(Principal::new(Kind::Customer, "usuario1").is_some());
        assert!(Principal::new(Kind::Service, &"é".repeat(64)).is_some());
        for bad in ["", "a\nb", "\u{7f}", &"a".repeat(PRINCIPAL_BYTES_MAX + 1)] {
            assert!(Principal::new(Kind::Customer, bad).is_none(), "{bad:?}");
        }
        let customer = Principal::new(Kind::Customer, "pagos").unwrap();
        let service = Principal::new(Kind::Service, "pagos").unwrap();
        assert_ne!(customer, service);
        assert_eq!(
            (customer.as_str(), service.as_str()),
            ("customer:pagos", "service:pagos")
        );
        assert_eq!(
            (customer.name(), customer.kind()),
            ("pagos", Kind::Customer)
        );
        assert_eq!(customer.with_kind(Kind::Service), service);
        assert_eq!(Principal::parse("service:pagos"), Some(service));
        assert_eq!(Principal::parse("service:a:b").unwrap().name(), "a:b");
        for bad in ["pagos", "service:", "cliente:x", "Customer:x"] {
            assert_eq!(Principal::parse(bad), None, "{bad:?}");
        }
        let legacy = Principal::new(Kind::Unknown, "pagos").unwrap();
        assert_eq!((legacy.as_str(), legacy.name()), ("pagos", "pagos"));
        assert_ne!(legacy, customer);
    }
}
