//! The issuer's public keys: a JWKS fetched from a URL (HTTPS with rustls
//! and the platform's roots, or plain HTTP) or read from a file, turned into
//! a [`KeySet`] of verification keys by `kid`.
//!
//! Only signing keys the configured algorithms can use are kept: RSA, EC
//! P-256/P-384 and Ed25519, with a `kid`, not marked for encryption. Each key
//! remembers its type, so a token's `alg` must match it (no algorithm
//! confusion: an RS256 token naming an EC key, or an HS256 token made with an
//! RSA public key as its secret, never verifies). Symmetric keys are ignored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// How often the JWKS URL is fetched again.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(600);

/// How often a JWKS file is checked for changes.
pub const JWKS_FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The least time between two refreshes asked for by unknown `kid`s.
pub const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// The longest a JWKS fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest JWKS document read, in bytes.
pub const JWKS_BYTES_MAX: usize = 256 * 1024;

/// The most keys kept from one JWKS.
pub const KEYS_MAX: usize = 64;

/// The key types a token's `alg` can be matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA, for RS* and PS*.
    Rsa,
    /// EC on P-256, for ES256.
    EcP256,
    /// EC on P-384, for ES384.
    EcP384,
    /// Ed25519, for EdDSA.
    Ed25519,
}

impl KeyType {
    /// The one key type `algorithm` verifies with; `None` for HMAC.
    pub fn for_algorithm(algorithm: Algorithm) -> Option<Self> {
        match algorithm {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Some(Self::Rsa),
            Algorithm::ES256 => Some(Self::EcP256),
            Algorithm::ES384 => Some(Self::EcP384),
            Algorithm::EdDSA => Some(Self::Ed25519),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
        }
    }
}

/// One verification key of the JWKS.
pub struct Key {
    /// Its id, as tokens name it.
    pub kid: Box<str>,
    /// Its type, which a token's `alg` must match.
    pub key_type: KeyType,
    /// The one algorithm it may be used with, when the JWKS says (`alg`).
    pub algorithm: Option<Algorithm>,
    /// The key, ready for verification.
    pub decoding: DecodingKey,
    /// The JWK it came from: a refresh keeps the same `Arc<Key>` for an
    /// unchanged key, so cached verifications made with it stay valid.
    jwk: Jwk,
}

impl Key {
    /// Whether a token signed with `algorithm` may be verified with this key.
    pub fn accepts(&self, algorithm: Algorithm) -> bool {
        KeyType::for_algorithm(algorithm) == Some(self.key_type)
            && self.algorithm.is_none_or(|own| own == algorithm)
    }
}

/// The keys of one JWKS, by `kid`.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<Box<str>, Arc<Key>>,
}

impl KeySet {
    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }

    /// Whether `key` (the same one, not only the same `kid`) is in this set.
    pub fn holds(&self, key: &Arc<Key>) -> bool {
        self.keys
            .get(&key.kid)
            .is_some_and(|held| Arc::ptr_eq(held, key))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Parses a JWKS document, keeping the keys usable with `algorithms`;
    /// a key unchanged from `previous` is kept as the same `Arc`. Two keys
    /// with one `kid` refuse the whole document: which one a token means
    /// would be a guess.
    pub fn parse(
        document: &[u8],
        algorithms: &[Algorithm],
        previous: &KeySet,
    ) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(document)
            .map_err(|error| format!("not a JWKS document: {error}"))?;
        let mut keys = HashMap::new();
        let mut kids = std::collections::HashSet::new();
        for value in document.keys {
            if let Some(kid) = value.get("kid").and_then(serde_json::Value::as_str)
                && !kids.insert(kid.to_owned())
            {
                return Err(format!("two keys have the kid '{kid}'"));
            }
            // A key of a type this crate does not know is skipped, not fatal.
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            match usable_key(jwk, algorithms) {
                Ok(key) if keys.len() < KEYS_MAX => {
                    let key = match previous.get(&key.kid) {
                        Some(held) if held.jwk == key.jwk => held.clone(),
                        _ => Arc::new(key),
                    };
                    keys.insert(key.kid.clone(), key);
                }
                Ok(key) => tracing::warn!(kid = %key.kid, "JWKS key over the limit ignored"),
                Err(reason) => tracing::debug!(reason, "JWKS key ignored"),
            }
        }
        Ok(Self { keys })
    }
}

