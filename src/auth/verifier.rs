//! Bearer JWT verification: header, key, signature and claims, in that
//! order, with `jsonwebtoken` doing the cryptography and the registered
//! claims (`exp`, `nbf`, `iss`, `aud`), and this module pinning the rest:
//! the `alg` must be allowed and match the key's type, the key is found by
//! `kid` only, and the claims must name a principal.
//!
//! Also owns the keys' life: loaded before the service listens, refreshed by
//! one task ([`Verifier::refresh_keys`]) every 10 minutes (a file: when it
//! changes) and when a request names an unknown `kid` (at most once per
//! [`REFRESH_MIN_INTERVAL`], one fetch at a time, at most [`WAITERS_MAX`]
//! requests waiting for it; the rest are refused at once). A failed refresh
//! keeps the last good keys.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use tokio::sync::{Notify, Semaphore, watch};

use super::cache::Cache;
use super::keys::{FETCH_TIMEOUT, Key, KeySet, REFRESH_MIN_INTERVAL, Source};
use super::{Access, SCOPE_DEBIT, SCOPE_EVENTS, SCOPE_READ, Unauthenticated};
use crate::clock;
use crate::principal::Principal;
use crate::usuario::Usuario;

/// Most requests waiting at once for a refresh prompted by an unknown `kid`.
pub const WAITERS_MAX: usize = 64;

/// What tokens must satisfy.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `iss`, exactly.
    pub issuer: String,
    /// `aud`, or one of its values.
    pub audience: String,
    /// Allowed `alg`s (never `none` nor HS*: refused by the configuration).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// The claims read beyond those `jsonwebtoken` validates.
#[derive(serde::Deserialize)]
struct Claims {
    exp: u64,
    sub: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
    scope: Option<String>,
    scp: Option<Vec<String>>,
}

/// Verifies bearer tokens and keeps the issuer's keys fresh.
pub struct Verifier {
    /// One validation per allowed algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<KeySet>>,
    source: Source,
    cache: Cache,
    /// Prompts the refresher (an unknown `kid`).
    wake: Notify,
    /// Counts the refresher's rounds, so waiters learn one ended.
    rounds: watch::Sender<u64>,
    refreshing: AtomicBool,
    last_refresh_ms: AtomicU64,
    waiters: Semaphore,
}

impl Verifier {
    /// Loads the keys (no usable key: an error, the service must not
    /// start) and starts the refresher task.
    pub async fn start(settings: Settings, source: Source) -> Result<Arc<Self>, String> {
        // The crate picks its backend from its features; say it outright so
        // another crate's features can never leave it without one.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let document = source.fetch().await?;
        let keys = KeySet::parse(&document, &settings.algorithms, &KeySet::default())?;
        if keys.is_empty() {
            return Err("the JWKS holds no key usable with --jwt-algorithms".into());
        }
        tracing::info!(keys = keys.len(), "JWKS loaded");
        let validations = settings
            .algorithms
            .iter()
            .map(|algorithm| (*algorithm, validation(&settings, *algorithm)))
            .collect();
        let verifier = Arc::new(Self {
            validations,
            algorithms: settings.algorithms,
            keys: RwLock::new(Arc::new(keys)),
            source,
            cache: Cache::default(),
            wake: Notify::new(),
            rounds: watch::Sender::new(0),
            refreshing: AtomicBool::new(false),
            last_refresh_ms: AtomicU64::new(clock::unix_ms()),
            waiters: Semaphore::new(WAITERS_MAX),
        });
        tokio::spawn(verifier.clone().refresh_keys());
        Ok(verifier)
    }

    /// The access a token grants, from the cache or verified now.
    pub async fn verify(&self, token: &str) -> Result<Arc<Access>, Unauthenticated> {
        let now_s = clock::unix_ms() / 1000;
        let digest = self.cache.digest(token);
        if let Some(access) = self.cache.get(&digest, now_s) {
            return Ok(access);
        }
        // Boxed: its future (key refresh, timeouts) is large, and would
        // otherwise grow every request's future, moved on every request.
        match Box::pin(self.verify_signed(token)).await {
            Ok((access, key, expires_s)) => {
                let access = Arc::new(access);
                self.cache
                    .insert(digest, access.clone(), key, expires_s, now_s);
                Ok(access)
            }
            Err(reason) => {
                tracing::debug!(reason, "bearer token refused");
                Err(Unauthenticated::InvalidToken)
            }
        }
    }

    /// The full verification, without the cache (what a token's first
    /// request costs; for benchmarks).
    pub async fn verify_uncached(&self, token: &str) -> Result<Arc<Access>, Unauthenticated> {
        match self.verify_signed(token).await {
            Ok((access, _, _)) => Ok(Arc::new(access)),
            Err(_) => Err(Unauthenticated::InvalidToken),
        }
    }

