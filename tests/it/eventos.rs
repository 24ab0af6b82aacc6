//! `GET /eventos` and consumer positions (SPEC section 9): a consumer that
//! follows the feed from the start, reconnecting at random moments, ends up
//! with exactly the debits that were acknowledged (no gap, no duplicate,
//! each account's in balance order), through pages, long polls and
//! Server-Sent Events, across restarts and `kill -9`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::journal::{journal_server, stop};
use crate::util::{Client, error_body, spawn_binary, start_server};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Opening balance: no debit of the load is refused.
const OPENING: &str = "1000000000";

/// One event as a consumer saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seen {
    pub id: u64,
    pub usuario: String,
    pub monto: u64,
    pub saldo: u64,
}

impl Seen {
    fn of(event: &Value) -> Self {
        Self {
            id: event["id"].as_str().unwrap().parse().unwrap(),
            usuario: event["usuario"].as_str().unwrap().to_owned(),
            monto: event["monto"].as_u64().unwrap(),
            saldo: event["saldo"].as_u64().unwrap(),
        }
    }
}

/// What the writers were told: per account, `(monto, nuevo_saldo)` of each
/// 200.
type Acknowledged = Arc<Mutex<Vec<(String, u64, u64)>>>;

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// `debits` debits over 12 accounts, recording every 200; a connection
/// that fails (the server was killed) is reopened until `until`.
async fn write_load(address: SocketAddr, seed: u64, debits: u64, acknowledged: Acknowledged) {
    let mut rng = Rng(seed);
    let mut client = None;
    for _ in 0..debits {
        let usuario = format!("cuenta{}", rng.below(12));
        let monto = 1 + rng.below(100);
        let body = format!(r#"{{"usuario":"{usuario}","monto":{monto}}}"#);
        if client.is_none() {
            client = Client::try_connect(address).await;
        }
        let Some(connected) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match connected
            .try_request("POST", "/retiro", &[JSON], Some(&body))
            .await
        {
            Some(reply) if reply.status == 200 => {
                let json: Value = serde_json::from_str(reply.text()).unwrap();
                let saldo = json["nuevo_saldo"].as_u64().unwrap();
                acknowledged.lock().unwrap().push((usuario, monto, saldo));
            }
            Some(reply) => assert_eq!(reply.status, 503, "{}", reply.text()),
            None => client = None,
        }
    }
}

/// Checks what a consumer saw: ids strictly increasing (so no duplicate),
/// each account's balances a chain from the opening balance (so no gap
/// inside an account), and every acknowledged debit among them; when
/// `exact`, nothing else either.
pub fn assert_feed(seen: &[Seen], acknowledged: &[(String, u64, u64)], opening: u64, exact: bool) {
    for pair in seen.windows(2) {
        assert!(pair[0].id < pair[1].id, "ids not increasing: {pair:?}");
    }
    let mut saldo_of: BTreeMap<&str, u64> = BTreeMap::new();
    for event in seen {
        let saldo = saldo_of.entry(&event.usuario).or_insert(opening);
        assert_eq!(
            *saldo - event.monto,
            event.saldo,
            "gap or disorder at {event:?}"
        );
        *saldo = event.saldo;
    }
    let seen_set: HashSet<(&str, u64, u64)> = seen
        .iter()
        .map(|event| (event.usuario.as_str(), event.monto, event.saldo))
        .collect();
    for (usuario, monto, saldo) in acknowledged {
        assert!(
            seen_set.contains(&(usuario.as_str(), *monto, *saldo)),
            "acknowledged debit missing from the feed: {usuario} {monto} -> {saldo}"
        );
    }
    if exact {
        assert_eq!(
            seen.len(),
            acknowledged.len(),
            "events beyond the acknowledged"
        );
    }
}

/// A consumer of pages: reads after its last id with a random `limite`,
/// and reconnects now and then. Returns once it read `wanted` events.
async fn follow_pages(
    address: SocketAddr,
    seed: u64,
    wanted: usize,
    deadline: Instant,
) -> Vec<Seen> {
    let mut rng = Rng(seed);
    let mut seen: Vec<Seen> = Vec::new();
    let mut client: Option<Client> = None;
    while seen.len() < wanted {
        assert!(
            Instant::now() < deadline,
            "feed stalled at {} of {wanted}",
            seen.len()
        );
        if client.is_none() || rng.below(8) == 0 {
            client = Client::try_connect(address).await;
        }
        let Some(connected) = client.as_mut() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let limite = 1 + rng.below(50);
        let path = match seen.last() {
            None => format!("/eventos?limite={limite}&espera=1"),
            Some(last) => format!("/eventos?despues={}&limite={limite}&espera=1", last.id),
        };
        let Some(reply) = connected.try_request("GET", &path, &[], None).await else {
            client = None;
            continue;
        };
        if reply.status == 503 {
            continue;
        }
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page: Value = serde_json::from_str(reply.text()).unwrap();
        let events = page["eventos"].as_array().unwrap();
        assert!(events.len() as u64 <= limite);
        seen.extend(events.iter().map(Seen::of));
        if let Some(last) = seen.last() {
            assert_eq!(page["ultimo"], last.id.to_string());
        }
    }
    seen
}

/// Reads Server-Sent Events from a stream opened with `Last-Event-ID`
/// `after` until `wanted` events in all or the connection is cut after
/// `frames_max` frames; returns what it read.
async fn follow_stream(address: SocketAddr, after: Option<u64>, frames_max: usize) -> Vec<Seen> {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let resume = after.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let request =
        format!("GET /eventos HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n{resume}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = SseReader::new(stream);
    let head = reader.head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let mut seen = Vec::new();
    for _ in 0..frames_max {
        let Some(frame) = reader.frame(Duration::from_secs(5)).await else {
            break;
        };
        seen.extend(parse_events(&frame));
    }
    seen
}

/// The events of an SSE text: `id:` must equal the data's id.
fn parse_events(text: &str) -> Vec<Seen> {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|block| !block.is_empty()) {
        if block.starts_with(':') {
            continue;
        }
        let mut id = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("data: ") {
                data = Some(value.to_owned());
            } else {
                assert_eq!(line, "event: debito", "{block}");
            }
        }
        let event: Value = serde_json::from_str(&data.expect("data line")).unwrap();
        assert_eq!(event["id"].as_str(), id.as_deref(), "{block}");
        events.push(Seen::of(&event));
    }
    events
}