/// The key `jwk` describes, when a token could be verified with it.
fn usable_key(jwk: Jwk, algorithms: &[Algorithm]) -> Result<Key, &'static str> {
    let kid: Box<str> = jwk.common.key_id.as_deref().ok_or("no kid")?.into();
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signing key");
    }
    let key_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyType::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyType::EcP256,
            EllipticCurve::P384 => KeyType::EcP384,
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            KeyType::Ed25519
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported curve"),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric key"),
    };
    let algorithm = match jwk.common.key_algorithm {
        None => None,
        Some(named) => Some(
            named
                .to_string()
                .parse::<Algorithm>()
                .map_err(|_| "not a signature algorithm")?,
        ),
    };
    let is_usable = |alg: &Algorithm| {
        KeyType::for_algorithm(*alg) == Some(key_type) && algorithm.is_none_or(|own| own == *alg)
    };
    if !algorithms.iter().any(is_usable) {
        return Err("no allowed algorithm uses this key");
    }
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| "malformed key")?;
    Ok(Key {
        kid,
        key_type,
        algorithm,
        decoding,
        jwk,
    })
}

/// Where the keys come from.
pub enum Source {
    /// An `http(s)://` URL.
    Url {
        /// The JWKS URL.
        uri: http::Uri,
        /// The client (TLS with the platform's roots for `https`).
        client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    },
    /// A file, re-read when its modification time or size changes.
    File {
        /// The file.
        path: PathBuf,
        /// Modification time and size when last read.
        seen: std::sync::Mutex<Option<(SystemTime, u64)>>,
    },
}

impl Source {
    /// A source for a URL.
    pub fn url(uri: http::Uri) -> Result<Self, String> {
        let builder = HttpsConnectorBuilder::new();
        let builder = if uri.scheme_str() == Some("https") {
            builder
                .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
                .map_err(|error| format!("no TLS root certificates: {error}"))?
        } else {
            builder.with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|error| error.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self::Url { uri, client })
    }

    /// A source for a file.
    pub fn file(path: PathBuf) -> Self {
        Self::File {
            path,
            seen: std::sync::Mutex::new(None),
        }
    }

    /// How long the refresher sleeps between unprompted looks.
    pub fn poll_interval(&self) -> Duration {
        match self {
            Self::Url { .. } => JWKS_REFRESH_INTERVAL,
            Self::File { .. } => JWKS_FILE_POLL_INTERVAL,
        }
    }

    /// Whether an unprompted look should read the keys again: always for a
    /// URL, only after a change for a file.
    pub fn has_changed(&self) -> bool {
        match self {
            Self::Url { .. } => true,
            Self::File { path, seen } => {
                let stamp = file_stamp(path);
                let seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                stamp.is_some() && stamp != *seen
            }
        }
    }

    /// The JWKS document, or why it could not be had.
    pub async fn fetch(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::Url { uri, client } => {
                tokio::time::timeout(FETCH_TIMEOUT, fetch_url(client, uri))
                    .await
                    .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
            }
            Self::File { path, seen } => {
                let stamp = file_stamp(path);
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|error| format!("{}: {error}", path.display()))?;
                if bytes.len() > JWKS_BYTES_MAX {
                    return Err(format!("larger than {JWKS_BYTES_MAX} bytes"));
                }
                *seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = stamp;
                Ok(bytes)
            }
        }
    }
}

async fn fetch_url(
    client: &Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    uri: &http::Uri,
) -> Result<Vec<u8>, String> {
    let response = client
        .get(uri.clone())
        .await
        .map_err(|error| format!("{uri}: {error}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("{uri}: status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), JWKS_BYTES_MAX)
        .collect()
        .await
        .map_err(|error| format!("{uri}: {error}"))?;
    Ok(body.to_bytes().to_vec())
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
