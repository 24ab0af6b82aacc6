//! The crash test: the real binary on the journal, under concurrent debits
//! (with and without idempotency keys), killed with SIGKILL at random moments
//! over many cycles. After every restart: each acknowledged debit survived,
//! nothing that was not requested was applied, and every acknowledged key
//! replays its remembered answer byte for byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::{Client, spawn_binary};

const CYCLES: u64 = 24;
const CLIENTS: u64 = 6;
const ACCOUNTS: u64 = 4;
const OPENING: u64 = 1_000_000_000;

/// What the clients saw in one cycle.
#[derive(Default)]
struct Seen {
    /// Per account: sum of debits answered 200.
    acknowledged: HashMap<u64, u64>,
    /// Per account: sum of debits sent but not answered (killed mid-way).
    in_doubt: HashMap<u64, u64>,
    /// Keyed requests answered 200 or 400: (key, path, body, answer).
    keyed: Vec<(String, &'static str, String, String)>,
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn start(dir: &Path) -> (Child, SocketAddr) {
    let opening = OPENING.to_string();
    let mut args = vec!["--opening-balance", &opening, "--seed", ""];
    args.extend(["--journal-segment-bytes", "16384", "--data-dir"]);
    args.push(dir.to_str().unwrap());
    spawn_binary(&args)
}

async fn load(address: SocketAddr, client: u64, cycle: u64, seen: Arc<Mutex<Seen>>) {
    let Some(mut connection) = Client::try_connect(address).await else {
        return;
    };
    let mut rng = Rng(0x9E37_79B9 ^ (cycle << 8 | client) | 1);
    for n in 0.. {
        let account = rng.below(ACCOUNTS);
        let monto = 1 + rng.below(1_000);
        let path = if n % 2 == 0 { "/pago" } else { "/retiro" };
        let body = format!(r#"{{"usuario":"cuenta{account}","monto":{monto}}}"#);
        let key = client
            .is_multiple_of(2)
            .then(|| format!("c{cycle}-{client}-{n}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(key) = &key {
            headers.push(("Idempotency-Key", key));
        }
        *seen.lock().unwrap().in_doubt.entry(account).or_default() += monto;
        let Some(reply) = connection
            .try_request("POST", path, &headers, Some(&body))
            .await
        else {
            return;
        };
        let mut seen = seen.lock().unwrap();
        *seen.in_doubt.entry(account).or_default() -= monto;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *seen.acknowledged.entry(account).or_default() += monto;
        if let Some(key) = key {
            seen.keyed.push((key, path, body, reply.text().to_owned()));
        }
    }
}

async fn saldo(client: &mut Client, account: u64) -> u64 {
    let reply = client.get(&format!("/saldo/cuenta{account}")).await;
    let text = reply.text();
    text.rsplit_once("\"saldo\":")
        .and_then(|(_, rest)| rest.trim_end_matches('}').parse().ok())
        .unwrap_or_else(|| panic!("{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_debits_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut debited: HashMap<u64, u64> = HashMap::new();
    let mut rng = Rng(0x5EED_u64 ^ u64::from(std::process::id()));
    let mut keyed_checked = 0;
    for cycle in 0..CYCLES {
        let (mut child, address) = start(dir.path());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| tokio::spawn(load(address, client, cycle, seen.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(20 + rng.below(200))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for client in clients {
            client.await.unwrap();
        }

        let (mut child, address) = start(dir.path());
        let mut client = Client::connect(address).await;
        let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
        for account in 0..ACCOUNTS {
            let before = debited.get(&account).copied().unwrap_or(0);
            let now = OPENING - saldo(&mut client, account).await;
            let acknowledged = seen.acknowledged.get(&account).copied().unwrap_or(0);
            let in_doubt = seen.in_doubt.get(&account).copied().unwrap_or(0);
            assert!(
                now >= before + acknowledged,
                "cycle {cycle} cuenta{account}: an acknowledged debit was lost"
            );
            assert!(
                now <= before + acknowledged + in_doubt,
                "cycle {cycle} cuenta{account}: an unrequested debit"
            );
            debited.insert(account, now);
        }
        for (key, path, body, answer) in &seen.keyed {
            let headers = [
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key.as_str()),
            ];
            let reply = client.request("POST", path, &headers, Some(body)).await;
            assert_eq!(
                reply.header("idempotent-replayed"),
                Some("true"),
                "cycle {cycle} {key}"
            );
            assert_eq!(reply.text(), answer, "cycle {cycle} {key}");
            keyed_checked += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    println!(
        "{CYCLES} SIGKILL cycles, {keyed_checked} keyed answers replayed, debited {debited:?}"
    );
    assert!(keyed_checked > 0, "some keyed debits were acknowledged");
    assert!(debited.values().sum::<u64>() > 0);
}
