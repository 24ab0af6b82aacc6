//! Durability and idempotency over HTTP: restarts keep debits and keys,
//! snapshots bound the replay, failed writes and syncs acknowledge nothing.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::metrics::{Scrape, scrape};
use crate::util::{Backend, Client, TestServer, error_body, start_server, start_server_on};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A server on the journal storage in `dir`, with `extra` flags.
pub async fn journal_server(dir: &Path, extra: &[&str]) -> TestServer {
    let mut args = vec!["--storage", "journal", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_server(&args).await
}

/// Drains the server and waits until its journal has closed (the directory
/// is free for the next start).
pub(crate) async fn stop(server: TestServer) {
    let storage = server.storage.clone();
    assert_eq!(server.shutdown().await.connections_cut, 0);
    let storage = std::sync::Arc::try_unwrap(storage)
        .ok()
        .expect("last reference");
    tokio::task::spawn_blocking(move || drop(storage))
        .await
        .unwrap();
}

async fn keyed(client: &mut Client, path: &str, key: &str, body: &str) -> crate::util::Reply {
    client
        .request("POST", path, &[JSON, ("Idempotency-Key", key)], Some(body))
        .await
}

// Every idempotency rule of SPEC section 1, on every storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_conflict_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    for server in [
        start_server(&[]).await,
        journal_server(dir.path(), &[]).await,
        start_server_on(Backend::Postgres, &[]).await,
    ] {
        let mut client = server.client().await;
        let body = r#"{"usuario":"usuario1","monto":4000}"#;
        let first = keyed(&mut client, "/pago", "k-1", body).await;
        assert_eq!(
            first.text(),
            r#"{"usuario":"usuario1","monto_pagado":4000,"nuevo_saldo":6000}"#
        );
        assert_eq!(first.header("idempotent-replayed"), None);
        let again = keyed(&mut client, "/pago", "k-1", body).await;
        assert_eq!((again.status, again.text()), (200, first.text()));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        client.assert_saldo("usuario1", 6000).await;

        let conflict = error_body(
            "La clave de idempotencia ya se usó con otra solicitud.",
            "IDEMPOTENCIA_CONFLICTO",
        );
        for (path, other) in [
            ("/pago", r#"{"usuario":"usuario1","monto":4001}"#),
            ("/retiro", body),
        ] {
            let reply = keyed(&mut client, path, "k-1", other).await;
            assert_eq!((reply.status, reply.text()), (422, conflict.as_str()));
        }

        // A refusal is remembered too, and replayed even after funds change.
        let big = r#"{"usuario":"usuario3","monto":6000}"#;
        let refused = keyed(&mut client, "/retiro", "k-2", big).await;
        assert_eq!(refused.status, 400);
        assert!(refused.text().contains("SALDO_INSUFICIENTE"));
        let replayed = keyed(&mut client, "/retiro", "k-2", big).await;
        assert_eq!((replayed.status, replayed.text()), (400, refused.text()));
        assert_eq!(replayed.header("idempotent-replayed"), Some("true"));

        // Invalid keys, and requests that fail validation are not remembered.
        let invalid = error_body(
            "La clave de idempotencia no es válida.",
            "IDEMPOTENCIA_INVALIDA",
        );
        let long = "k".repeat(256);
        for key in ["", "has space", long.as_str()] {
            let reply = keyed(&mut client, "/pago", key, body).await;
            assert_eq!(
                (reply.status, reply.text()),
                (400, invalid.as_str()),
                "{key:?}"
            );
        }
        for (body, status) in [
            (r#"{"usuario":"usuario2","monto":0}"#, 400),
            (r#"{"usuario":"usuario2","monto":1}"#, 200),
        ] {
            let reply = keyed(&mut client, "/pago", "k-3", body).await;
            assert_eq!(reply.status, status, "{body}");
        }
        server.shutdown().await;
    }
}

// Two requests racing with one key: exactly one debit; the other is either
// 409 (still in flight) or a byte-identical replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_debit_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = journal_server(dir.path(), &[]).await;
    let mut in_flight = 0;
    for pair in 0..40 {
        let key = format!("race-{pair}");
        let body = r#"{"usuario":"carrera","monto":10}"#;
        let mut a = server.client().await;
        let mut b = server.client().await;
        let (ra, rb) = tokio::join!(
            keyed(&mut a, "/retiro", &key, body),
            keyed(&mut b, "/retiro", &key, body)
        );
        let mut replies = [ra, rb];
        replies.sort_by_key(|reply| reply.status);
        assert_eq!(replies[0].status, 200, "pair {pair}");
        match replies[1].status {
            200 => assert_eq!(replies[1].text(), replies[0].text()),
            409 => {
                assert!(replies[1].text().contains("IDEMPOTENCIA_EN_CURSO"));
                in_flight += 1;
            }
            other => panic!("pair {pair}: {other}"),
        }
    }
    server
        .client()
        .await
        .assert_saldo("carrera", 100_000 - 40 * 10)
        .await;
    println!("{in_flight} of 40 races answered 409");
    stop(server).await;
}

// Debits and keys survive a restart; snapshots replace old segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debits_and_keys_survive_restarts_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let small_segments = ["--journal-segment-bytes", "4096"];
    let server = journal_server(dir.path(), &small_segments).await;
    let mut client = server.client().await;
    for i in 0..300u64 {
        let body = format!(r#"{{"usuario":"cuenta{}","monto":{}}}"#, i % 7, i + 1);
        let key = format!("key-{i}");
        assert_eq!(keyed(&mut client, "/retiro", &key, &body).await.status, 200);
    }
    let journal = server.storage.journal_handle().unwrap();
    for _ in 0..100 {
        if journal.stats().snapshots.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        journal.stats().snapshots.load(Ordering::Relaxed) > 0,
        "a snapshot was taken"
    );
    let stats = journal.stats();
    let (batches, records) = (
        stats.batches.load(Ordering::Relaxed),
        stats.records.load(Ordering::Relaxed),
    );
    assert_eq!(records, 300);
    assert!(batches >= 1 && batches <= records);
    drop(client);
    stop(server).await;

    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().any(|name| name.starts_with("snapshot-")),
        "{files:?}"
    );

    let server = journal_server(dir.path(), &small_segments).await;
    let mut client = server.client().await;
    for account in 0..7u64 {
        let debited: u64 = (0..300u64)
            .filter(|i| i % 7 == account)
            .map(|i| i + 1)
            .sum();
        client
            .assert_saldo(&format!("cuenta{account}"), 100_000 - debited)
            .await;
    }
    for i in [0u64, 150, 299] {
        let body = format!(r#"{{"usuario":"cuenta{}","monto":{}}}"#, i % 7, i + 1);
        let reply = keyed(&mut client, "/retiro", &format!("key-{i}"), &body).await;
        assert_eq!(reply.header("idempotent-replayed"), Some("true"), "key-{i}");
    }
    drop(client);
    stop(server).await;
}

// A failed write or fsync: 503, nothing applied, nothing acknowledged after,
// /health 503, reads still served; a restart recovers the state before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_and_syncs_acknowledge_nothing() {
    for fault in ["write", "sync"] {
        let dir = tempfile::tempdir().unwrap();
        let server = journal_server(dir.path(), &[]).await;
        let mut client = server.client().await;
        let body = r#"{"usuario":"usuario2","monto":1000}"#;
        assert_eq!(client.post("/pago", body).await.status, 200);
        let faults = server.storage.journal_handle().unwrap().faults();
        match fault {
            "write" => faults.fail_write.store(true, Ordering::Relaxed),
            _ => faults.fail_sync.store(true, Ordering::Relaxed),
        }
        let unavailable = error_body("Servicio no disponible temporalmente.", "NO_DISPONIBLE");
        let reply = keyed(&mut client, "/pago", "during-failure", body).await;
        assert_eq!(
            (reply.status, reply.text()),
            (503, unavailable.as_str()),
            "{fault}"
        );
        client.assert_saldo("usuario2", 14_000).await;
        for probe in ["/health", "/health/live"] {
            let health = client.get(probe).await;
            assert_eq!((health.status, health.text()), (503, unavailable.as_str()));
        }
        for path in ["/pago", "/retiro"] {
            assert_eq!(client.post(path, body).await.status, 503, "{fault} {path}");
        }
        client.assert_saldo("usuario2", 14_000).await;
        drop(client);
        stop(server).await;

        let server = journal_server(dir.path(), &[]).await;
        let mut client = server.client().await;
        client.assert_saldo("usuario2", 14_000).await;
        assert_eq!(client.get("/health").await.status, 200);
        // The failed keyed request was not remembered: it runs now.
        let reply = keyed(&mut client, "/pago", "during-failure", body).await;
        assert_eq!(
            (reply.status, reply.header("idempotent-replayed")),
            (200, None)
        );
        client.assert_saldo("usuario2", 13_000).await;
        drop(client);
        stop(server).await;
    }
}

// A writer thread that dies (a panic) fails the journal: the debit it held
// and every later one get 503, both probes say the process must go, and
// `saldos_storage_healthy` goes from 1 to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_fails_both_probes() {
    let dir = tempfile::tempdir().unwrap();
    let server = journal_server(dir.path(), &[]).await;
    let mut client = server.client().await;
    let body = r#"{"usuario":"usuario2","monto":1000}"#;
    assert_eq!(client.post("/retiro", body).await.status, 200);
    let healthy = |scrape: Scrape| scrape.value("saldos_storage_healthy", &[]);
    assert_eq!(healthy(scrape(&server).await), 1.0);
    let faults = server.storage.journal_handle().unwrap().faults();
    faults.panic_writer.store(true, Ordering::Relaxed);
    assert_eq!(client.post("/retiro", body).await.status, 503);
    assert_eq!(client.post("/retiro", body).await.status, 503);
    for probe in ["/health", "/health/live"] {
        assert_eq!(client.get(probe).await.status, 503, "{probe}");
    }
    assert_eq!(healthy(scrape(&server).await), 0.0);
    client.assert_saldo("usuario2", 14_000).await;
    drop(client);
    stop(server).await;
}
