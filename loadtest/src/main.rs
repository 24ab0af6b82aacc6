//! Goose load test for `saldos`, against a local server or a deployed ALB.
//!
//! Three scenarios, `GET /saldo/{usuario}`, `POST /pago` and `POST /retiro`,
//! weighted 70/15/15 by default, over a pool of accounts chosen uniformly or
//! with a hot spot. Every response's body is checked, not only its status: a
//! wrong body is a failure. Goose's own options drive the run (`--host`,
//! `--users`, `--hatch-rate`, `--run-time`, `--threshold`, `--report-file`,
//! `--no-telnet`, …); the workload is set with environment variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SALDOS_LT_WEIGHTS` | saldo,pago,retiro scenario weights | `70,15,15` |
//! | `SALDOS_LT_ACCOUNTS` | accounts in the pool (`cuenta0` …) | `10000` |
//! | `SALDOS_LT_HOT_PERCENT` | share of requests sent to the hottest 1% of accounts | `0` |
//! | `SALDOS_LT_IDEMPOTENCY_KEYS` | `1`: every debit carries a fresh `Idempotency-Key` | `0` |
//! | `SALDOS_LT_TOKEN_FILE` | bearer tokens, one per line, sent in rotation (`--auth jwt`) | none |
//!
//! Against a deployment with `--auth jwt`, the tokens must allow every
//! account of the pool: service tokens with `saldos:read saldos:debit`
//! (`saldos dev-token --scope "saldos:read saldos:debit"` mints them for a
//! local server started with its JWKS).
//!
//! Debits are 1 CLP, so an account at the default opening balance takes
//! 100 000 of them; a `SALDO_INSUFICIENTE` answer is still checked and counted
//! as a valid answer.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use goose::prelude::*;

/// The workload, read once from the environment.
struct Workload {
    weights: [usize; 3],
    accounts: u64,
    hot_percent: u64,
    idempotency_keys: bool,
    /// `Authorization` values, in rotation; empty: none sent.
    authorizations: Vec<String>,
}

static WORKLOAD: OnceLock<Workload> = OnceLock::new();

/// Requests so far, across users: drives account choice and keys.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A run-unique prefix for idempotency keys.
static RUN_ID: OnceLock<u64> = OnceLock::new();

fn workload() -> &'static Workload {
    WORKLOAD.get_or_init(|| {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .map(|value| {
                    value
                        .parse()
                        .unwrap_or_else(|_| panic!("{name}: not a number: {value}"))
                })
                .unwrap_or(default)
        };
        let weights = std::env::var("SALDOS_LT_WEIGHTS").unwrap_or_else(|_| "70,15,15".into());
        let weights: Vec<usize> = weights
            .split(',')
            .map(|w| {
                w.trim()
                    .parse()
                    .expect("SALDOS_LT_WEIGHTS: three whole numbers")
            })
            .collect();
        let weights: [usize; 3] = weights
            .try_into()
            .expect("SALDOS_LT_WEIGHTS: three weights");
        let accounts = number("SALDOS_LT_ACCOUNTS", 10_000).max(1);
        let hot_percent = number("SALDOS_LT_HOT_PERCENT", 0).min(100);
        let idempotency_keys = number("SALDOS_LT_IDEMPOTENCY_KEYS", 0) == 1;
        let authorizations = std::env::var("SALDOS_LT_TOKEN_FILE")
            .map(|path| read_tokens(&path))
            .unwrap_or_default();
        Workload {
            weights,
            accounts,
            hot_percent,
            idempotency_keys,
            authorizations,
        }
    })
}

/// `Bearer <token>` for every non-empty line of the file at `path`.
fn read_tokens(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("SALDOS_LT_TOKEN_FILE {path}: {error}"));
    let authorizations: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|token| format!("Bearer {token}"))
        .collect();
    assert!(
        !authorizations.is_empty(),
        "SALDOS_LT_TOKEN_FILE {path}: no token in it"
    );
    authorizations
}

/// The `n`th request's `Authorization` value, when tokens were given.
fn authorization(n: u64) -> Option<&'static str> {
    let authorizations = &workload().authorizations;
    let len = authorizations.len() as u64;
    (len > 0).then(|| authorizations[(n % len) as usize].as_str())
}

/// The next request's account: uniform over the pool, except that
/// `hot_percent` of requests go to its first 1%.
fn next_account() -> (u64, u64) {
    let workload = workload();
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    // A multiplicative hash spreads consecutive requests over the pool.
    let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    let hot_accounts = (workload.accounts / 100).max(1);
    let account = if mixed % 100 < workload.hot_percent {
        (mixed / 100) % hot_accounts
    } else {
        (mixed / 100) % workload.accounts
    };
    (n, account)
}

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    let [saldo, pago, retiro] = workload().weights;
    RUN_ID.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
    });
    let mut attack = GooseAttack::initialize()?;
    for (name, weight, transaction) in [
        ("saldo", saldo, transaction!(get_saldo).set_name("saldo")),
        ("pago", pago, transaction!(post_pago).set_name("pago")),
        (
            "retiro",
            retiro,
            transaction!(post_retiro).set_name("retiro"),
        ),
    ] {
        if weight > 0 {
            attack = attack.register_scenario(
                scenario!(name)
                    .set_weight(weight)?
                    .register_transaction(transaction),
            );
        }
    }
    attack.execute().await?;
    Ok(())
}

