//! Authentication and authorization (SPEC section 6): who a request comes
//! from, and whether that may read or debit the account it names.
//!
//! - `--auth none`: [`Auth::Open`]; every request passes, with no principal.
//! - `--auth jwt`: a bearer JWT verified by [`Verifier`] (signature by a key
//!   of the issuer's JWKS, `alg` pinned to the key's type, `iss`, `aud`,
//!   `exp`, `nbf`), cached per token ([`cache`]), keys refreshed ([`keys`]).
//!
//! Refusals say nothing about why to the client: the router answers 401 or
//! 403, and the reason goes to the log (at `debug`), never the token. This
//! module never reads a body and never touches balances.

mod cache;
pub mod dev_token;
pub mod keys;
mod verifier;

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;

pub use keys::REFRESH_MIN_INTERVAL;
pub use verifier::{Settings, Verifier};

use crate::principal::Principal;
use crate::usuario::Usuario;

/// The longest bearer token accepted, in bytes; real access tokens are 1 to
/// 2 KiB, and the whole head is bounded at 16 KiB anyway.
pub const TOKEN_BYTES_MAX: usize = 8192;

/// The scope that lets a service client read every account.
pub const SCOPE_READ: &str = "saldos:read";
/// The scope that lets a service client debit every account.
pub const SCOPE_DEBIT: &str = "saldos:debit";
/// The scope that reads the feed of every account's events (SPEC section 9).
pub const SCOPE_EVENTS: &str = "saldos:events";

/// What a request may do with an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /saldo/{usuario}`.
    Read,
    /// `POST /pago`, `POST /retiro`.
    Debit,
}

/// What a verified token grants.
#[derive(Debug, Clone)]
pub struct Access {
    /// Who: `sub`, or `client_id`/`azp` for a service token.
    pub principal: Principal,
    /// The token's `sub` when it is a valid account name: its own account.
    pub subject: Option<Usuario>,
    /// `saldos:read`: every account may be read.
    pub read_all: bool,
    /// `saldos:debit`: every account may be debited.
    pub debit_all: bool,
    /// `saldos:events`: the feed of every account's events may be read.
    pub events: bool,
}

impl Access {
    /// Whether this token may do `operation` on `usuario`.
    pub fn allows(&self, usuario: &Usuario, operation: Operation) -> bool {
        let is_own = self.subject.as_ref() == Some(usuario);
        is_own
            || match operation {
                Operation::Read => self.read_all,
                Operation::Debit => self.debit_all,
            }
    }
}

/// Why a request was refused, as counted in `saldos_auth_refusals_total`:
/// a fixed, small set (a label value each), never a token's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token was sent (no header, or another scheme).
    Missing,
    /// Not a compact JWT, a header or claims that do not parse, a `typ`
    /// that is not an access token's, no `kid`.
    Malformed,
    /// An `alg` not allowed, or not matching the key's type.
    Algorithm,
    /// A `crit` header: no extension is understood.
    Crit,
    /// No key of the JWKS has the token's `kid`.
    UnknownKid,
    /// The signature does not verify.
    Signature,
    /// `exp` is past.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `iss` missing, not a string, or not the configured issuer.
    Issuer,
    /// `aud` is not (or does not hold) the configured audience.
    Audience,
    /// A required claim (`exp`, a principal) is missing or invalid.
    Claims,
    /// The key that verified the token left the JWKS meanwhile.
    Revoked,
    /// A valid token that does not allow the operation (403).
    Forbidden,
}

impl Refusal {
    /// Every reason, in index order.
    pub const ALL: [Self; 13] = [
        Self::Missing,
        Self::Malformed,
        Self::Algorithm,
        Self::Crit,
        Self::UnknownKid,
        Self::Signature,
        Self::Expired,
        Self::NotYetValid,
        Self::Issuer,
        Self::Audience,
        Self::Claims,
        Self::Revoked,
        Self::Forbidden,
    ];

    /// The `reason` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::Crit => "crit",
            Self::UnknownKid => "unknown_kid",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::Claims => "claims",
            Self::Revoked => "revoked",
            Self::Forbidden => "forbidden",
        }
    }
}

/// Why a request is not authenticated (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No bearer token was sent (no header, or another scheme).
    NoToken,
    /// A bearer token was sent and is not valid, for this reason.
    InvalidToken(Refusal),
}

impl Unauthenticated {
    /// The refusal's reason, for the metric.
    pub fn reason(self) -> Refusal {
        match self {
            Self::NoToken => Refusal::Missing,
            Self::InvalidToken(reason) => reason,
        }
    }
}

/// The service's authentication.
pub enum Auth {
    /// `--auth none`: every account is open.
    Open,
    /// `--auth jwt`.
    Jwt(Arc<Verifier>),
}

impl Auth {
    /// Who sent the request: `None` when authentication is off.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<Access>, Unauthenticated> {
        match self {
            Self::Open => Ok(None),
            Self::Jwt(verifier) => {
                let token = bearer_token(headers)?;
                verifier.verify(token).await.map(Some)
            }
        }
    }
}

