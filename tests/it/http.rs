//! Transport behaviour: chunked bodies, garbage, keep-alive, timeouts,
//! connection limits and the drain.

use std::time::{Duration, Instant};

use crate::util::{error_body, start_server, start_server_with};

const TOO_BIG: &str = "El cuerpo excede el tamaño máximo permitido.";

fn chunked_request(path: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

#[tokio::test]
async fn chunked_bodies_are_read_and_bounded() {
    let server = start_server(&[]).await;
    let mut client = server.client().await;
    client
        .send_raw(&chunked_request(
            "/pago",
            &[br#"{"usuario":"#, br#""usuario1","monto":1}"#],
        ))
        .await;
    let reply = client.read_reply(false).await;
    assert_eq!(
        reply.text(),
        r#"{"usuario":"usuario1","monto_pagado":1,"nuevo_saldo":9999}"#
    );

    // 4096 bytes exactly is allowed (padding with spaces keeps it valid JSON).
    let body = format!(
        "{}{}",
        r#"{"usuario":"usuario1","monto":1}"#,
        " ".repeat(4096 - 32)
    );
    assert_eq!(body.len(), 4096);
    let mut client = server.client().await;
    client
        .send_raw(&chunked_request("/pago", &[body.as_bytes()]))
        .await;
    assert_eq!(client.read_reply(false).await.status, 200);

    // One byte more, streamed in small chunks, is refused and nothing applied.
    let big = format!("{body} ");
    let chunks: Vec<&[u8]> = big.as_bytes().chunks(100).collect();
    let mut client = server.client().await;
    client.send_raw(&chunked_request("/pago", &chunks)).await;
    let reply = client.read_reply(false).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.text(), error_body(TOO_BIG, "CUERPO_DEMASIADO_GRANDE"));
    let mut client = server.client().await;
    client.assert_saldo("usuario1", 9998).await;
}

// Garbage gets a 400 and a closed connection; everyone else is still served.
#[tokio::test]
async fn malformed_http_is_refused_and_isolated() {
    let server = start_server(&[]).await;
    let garbage: &[&[u8]] = &[
        b"\x00\x01\x02\xff\xfe garbage\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
        b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /pago HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ];
    for bytes in garbage {
        let mut client = server.client().await;
        client.send_raw(bytes).await;
        let reply = client.read_reply(false).await;
        assert!(
            (400..500).contains(&reply.status),
            "{bytes:?}: {}",
            reply.status
        );
        assert!(
            client.is_closed_within(Duration::from_secs(5)).await,
            "{bytes:?}"
        );
    }
    // Headers over the limit are refused too.
    let mut client = server.client().await;
    let huge = format!(
        "GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    client.send_raw(huge.as_bytes()).await;
    assert_eq!(client.read_reply(false).await.status, 431);
    assert_eq!(server.client().await.get("/health").await.status, 200);
}

#[tokio::test]
async fn broken_chunked_framing_is_refused() {
    let server = start_server(&[]).await;
    let mut client = server.client().await;
    client
        .send_raw(b"POST /pago HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        .await;
    let reply = client.read_reply(false).await;
    assert_eq!(reply.status, 400);
    assert!(client.is_closed_within(Duration::from_secs(5)).await);
}

// Many requests on one connection, including pipelined ones.
#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let server = start_server(&[]).await;
    let mut client = server.client().await;
    for i in 1..=200u64 {
        let reply = client
            .post("/retiro", r#"{"usuario":"usuario1","monto":1}"#)
            .await;
        assert_eq!(
            reply.text(),
            format!(
                r#"{{"usuario":"usuario1","monto_retirado":1,"nuevo_saldo":{}}}"#,
                10_000 - i
            )
        );
    }
    let pipelined = "GET /saldo/usuario1 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3);
    client.send_raw(pipelined.as_bytes()).await;
    for _ in 0..3 {
        assert_eq!(
            client.read_reply(false).await.text(),
            r#"{"usuario":"usuario1","saldo":9800}"#
        );
    }
}

// Short timeouts stand in for the defaults (90 s idle, 10 s head): an idle
// connection outlives the head timeout, a stalled head does not.
#[tokio::test]
async fn idle_and_head_timeouts() {
    let server = start_server_with(&[], |mut settings| {
        settings.idle_timeout = Duration::from_secs(3);
        settings.head_timeout = Duration::from_millis(600);
        settings
    })
    .await;
    let mut idle = server.client().await;
    assert_eq!(idle.get("/health").await.status, 200);
    let mut stalled = server.client().await;
    stalled
        .send_raw(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        .await;
    assert!(
        stalled.is_closed_within(Duration::from_secs(2)).await,
        "stalled head cut"
    );
    assert!(!idle.is_closed_within(Duration::from_millis(100)).await);
    assert_eq!(
        idle.get("/health").await.status,
        200,
        "idle connection still usable"
    );
    assert!(
        idle.is_closed_within(Duration::from_secs(6)).await,
        "idle connection closed"
    );
}

// The body timeout runs from the start of the body's read, apart from the
// head timeout: a slow body within it is served even past the (shorter) head
// timeout; a stalled one gets 408 and a closed connection, not before time.
#[tokio::test]
async fn body_timeout_answers_408_and_closes() {
    let server = start_server_with(&[], |mut settings| {
        settings.idle_timeout = Duration::from_secs(5);
        settings.head_timeout = Duration::from_millis(400);
        settings.body_timeout = Duration::from_millis(1200);
        settings
    })
    .await;
    let body = r#"{"usuario":"usuario1","monto":10}"#;
    let head = format!(
        "POST /pago HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut slow = server.client().await;
    slow.send_raw(head.as_bytes()).await;
    slow.send_raw(&body.as_bytes()[..5]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    slow.send_raw(&body.as_bytes()[5..]).await;
    assert_eq!(slow.read_reply(false).await.status, 200, "slow body served");

    let mut stalled = server.client().await;
    let started = Instant::now();
    stalled.send_raw(head.as_bytes()).await;
    stalled.send_raw(&body.as_bytes()[..5]).await;
    let reply = stalled.read_reply(false).await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 408);
    assert_eq!(
        reply.text(),
        error_body("Se agotó el tiempo de espera del cuerpo.", "TIEMPO_AGOTADO")
    );
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(reply.header("x-request-id").is_some());
    assert!(
        waited >= Duration::from_millis(1200),
        "not early: {waited:?}"
    );
    assert!(waited < Duration::from_millis(2500), "not late: {waited:?}");
    assert!(stalled.is_closed_within(Duration::from_secs(2)).await);
    server.client().await.assert_saldo("usuario1", 9990).await;
}

// Past the connection limit, new connections wait until one closes.
#[tokio::test]
async fn connection_limit_holds_new_connections() {
    let server = start_server(&["--max-connections", "1"]).await;
    let mut first = server.client().await;
    assert_eq!(first.get("/health").await.status, 200);
    let mut second = server.client().await;
    second
        .send_raw(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert!(!second.is_closed_within(Duration::from_millis(300)).await);
    drop(first);
    assert_eq!(second.read_reply(false).await.status, 200);
}

// Shutdown lets a request in flight finish, then closes.
#[tokio::test]
async fn drain_finishes_requests_in_flight() {
    let server = start_server(&[]).await;
    let mut client = server.client().await;
    let body = r#"{"usuario":"usuario1","monto":10}"#;
    let head = format!(
        "POST /pago HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.send_raw(head.as_bytes()).await;
    client.send_raw(&body.as_bytes()[..5]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = server.addr;
    let drained = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.send_raw(&body.as_bytes()[5..]).await;
    let reply = client.read_reply(false).await;
    assert_eq!(
        reply.text(),
        r#"{"usuario":"usuario1","monto_pagado":10,"nuevo_saldo":9990}"#
    );
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(drained.await.unwrap().connections_cut, 0);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}
