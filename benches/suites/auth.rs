//! Bearer token verification: a token's first request (signature and
//! claims, RS256 and ES256) against a cached one (a keyed digest and a
//! lookup), as `Verifier` does them. Keys are made with the `openssl` CLI.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;

use criterion::{Criterion, Throughput, criterion_group};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use saldos::auth::keys::Source;
use saldos::auth::{Settings, Verifier};

const ISSUER: &str = "https://issuer.bench";
const AUDIENCE: &str = "saldos";

/// A fresh private key (`genpkey` options), its encoding key and public JWK.
fn key(dir: &Path, kid: &str, algorithm: Algorithm, options: &[&str]) -> (EncodingKey, Jwk) {
    let path = dir.join(format!("{kid}.pem"));
    let status = Command::new("openssl")
        .args(["genpkey", "-out"])
        .arg(&path)
        .args(options)
        .status()
        .expect("the openssl CLI runs");
    assert!(status.success());
    let pem = std::fs::read(&path).unwrap();
    let encoding = match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    (encoding, jwk)
}

fn token(encoding: &EncodingKey, algorithm: Algorithm, kid: &str) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.into());
    let exp = saldos::clock::unix_ms() / 1000 + 3600;
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "usuario1", "exp": exp,
        "scope": "openid saldos:read",
    });
    jsonwebtoken::encode(&header, &claims, encoding).unwrap()
}

fn bench_verification(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_jwk) = key(
        dir.path(),
        "rsa",
        Algorithm::RS256,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec, ec_jwk) = key(
        dir.path(),
        "ec",
        Algorithm::ES256,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let jwks_path = dir.path().join("jwks.json");
    let jwks = JwkSet {
        keys: vec![rsa_jwk, ec_jwk],
    };
    std::fs::write(&jwks_path, serde_json::to_string(&jwks).unwrap()).unwrap();
    let settings = Settings {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        leeway: std::time::Duration::from_secs(30),
    };
    let verifier = runtime
        .block_on(Verifier::start(settings, Source::file(jwks_path)))
        .unwrap();
    let rs256 = token(&rsa, Algorithm::RS256, "rsa");
    let es256 = token(&ec, Algorithm::ES256, "ec");
    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));
    for (name, token) in [("verify_cold_rs256", &rs256), ("verify_cold_es256", &es256)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                black_box(verifier.verify_uncached(black_box(token)).await.unwrap())
            })
        });
    }
    runtime.block_on(verifier.verify(&rs256)).unwrap();
    group.bench_function("verify_cached", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(verifier.verify(black_box(&rs256)).await.unwrap()) })
    });
    group.finish();
}

criterion_group!(benches, bench_verification);