async fn get_saldo(user: &mut GooseUser) -> TransactionResult {
    let (n, account) = next_account();
    let path = format!("/saldo/cuenta{account}");
    let mut builder = user.get_request_builder(&GooseMethod::Get, &path)?;
    if let Some(authorization) = authorization(n) {
        builder = builder.header("Authorization", authorization);
    }
    let request = GooseRequest::builder()
        .path(path.as_str())
        .name("/saldo/{usuario}")
        .set_request_builder(builder)
        .build();
    let mut goose = user.request(request).await?;
    let expected_prefix = format!(r#"{{"usuario":"cuenta{account}","saldo":"#);
    let verdict = match goose.response {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            check_saldo(status, &body, &expected_prefix)
        }
        Err(_) => Err("no response"),
    };
    match verdict {
        Ok(()) => Ok(()),
        Err(reason) => user.set_failure(reason, &mut goose.request, None, None),
    }
}

fn check_saldo(status: u16, body: &str, expected_prefix: &str) -> Result<(), &'static str> {
    if status != 200 {
        return Err("status not 200");
    }
    let saldo = body
        .strip_prefix(expected_prefix)
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|saldo| saldo.parse::<u64>().ok());
    saldo.map(|_| ()).ok_or("unexpected saldo body")
}

async fn post_pago(user: &mut GooseUser) -> TransactionResult {
    post_debit(user, "/pago", "monto_pagado").await
}

async fn post_retiro(user: &mut GooseUser) -> TransactionResult {
    post_debit(user, "/retiro", "monto_retirado").await
}

async fn post_debit(
    user: &mut GooseUser,
    path: &'static str,
    monto_field: &str,
) -> TransactionResult {
    let (n, account) = next_account();
    let body = format!(r#"{{"usuario":"cuenta{account}","monto":1}}"#);
    let mut builder = user
        .get_request_builder(&GooseMethod::Post, path)?
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(authorization) = authorization(n) {
        builder = builder.header("Authorization", authorization);
    }
    if workload().idempotency_keys {
        let run = RUN_ID.get().copied().unwrap_or(0);
        builder = builder.header("Idempotency-Key", format!("lt-{run:x}-{n}"));
    }
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path(path)
        .name(path)
        .set_request_builder(builder)
        .build();
    let mut goose = user.request(request).await?;
    let verdict = match goose.response {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            check_debit(status, &body, account, monto_field)
        }
        Err(_) => Err("no response"),
    };
    match verdict {
        Ok(()) => Ok(()),
        Err(reason) => user.set_failure(reason, &mut goose.request, None, None),
    }
}

/// A debit's answer: its 200 body, or a well-formed `SALDO_INSUFICIENTE`.
fn check_debit(
    status: u16,
    body: &str,
    account: u64,
    monto_field: &str,
) -> Result<(), &'static str> {
    match status {
        200 => {
            let prefix =
                format!(r#"{{"usuario":"cuenta{account}","{monto_field}":1,"nuevo_saldo":"#);
            body.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix('}'))
                .and_then(|saldo| saldo.parse::<u64>().ok())
                .map(|_| ())
                .ok_or("unexpected debit body")
        }
        400 if body.contains(r#""codigo":"SALDO_INSUFICIENTE""#) => Ok(()),
        _ => Err("debit refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked() {
        assert_eq!(
            check_saldo(
                200,
                r#"{"usuario":"cuenta7","saldo":99}"#,
                r#"{"usuario":"cuenta7","saldo":"#
            ),
            Ok(())
        );
        assert!(
            check_saldo(
                200,
                r#"{"usuario":"cuenta8","saldo":99}"#,
                r#"{"usuario":"cuenta7","saldo":"#
            )
            .is_err()
        );
        assert!(check_saldo(503, "", r#"{"usuario":"cuenta7","saldo":"#).is_err());
        let ok = r#"{"usuario":"cuenta3","monto_pagado":1,"nuevo_saldo":5}"#;
        assert_eq!(check_debit(200, ok, 3, "monto_pagado"), Ok(()));
        assert!(check_debit(200, ok, 3, "monto_retirado").is_err());
        let refused =
            r#"{"error":"Saldo insuficiente.","codigo":"SALDO_INSUFICIENTE","saldo_disponible":0}"#;
        assert_eq!(check_debit(400, refused, 3, "monto_pagado"), Ok(()));
        assert!(check_debit(400, r#"{"codigo":"MONTO_INVALIDO"}"#, 3, "monto_pagado").is_err());
    }
}
