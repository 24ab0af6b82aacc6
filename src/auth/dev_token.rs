//! `saldos dev-token`: DEVELOPMENT ONLY. Signs an access token with a local
//! private key (PEM), or prints that key's public JWKS, so a developer (and
//! CI) can run the service with `--auth jwt --jwks-file` without an issuer.
//! A real deployment's tokens come from its issuer (Cognito, any OIDC
//! provider); nothing here is used by the service itself.

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::keys::KeyType;
use crate::clock;
use crate::config::DevTokenArgs;

/// The token (or, with `--jwks`, the JWKS) the arguments ask for.
pub fn run(args: &DevTokenArgs) -> Result<String, String> {
    let pem = std::fs::read(&args.key)
        .map_err(|error| format!("--key {}: {error}", args.key.display()))?;
    let key = encoding_key(&pem, args.algorithm)?;
    if args.jwks {
        jwks(&key, args)
    } else {
        token(&key, args)
    }
}

fn encoding_key(pem: &[u8], algorithm: Algorithm) -> Result<EncodingKey, String> {
    let key = match KeyType::for_algorithm(algorithm) {
        Some(KeyType::Rsa) => EncodingKey::from_rsa_pem(pem),
        Some(KeyType::EcP256 | KeyType::EcP384) => EncodingKey::from_ec_pem(pem),
        Some(KeyType::Ed25519) => EncodingKey::from_ed_pem(pem),
        None => return Err(format!("--algorithm {algorithm:?} is refused (HMAC)")),
    };
    key.map_err(|error| format!("--key is not a {algorithm:?} private key: {error}"))
}

fn jwks(key: &EncodingKey, args: &DevTokenArgs) -> Result<String, String> {
    if args.algorithm == Algorithm::EdDSA {
        return Err("--jwks supports RSA and EC keys".into());
    }
    let mut jwk = Jwk::from_encoding_key(key, args.algorithm)
        .map_err(|error| format!("cannot derive the public key: {error}"))?;
    jwk.common.key_id = Some(args.kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    serde_json::to_string(&JwkSet { keys: vec![jwk] }).map_err(|error| error.to_string())
}

fn token(key: &EncodingKey, args: &DevTokenArgs) -> Result<String, String> {
    let now_s = clock::unix_ms() / 1000;
    let mut claims = serde_json::json!({
        "iss": args.issuer,
        "aud": args.audience,
        "iat": now_s,
        "exp": now_s + args.ttl.as_secs(),
    });
    let optional = [
        ("sub", &args.sub),
        ("client_id", &args.client_id),
        ("scope", &args.scope),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            claims[name] = value.as_str().into();
        }
    }
    let mut header = Header::new(args.algorithm);
    header.kid = Some(args.kid.clone());
    jsonwebtoken::encode(&header, &claims, key).map_err(|error| error.to_string())
}
