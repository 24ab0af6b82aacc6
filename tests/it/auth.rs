//! Authentication and authorization (SPEC section 6) against the real
//! server: keys made in the test, a JWKS served on loopback, every 401 and
//! 403 case, the allowed ones, where they sit in the error order, key
//! rotation and outages, idempotency keys per principal, and the principal in
//! the journal across a restart and in the PostgreSQL audit trail.

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::auth_support::{
    AUDIENCE, ISSUER, JwksServer, SigningKey, customer, jwks, jwt_flags, now_s, service,
};
use crate::pg_cluster;
use crate::util::{Backend, Client, Reply, TestServer, error_body, postgres_args, start_server};

const CHALLENGE: &str = r#"Bearer realm="saldos""#;
const CHALLENGE_INVALID: &str = r#"Bearer realm="saldos", error="invalid_token""#;

/// The server flags plus `extra`, as `start_server` takes them.
async fn start_with(jwks_url: &str, extra: &[&str]) -> TestServer {
    let mut flags = jwt_flags("--jwks-url", jwks_url);
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_server(&flags).await
}

/// Journal storage in `dir` with 4 KiB segments: rotations and snapshots
/// every few debits, segments removed as soon as a snapshot covers them.
fn tiny_segments_in(dir: &str) -> [&str; 8] {
    [
        "--storage",
        "journal",
        "--data-dir",
        dir,
        "--journal-segment-bytes",
        "4096",
        // Segments behind a snapshot are kept for the feed otherwise.
        "--events-retention",
        "0s",
    ]
}

/// A `POST` with `token`, `body` and an optional idempotency key.
async fn post(
    client: &mut Client,
    path: &str,
    token: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> Reply {
    send(client, "POST", path, Some(token), body, key).await
}

/// The status of `GET path` with `token`.
async fn status_of(client: &mut Client, path: &str, token: &str) -> u16 {
    send(client, "GET", path, Some(token), None, None)
        .await
        .status
}

/// A request with an optional bearer token and idempotency key.
async fn send(
    client: &mut Client,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    key: Option<&str>,
) -> Reply {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(authorization) = &authorization {
        headers.push(("Authorization", authorization));
    }
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    client.request(method, path, &headers, body).await
}

fn assert_unauthenticated(reply: &Reply, challenge: &str, case: &str) {
    assert_eq!(reply.status, 401, "{case}: {}", reply.text());
    assert_eq!(
        reply.text(),
        error_body("Se requiere un token de acceso válido.", "NO_AUTENTICADO"),
        "{case}"
    );
    assert_eq!(reply.header("www-authenticate"), Some(challenge), "{case}");
}

fn assert_forbidden(reply: &Reply, case: &str) {
    assert_eq!(reply.status, 403, "{case}: {}", reply.text());
    assert_eq!(
        reply.text(),
        error_body("El token no permite esta operación.", "PROHIBIDO"),
        "{case}"
    );
}

/// Asserts the balance `GET /saldo/{usuario}` shows with `token`.
async fn assert_saldo(client: &mut Client, token: &str, usuario: &str, saldo: u64) {
    let path = format!("/saldo/{usuario}");
    let reply = send(client, "GET", &path, Some(token), None, None).await;
    let expected = format!(r#"{{"usuario":"{usuario}","saldo":{saldo}}}"#);
    assert_eq!((reply.status, reply.text()), (200, expected.as_str()));
}

/// A first-time debit's answer: 200, not replayed, with `nuevo_saldo`.
fn assert_fresh(reply: &Reply, nuevo_saldo: u64) {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("idempotent-replayed"), None);
    let expected = format!(r#""nuevo_saldo":{nuevo_saldo}}}"#);
    assert!(reply.text().ends_with(&expected), "{}", reply.text());
}

/// `reply` replays `first`, byte for byte.
fn assert_replayed(reply: &Reply, first: &Reply) {
    assert_eq!(reply.header("idempotent-replayed"), Some("true"));
    assert_eq!(reply.body, first.body);
}

fn with(claims: &Value, changes: Value) -> Value {
    let mut claims = claims.clone();
    for (name, value) in changes.as_object().unwrap() {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(name),
            _ => claims
                .as_object_mut()
                .unwrap()
                .insert(name.clone(), value.clone()),
        };
    }
    claims
}

/// `signed` with its header replaced by `{"alg":"none","typ":"JWT","kid":"rsa"}`
/// and its signature dropped (RFC 7519's "unsecured" JWT).
fn unsecured(signed: &str) -> String {
    const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIiwia2lkIjoicnNhIn0";
    let claims = signed.split('.').nth(1).unwrap();
    format!("{NONE_HEADER}.{claims}.")
}

// Every way a bearer token can fail: 401, the same body, the challenge with
// `error` only when a token was sent; nothing about why, which is counted in
// `saldos_auth_refusals_total` by reason instead.
#[tokio::test]
async fn every_invalid_token_is_401_and_counted_by_reason() {
    let (rsa, ec, stranger) = (
        SigningKey::rsa("rsa"),
        SigningKey::ec("ec"),
        SigningKey::rsa("rsa"),
    );
    let jwks_server = JwksServer::start(jwks(&[&rsa, &ec])).await;
    let server = start_with(&jwks_server.url, &[]).await;
    let mut client = server.client().await;
    let before = crate::metrics::scrape(&server).await;
    let claims = customer("usuario1");
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa".into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&rsa.public_pem)).unwrap()
    };
    let critical = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa".into());
        header.crit = Some(vec!["exp".into()]);
        rsa.sign_with(&header, &claims)
    };
    let changed = |changes: Value| Some(rsa.sign(&with(&claims, changes)));
    let now = now_s() as f64;
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no header", None, "missing"),
        ("malformed", Some("not-a-jwt".into()), "malformed"),
        ("three garbage parts", Some("a.b.c".into()), "malformed"),
        ("bad signature", Some(stranger.sign(&claims)), "signature"),
        ("expired", changed(json!({"exp": now_s() - 120})), "expired"),
        (
            "expired, fractional",
            changed(json!({"exp": now - 120.5})),
            "expired",
        ),
        (
            "not yet valid",
            changed(json!({"nbf": now_s() + 120})),
            "not_yet_valid",
        ),
        (
            "not yet valid, fractional",
            changed(json!({"nbf": now + 120.5})),
            "not_yet_valid",
        ),
        ("no exp", changed(json!({"exp": null})), "claims"),
        (
            "wrong issuer",
            changed(json!({"iss": "https://evil.test"})),
            "issuer",
        ),
        (
            "issuer in an array",
            changed(json!({"iss": [ISSUER, "https://evil.test"]})),
            "issuer",
        ),
        (
            "issuer alone in an array",
            changed(json!({"iss": [ISSUER]})),
            "issuer",
        ),
        (
            "wrong audience",
            changed(json!({"aud": "other-api"})),
            "audience",
        ),
        (
            "audience array without ours",
            changed(json!({"aud": ["a", "b"]})),
            "audience",
        ),
        ("no principal", changed(json!({"sub": null})), "claims"),
        ("a crit header", Some(critical), "crit"),
        ("alg none", Some(unsecured(&rsa.sign(&claims))), "malformed"),
        (
            "HS256 signed with the RSA public key",
            Some(hs256_with_public_key),
            "algorithm",
        ),
        (
            "unknown kid",
            Some(rsa.sign_as(Algorithm::RS256, "nobody", &claims)),
            "unknown_kid",
        ),
        (
            "RS256 naming the EC key",
            Some(rsa.sign_as(Algorithm::RS256, "ec", &claims)),
            "algorithm",
        ),
        (
            "ES256 naming the RSA key",
            Some(ec.sign_as(Algorithm::ES256, "rsa", &claims)),
            "algorithm",
        ),
        (
            "RS384, not allowed",
            Some(rsa.sign_as(Algorithm::RS384, "rsa", &claims)),
            "algorithm",
        ),
    ];
    let mut expected: BTreeMap<BTreeMap<String, String>, f64> = BTreeMap::new();
    for (case, token, reason) in &cases {
        let challenge = if token.is_some() {
            CHALLENGE_INVALID
        } else {
            CHALLENGE
        };
        for (method, path, body) in [
            ("GET", "/saldo/usuario1", None),
            (
                "POST",
                "/retiro",
                Some(r#"{"usuario":"usuario1","monto":1}"#),
            ),
        ] {
            let reply = send(&mut client, method, path, token.as_deref(), body, None).await;
            assert_unauthenticated(&reply, challenge, case);
            *expected.entry(reason_label(reason)).or_default() += 1.0;
        }
    }
    // Another scheme is no bearer token at all.
    let reply = client
        .request(
            "GET",
            "/saldo/usuario1",
            &[("Authorization", "Basic dXNlcjpwYXNz")],
            None,
        )
        .await;
    assert_unauthenticated(&reply, CHALLENGE, "wrong scheme");
    *expected.entry(reason_label("missing")).or_default() += 1.0;
    // A valid token for another account: 403, counted as such.
    let other = rsa.sign(&customer("usuario2"));
    assert_forbidden(
        &send(
            &mut client,
            "GET",
            "/saldo/usuario1",
            Some(&other),
            None,
            None,
        )
        .await,
        "another account",
    );
    *expected.entry(reason_label("forbidden")).or_default() += 1.0;
    let after = crate::metrics::scrape(&server).await;
    assert_eq!(
        after.deltas(&before, "saldos_auth_refusals_total"),
        expected
    );
    // Nothing was debited by any of them.
    let token = rsa.sign(&claims);
    assert_saldo(&mut client, &token, "usuario1", 10_000).await;
}