/// A chunked HTTP/1.1 response read as it comes.
pub struct SseReader {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    async fn fill(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(within, self.stream.read(&mut chunk)).await {
            Ok(Ok(read)) if read > 0 => {
                self.buffer.extend_from_slice(&chunk[..read]);
                true
            }
            _ => false,
        }
    }

    fn take_line(&mut self) -> Option<String> {
        let at = self.buffer.windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8(self.buffer[..at].to_vec()).unwrap();
        self.buffer.drain(..at + 2);
        Some(line)
    }

    /// The response head.
    pub async fn head(&mut self) -> String {
        loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buffer[..at].to_vec()).unwrap();
                self.buffer.drain(..at + 4);
                return head;
            }
            assert!(self.fill(Duration::from_secs(10)).await, "no response head");
        }
    }

    /// The next chunk's text; `None` at the last chunk, or when nothing
    /// comes within `within`.
    pub async fn frame(&mut self, within: Duration) -> Option<String> {
        let size = loop {
            if let Some(line) = self.take_line() {
                break usize::from_str_radix(line.trim(), 16).unwrap();
            }
            if !self.fill(within).await {
                return None;
            }
        };
        if size == 0 {
            return None;
        }
        while self.buffer.len() < size + 2 {
            if !self.fill(within).await {
                return None;
            }
        }
        let text = String::from_utf8(self.buffer[..size].to_vec()).unwrap();
        self.buffer.drain(..size + 2);
        Some(text)
    }
}