/// Whether `access` (absent when authentication is off) may read the feed
/// of events and store consumer positions: only with `saldos:events`, never
/// by owning an account.
pub fn may_follow_events(access: Option<&Access>) -> bool {
    access.is_none_or(|access| access.events)
}

/// Whether `access` (absent when authentication is off) allows `operation`
/// on `usuario`.
pub fn is_allowed(access: Option<&Access>, usuario: &Usuario, operation: Operation) -> bool {
    access.is_none_or(|access| access.allows(usuario, operation))
}

/// The token of the `Authorization: Bearer <token>` header (RFC 7235 and
/// RFC 6750: the scheme is case-insensitive, then one or more spaces, then
/// the token's characters).
fn bearer_token(headers: &HeaderMap) -> Result<&str, Unauthenticated> {
    const SCHEME: &[u8] = b"bearer";
    const MALFORMED: Unauthenticated = Unauthenticated::InvalidToken(Refusal::Malformed);
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(Unauthenticated::NoToken),
        (Some(value), None) => value.as_bytes(),
        (Some(_), Some(_)) => return Err(MALFORMED),
    };
    let (scheme, rest) = value.split_at(value.len().min(SCHEME.len()));
    let is_bearer =
        scheme.eq_ignore_ascii_case(SCHEME) && rest.first().is_none_or(|after| *after == b' ');
    if !is_bearer {
        return Err(Unauthenticated::NoToken);
    }
    let spaces = rest.iter().take_while(|byte| **byte == b' ').count();
    let token = &rest[spaces..];
    if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
        return Err(MALFORMED);
    }
    // Its characters are checked only when it is not in the cache
    // (`is_token_text`): a cached token passed that check already.
    std::str::from_utf8(token).map_err(|_| MALFORMED)
}

/// True when `token` holds only the characters of a compact JWT (base64url
/// and dots); anything else is refused before parsing.
pub fn is_token_text(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_tokens_are_found_or_refused() {
        const MALFORMED: Unauthenticated = Unauthenticated::InvalidToken(Refusal::Malformed);
        let cases: [(&[&str], Result<&str, Unauthenticated>); 12] = [
            (&[], Err(Unauthenticated::NoToken)),
            (&["Basic dXNlcjpwYXNz"], Err(Unauthenticated::NoToken)),
            (&["Bearerx a.b.c"], Err(Unauthenticated::NoToken)),
            (&["Bearer\ta.b.c"], Err(Unauthenticated::NoToken)),
            (&["Bearer a.b.c"], Ok("a.b.c")),
            (&["bEARER a.b-_c"], Ok("a.b-_c")),
            (&["Bearer"], Err(MALFORMED)),
            (&["Bearer "], Err(MALFORMED)),
            (&["Bearer a b"], Ok("a b")),
            (&["Bearer  a.b.c"], Ok("a.b.c")),
            (&["BEARER    a.b.c"], Ok("a.b.c")),
            (&["Bearer a.b.c", "Bearer a.b.c"], Err(MALFORMED)),
        ];
        for (values, expected) in cases {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(AUTHORIZATION, HeaderValue::from_static(value));
            }
            assert_eq!(bearer_token(&headers), expected, "{values:?}");
        }
        let mut headers = HeaderMap::new();
        let long = format!("Bearer {}", "a".repeat(TOKEN_BYTES_MAX + 1));
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&long).unwrap());
        assert_eq!(bearer_token(&headers), Err(MALFORMED));
        assert!(is_token_text("eyJhbGc.eyJzdWI-_.c2ln"));
        for bad in ["a b", " a.b.c", "a+b", "a/b", "a=", "ñ"] {
            assert!(!is_token_text(bad), "{bad:?}");
        }
    }

    #[test]
    fn access_is_the_own_account_or_a_scope() {
        let usuario = |name: &str| Usuario::new(name).unwrap();
        let access = |subject: Option<&str>, read_all, debit_all| Access {
            principal: Principal::new(crate::principal::Kind::Customer, "p").unwrap(),
            subject: subject.map(usuario),
            read_all,
            debit_all,
            events: false,
        };
        let ana = usuario("ana");
        let cases = [
            (access(Some("ana"), false, false), true, true),
            (access(Some("beto"), false, false), false, false),
            (access(None, true, false), true, false),
            (access(None, false, true), false, true),
            (access(Some("beto"), true, true), true, true),
        ];
        for (access, read, debit) in cases {
            assert_eq!(access.allows(&ana, Operation::Read), read, "{access:?}");
            assert_eq!(access.allows(&ana, Operation::Debit), debit, "{access:?}");
            // Only `saldos:events` reads the feed: not an account, nor the
            // other scopes.
            assert!(!may_follow_events(Some(&access)), "{access:?}");
        }
        assert!(is_allowed(None, &ana, Operation::Debit));
        assert!(may_follow_events(None));
        let follower = Access {
            events: true,
            ..access(None, false, false)
        };
        assert!(may_follow_events(Some(&follower)));
        assert!(!follower.allows(&ana, Operation::Read));
    }
}