/// The label set `{reason="<reason>"}`.
fn reason_label(reason: &str) -> BTreeMap<String, String> {
    [("reason".to_owned(), reason.to_owned())].into()
}

// Every issuer's dialect that SPEC section 6 accepts: `scp` as a
// space-separated string (Entra ID) grants like the array; NumericDates
// with fractions in `exp` and `nbf`; the scheme in any case followed by
// several spaces (RFC 7235: `1*SP`).
#[tokio::test]
async fn every_issuers_dialect_is_understood() {
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let server = start_with(&jwks_server.url, &[]).await;
    let mut client = server.client().await;
    let now = now_s() as f64;
    let entra = rsa.sign(&with(
        &service("entra-app", ""),
        json!({"scope": null, "scp": "openid saldos:read saldos:debit"}),
    ));
    let fractional = rsa.sign(&with(
        &customer("usuario1"),
        json!({"exp": now + 600.25, "nbf": now - 10.75, "iat": now - 10.75}),
    ));
    let debit = Some(r#"{"usuario":"usuario2","monto":1}"#);
    let reply = post(&mut client, "/retiro", &entra, debit, None).await;
    assert_fresh(&reply, 14_999);
    assert_saldo(&mut client, &entra, "usuario3", 5_000).await;
    assert_saldo(&mut client, &fractional, "usuario1", 10_000).await;
    for scheme in ["Bearer  ", "bearer   ", "BEARER "] {
        let authorization = format!("{scheme}{fractional}");
        let reply = client
            .request(
                "GET",
                "/saldo/usuario1",
                &[("Authorization", &authorization)],
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{scheme:?}: {}", reply.text());
    }
}

// A head over 16 KiB (a huge bearer token, say) or 64 headers is refused
// before any route, and still with the SPEC's JSON error and a request id;
// the connection closes, others are unaffected.
#[tokio::test]
async fn an_oversized_head_gets_the_json_431_with_a_request_id() {
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let server = start_with(&jwks_server.url, &[]).await;
    let huge_token = format!("Authorization: Bearer {}\r\n", "a".repeat(17 * 1024));
    let many_headers: String = (0..65).map(|n| format!("X-H{n}: v\r\n")).collect();
    for (case, headers) in [("huge token", huge_token), ("65 headers", many_headers)] {
        let mut client = server.client().await;
        let head = format!("GET /saldo/usuario1 HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
        client.send_raw(head.as_bytes()).await;
        let reply = client.read_reply(false).await;
        assert_eq!(reply.status, 431, "{case}");
        assert_eq!(
            reply.text(),
            error_body(
                "Las cabeceras exceden el tamaño máximo permitido.",
                "CABECERAS_DEMASIADO_GRANDES"
            ),
            "{case}"
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert!(
            reply
                .header("x-request-id")
                .is_some_and(|id| !id.is_empty()),
            "{case}: {:?}",
            reply.headers
        );
        assert!(
            client.is_closed_within(Duration::from_secs(5)).await,
            "{case}"
        );
    }
    assert_eq!(server.client().await.get("/health").await.status, 200);
}

// 401 comes right after 404/405 and before every body check; health probes
// need no token.
#[tokio::test]
async fn authentication_sits_after_404_405_and_before_the_body() {
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let server = start_with(&jwks_server.url, &[]).await;
    let mut client = server.client().await;
    assert_eq!(client.get("/nope").await.status, 404);
    assert_eq!(
        client.request("DELETE", "/pago", &[], None).await.status,
        405
    );
    for path in ["/health", "/health/live"] {
        assert_eq!(client.get(path).await.status, 200, "{path}");
    }
    // Wrong media type, invalid JSON, an invalid key header: still 401.
    let unauthenticated = [
        client
            .request(
                "POST",
                "/pago",
                &[("Content-Type", "text/plain")],
                Some("x"),
            )
            .await,
        client.post("/pago", "{").await,
        client
            .request(
                "POST",
                "/pago",
                &[
                    ("Content-Type", "application/json"),
                    ("Idempotency-Key", ""),
                ],
                Some("{}"),
            )
            .await,
    ];
    for reply in &unauthenticated {
        assert_unauthenticated(reply, CHALLENGE, "before the body");
    }
    // With a valid token, body errors come back as before.
    let token = rsa.sign(&customer("usuario1"));
    let reply = send(&mut client, "POST", "/pago", Some(&token), Some("{"), None).await;
    assert_eq!(reply.status, 400);
}

// Who may do what: the own account, or the service scopes; 403 comes
// before SALDO_INSUFICIENTE (no balance shown) and changes nothing.
#[tokio::test]
async fn authorization_follows_sub_and_scopes() {
    let (rsa, ec) = (SigningKey::rsa("rsa"), SigningKey::ec("ec"));
    let jwks_server = JwksServer::start(jwks(&[&rsa, &ec])).await;
    let server = start_with(&jwks_server.url, &["--jwt-algorithms", "RS256,ES256"]).await;
    let mut client = server.client().await;
    let read = |usuario: &str| (format!("/saldo/{usuario}"), None);
    let debit = |usuario: &str, monto: u64| {
        let body = format!(r#"{{"usuario":"{usuario}","monto":{monto}}}"#);
        ("/retiro".to_owned(), Some(body))
    };
    let ana = rsa.sign(&customer("usuario1"));
    let ana_ec = ec.sign(&customer("usuario1"));
    let reader = rsa.sign(&service("reportes", "openid saldos:read"));
    let payer = rsa.sign(&with(
        &service("pagos", ""),
        json!({"scope": null, "scp": ["saldos:debit"]}),
    ));
    let array_audience = rsa.sign(&with(
        &customer("usuario2"),
        json!({"aud": ["x", AUDIENCE]}),
    ));
    type Case<'a> = (&'a str, &'a str, (String, Option<String>), u16);
    let cases: Vec<Case> = vec![
        ("own balance", &ana, read("usuario1"), 200),
        ("own balance, ES256", &ana_ec, read("usuario1"), 200),
        ("other balance", &ana, read("usuario2"), 403),
        ("own debit", &ana, debit("usuario1", 1), 200),
        ("other debit", &ana, debit("usuario2", 1), 403),
        (
            "other debit over the balance",
            &ana,
            debit("usuario2", 999_999),
            403,
        ),
        ("read scope reads any", &reader, read("usuario3"), 200),
        (
            "read scope cannot debit",
            &reader,
            debit("usuario3", 1),
            403,
        ),
        ("debit scope debits any", &payer, debit("usuario3", 1), 200),
        ("debit scope cannot read", &payer, read("usuario3"), 403),
        ("audience array", &array_audience, read("usuario2"), 200),
    ];
    for (case, token, (path, body), status) in &cases {
        let method = if body.is_some() { "POST" } else { "GET" };
        let reply = send(
            &mut client,
            method,
            path,
            Some(token),
            body.as_deref(),
            None,
        )
        .await;
        match status {
            403 => assert_forbidden(&reply, case),
            _ => assert_eq!(reply.status, *status, "{case}: {}", reply.text()),
        }
    }
    // Only the two allowed debits of 1 happened.
    for (usuario, saldo) in [
        ("usuario1", 9_999),
        ("usuario2", 15_000),
        ("usuario3", 4_999),
    ] {
        assert_saldo(&mut client, &reader, usuario, saldo).await;
    }
}

// An idempotency key is its principal's: the same key from two principals
// is two debits; a 401 or 403 remembers nothing.
#[tokio::test]
async fn idempotency_keys_are_per_principal_and_not_kept_on_refusals() {
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let server = start_with(&jwks_server.url, &[]).await;
    let mut client = server.client().await;
    let body = Some(r#"{"usuario":"usuario1","monto":100}"#);
    let expired = rsa.sign(&with(&customer("usuario1"), json!({"exp": now_s() - 600})));
    let reader = rsa.sign(&service("pagos", "saldos:read"));
    let payer = rsa.sign(&service("pagos", "saldos:debit"));
    let ana = rsa.sign(&customer("usuario1"));
    // Refused first, with the key: 401, then 403 (same principal as `payer`).
    let reply = post(&mut client, "/retiro", &expired, body, Some("k1")).await;
    assert_eq!(reply.status, 401);
    let reply = post(&mut client, "/retiro", &reader, body, Some("k1")).await;
    assert_forbidden(&reply, "read scope with a key");
    assert_keys_are_per_principal(&mut client, &payer, &ana).await;
}

/// Key `k1` on a fresh `usuario1` (10,000): new for `payer`, then replayed
/// for `payer` only; `ana`'s own `k1` is another key, another debit.
async fn assert_keys_are_per_principal(client: &mut Client, payer: &str, ana: &str) {
    let body = Some(r#"{"usuario":"usuario1","monto":100}"#);
    let first = post(client, "/retiro", payer, body, Some("k1")).await;
    assert_fresh(&first, 9900);
    let again = post(client, "/retiro", payer, body, Some("k1")).await;
    assert_replayed(&again, &first);
    let own = post(client, "/retiro", ana, body, Some("k1")).await;
    assert_fresh(&own, 9800);
}

// With PostgreSQL storage the principal is the key's scope and each audit
// row's author: the same key from two principals is two debits, each row
// names who made it.
#[tokio::test]
async fn postgres_scopes_keys_and_audits_debits_by_principal() {
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let (url, _, database) = pg_cluster::shared().create_database_with_admin().await;
    let args = postgres_args(&url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = start_with(&jwks_server.url, &args).await;
    let mut client = server.client().await;
    let payer = rsa.sign(&service("pagos", "saldos:debit"));
    let ana = rsa.sign(&customer("usuario1"));
    assert_keys_are_per_principal(&mut client, &payer, &ana).await;
    let rows = database
        .query(
            "SELECT principal, idempotency_key, saldo FROM debits ORDER BY saldo DESC",
            &[],
        )
        .await
        .unwrap();
    let audited: Vec<(String, Option<String>, i64)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        audited,
        [
            ("service:pagos".to_owned(), Some("k1".to_owned()), 9900),
            ("customer:usuario1".to_owned(), Some("k1".to_owned()), 9800),
        ]
    );
}

// A customer and a service client are two principals even when the
// customer's `sub` is the service's `client_id`: the customer can neither
// replay the service's remembered answer nor pre-claim its key, and the
// other way round; the audit trail tells them apart (`customer:`,
// `service:`).
async fn kinds_never_collide(backend: Backend) {
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let (storage, database) = match backend {
        Backend::Memory => (Vec::new(), None),
        Backend::Postgres => {
            let (url, _, database) = pg_cluster::shared().create_database_with_admin().await;
            (postgres_args(&url), Some(database))
        }
    };
    let storage: Vec<&str> = storage.iter().map(String::as_str).collect();
    let server = start_with(&jwks_server.url, &storage).await;
    let mut client = server.client().await;
    let customer_token = rsa.sign(&customer("pagos"));
    let service_token = rsa.sign(&with(
        &service("pagos", "saldos:debit"),
        json!({"sub": null}),
    ));
    let body = Some(r#"{"usuario":"pagos","monto":100}"#);
    // The customer's key first: the service's same key is another debit.
    let first = post(&mut client, "/retiro", &customer_token, body, Some("k1")).await;
    assert_fresh(&first, 99_900);
    let other = post(&mut client, "/retiro", &service_token, body, Some("k1")).await;
    assert_fresh(&other, 99_800);
    // The service's key first: the customer does not get its answer.
    let first = post(&mut client, "/retiro", &service_token, body, Some("k2")).await;
    assert_fresh(&first, 99_700);
    let other = post(&mut client, "/retiro", &customer_token, body, Some("k2")).await;
    assert_fresh(&other, 99_600);
    // Each still replays its own.
    let again = post(&mut client, "/retiro", &service_token, body, Some("k2")).await;
    assert_replayed(&again, &first);
    let Some(database) = database else {
        return;
    };
    let rows = database
        .query(
            "SELECT principal, idempotency_key FROM debits ORDER BY saldo DESC",
            &[],
        )
        .await
        .unwrap();
    let audited: Vec<(String, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let row = |principal: &str, key: &str| (principal.to_owned(), key.to_owned());
    assert_eq!(
        audited,
        [
            row("customer:pagos", "k1"),
            row("service:pagos", "k1"),
            row("service:pagos", "k2"),
            row("customer:pagos", "k2"),
        ]
    );
}

crate::util::contract_tests!(kinds_never_collide);

// PostgreSQL across the upgrade to kinded principals (migration 3): a key
// remembered under a bare name by the version before replays for the kind
// its retry's token names (never debited twice), and a claim under a bare
// name (an instance of the version before, still running during a rolling
// deploy) is refused rather than missed.
#[tokio::test]
async fn postgres_keys_of_bare_names_survive_the_upgrade_to_kinds() {
    const MIGRATION_3: &str =
        include_str!("../../src/postgres/migrations/0003_principal_kinds.sql");
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let (url, _, database) = pg_cluster::shared().create_database_with_admin().await;
    // Back to schema 2, with a key its version remembered, then upgraded.
    database
        .batch_execute(
            "DROP TRIGGER idempotency_keys_kinded ON idempotency_keys; \
             DROP FUNCTION saldos_refuse_kindless_key(); \
             DELETE FROM saldos_migrations WHERE version = 3",
        )
        .await
        .unwrap();
    let body = r#"{"usuario":"usuario1","monto":100}"#;
    let fingerprint = saldos::idempotency::fingerprint("POST", "/retiro", body.as_bytes()) as i64;
    let remember = |principal: &'static str, key: &'static str| {
        let database = &database;
        async move {
            database
                .execute(
                    "INSERT INTO idempotency_keys (principal, key, fingerprint, kind, usuario, \
                     monto, debited, saldo, created_at, expires_at) VALUES ($1, $2, $3, \
                     'retiro', 'usuario1', 100, true, 9900, now(), now() + interval '1 hour')",
                    &[&principal, &key, &fingerprint],
                )
                .await
        }
    };
    remember("pagos", "antes").await.unwrap();
    database.batch_execute(MIGRATION_3).await.unwrap();
    database
        .execute(
            "INSERT INTO saldos_migrations (version, name) VALUES (3, 'principal_kinds')",
            &[],
        )
        .await
        .unwrap();
    let refused = remember("pagos", "durante").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
        "{refused}"
    );

    let args = postgres_args(&url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = start_with(&jwks_server.url, &args).await;
    let mut client = server.client().await;
    let payer = rsa.sign(&with(
        &service("pagos", "saldos:read saldos:debit"),
        json!({"sub": null}),
    ));
    let retry = post(&mut client, "/retiro", &payer, Some(body), Some("antes")).await;
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert!(
        retry.text().ends_with(r#""nuevo_saldo":9900}"#),
        "{}",
        retry.text()
    );
    assert_saldo(&mut client, &payer, "usuario1", 10_000).await;
}

// The principal is recorded with the debit: after a restart the key is
// still the principal's (replayed for it, new for another), and the
// journal holds the principal's name. Tiny segments put the key's record
// behind a snapshot, so it comes back from there.
#[tokio::test]
async fn the_principal_survives_a_restart_in_the_journal() {
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().to_str().unwrap();
    let flags = tiny_segments_in(dir);
    let payer = rsa.sign(&service("pagos-servicio-7", "saldos:debit"));
    let other = rsa.sign(&service("tesoreria", "saldos:debit"));
    let body = Some(r#"{"usuario":"usuario3","monto":10}"#);
    let server = start_with(&jwks_server.url, &flags).await;
    let mut client = server.client().await;
    let first = post(&mut client, "/pago", &payer, body, Some("k")).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let one = Some(r#"{"usuario":"usuario3","monto":1}"#);
    for _ in 0..100 {
        let reply = send(&mut client, "POST", "/pago", Some(&payer), one, None).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    drop(client);
    server.shutdown().await;
    let names: Vec<String> = std::fs::read_dir(data_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let has_snapshot = names.iter().any(|name| name.ends_with(".snap"));
    let has_first_segment = names.iter().any(|name| name.ends_with("001.log"));
    assert!(
        has_snapshot && !has_first_segment,
        "no snapshot replaced segment 1: {names:?}"
    );
    let journal: Vec<u8> = std::fs::read_dir(data_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "log" || ext == "snap")
        })
        .flat_map(|path| std::fs::read(path).unwrap())
        .collect();
    assert!(
        journal.windows(16).any(|w| w == b"pagos-servicio-7"),
        "principal not in the journal"
    );

    let server = start_with(&jwks_server.url, &flags).await;
    let mut client = server.client().await;
    let replay = post(&mut client, "/pago", &payer, body, Some("k")).await;
    assert_replayed(&replay, &first);
    let fresh = post(&mut client, "/pago", &other, body, Some("k")).await;
    assert_fresh(&fresh, 4880);
}

// The issuer rotates its keys: a token with the new kid is accepted after a
// refresh (no restart), and tokens of the key that left are refused even
// though they were cached.
#[tokio::test]
async fn key_rotation_needs_no_restart() {
    let (old, new) = (SigningKey::rsa("2026-11"), SigningKey::rsa("2026-12"));
    let jwks_server = JwksServer::start(jwks(&[&old])).await;
    let server = start_with(&jwks_server.url, &[]).await;
    let mut client = server.client().await;
    let old_token = old.sign(&customer("usuario1"));
    let new_token = new.sign(&customer("usuario1"));
    assert_eq!(
        status_of(&mut client, "/saldo/usuario1", &old_token).await,
        200
    );
    jwks_server.serve(jwks(&[&new]));
    // An unknown kid prompts at most one refresh per 10 s; the start's load
    // counts as one.
    assert_eq!(
        status_of(&mut client, "/saldo/usuario1", &new_token).await,
        401
    );
    tokio::time::sleep(saldos::auth::REFRESH_MIN_INTERVAL).await;
    let fetches = jwks_server.fetches();
    assert_eq!(
        status_of(&mut client, "/saldo/usuario1", &new_token).await,
        200
    );
    assert_eq!(jwks_server.fetches(), fetches + 1);
    let reply = send(
        &mut client,
        "GET",
        "/saldo/usuario1",
        Some(&old_token),
        None,
        None,
    )
    .await;
    assert_unauthenticated(&reply, CHALLENGE_INVALID, "key left the JWKS");
    // Unknown kids now are refused without another fetch for 10 s.
    let stray = old.sign_as(Algorithm::RS256, "stray", &customer("usuario1"));
    for _ in 0..5 {
        assert_eq!(status_of(&mut client, "/saldo/usuario1", &stray).await, 401);
    }
    assert_eq!(jwks_server.fetches(), fetches + 1);
}

// The revocation race, held open deterministically: a verification that
// found its key waits (a test hook) while the JWKS file is rewritten without
// that key and the refresh sweeps the cache; released, it must not be
// granted nor remembered: the `POST /retiro` it carried gets 401 and debits
// nothing, and the token stays refused.
#[tokio::test]
async fn a_key_removed_during_a_verification_is_not_granted() {
    let (revoked, kept) = (SigningKey::rsa("revocada"), SigningKey::rsa("vigente"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&revoked, &kept])).unwrap();
    let flags = jwt_flags("--jwks-file", path.to_str().unwrap());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_server(&flags).await;
    let hooks = verifier(&server).hooks();
    let token = revoked.sign(&customer("usuario1"));
    hooks.hold_next_verification();
    let address = server.addr;
    let held_token = token.clone();
    let held = tokio::spawn(async move {
        let mut client = Client::connect(address).await;
        let body = Some(r#"{"usuario":"usuario1","monto":100}"#);
        post(&mut client, "/retiro", &held_token, body, None).await
    });
    hooks.until_held().await;
    let key_reads = hooks.key_reads();
    replace_file(&path, &jwks(&[&kept]));
    hooks.until_keys_read(key_reads).await;
    hooks.release();
    let reply = held.await.unwrap();
    assert_unauthenticated(&reply, CHALLENGE_INVALID, "verified across the revocation");
    let mut client = server.client().await;
    let body = Some(r#"{"usuario":"usuario1","monto":100}"#);
    let reply = post(&mut client, "/retiro", &token, body, None).await;
    assert_unauthenticated(&reply, CHALLENGE_INVALID, "after the revocation");
    let reader = kept.sign(&service("auditoria", "saldos:read"));
    assert_saldo(&mut client, &reader, "usuario1", 10_000).await;
}

// A JWKS naming one `kid` twice is refused whole, and logged: at start the
// service does not start; on a refresh the last good keys stay (last-wins
// would let the second key sign as the first).
#[tokio::test]
async fn a_jwks_with_a_duplicate_kid_is_refused() {
    let (first, impostor) = (SigningKey::rsa("a"), SigningKey::rsa("a"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&first, &impostor])).unwrap();
    let mut argv = vec!["saldos".to_string()];
    argv.extend(jwt_flags("--jwks-file", path.to_str().unwrap()));
    let args = <saldos::config::Cli as clap::Parser>::try_parse_from(argv)
        .unwrap()
        .serve;
    let started = saldos::open_auth(&args.auth).await;
    assert!(
        matches!(&started, Err(saldos::StartError::Auth(reason)) if reason.contains("kid 'a'")),
        "{:?}",
        started.err()
    );

    std::fs::write(&path, jwks(&[&first])).unwrap();
    let flags = jwt_flags("--jwks-file", path.to_str().unwrap());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_server(&flags).await;
    let hooks = verifier(&server).hooks();
    let key_reads = hooks.key_reads();
    replace_file(&path, &jwks(&[&first, &impostor]));
    hooks.until_keys_read(key_reads).await;
    let mut client = server.client().await;
    let forged = impostor.sign(&customer("usuario1"));
    assert_eq!(
        status_of(&mut client, "/saldo/usuario1", &forged).await,
        401
    );
    let genuine = first.sign(&customer("usuario1"));
    assert_eq!(
        status_of(&mut client, "/saldo/usuario1", &genuine).await,
        200
    );
}

// The binary refuses to start, exit 2 with one line on stderr, when its
// keys cannot be trusted or had: plain http:// to another host unless
// `--jwks-allow-http`, a JWKS URL that does not answer.
#[test]
fn the_binary_refuses_jwks_it_cannot_trust_or_reach() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let remote = "http://keys.invalid/jwks.json";
    let cases: [(&str, &[&str], &str); 3] = [
        (remote, &[], "--jwks-allow-http"),
        (
            remote,
            &["--jwks-allow-http"],
            "cannot start authentication",
        ),
        (&unreachable, &[], "cannot start authentication"),
    ];
    for (url, extra, named) in cases {
        let mut args = jwt_flags("--jwks-url", url);
        args.extend(extra.iter().map(|flag| flag.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = crate::process::saldos(&args, &[])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{url} {extra:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{named} in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

// The JWKS server goes away after start: the last good keys keep serving;
// an unknown kid is refused after a failed refresh, and the service lives on.
#[tokio::test]
async fn a_jwks_outage_keeps_the_last_good_keys() {
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let server = start_with(&jwks_server.url, &[]).await;
    let mut client = server.client().await;
    let cached = rsa.sign(&customer("usuario1"));
    assert_eq!(
        status_of(&mut client, "/saldo/usuario1", &cached).await,
        200
    );
    jwks_server.stop();
    tokio::time::sleep(saldos::auth::REFRESH_MIN_INTERVAL).await;
    let unknown = rsa.sign_as(Algorithm::RS256, "new-kid", &customer("usuario1"));
    let reply = send(
        &mut client,
        "GET",
        "/saldo/usuario1",
        Some(&unknown),
        None,
        None,
    )
    .await;
    assert_unauthenticated(&reply, CHALLENGE_INVALID, "refresh failed");
    // Cached and never-seen tokens of the kept key both pass.
    let fresh = rsa.sign(&customer("usuario2"));
    for token in [&cached, &fresh] {
        let path = if token == &cached {
            "/saldo/usuario1"
        } else {
            "/saldo/usuario2"
        };
        assert_eq!(status_of(&mut client, path, token).await, 200);
    }
    assert_eq!(client.get("/health").await.status, 200);
}

// No keys, no service: an unreachable JWKS, or one without a usable key,
// stops the start.
#[tokio::test]
async fn the_service_does_not_start_without_keys() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", closed.local_addr().unwrap());
    drop(closed);
    let only_ec = JwksServer::start(jwks(&[&SigningKey::ec("ec")])).await;
    for (url, algorithms) in [(url.as_str(), "RS256"), (only_ec.url.as_str(), "RS256")] {
        let mut argv = vec!["saldos".to_string(), "--storage".into(), "memory".into()];
        argv.extend(jwt_flags("--jwks-url", url));
        argv.extend(["--jwt-algorithms".into(), algorithms.into()]);
        let args = <saldos::config::Cli as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .serve;
        let started = saldos::open_auth(&args.auth).await;
        assert!(
            matches!(started, Err(saldos::StartError::Auth(_))),
            "{url}: {:?}",
            started.err()
        );
    }
}

// A JWKS file is re-read when it changes: rotation without a server.
#[tokio::test]
async fn a_jwks_file_is_read_again_when_it_changes() {
    let (old, new) = (SigningKey::rsa("a"), SigningKey::ec("b"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&old])).unwrap();
    let flags = jwt_flags("--jwks-file", path.to_str().unwrap());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_server(&flags).await;
    let mut client = server.client().await;
    let old_token = old.sign(&customer("usuario1"));
    let new_token = new.sign(&customer("usuario1"));
    assert_eq!(
        status_of(&mut client, "/saldo/usuario1", &old_token).await,
        200
    );
    std::fs::write(&path, jwks(&[&new])).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = send(
            &mut client,
            "GET",
            "/saldo/usuario1",
            Some(&new_token),
            None,
            None,
        )
        .await;
        if reply.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new file was never read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        status_of(&mut client, "/saldo/usuario1", &old_token).await,
        401
    );
}

/// Replaces the file at `path` with `contents` at once (a rename), so the
/// refresher never reads it half written.
fn replace_file(path: &std::path::Path, contents: &str) {
    let scratch = path.with_extension("tmp");
    std::fs::write(&scratch, contents).unwrap();
    std::fs::rename(&scratch, path).unwrap();
}

/// The verifier of a server started with `--auth jwt`.
fn verifier(server: &TestServer) -> &saldos::auth::Verifier {
    match &server.app.auth {
        saldos::auth::Auth::Jwt(verifier) => verifier,
        saldos::auth::Auth::Open => panic!("authentication is on"),
    }
}

/// Copies `tests/fixtures/<name>` to a scratch directory.
fn fixture_copy(name: &str) -> tempfile::TempDir {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    copy
}

/// A fixture's data directory opened through the library with a TTL long
/// enough that the fixture's age never matters: its ledger, its keys, and
/// what opening found.
fn open_fixture(
    dir: &std::path::Path,
) -> (
    std::sync::Arc<saldos::ledger::Ledger>,
    std::sync::Arc<saldos::idempotency::Table>,
    saldos::journal::Opened,
) {
    use saldos::ledger::{Ledger, Limits};
    use saldos::usuario::Usuario;
    use std::sync::Arc;

    let seed: Vec<(Usuario, u64)> = [
        ("usuario1", 10_000),
        ("usuario2", 15_000),
        ("usuario3", 5_000),
    ]
    .map(|(name, saldo)| (Usuario::new(name).unwrap(), saldo))
    .to_vec();
    let ledger = Arc::new(Ledger::new(Limits {
        shard_count: 8,
        opening_saldo: 100_000,
        accounts_max: 1_000,
        history_per_account: 0,
    }));
    for (usuario, saldo) in &seed {
        ledger.seed(usuario, *saldo).unwrap();
    }
    let century = Duration::from_secs(100 * 365 * 86_400);
    let keys = Arc::new(saldos::idempotency::Table::new(8, century, 1_000));
    let options = saldos::journal::Options {
        dir,
        opening_saldo: 100_000,
        seed: &seed,
        segment_bytes_max: 4096,
        events_retention: std::time::Duration::ZERO,
    };
    let opened = saldos::journal::open(&options, ledger.clone(), keys.clone()).unwrap();
    (ledger, keys, opened)
}

/// What `keys` remembers for `principal`'s key `key` of `POST path` with
/// `body`; panics unless it is a replay.
fn replayed_outcome(
    keys: &saldos::idempotency::Table,
    principal: Option<&saldos::principal::Principal>,
    (path, key, body): (&str, &str, &str),
) -> saldos::ledger::Outcome {
    use saldos::idempotency::{Begin, Scoped, fingerprint};
    let scoped = Scoped { principal, key };
    let fingerprint = fingerprint("POST", path, body.as_bytes());
    match keys.begin(scoped, fingerprint, saldos::clock::unix_ms()) {
        Begin::Replay(remembered) => remembered.outcome,
        other => panic!("{principal:?} {key}: {other:?}"),
    }
}

// A data directory written by the binary before records carried a principal
// (format 1, tests/fixtures/README.md) opens with today's code: its balances
// are served and its keys replay (checked through the library with a TTL
// long enough that the fixture's age never matters).
#[tokio::test]
async fn a_data_directory_of_format_1_still_opens() {
    use saldos::ledger::Outcome;
    use saldos::usuario::Usuario;

    let balances = [
        ("usuario1", 5_350),
        ("usuario2", 14_180),
        ("usuario3", 4_000),
        ("cliente0", 99_610),
        ("cliente1", 99_658),
        ("cliente2", 99_646),
        ("cliente3", 99_634),
        ("cliente4", 99_622),
        ("cliente9", 99_923),
        ("nunca", 100_000),
    ];
    let copy = fixture_copy("data-dir-v1");
    let (ledger, keys, opened) = open_fixture(copy.path());
    assert_eq!(opened.snapshot, Some(3));
    assert!(opened.records_replayed > 0);
    for (name, saldo) in balances {
        assert_eq!(ledger.saldo(&Usuario::new(name).unwrap()), saldo, "{name}");
    }
    let replay =
        |path: &str, key: &str, body: &str| replayed_outcome(&keys, None, (path, key, body));
    let mut saldo = 10_000;
    for i in 1..=30u64 {
        saldo -= i * 10;
        let body = format!(r#"{{"usuario":"usuario1","monto":{}}}"#, i * 10);
        assert_eq!(
            replay("/pago", &format!("antes-{i}"), &body),
            Outcome::Debited { nuevo_saldo: saldo }
        );
    }
    assert_eq!(
        replay(
            "/retiro",
            "despues-ok",
            r#"{"usuario":"usuario3","monto":1000}"#
        ),
        Outcome::Debited { nuevo_saldo: 4_000 }
    );
    assert_eq!(
        replay(
            "/retiro",
            "despues-rechazada",
            r#"{"usuario":"usuario3","monto":999999}"#
        ),
        Outcome::Refused {
            saldo_disponible: 4_000
        }
    );
    drop(opened);

    // The binary's path: the same directory served over HTTP, then written
    // with kinded principals (format 3) and opened again.
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let dir = copy.path().to_str().unwrap();
    let flags = tiny_segments_in(dir);
    let reader = rsa.sign(&service("auditoria", "saldos:read saldos:debit"));
    for round in 0..2 {
        let server = start_with(&jwks_server.url, &flags).await;
        let mut client = server.client().await;
        for (name, saldo) in balances {
            let saldo = if name == "cliente9" {
                saldo - round
            } else {
                saldo
            };
            assert_saldo(&mut client, &reader, name, saldo).await;
        }
        let body = Some(r#"{"usuario":"cliente9","monto":1}"#);
        let reply = post(&mut client, "/pago", &reader, body, Some("nueva")).await;
        assert_eq!(reply.status, 200);
        drop(client);
        server.shutdown().await;
    }
}

// A data directory written while principals had no kind (format 2,
// tests/fixtures/README.md) opens with today's code: balances as they were,
// and each key of a bare-named principal remembered for both kinds, so a
// retry after the upgrade replays whichever kind its token names and is
// never debited twice; new records are written kinded (format 3).
#[tokio::test]
async fn a_data_directory_of_format_2_keeps_its_keys_for_both_kinds() {
    use saldos::ledger::Outcome;
    use saldos::principal::{Kind, Principal};
    use saldos::usuario::Usuario;

    let balances = [
        ("usuario1", 9_180),
        ("usuario3", 4_000),
        ("cliente0", 99_895),
        ("cliente1", 99_919),
        ("cliente2", 99_913),
        ("cliente3", 99_907),
        ("cliente4", 99_901),
        ("cliente7", 97_895),
    ];
    let copy = fixture_copy("data-dir-v2");
    let (ledger, keys, opened) = open_fixture(copy.path());
    assert_eq!(opened.snapshot, Some(3));
    for (name, saldo) in balances {
        assert_eq!(ledger.saldo(&Usuario::new(name).unwrap()), saldo, "{name}");
    }
    let (pagos, cliente7) = ("pagos", "cliente7");
    let debited = |nuevo_saldo| Outcome::Debited { nuevo_saldo };
    // (principal's name, path, key, body, the remembered outcome); the last
    // key's record is in the segment after the snapshot.
    let cases = [
        (
            pagos,
            "/retiro",
            "servicio-1",
            r#"{"usuario":"usuario1","monto":1}"#,
            debited(9_999),
        ),
        (
            pagos,
            "/retiro",
            "servicio-final",
            r#"{"usuario":"usuario3","monto":1000}"#,
            debited(4_000),
        ),
        (
            cliente7,
            "/pago",
            "propia-20",
            r#"{"usuario":"cliente7","monto":200}"#,
            debited(97_900),
        ),
        (
            cliente7,
            "/retiro",
            "propia-rechazada",
            r#"{"usuario":"cliente7","monto":999999}"#,
            Outcome::Refused {
                saldo_disponible: 97_895,
            },
        ),
    ];
    for (name, path, key, body, outcome) in cases {
        for kind in Kind::KNOWN {
            let principal = Principal::new(kind, name).unwrap();
            let remembered = replayed_outcome(&keys, Some(&principal), (path, key, body));
            assert_eq!(remembered, outcome, "{principal:?} {key}");
        }
    }
    drop(opened);

    // The binary's path: served, written kinded (format 3), opened again.
    let rsa = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&rsa])).await;
    let flags = tiny_segments_in(copy.path().to_str().unwrap());
    let payer = rsa.sign(&with(
        &service(pagos, "saldos:read saldos:debit"),
        json!({"sub": null}),
    ));
    let body = Some(r#"{"usuario":"cliente7","monto":1}"#);
    let mut first = None;
    for _ in 0..2 {
        let server = start_with(&jwks_server.url, &flags).await;
        let mut client = server.client().await;
        assert_saldo(&mut client, &payer, "usuario1", 9_180).await;
        let reply = post(&mut client, "/pago", &payer, body, Some("despues")).await;
        match &first {
            None => assert_fresh(&reply, 97_894),
            Some(first) => assert_replayed(&reply, first),
        }
        first.get_or_insert(reply);
        drop(client);
        server.shutdown().await;
    }
}

/// The resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The data directory's files and their sizes.
fn files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                entry.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Refused requests in one flood.
const FLOOD: usize = 10_000;
/// Connections the flood is sent on at once.
const FLOOD_CONNECTIONS: usize = 4;

/// The valid tokens a flood misuses.
struct FloodTokens {
    /// A customer's, sent for another account (403).
    ana: String,
    /// A read-only service's, sent for debits (403).
    reader: String,
    /// Valid, then forged: its signature's end replaced (401, verified each time).
    signed: String,
}

/// One flood: [`FLOOD`] refusals over [`FLOOD_CONNECTIONS`] connections,
/// each with a new idempotency key.
async fn run_flood(address: std::net::SocketAddr, tokens: &std::sync::Arc<FloodTokens>) {
    let tasks: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|lane| tokio::spawn(flood_lane(address, lane, tokens.clone())))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

async fn flood_lane(
    address: std::net::SocketAddr,
    lane: usize,
    tokens: std::sync::Arc<FloodTokens>,
) {
    let mut client = Client::connect(address).await;
    let other = r#"{"usuario":"usuario2","monto":1}"#;
    let signed = &tokens.signed;
    for n in (lane..FLOOD).step_by(FLOOD_CONNECTIONS) {
        let key = format!("flood-{n}");
        let (token, path, body, status) = match n % 4 {
            0 => (
                format!("{}{n:06}", &signed[..signed.len() - 6]),
                "/retiro",
                other,
                401,
            ),
            1 => (format!("x.{n}.y"), "/retiro", other, 401),
            2 => (tokens.ana.clone(), "/retiro", other, 403),
            _ => (
                tokens.reader.clone(),
                "/pago",
                r#"{"usuario":"usuario1","monto":1}"#,
                403,
            ),
        };
        let reply = post(&mut client, path, &token, Some(body), Some(&key)).await;
        assert_eq!(reply.status, status, "request {n}: {}", reply.text());
    }
}

/// Most the binary's memory may grow over a flood once warm.
const FLOOD_RSS_GROWTH_KIB_MAX: u64 = 4 * 1024;

// 10,000 refused requests (401: forged signatures, each one verified, and
// garbage; 403: valid tokens for other accounts, each with a new key) against
// the binary: its memory stays put and nothing is stored.
#[tokio::test]
async fn a_flood_of_refusals_leaves_memory_and_state_unchanged() {
    let rsa = SigningKey::rsa("rsa");
    let keys_dir = tempfile::tempdir().unwrap();
    let jwks_file = keys_dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&rsa])).unwrap();
    let mut flags = jwt_flags("--jwks-file", jwks_file.to_str().unwrap());
    flags.extend(["--bind", "127.0.0.1", "--port", "0"].map(String::from));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let running = crate::process::Running::start(&flags);
    let address: std::net::SocketAddr =
        crate::process::listening_address(&running.line_with("listening"))
            .parse()
            .unwrap();
    let pid = running.child.id();
    let tokens = std::sync::Arc::new(FloodTokens {
        ana: rsa.sign(&customer("usuario1")),
        reader: rsa.sign(&service("lector", "saldos:read")),
        signed: rsa.sign(&customer("usuario2")),
    });
    // Warm: every buffer and thread-local the refusals use exists.
    run_flood(address, &tokens).await;
    let (rss_before, files_before) = (rss_kib(pid), files(running.data_dir.path()));
    run_flood(address, &tokens).await;
    let (rss_after, files_after) = (rss_kib(pid), files(running.data_dir.path()));
    assert!(
        rss_after <= rss_before + FLOOD_RSS_GROWTH_KIB_MAX,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(files_after, files_before, "the journal changed");
    let mut client = Client::connect(address).await;
    for (usuario, saldo) in [("usuario1", 10_000), ("usuario2", 15_000)] {
        assert_saldo(&mut client, &tokens.reader, usuario, saldo).await;
    }
    // No flood key was remembered: ana's own debit with one is new.
    let body = Some(r#"{"usuario":"usuario1","monto":1}"#);
    let reply = post(&mut client, "/retiro", &tokens.ana, body, Some("flood-2")).await;
    assert_fresh(&reply, 9_999);
    eprintln!("flood: RSS {rss_before} KiB before, {rss_after} KiB after {FLOOD} refusals");
}
