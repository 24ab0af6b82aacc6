//! Test support for authentication: key pairs made at test time with the
//! `openssl` CLI (nothing private is committed), JWKS documents for them, a
//! JWKS server on loopback that can change its keys or go away, and tokens
//! with any claims.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ISSUER: &str = "https://issuer.test/pool";
pub const AUDIENCE: &str = "saldos-api";

/// A private key, its algorithm and its `kid`.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub encoding: EncodingKey,
    /// The public key in PEM (for the HS256-with-the-public-key attack).
    pub public_pem: Vec<u8>,
}

/// Runs `openssl` with `args`, returning its stdout.
fn openssl(args: &[&str], input: Option<&Path>) -> Vec<u8> {
    let mut command = Command::new("openssl");
    command.args(args);
    if let Some(input) = input {
        command.arg("-in").arg(input);
    }
    let output = command.output().expect("the openssl CLI runs");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
    output.stdout
}

impl SigningKey {
    /// A fresh RSA 2048 key (RS256).
    pub fn rsa(kid: &str) -> Self {
        Self::generate(
            kid,
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        )
    }

    /// A fresh EC P-256 key (ES256).
    pub fn ec(kid: &str) -> Self {
        Self::generate(
            kid,
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    fn generate(kid: &str, algorithm: Algorithm, options: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.pem");
        std::fs::write(&private, openssl(&[&["genpkey"], options].concat(), None)).unwrap();
        let private_pem = std::fs::read(&private).unwrap();
        let public_pem = openssl(&["pkey", "-pubout"], Some(&private));
        let encoding = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private_pem),
            _ => EncodingKey::from_ec_pem(&private_pem),
        }
        .unwrap();
        Self {
            kid: kid.into(),
            algorithm,
            encoding,
            public_pem,
        }
    }

    /// The public JWK, with `kid` and `use: sig`.
    pub fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.algorithm).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk
    }

    /// A token with `claims`, signed by this key and naming it.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.algorithm, &self.kid, claims)
    }

    /// A token signed by this key whose header says `algorithm` and `kid`.
    pub fn sign_as(&self, algorithm: Algorithm, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.into());
        self.sign_with(&header, claims)
    }

    /// A token signed by this key with `header` as is.
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }
}

/// The JWKS document of `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|key| key.jwk()).collect(),
    })
    .unwrap()
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    (saldos::clock::unix_ms() / 1000) as i64
}

/// Valid claims for a customer whose account is `sub`.
pub fn customer(sub: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now_s() + 600})
}

/// Valid claims for a service client with `scope`.
pub fn service(client_id: &str, scope: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": client_id, "client_id": client_id,
           "scope": scope, "exp": now_s() + 600})
}

/// The server flags for JWT authentication with keys from `source`
/// (`--jwks-url` or `--jwks-file`) at `location`.
pub fn jwt_flags(source: &str, location: &str) -> Vec<String> {
    [
        "--auth",
        "jwt",
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
        source,
        location,
    ]
    .map(String::from)
    .to_vec()
}

/// A JWKS server on loopback: answers every request with the current
/// document; `stop` closes it for good.
pub struct JwksServer {
    pub url: String,
    document: Arc<Mutex<String>>,
    /// Requests answered.
    pub fetches: Arc<Mutex<u32>>,
    task: JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(document: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(Mutex::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let body = served.lock().unwrap().clone();
                *counted.lock().unwrap() += 1;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        Self {
            url: format!("http://{address}/.well-known/jwks.json"),
            document,
            fetches,
            task,
        }
    }

    /// Serves `document` from now on.
    pub fn serve(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    pub fn fetches(&self) -> u32 {
        *self.fetches.lock().unwrap()
    }

    /// Stops answering: the port is closed.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
