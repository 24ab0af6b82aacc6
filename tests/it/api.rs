//! The success paths of every endpoint, byte for byte as the SPEC shows them.

use crate::util::{Backend, contract_tests, start_server_on};

async fn health_probes_answer_ok(backend: Backend) {
    let server = start_server_on(backend, &[]).await;
    let mut client = server.client().await;
    for path in ["/health", "/health/live"] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.text(), r#"{"status":"ok"}"#, "{path}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
}

// Seeded accounts have their seed, every other account the opening balance.
async fn saldo_of_seeded_and_implicit_accounts(backend: Backend) {
    let server = start_server_on(backend, &[]).await;
    let mut client = server.client().await;
    let cases = [
        ("/saldo/usuario1", r#"{"usuario":"usuario1","saldo":10000}"#),
        ("/saldo/usuario2", r#"{"usuario":"usuario2","saldo":15000}"#),
        ("/saldo/usuario3", r#"{"usuario":"usuario3","saldo":5000}"#),
        ("/saldo/otro", r#"{"usuario":"otro","saldo":100000}"#),
        (
            "/saldo/usuario1?x=1&y",
            r#"{"usuario":"usuario1","saldo":10000}"#,
        ),
        (
            "/saldo/%C3%B1and%C3%BA",
            r#"{"usuario":"ñandú","saldo":100000}"#,
        ),
        ("/saldo/a+b", r#"{"usuario":"a+b","saldo":100000}"#),
        (
            "/saldo/a%20%22b%22%5C",
            r#"{"usuario":"a \"b\"\\","saldo":100000}"#,
        ),
    ];
    for (path, body) in cases {
        let reply = client.get(path).await;
        assert_eq!((reply.status, reply.text()), (200, body), "{path}");
    }
}

async fn configured_opening_balance_and_seed_apply(backend: Backend) {
    let server = start_server_on(backend, &["--opening-balance", "7", "--seed", "ana=3"]).await;
    let mut client = server.client().await;
    client.assert_saldo("ana", 3).await;
    client.assert_saldo("usuario1", 7).await;
}

async fn pago_and_retiro_debit_and_answer_the_new_balance(backend: Backend) {
    let server = start_server_on(backend, &[]).await;
    let mut client = server.client().await;
    let reply = client
        .post("/pago", r#"{"usuario":"usuario1","monto":5000}"#)
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.text(),
        r#"{"usuario":"usuario1","monto_pagado":5000,"nuevo_saldo":5000}"#
    );
    let reply = client
        .post("/retiro", r#"{"usuario":"usuario2","monto":15000}"#)
        .await;
    assert_eq!(
        reply.text(),
        r#"{"usuario":"usuario2","monto_retirado":15000,"nuevo_saldo":0}"#
    );
    let reply = client
        .request(
            "POST",
            "/retiro?ignored=1",
            &[("Content-Type", "application/json; charset=utf-8")],
            Some(r#"{"monto":1,"usuario":"nuevo","nota":"x"}"#),
        )
        .await;
    assert_eq!(
        reply.text(),
        r#"{"usuario":"nuevo","monto_retirado":1,"nuevo_saldo":99999}"#
    );
    client.assert_saldo("usuario1", 5000).await;
    client.assert_saldo("usuario2", 0).await;
    client.assert_saldo("nuevo", 99999).await;
}

// Over the balance: refused with the balance, which stays as it was.
async fn insufficient_balance_changes_nothing(backend: Backend) {
    let server = start_server_on(backend, &[]).await;
    let mut client = server.client().await;
    let reply = client
        .post("/retiro", r#"{"usuario":"usuario2","monto":20000}"#)
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.text(),
        r#"{"error":"El monto excede el saldo disponible.","codigo":"SALDO_INSUFICIENTE","saldo_disponible":15000}"#
    );
    let reply = client
        .post("/pago", r#"{"usuario":"usuario3","monto":5001}"#)
        .await;
    assert_eq!(
        reply.text(),
        r#"{"error":"Saldo insuficiente.","codigo":"SALDO_INSUFICIENTE","saldo_disponible":5000}"#
    );
    client.assert_saldo("usuario2", 15000).await;
    client.assert_saldo("usuario3", 5000).await;
}

// HEAD answers like GET: same status and headers, no body.
async fn head_mirrors_get_without_body(backend: Backend) {
    let server = start_server_on(backend, &[]).await;
    let mut client = server.client().await;
    for path in ["/health", "/saldo/usuario1", "/saldo/%ZZ", "/nope"] {
        let get = client.get(path).await;
        let head = client.request("HEAD", path, &[], None).await;
        assert_eq!(head.status, get.status, "{path}");
        assert!(head.body.is_empty());
        for name in ["content-type", "content-length"] {
            assert_eq!(head.header(name), get.header(name), "{path} {name}");
        }
    }
}

async fn request_ids_are_echoed_when_valid_and_minted_otherwise(backend: Backend) {
    let server = start_server_on(backend, &[]).await;
    let mut client = server.client().await;
    let reply = client
        .request("GET", "/health", &[("X-Request-Id", "trace-42")], None)
        .await;
    assert_eq!(reply.header("x-request-id"), Some("trace-42"));
    let long = "x".repeat(129);
    let mut minted = Vec::new();
    for sent in [None, Some("has space"), Some(long.as_str())] {
        let headers: Vec<(&str, &str)> = sent.map(|s| ("X-Request-Id", s)).into_iter().collect();
        let reply = client.request("GET", "/nope", &headers, None).await;
        let id = reply
            .header("x-request-id")
            .expect("every response has an id")
            .to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        minted.push(id);
    }
    minted.dedup();
    assert_eq!(minted.len(), 3);
}

contract_tests!(
    health_probes_answer_ok,
    saldo_of_seeded_and_implicit_accounts,
    configured_opening_balance_and_seed_apply,
    pago_and_retiro_debit_and_answer_the_new_balance,
    insufficient_balance_changes_nothing,
    head_mirrors_get_without_body,
    request_ids_are_echoed_when_valid_and_minted_otherwise,
);
