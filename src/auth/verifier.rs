//! Bearer JWT verification: header, key, signature and claims, in that
//! order, with `jsonwebtoken` doing the cryptography and the registered
//! claims (`exp`, `nbf`, `iss`, `aud`), and this module pinning the rest:
//! no `crit` header, the `alg` must be allowed and match the key's type, the
//! key is found by `kid` only, `iss` is one string equal to the issuer, and
//! the claims must name a principal. A verification is remembered (and
//! granted) only if the key that verified it is still in the key set at that
//! moment: the check and the cache insert happen under the key set's read
//! lock, and a refresh sweeps the cache after swapping the set under its
//! write lock, so no entry of a removed key survives a refresh.
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

use super::cache::{Cache, Verified};
use super::keys::{FETCH_TIMEOUT, Key, KeySet, REFRESH_MIN_INTERVAL, Source};
use super::{Access, Refusal, SCOPE_DEBIT, SCOPE_EVENTS, SCOPE_READ, Unauthenticated};
use crate::clock;
use crate::principal::{Kind, Principal};
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
    /// A NumericDate: a JSON number, possibly fractional (RFC 7519 §2);
    /// required, which `jsonwebtoken` checks.
    exp: Option<f64>,
    /// Checked again here: the crate also accepts an array.
    #[serde(default)]
    iss: serde_json::Value,
    sub: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
    scope: Option<String>,
    scp: Option<Scopes>,
}

/// `scp`: an array of scopes, or one space-separated string (Entra ID).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Scopes {
    Text(String),
    List(Vec<String>),
}

/// Why a full verification failed: the counted reason and, for the log,
/// what exactly.
struct Refused {
    reason: Refusal,
    detail: &'static str,
}

/// Refused for `reason`, with `detail` for the log.
fn refused(reason: Refusal, detail: &'static str) -> Refused {
    Refused { reason, detail }
}

/// A token that verified, before it is granted.
struct Signed {
    access: Access,
    key: Arc<Key>,
    expires_s: u64,
}

/// Test hooks: pause a verification between its key lookup and its insert
/// into the cache, and see when refreshes read the keys (nothing in the
/// service arms them; one atomic load per cache miss when unarmed).
#[doc(hidden)]
pub struct Hooks {
    hold_next: AtomicBool,
    held: Notify,
    released: Notify,
    key_reads: watch::Sender<u64>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            hold_next: AtomicBool::new(false),
            held: Notify::new(),
            released: Notify::new(),
            key_reads: watch::Sender::new(0),
        }
    }
}

impl Hooks {
    /// The next verification that finds its key and signature good waits,
    /// before it is checked against the key set and remembered, until
    /// [`Self::release`].
    pub fn hold_next_verification(&self) {
        self.hold_next.store(true, Ordering::Release);
    }

    /// Completes once a verification is held.
    pub async fn until_held(&self) {
        self.held.notified().await;
    }

    /// Lets the held verification go on.
    pub fn release(&self) {
        self.released.notify_one();
    }

    /// Refreshes that read the keys so far (installed or refused).
    pub fn key_reads(&self) -> u64 {
        *self.key_reads.borrow()
    }

    /// Completes once more than `seen` refreshes read the keys.
    pub async fn until_keys_read(&self, seen: u64) {
        let mut key_reads = self.key_reads.subscribe();
        let _ = key_reads.wait_for(|count| *count > seen).await;
    }

    async fn pause(&self) {
        let is_armed =
            self.hold_next.load(Ordering::Acquire) && self.hold_next.swap(false, Ordering::AcqRel);
        if is_armed {
            self.held.notify_one();
            self.released.notified().await;
        }
    }
}