    /// Full verification: the access, the key that verified it and `exp`.
    async fn verify_signed(&self, token: &str) -> Result<(Access, Arc<Key>, u64), &'static str> {
        if !super::is_token_text(token) {
            return Err("not a compact JWT");
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        if header.typ.as_deref().is_some_and(|typ| !is_token_type(typ)) {
            return Err("not a JWT access token (typ)");
        }
        let validation = self
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .map(|(_, validation)| validation)
            .ok_or("algorithm not allowed")?;
        let kid = header.kid.as_deref().ok_or("no kid")?;
        let key = match self.key(kid) {
            Some(key) => key,
            None => self.key_after_refresh(kid).await.ok_or("unknown kid")?,
        };
        if !key.accepts(header.alg) {
            return Err("algorithm does not match the key");
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map_err(|error| why(error.kind()))?
            .claims;
        let expires_s = claims.exp;
        Ok((access(claims)?, key, expires_s))
    }

    fn key(&self, kid: &str) -> Option<Arc<Key>> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.get(kid).cloned()
    }

    /// Prompts a refresh for an unknown `kid` and waits for it, unless one
    /// ran too recently or too many requests wait already.
    async fn key_after_refresh(&self, kid: &str) -> Option<Arc<Key>> {
        let _waiting = self.waiters.try_acquire().ok()?;
        if !self.refreshing.load(Ordering::Acquire) && !self.is_refresh_allowed() {
            return None;
        }
        let mut rounds = self.rounds.subscribe();
        self.wake.notify_one();
        let wait_max = FETCH_TIMEOUT + Duration::from_secs(1);
        tokio::time::timeout(wait_max, rounds.changed())
            .await
            .ok()?
            .ok()?;
        self.key(kid)
    }

    fn is_refresh_allowed(&self) -> bool {
        let since_ms =
            clock::unix_ms().saturating_sub(self.last_refresh_ms.load(Ordering::Acquire));
        since_ms >= REFRESH_MIN_INTERVAL.as_millis() as u64
    }

    /// The refresher: one task, so one fetch at a time. Runs for the
    /// process's life.
    async fn refresh_keys(self: Arc<Self>) {
        loop {
            let prompted = tokio::select! {
                () = tokio::time::sleep(self.source.poll_interval()) => false,
                () = self.wake.notified() => true,
            };
            let is_due = if prompted {
                self.is_refresh_allowed()
            } else {
                self.source.has_changed()
            };
            if is_due {
                self.refresh().await;
            }
            // Waiters wake whether or not this round fetched.
            self.rounds.send_modify(|round| *round += 1);
        }
    }

    async fn refresh(&self) {
        self.refreshing.store(true, Ordering::Release);
        self.last_refresh_ms
            .store(clock::unix_ms(), Ordering::Release);
        let current = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let fetched = self.source.fetch().await;
        match fetched.and_then(|document| KeySet::parse(&document, &self.algorithms, &current)) {
            Ok(keys) if !keys.is_empty() => {
                let keys = Arc::new(keys);
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys.clone();
                let dropped = self.cache.retain_keys(&keys);
                tracing::info!(keys = keys.len(), cache_dropped = dropped, "JWKS refreshed");
            }
            Ok(_) => tracing::warn!("JWKS refresh found no usable key; the last good keys stay"),
            Err(error) => tracing::warn!(%error, "JWKS refresh failed; the last good keys stay"),
        }
        self.refreshing.store(false, Ordering::Release);
    }
}

/// The validation of tokens signed with `algorithm`.
fn validation(settings: &Settings, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = settings.leeway.as_secs();
    validation
}

/// `typ` values of a JWT access token (RFC 7519, RFC 9068).
fn is_token_type(typ: &str) -> bool {
    ["JWT", "at+jwt", "application/at+jwt"]
        .iter()
        .any(|known| typ.eq_ignore_ascii_case(known))
}

/// Why `jsonwebtoken` refused a token, for the log.
fn why(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid (nbf)",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        ErrorKind::InvalidAlgorithm => "algorithm not allowed",
        ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => "malformed claims",
        _ => "invalid token",
    }
}

/// The access the claims grant: scopes for service clients, `sub` for the
/// own account, and the principal recorded with debits.
fn access(claims: Claims) -> Result<Access, &'static str> {
    let scopes = claims
        .scope
        .iter()
        .flat_map(|scope| scope.split(' '))
        .chain(claims.scp.iter().flatten().map(String::as_str));
    let (mut read_all, mut debit_all, mut events) = (false, false, false);
    for scope in scopes {
        read_all |= scope == SCOPE_READ;
        debit_all |= scope == SCOPE_DEBIT;
        events |= scope == SCOPE_EVENTS;
    }
    // A service token names its client; a customer's names the customer.
    let name = if read_all || debit_all || events {
        claims
            .client_id
            .as_ref()
            .or(claims.azp.as_ref())
            .or(claims.sub.as_ref())
    } else {
        claims.sub.as_ref()
    };
    let principal = name.ok_or("no principal (sub, client_id or azp)")?;
    let principal = Principal::new(principal).ok_or("principal too long or not printable")?;
    Ok(Access {
        principal,
        subject: claims.sub.as_deref().and_then(|sub| Usuario::new(sub).ok()),
        read_all,
        debit_all,
        events,
    })
}
