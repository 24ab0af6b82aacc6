//! `GET /movimientos/{usuario}` (SPEC section 9): pages walk every kept
//! movement once, newest first, each `saldo` chaining to the next; the
//! journal keeps the newest N across restarts and snapshots; bad input is
//! refused.

use serde_json::Value;

use crate::journal::{journal_server, stop};
use crate::util::{Client, TestServer, error_body, start_server};

/// Debits `monto` from `usuario` and returns the new balance.
async fn debit(client: &mut Client, path: &str, usuario: &str, monto: u64) -> u64 {
    let body = format!(r#"{{"usuario":"{usuario}","monto":{monto}}}"#);
    let reply = client.post(path, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json: Value = serde_json::from_str(reply.text()).unwrap();
    json["nuevo_saldo"].as_u64().unwrap()
}

/// Every movement of `usuario`, newest first, walking pages of `limite`.
pub async fn walk(client: &mut Client, usuario: &str, limite: usize) -> Vec<Value> {
    let mut movements = Vec::new();
    let mut path = format!("/movimientos/{usuario}?limite={limite}");
    loop {
        let reply = client.get(&path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page: Value = serde_json::from_str(reply.text()).unwrap();
        assert_eq!(page["usuario"], usuario);
        let listed = page["movimientos"].as_array().unwrap();
        assert!(listed.len() <= limite);
        movements.extend(listed.iter().cloned());
        match &page["siguiente"] {
            Value::Null => return movements,
            Value::String(cursor) => {
                assert_eq!(listed.len(), limite, "a short page has no next");
                path = format!("/movimientos/{usuario}?limite={limite}&antes={cursor}");
            }
            other => panic!("siguiente: {other}"),
        }
    }
}

/// Checks `movements` (newest first) against the debits made (oldest
/// first: kind path, monto, nuevo_saldo), of which only the newest
/// `movements.len()` are expected.
fn assert_history(movements: &[Value], made: &[(&str, u64, u64)]) {
    let expected: Vec<_> = made.iter().rev().take(movements.len()).collect();
    assert_eq!(movements.len(), expected.len());
    let mut previous_id: Option<u64> = None;
    for (movement, (path, monto, saldo)) in movements.iter().zip(expected) {
        assert_eq!(movement["tipo"], &path[1..], "{movement}");
        assert_eq!(movement["monto"], *monto, "{movement}");
        assert_eq!(movement["saldo"], *saldo, "{movement}");
        let id: u64 = movement["id"].as_str().unwrap().parse().unwrap();
        assert!(previous_id.is_none_or(|newer| id < newer), "newest first");
        previous_id = Some(id);
        let fecha = movement["fecha"].as_str().unwrap();
        assert!(fecha.len() == 24 && fecha.ends_with('Z'), "{fecha}");
    }
    for pair in movements.windows(2) {
        let newer = pair[0]["saldo"].as_u64().unwrap();
        let older = pair[1]["saldo"].as_u64().unwrap();
        assert_eq!(
            older - pair[0]["monto"].as_u64().unwrap(),
            newer,
            "saldo chains"
        );
    }
}

/// 45 debits of one account among others' walk back exactly, in pages of 7.
async fn pages_walk_every_movement_once(server: &TestServer) {
    let mut client = server.client().await;
    let mut made = Vec::new();
    for n in 0..45u64 {
        let path = if n % 3 == 0 { "/pago" } else { "/retiro" };
        let monto = 10 + n;
        let saldo = debit(&mut client, path, "historia", monto).await;
        made.push((path, monto, saldo));
        debit(&mut client, "/retiro", &format!("otra{}", n % 4), 1).await;
    }
    let movements = walk(&mut client, "historia", 7).await;
    assert_history(&movements, &made);
    assert_eq!(movements.len(), 45);
    let all = walk(&mut client, "historia", 100).await;
    assert_eq!(all, movements);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pages_walk_every_movement_once() {
    let server = start_server(&["--history-per-account", "50"]).await;
    pages_walk_every_movement_once(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_pages_walk_every_movement_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = journal_server(dir.path(), &["--history-per-account", "50"]).await;
    pages_walk_every_movement_once(&server).await;
}

/// The journal keeps exactly the newest N movements: before a restart, and
/// after one that recovers them from a snapshot plus replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_keeps_the_last_n_across_a_restart_and_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--history-per-account",
        "5",
        "--journal-segment-bytes",
        "4096",
    ];
    let server = journal_server(dir.path(), &flags).await;
    let mut client = server.client().await;
    let mut made = Vec::new();
    for n in 0..60u64 {
        let monto = 100 + n;
        made.push((
            "/retiro",
            monto,
            debit(&mut client, "/retiro", "cinco", monto).await,
        ));
        if n % 2 == 0 {
            debit(&mut client, "/pago", &format!("relleno{n}"), 1).await;
        }
    }
    let before = walk(&mut client, "cinco", 2).await;
    assert_eq!(before.len(), 5);
    assert_history(&before, &made);
    drop(client);
    stop(server).await;
    let snapshots = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("snapshot-")
        })
        .count();
    assert!(snapshots > 0, "4 KiB segments made a snapshot");
    let server = journal_server(dir.path(), &flags).await;
    let mut client = server.client().await;
    assert_eq!(walk(&mut client, "cinco", 3).await, before);
    let saldo = debit(&mut client, "/retiro", "cinco", 7).await;
    made.push(("/retiro", 7, saldo));
    let after = walk(&mut client, "cinco", 5).await;
    assert_eq!(after.len(), 5);
    assert_history(&after, &made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_unknown_accounts_are_empty() {
    let server = start_server(&[]).await;
    let mut client = server.client().await;
    let reply = client.get("/movimientos/nadie").await;
    assert_eq!(
        (reply.status, reply.text()),
        (
            200,
            r#"{"usuario":"nadie","movimientos":[],"siguiente":null}"#
        )
    );
    // Seeded, never debited: no movement either.
    let reply = client.get("/movimientos/usuario1").await;
    assert_eq!(
        reply.text(),
        r#"{"usuario":"usuario1","movimientos":[],"siguiente":null}"#
    );
    let invalid = error_body("Parámetro de consulta inválido.", "PARAMETRO_INVALIDO");
    for query in [
        "limite=0",
        "limite=101",
        "limite=abc",
        "limite=",
        "limite=5&limite=5",
        "antes=",
        "antes=-1",
        "antes=007",
        "antes=99999999999999999999",
    ] {
        let reply = client.get(&format!("/movimientos/usuario1?{query}")).await;
        assert_eq!(
            (reply.status, reply.text()),
            (400, invalid.as_str()),
            "{query}"
        );
    }
    let reply = client.get("/movimientos/%FF").await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("USUARIO_INVALIDO"));
    let reply = client.post("/movimientos/usuario1", "{}").await;
    assert_eq!(
        (reply.status, reply.header("allow")),
        (405, Some("GET, HEAD"))
    );
}