/// Writers on one server, a page consumer reconnecting at random: the
/// consumer's events are exactly the acknowledged debits.
async fn pages_follow_the_load(address: SocketAddr) {
    let acknowledged: Acknowledged = Arc::default();
    let writers: Vec<_> = (0..6)
        .map(|seed| tokio::spawn(write_load(address, seed + 1, 150, acknowledged.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let consumer = tokio::spawn(follow_pages(address, 99, 6 * 150, deadline));
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = consumer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), 6 * 150);
    assert_feed(&seen, &acknowledged, OPENING.parse().unwrap(), true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_feed_pages_equal_the_acknowledged_debits() {
    let server = start_server(&["--opening-balance", OPENING]).await;
    pages_follow_the_load(server.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_feed_pages_equal_the_acknowledged_debits() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--opening-balance",
        OPENING,
        "--journal-segment-bytes",
        "65536",
    ];
    let server = journal_server(dir.path(), &flags).await;
    pages_follow_the_load(server.addr).await;
}

/// An SSE consumer reconnecting with `Last-Event-ID` after a few frames
/// each time sees every event once, on both local storages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_resume_from_the_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    for flags in [
        vec!["--opening-balance", OPENING],
        vec![
            "--opening-balance",
            OPENING,
            "--storage",
            "journal",
            "--data-dir",
            path,
        ],
    ] {
        let server = start_server(&flags).await;
        let acknowledged: Acknowledged = Arc::default();
        let writers: Vec<_> = (0..4)
            .map(|seed| tokio::spawn(write_load(server.addr, seed + 7, 100, acknowledged.clone())))
            .collect();
        let mut seen: Vec<Seen> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.len() < 400 {
            assert!(
                Instant::now() < deadline,
                "stream stalled at {}",
                seen.len()
            );
            let after = seen.last().map(|event| event.id);
            seen.extend(follow_stream(server.addr, after, 3).await);
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let acknowledged = acknowledged.lock().unwrap().clone();
        assert_feed(&seen, &acknowledged, OPENING.parse().unwrap(), true);
        drop(server);
    }
}

/// The journal's feed across `kill -9`: a consumer that resumes after each
/// restart from its last id (and, the last time, from its stored position)
/// sees every acknowledged debit once, and nothing out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_feed_survives_kill_9_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--storage",
        "journal",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--opening-balance",
        OPENING,
        "--journal-segment-bytes",
        "32768",
    ];
    let acknowledged: Acknowledged = Arc::default();
    let mut seen: Vec<Seen> = Vec::new();
    let mut rng = Rng(5);
    for cycle in 0..3 {
        let (mut child, address) = spawn_binary(&args);
        let mut client = Client::connect(address).await;
        // Resume: from the stored position the last time, else the last id.
        let resumed_from_position = cycle == 2;
        if resumed_from_position {
            let reply = client
                .get("/eventos?consumidor=notificaciones&limite=1000")
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            let page: Value = serde_json::from_str(reply.text()).unwrap();
            seen.extend(page["eventos"].as_array().unwrap().iter().map(Seen::of));
        }
        let writers: Vec<_> = (0..3)
            .map(|seed| {
                tokio::spawn(write_load(
                    address,
                    cycle * 10 + seed + 1,
                    200,
                    acknowledged.clone(),
                ))
            })
            .collect();
        // Kill in the middle of the load.
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        let reply = client
            .get(&format!(
                "/eventos?despues={}&limite=1000",
                seen.last().map_or(0, |e| e.id)
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page: Value = serde_json::from_str(reply.text()).unwrap();
        seen.extend(page["eventos"].as_array().unwrap().iter().map(Seen::of));
        if let Some(last) = seen.last() {
            let body = format!(r#"{{"id":"{}"}}"#, last.id);
            let stored = client
                .request(
                    "PUT",
                    "/eventos/cursores/notificaciones",
                    &[JSON],
                    Some(&body),
                )
                .await;
            assert_eq!(stored.status, 200, "{}", stored.text());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for writer in writers {
            writer.await.unwrap();
        }
    }
    // A last start: drain the feed.
    let (mut child, address) = spawn_binary(&args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = Client::connect(address).await;
    loop {
        assert!(Instant::now() < deadline);
        let after = seen.last().map_or(0, |event| event.id);
        let reply = client
            .get(&format!("/eventos?despues={after}&limite=1000"))
            .await;
        let page: Value = serde_json::from_str(reply.text()).unwrap();
        let events = page["eventos"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        seen.extend(events.iter().map(Seen::of));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 100,
        "the load ran: {}",
        acknowledged.len()
    );
    // Debits in flight at a kill may have been made durable unanswered:
    // events beyond the acknowledged are allowed, gaps are not.
    assert_feed(&seen, &acknowledged, OPENING.parse().unwrap(), false);
}

/// A page with `espera` is answered by the commit it waited for, not by
/// the end of its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_by_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    for server in [
        start_server(&[]).await,
        journal_server(dir.path(), &[]).await,
    ] {
        let mut client = server.client().await;
        let reply = client.get("/eventos").await;
        assert_eq!(reply.text(), r#"{"eventos":[],"ultimo":null}"#);
        let address = server.addr;
        let debit = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut client = Client::connect(address).await;
            client
                .post("/pago", r#"{"usuario":"usuario1","monto":40}"#)
                .await
        });
        let started = Instant::now();
        let reply = client.get("/eventos?espera=10").await;
        let waited = started.elapsed();
        assert_eq!(debit.await.unwrap().status, 200);
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(
            waited < Duration::from_secs(5),
            "woken by the commit, not the end: {waited:?}"
        );
        let page: Value = serde_json::from_str(reply.text()).unwrap();
        let event = &page["eventos"][0];
        assert_eq!(
            (event["usuario"].as_str(), event["tipo"].as_str()),
            (Some("usuario1"), Some("pago"))
        );
        assert_eq!(
            (event["monto"].as_u64(), event["saldo"].as_u64()),
            (Some(40), Some(9960))
        );
        assert_eq!(event["principal"], "");
        assert_eq!(page["ultimo"], event["id"]);
        // Nothing new: the cursor comes back, after the wait.
        let last = event["id"].as_str().unwrap();
        let reply = client
            .get(&format!("/eventos?despues={last}&espera=1"))
            .await;
        assert_eq!(
            reply.text(),
            format!(r#"{{"eventos":[],"ultimo":"{last}"}}"#)
        );
    }
}

/// Consumer positions: stored, read back by `consumidor`, kept by the
/// journal across a restart; bad names, ids and bodies refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_positions_are_stored_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let server = journal_server(dir.path(), &[]).await;
    let mut client = server.client().await;
    for monto in [1, 2, 3] {
        client
            .post(
                "/retiro",
                &format!(r#"{{"usuario":"usuario1","monto":{monto}}}"#),
            )
            .await;
    }
    let page: Value = serde_json::from_str(client.get("/eventos").await.text()).unwrap();
    let first = page["eventos"][0]["id"].as_str().unwrap().to_owned();
    let reply = client
        .request(
            "PUT",
            "/eventos/cursores/notif-1",
            &[JSON],
            Some(&format!(r#"{{"id":"{first}"}}"#)),
        )
        .await;
    assert_eq!(
        (reply.status, reply.text()),
        (
            200,
            format!(r#"{{"nombre":"notif-1","id":"{first}"}}"#).as_str()
        )
    );
    drop(client);
    stop(server).await;
    let server = journal_server(dir.path(), &[]).await;
    let mut client = server.client().await;
    let page: Value =
        serde_json::from_str(client.get("/eventos?consumidor=notif-1").await.text()).unwrap();
    let montos: Vec<u64> = page["eventos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["monto"].as_u64().unwrap())
        .collect();
    assert_eq!(
        montos,
        [2, 3],
        "after the stored position, across a restart"
    );
    let page: Value =
        serde_json::from_str(client.get("/eventos?consumidor=nuevo").await.text()).unwrap();
    assert_eq!(
        page["eventos"].as_array().unwrap().len(),
        3,
        "no position: from the oldest"
    );
    let invalid = error_body("Parámetro de consulta inválido.", "PARAMETRO_INVALIDO");
    for (path, body) in [
        ("/eventos/cursores/a%20b", r#"{"id":"1"}"#),
        ("/eventos/cursores/ok", r#"{"id":"x"}"#),
        ("/eventos/cursores/ok", r#"{"id":1}"#),
        ("/eventos/cursores/ok", r#"{}"#),
    ] {
        let reply = client.request("PUT", path, &[JSON], Some(body)).await;
        assert_eq!(
            (reply.status, reply.text()),
            (400, invalid.as_str()),
            "{path} {body}"
        );
    }
    let reply = client
        .request("PUT", "/eventos/cursores/ok", &[JSON], Some("{"))
        .await;
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("JSON_INVALIDO"));
    let reply = client
        .request("PUT", "/eventos/cursores/ok", &[], Some(r#"{"id":"1"}"#))
        .await;
    assert_eq!(reply.status, 415);
    for query in [
        "limite=0",
        "limite=1001",
        "despues=abc",
        "despues=1&consumidor=a",
        "espera=31",
        "espera=x",
        "consumidor=a%2Fb",
    ] {
        let reply = client.get(&format!("/eventos?{query}")).await;
        assert_eq!(
            (reply.status, reply.text()),
            (400, invalid.as_str()),
            "{query}"
        );
    }
    let reply = client
        .request("GET", "/eventos", &[("Last-Event-ID", "nope")], None)
        .await;
    assert_eq!((reply.status, reply.text()), (400, invalid.as_str()));
}

/// Once retention has passed and snapshots removed the first segments, a
/// cursor from before them gets 410 (after a restart, when memory no longer
/// holds them); one inside what is kept does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cursor_gets_410() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--journal-segment-bytes",
        "4096",
        "--events-retention",
        "0s",
    ];
    let server = journal_server(dir.path(), &flags).await;
    let mut client = server.client().await;
    for n in 0..300 {
        client
            .post(
                "/retiro",
                &format!(r#"{{"usuario":"c{}","monto":1}}"#, n % 9),
            )
            .await;
    }
    // Snapshots run beside the writer: wait for the first segment to go.
    let first_segment = dir.path().join(format!("journal-{:020}.log", 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while first_segment.exists() {
        assert!(Instant::now() < deadline, "first segment never removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Memory still holds the newest events: a restart leaves only the
    // segments.
    drop(client);
    stop(server).await;
    let server = journal_server(dir.path(), &flags).await;
    let mut client = server.client().await;
    let reply = client.get("/eventos?despues=1").await;
    assert_eq!(
        (reply.status, reply.text()),
        (
            410,
            error_body("El cursor ya no está disponible.", "CURSOR_EXPIRADO").as_str()
        )
    );
    let oldest: Value = serde_json::from_str(client.get("/eventos?limite=1").await.text()).unwrap();
    let oldest: u64 = oldest["eventos"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(oldest > 1);
    let reply = client
        .get(&format!("/eventos?despues={}", oldest - 1))
        .await;
    assert_eq!(reply.status, 200);
}

/// A stream ends cleanly when the server shuts down: the last chunk is
/// sent and no connection is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_cleanly_at_shutdown() {
    let server = start_server(&[]).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /eventos HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut reader = SseReader::new(stream);
    assert!(reader.head().await.starts_with("HTTP/1.1 200"));
    assert_eq!(
        reader.frame(Duration::from_secs(5)).await.as_deref(),
        Some(": saldos\n\n")
    );
    let drained = tokio::spawn(server.shutdown());
    assert_eq!(
        reader.frame(Duration::from_secs(5)).await,
        None,
        "the last chunk"
    );
    assert_eq!(drained.await.unwrap().connections_cut, 0);
}

/// Only `saldos:events` reads the feed and stores positions; a customer
/// reads only its own history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_needs_the_events_scope() {
    use crate::auth_support::{JwksServer, SigningKey, customer, jwks, jwt_flags, service};
    let key = SigningKey::rsa("rsa");
    let jwks_server = JwksServer::start(jwks(&[&key])).await;
    let flags = jwt_flags("--jwks-url", &jwks_server.url);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start_server(&flags).await;
    let mut client = server.client().await;
    let bearer = |claims| format!("Bearer {}", key.sign(&claims));
    let ana = bearer(customer("ana"));
    let reader = bearer(service("conciliacion", "saldos:read saldos:debit"));
    let follower = bearer(service("notificaciones", "saldos:events"));
    let forbidden = error_body("El token no permite esta operación.", "PROHIBIDO");
    for token in [&ana, &reader] {
        let auth = [("Authorization", token.as_str())];
        let reply = client.request("GET", "/eventos", &auth, None).await;
        assert_eq!((reply.status, reply.text()), (403, forbidden.as_str()));
        let reply = put_position(&mut client, token).await;
        assert_eq!((reply.status, reply.text()), (403, forbidden.as_str()));
    }
    let auth = [("Authorization", ana.as_str())];
    let reply = client
        .request(
            "POST",
            "/retiro",
            &[JSON, auth[0]],
            Some(r#"{"usuario":"ana","monto":5}"#),
        )
        .await;
    assert_eq!(reply.status, 200);
    let reply = client.request("GET", "/movimientos/ana", &auth, None).await;
    assert_eq!(reply.status, 200);
    let reply = client
        .request("GET", "/movimientos/beto", &auth, None)
        .await;
    assert_eq!((reply.status, reply.text()), (403, forbidden.as_str()));
    // The feed's scope reads no account's history or balance.
    let auth = [("Authorization", follower.as_str())];
    let reply = client.request("GET", "/movimientos/ana", &auth, None).await;
    assert_eq!(reply.status, 403);
    let reply = client.request("GET", "/eventos", &auth, None).await;
    assert_eq!(reply.status, 200);
    let page: Value = serde_json::from_str(reply.text()).unwrap();
    assert_eq!(page["eventos"][0]["principal"], "customer:ana");
    let reply = put_position(&mut client, &follower).await;
    assert_eq!(reply.status, 200);
    let reply = client.get("/eventos").await;
    assert_eq!(reply.status, 401, "no token");
}

async fn put_position(client: &mut Client, token: &str) -> crate::util::Reply {
    let headers = [JSON, ("Authorization", token)];
    client
        .request(
            "PUT",
            "/eventos/cursores/n",
            &headers,
            Some(r#"{"id":"1"}"#),
        )
        .await
}
