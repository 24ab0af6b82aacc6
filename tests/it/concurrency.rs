//! Many concurrent clients debiting one account over HTTP: exactly
//! floor(balance / monto) succeed, the rest are refused, never below zero.

use std::collections::BTreeSet;

use crate::util::{Backend, contract_tests, start_server_on};

async fn concurrent_debits_of_one_account_never_overdraw(backend: Backend) {
    const CLIENTS: usize = 64;
    const ATTEMPTS_PER_CLIENT: usize = 30;
    const MONTO: u64 = 7;
    const SALDO: u64 = 10_000;
    let server = start_server_on(backend, &["--workers", "2"]).await;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut connection = crate::util::Client::connect(addr).await;
            let mut outcomes = Vec::new();
            for _ in 0..ATTEMPTS_PER_CLIENT {
                let path = if client % 2 == 0 { "/pago" } else { "/retiro" };
                let reply = connection
                    .post(path, r#"{"usuario":"usuario1","monto":7}"#)
                    .await;
                outcomes.push((reply.status, reply.text().to_owned()));
            }
            outcomes
        }));
    }
    let mut new_balances = BTreeSet::new();
    let mut refused = 0;
    for task in tasks {
        for (status, body) in task.await.unwrap() {
            match status {
                200 => {
                    let nuevo: u64 = body
                        .rsplit_once("\"nuevo_saldo\":")
                        .and_then(|(_, rest)| rest.trim_end_matches('}').parse().ok())
                        .expect("nuevo_saldo");
                    assert!(new_balances.insert(nuevo), "balance {nuevo} reported twice");
                }
                400 => {
                    assert!(body.contains(r#""codigo":"SALDO_INSUFICIENTE""#), "{body}");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    let succeeded = (SALDO / MONTO) as usize;
    assert_eq!(new_balances.len(), succeeded);
    assert_eq!(refused, CLIENTS * ATTEMPTS_PER_CLIENT - succeeded);
    // Each success saw a distinct balance: exactly the serial sequence.
    let expected: BTreeSet<u64> = (1..=SALDO / MONTO).map(|k| SALDO - k * MONTO).collect();
    assert_eq!(new_balances, expected);
    let reply = server.client().await.get("/saldo/usuario1").await;
    assert_eq!(
        reply.text(),
        format!(r#"{{"usuario":"usuario1","saldo":{}}}"#, SALDO % MONTO)
    );
}

contract_tests!(concurrent_debits_of_one_account_never_overdraw);