/// Verifies bearer tokens and keeps the issuer's keys fresh.
pub struct Verifier {
    /// One validation per allowed algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    algorithms: Vec<Algorithm>,
    /// `iss`, exactly.
    issuer: Box<str>,
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
    hooks: Hooks,
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
            issuer: settings.issuer.into(),
            algorithms: settings.algorithms,
            keys: RwLock::new(Arc::new(keys)),
            source,
            cache: Cache::default(),
            wake: Notify::new(),
            rounds: watch::Sender::new(0),
            refreshing: AtomicBool::new(false),
            last_refresh_ms: AtomicU64::new(clock::unix_ms()),
            waiters: Semaphore::new(WAITERS_MAX),
            hooks: Hooks::default(),
        });
        tokio::spawn(verifier.clone().refresh_keys());
        Ok(verifier)
    }

    /// The access a token grants, from the cache or verified now.
    pub async fn verify(&self, token: &str) -> Result<Access, Unauthenticated> {
        let now_s = clock::unix_ms() / 1000;
        let hash = self.cache.hash(token);
        if let Some(access) = self.cache.get(hash, token, now_s) {
            return Ok(access);
        }
        // Boxed: its future (key refresh, timeouts) is large, and would
        // otherwise grow every request's future, moved on every request.
        let granted = match Box::pin(self.verify_signed(token)).await {
            Ok(signed) => {
                self.hooks.pause().await;
                self.remember(token, hash, signed, now_s)
            }
            Err(refused) => Err(refused),
        };
        granted.map_err(|refused| {
            let reason = refused.reason.as_str();
            tracing::debug!(reason, detail = refused.detail, "bearer token refused");
            Unauthenticated::InvalidToken(refused.reason)
        })
    }

    /// Grants and remembers a verification if its key is still in the key
    /// set: checked and inserted under the set's read lock, so a refresh
    /// that removes the key either comes first (refused here) or sweeps the
    /// entry after it.
    fn remember(
        &self,
        token: &str,
        hash: u64,
        signed: Signed,
        now_s: u64,
    ) -> Result<Access, Refused> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        if !keys.holds(&signed.key) {
            return Err(refused(Refusal::Revoked, "its key left the JWKS"));
        }
        let verified = Verified {
            token,
            hash,
            access: signed.access.clone(),
            key: signed.key,
            expires_s: signed.expires_s,
        };
        self.cache.insert(verified, now_s);
        drop(keys);
        Ok(signed.access)
    }

    /// The full verification, without the cache (what a token's first
    /// request costs; for benchmarks).
    pub async fn verify_uncached(&self, token: &str) -> Result<Access, Unauthenticated> {
        match self.verify_signed(token).await {
            Ok(signed) => Ok(signed.access),
            Err(refused) => Err(Unauthenticated::InvalidToken(refused.reason)),
        }
    }

    #[doc(hidden)]
    /// The test hooks (see [`Hooks`]).
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Full verification: the access, the key that verified it and `exp`.
    async fn verify_signed(&self, token: &str) -> Result<Signed, Refused> {
        let malformed = |detail| refused(Refusal::Malformed, detail);
        if !super::is_token_text(token) {
            return Err(malformed("not a compact JWT"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| malformed("bad header"))?;
        if header.crit.is_some() {
            return Err(refused(Refusal::Crit, "a critical extension (crit)"));
        }
        if header.typ.as_deref().is_some_and(|typ| !is_token_type(typ)) {
            return Err(malformed("not a JWT access token (typ)"));
        }
        let validation = self
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .map(|(_, validation)| validation)
            .ok_or(refused(Refusal::Algorithm, "algorithm not allowed"))?;
        let kid = header.kid.as_deref().ok_or(malformed("no kid"))?;
        let key = match self.key(kid) {
            Some(key) => key,
            None => self
                .key_after_refresh(kid)
                .await
                .ok_or(refused(Refusal::UnknownKid, "unknown kid"))?,
        };
        if !key.accepts(header.alg) {
            return Err(refused(
                Refusal::Algorithm,
                "algorithm does not match the key",
            ));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map_err(|error| why(error.kind()))?
            .claims;
        if claims.iss.as_str() != Some(&*self.issuer) {
            return Err(refused(
                Refusal::Issuer,
                "iss is not the issuer's one string",
            ));
        }
        // Whole seconds, rounded down: never remembered past `exp`.
        let exp = claims.exp.ok_or(refused(Refusal::Claims, "no exp"))?;
        let expires_s = exp.floor() as u64;
        let access = access(claims)?;
        Ok(Signed {
            access,
            key,
            expires_s,
        })
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
        self.hooks.key_reads.send_modify(|count| *count += 1);
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

/// Why `jsonwebtoken` refused a token.
fn why(kind: &ErrorKind) -> Refused {
    match kind {
        ErrorKind::InvalidSignature => refused(Refusal::Signature, "bad signature"),
        ErrorKind::ExpiredSignature => refused(Refusal::Expired, "expired"),
        ErrorKind::ImmatureSignature => refused(Refusal::NotYetValid, "not yet valid (nbf)"),
        ErrorKind::InvalidIssuer => refused(Refusal::Issuer, "wrong issuer"),
        ErrorKind::InvalidAudience => refused(Refusal::Audience, "wrong audience"),
        ErrorKind::MissingRequiredClaim(_) => refused(
            Refusal::Claims,
            "a required claim (exp, iss, aud) is missing",
        ),
        ErrorKind::InvalidAlgorithm => refused(Refusal::Algorithm, "algorithm not allowed"),
        ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            refused(Refusal::Malformed, "malformed claims")
        }
        _ => refused(Refusal::Malformed, "invalid token"),
    }
}

/// The access the claims grant: scopes for service clients, `sub` for the
/// own account, and the principal recorded with debits.
fn access(claims: Claims) -> Result<Access, Refused> {
    let (mut read_all, mut debit_all, mut events) = (false, false, false);
    let mut grant = |scope: &str| {
        read_all |= scope == SCOPE_READ;
        debit_all |= scope == SCOPE_DEBIT;
        events |= scope == SCOPE_EVENTS;
    };
    claims
        .scope
        .iter()
        .flat_map(|scope| scope.split(' '))
        .for_each(&mut grant);
    match &claims.scp {
        Some(Scopes::Text(text)) => text.split(' ').for_each(&mut grant),
        Some(Scopes::List(list)) => list.iter().map(String::as_str).for_each(&mut grant),
        None => {}
    }
    // A service token names its client; a customer's names the customer.
    let (kind, name) = if read_all || debit_all || events {
        let client = claims.client_id.as_ref().or(claims.azp.as_ref());
        (Kind::Service, client.or(claims.sub.as_ref()))
    } else {
        (Kind::Customer, claims.sub.as_ref())
    };
    let name = name.ok_or(refused(
        Refusal::Claims,
        "no principal (sub, client_id or azp)",
    ))?;
    let principal = Principal::new(kind, name).ok_or(refused(
        Refusal::Claims,
        "principal too long or not printable",
    ))?;
    Ok(Access {
        principal,
        subject: claims.sub.as_deref().and_then(|sub| Usuario::new(sub).ok()),
        read_all,
        debit_all,
        events,
    })
}
