//! The PostgreSQL storage under the faults high availability exists for
//! (issue 17): a row held by another transaction, a frozen or read-only
//! database, settings the guarantees depend on overridden, a database still
//! starting, and a Multi-AZ failover drill. Every server runs as the
//! application role, as production does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::scrape;
use crate::pg_cluster::{self, Cluster, Stop};
use crate::postgres::{
    OPENING, Sent, check_nothing_lost_nothing_doubled, keyed, load, open_on, server_on, wait_for,
};
use crate::tcp_proxy::Proxy;
use crate::util::Client;

/// `--db-timeout` of these tests, and the slack allowed beyond it for a
/// reply to travel and a shared 2-core machine to schedule it.
const DB_TIMEOUT: Duration = Duration::from_secs(1);
const REPLY_SLACK: Duration = Duration::from_millis(400);

/// `--db-connections` of these tests, and the spare places the storage may
/// hold beyond them (`saldos::postgres::CONNECTIONS_SPARE`).
const DB_CONNECTIONS: i64 = 4;

/// A debit of a free account commits in milliseconds; this bound, half the
/// timeout, is far above that on a busy machine and far below a wait behind
/// a held row.
const OTHERS_WAIT_MAX: Duration = Duration::from_millis(500);

fn debit_body(usuario: &str, monto: u64) -> String {
    format!(r#"{{"usuario":"{usuario}","monto":{monto}}}"#)
}

/// The service's connections to `database` now.
async fn service_connections(admin: &tokio_postgres::Client, database: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'saldos'",
            &[&database],
        )
        .await
        .unwrap()
        .get(0)
}

/// An outside transaction holding `usuario`'s row (`SELECT … FOR UPDATE`)
/// until the returned client rolls back or is dropped.
async fn hold_row(cluster: &Cluster, database: &str, usuario: &str) -> tokio_postgres::Client {
    let holder = cluster.connect(database).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let held = holder
        .query(
            "SELECT saldo FROM accounts WHERE usuario = $1 FOR UPDATE",
            &[&usuario],
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1, "the row exists");
    holder
}

/// Sends one debit on a connection of its own: status and time taken.
async fn timed_debit(addr: SocketAddr, body: String, key: Option<String>) -> (u16, Duration) {
    let started = Instant::now();
    let mut client = Client::connect(addr).await;
    let reply = match &key {
        Some(key) => keyed(&mut client, "/retiro", key, &body).await,
        None => {
            let reply = client.post("/retiro", &body).await;
            Some((reply.status, reply.text().to_owned()))
        }
    };
    (reply.expect("a reply").0, started.elapsed())
}

/// Debits of `count` free accounts named `prefix0…`, sent at once: each
/// commits without waiting behind a held row.
async fn others_commit_promptly(addr: SocketAddr, prefix: &str, count: usize) {
    let others: Vec<_> = (0..count)
        .map(|n| {
            tokio::spawn(timed_debit(
                addr,
                debit_body(&format!("{prefix}{n}"), 1),
                None,
            ))
        })
        .collect();
    for other in others {
        let (status, took) = other.await.unwrap();
        assert_eq!(status, 200, "a debit of another account commits ({took:?})");
        assert!(
            took < OTHERS_WAIT_MAX,
            "waited {took:?} behind another account"
        );
    }
}

async fn saldo(addr: SocketAddr, usuario: &str) -> u64 {
    let reply = Client::connect(addr)
        .await
        .get(&format!("/saldo/{usuario}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    text.rsplit_once("\"saldo\":")
        .and_then(|(_, rest)| rest.trim_end_matches('}').parse().ok())
        .unwrap_or_else(|| panic!("no saldo in {text}"))
}

// Findings 1 and 6: one account's row held by an outside transaction. Its
// debits get 503 within --db-timeout and apply nothing; debits of other
// accounts sent meanwhile commit; the service never holds more than
// --db-connections + the spare places; readiness stays 200 (debits commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_row_blocks_only_its_own_debits_and_holds_no_connections() {
    const BLOCKED_DEBITS: usize = 40;
    const OTHER_DEBITS: usize = 8;
    let cluster = pg_cluster::shared();
    let (url, database, admin) = cluster.create_database_with_admin().await;
    let server = server_on(&url, &["--db-timeout", "1s"]).await;
    let addr = server.addr;
    let (status, _) = timed_debit(addr, debit_body("atascada", 1), None).await;
    assert_eq!(status, 200);
    let holder = hold_row(cluster, &database, "atascada").await;

    let peak = Arc::new(AtomicI64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        let admin = cluster.connect(&database).await;
        let database = database.clone();
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let now = service_connections(&admin, &database).await;
                peak.fetch_max(now, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let blocked: Vec<_> = (0..BLOCKED_DEBITS)
        .map(|n| {
            let key = (n % 2 == 0).then(|| format!("atascada-{n}"));
            tokio::spawn(timed_debit(addr, debit_body("atascada", 1), key))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    others_commit_promptly(addr, "libre", OTHER_DEBITS).await;
    let ready = Client::connect(addr).await.get("/health").await;
    assert_eq!(ready.status, 200, "debits can commit: ready");
    for debit in blocked {
        let (status, took) = debit.await.unwrap();
        assert_eq!(status, 503);
        assert!(took < DB_TIMEOUT + REPLY_SLACK, "503 after {took:?}");
    }
    // More waves: a connection leaked per timeout would pile up.
    for _ in 0..3 {
        let wave: Vec<_> = (0..BLOCKED_DEBITS)
            .map(|_| tokio::spawn(timed_debit(addr, debit_body("atascada", 1), None)))
            .collect();
        for debit in wave {
            assert_eq!(debit.await.unwrap().0, 503);
        }
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let bound = DB_CONNECTIONS + saldos::postgres::CONNECTIONS_SPARE as i64;
    assert!(peak <= bound, "{peak} connections, more than {bound}");
    println!("stuck row: at most {peak} service connections (bound {bound})");

    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(saldo(addr, "atascada").await, 99_999, "no 503 applied");
    let (status, _) = timed_debit(addr, debit_body("atascada", 1), None).await;
    assert_eq!(status, 200, "the row free again, its debits commit");
    drop(admin);
}

// Finding 6: one writer connection (`--db-connections 2`), one account's
// row held. A debit of it, then 0.3 s later debits of other accounts: the
// others commit; the held account's debit alone gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_account_fails_only_its_own_debits() {
    const OTHER_DEBITS: usize = 8;
    let cluster = pg_cluster::shared();
    let (url, database, _admin) = cluster.create_database_with_admin().await;
    let flags = ["--db-timeout", "1s", "--db-connections", "2"];
    let mut args = crate::util::postgres_args(&url);
    args.retain(|arg| arg != "--db-connections" && arg != "4");
    args.extend(flags.iter().map(|flag| (*flag).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = crate::util::start_server(&args).await;
    let addr = server.addr;
    assert_eq!(timed_debit(addr, debit_body("sola", 1), None).await.0, 200);
    let holder = hold_row(cluster, &database, "sola").await;
    let blocked = tokio::spawn(timed_debit(addr, debit_body("sola", 1), None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    others_commit_promptly(addr, "otra", OTHER_DEBITS).await;
    assert_eq!(blocked.await.unwrap().0, 503);
    drop(holder);
}

// Finding 2: a row held past the keys' TTL (and past several sweeps).
// Keyed debits of it answered 503 are never applied, not when the lock is
// released, not later; their retries then apply each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_503_applies_after_a_lock_outlives_the_key_ttl() {
    const DEBITS: usize = 6;
    let cluster = pg_cluster::shared();
    let (_, database, admin) = cluster.create_database_with_admin().await;
    // As the owner: whatever the role may sweep, a fence must outlive the
    // transaction it fences.
    let url = cluster.url(&database);
    let flags = ["--db-timeout", "1s", "--idempotency-ttl", "1s"];
    let server = server_on(&url, &flags).await;
    let addr = server.addr;
    assert_eq!(
        timed_debit(addr, debit_body("cercada", 1), None).await.0,
        200
    );
    let holder = hold_row(cluster, &database, "cercada").await;
    let debits: Vec<_> = (0..DEBITS)
        .map(|n| {
            let key = Some(format!("cercada-{n}"));
            tokio::spawn(timed_debit(addr, debit_body("cercada", 10), key))
        })
        .collect();
    for debit in debits {
        assert_eq!(debit.await.unwrap().0, 503);
    }
    // Past the TTL and two sweeps, then the lock goes.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let audited: i64 = admin
        .query_one("SELECT count(*) FROM debits WHERE usuario = 'cercada'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 1, "only the first debit applied");
    assert_eq!(saldo(addr, "cercada").await, 99_999);
    for n in 0..DEBITS {
        let key = Some(format!("cercada-{n}"));
        let (status, _) = timed_debit(addr, debit_body("cercada", 10), key).await;
        assert_eq!(status, 200);
    }
    assert_eq!(saldo(addr, "cercada").await, 99_999 - 10 * DEBITS as u64);
}

// Finding 3: clients racing on fresh accounts through two instances. Every
// first debit of 1 from the opening balance succeeds: a refusal only ever
// comes from a balance read under the row's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_account_is_never_refused_falsely() {
    const ROUNDS: usize = 120;
    const CLIENTS: usize = 8;
    let url = pg_cluster::shared().create_database().await;
    let servers = [server_on(&url, &[]).await, server_on(&url, &[]).await];
    let addrs = [servers[0].addr, servers[1].addr];
    let mut connections = Vec::new();
    for client in 0..CLIENTS {
        connections.push(Client::connect(addrs[client % 2]).await);
    }
    let mut refused = 0;
    for round in 0..ROUNDS {
        let usuario = format!("fresca{round}");
        let sends = connections.drain(..).map(|mut client| {
            let body = debit_body(&usuario, 1);
            tokio::spawn(async move {
                let reply = client.post("/retiro", &body).await;
                (client, reply.status, reply.text().to_owned())
            })
        });
        let sends: Vec<_> = sends.collect();
        for send in sends {
            let (client, status, body) = send.await.unwrap();
            if status != 200 {
                refused += 1;
                println!("{usuario}: {status} {body}");
            }
            connections.push(client);
        }
    }
    assert_eq!(refused, 0, "false refusals of fresh accounts");
}

// Finding 4: the database's defaults say `synchronous_commit = off` (an
// operator's tuning), and the WAL writer waits long: the service's own
// sessions still commit durably, so every acknowledged debit survives an
// immediate stop. A server without fsync is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_commit_and_fsync_are_enforced() {
    const DEBITS: u64 = 30;
    let cluster = Cluster::start();
    let (url, database, admin) = cluster.create_database_with_admin().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET synchronous_commit = off"
        ))
        .await
        .unwrap();
    drop(admin);
    cluster.stop(Stop::Fast);
    cluster.run_with(&["wal_writer_delay=10000"]);
    let server = server_on(&url, &["--db-timeout", "2s"]).await;
    let mut client = server.client().await;
    for _ in 0..DEBITS {
        assert_eq!(
            client
                .post("/retiro", &debit_body("durable", 1))
                .await
                .status,
            200
        );
    }
    cluster.stop(Stop::Immediate);
    cluster.run();
    let saldo = crate::postgres::past_503s(async || client.get("/saldo/durable").await).await;
    assert_eq!(
        saldo.text(),
        format!(r#"{{"usuario":"durable","saldo":{}}}"#, 100_000 - DEBITS)
    );
    drop(server);

    cluster.stop(Stop::Fast);
    cluster.run_with(&["fsync=off"]);
    let refused = open_on(&url, &[]).await.unwrap_err();
    assert!(refused.contains("fsync = off"), "{refused}");
}

// Finding 7: every PostgreSQL process frozen (SIGSTOP, a partition's
// symptom). Debits and reads get 503 within --db-timeout of their arrival,
// resolution included; liveness stays 200; once the database thaws the
// service recovers by itself, and every keyed 503 retried settles once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_answers_503_within_the_timeout() {
    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let opening = OPENING.to_string();
    let server = server_on(&url, &["--opening-balance", &opening, "--db-timeout", "1s"]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(vec![server.addr], 8, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frozen_at = Instant::now();
    cluster.signal_all(libc::SIGSTOP);
    let read_started = Instant::now();
    let read = Client::connect(server.addr).await.get("/saldo/nadie").await;
    assert_eq!(read.status, 503);
    assert!(read_started.elapsed() < DB_TIMEOUT + REPLY_SLACK);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let live = Client::connect(server.addr).await.get("/health/live").await;
    assert_eq!(live.status, 200, "liveness ignores the database");
    cluster.signal_all(libc::SIGCONT);
    let thawed_at = Instant::now();
    wait_for(server.addr, "/health", 200, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    let during: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.sent_at >= frozen_at && s.sent_at < thawed_at)
        .collect();
    assert!(!during.is_empty());
    for request in &sent {
        let status = request.reply.as_ref().map(|reply| reply.0);
        assert!(matches!(status, Some(200 | 503)), "{request:?}");
        assert!(
            request.elapsed < DB_TIMEOUT + REPLY_SLACK,
            "{} took {:?}",
            request.key,
            request.elapsed
        );
    }
    let applied = check_nothing_lost_nothing_doubled(&url, server.addr, &sent).await;
    println!(
        "frozen: {} debits sent, {} while frozen, {applied} answered 503 had applied",
        sent.len(),
        during.len()
    );
}

// Finding 8: the database read-only (as during some RDS maintenance):
// readiness and `saldos_storage_healthy` say debits cannot commit while
// liveness stays 200 and reads still work; both come back once writes do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_not_ready() {
    let cluster = pg_cluster::shared();
    let (url, database, admin) = cluster.create_database_with_admin().await;
    let server = server_on(&url, &["--db-timeout", "1s"]).await;
    wait_for(server.addr, "/health", 200, Duration::from_secs(5)).await;
    let reconnect_all = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{database}' AND application_name = 'saldos'"
    );
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET default_transaction_read_only = on; {reconnect_all}"
        ))
        .await
        .unwrap();
    wait_for(server.addr, "/health", 503, Duration::from_secs(5)).await;
    let live = Client::connect(server.addr).await.get("/health/live").await;
    assert_eq!(live.status, 200);
    let mut client = server.client().await;
    assert_eq!(
        client.post("/retiro", &debit_body("a", 1)).await.status,
        503
    );
    assert_eq!(client.get("/saldo/a").await.status, 200, "reads still work");
    let healthy = async || scrape(&server).await.value("saldos_storage_healthy", &[]);
    assert_eq!(
        healthy().await,
        0.0,
        "a read that succeeds leaves it unhealthy"
    );

    admin
        .batch_execute(&format!(
            "ALTER DATABASE {database} RESET default_transaction_read_only; {reconnect_all}"
        ))
        .await
        .unwrap();
    wait_for(server.addr, "/health", 200, Duration::from_secs(5)).await;
    let mut client = server.client().await;
    assert_eq!(
        client.post("/retiro", &debit_body("a", 1)).await.status,
        200
    );
    assert_eq!(healthy().await, 1.0);
}

// `saldos migrate` (the ECS task's first container) started while the
// database is still away: it waits, within --db-wait, instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_waits_for_the_database_within_db_wait() {
    let cluster = Cluster::start();
    let url = cluster.create_empty_database().await;
    cluster.stop(Stop::Fast);
    let migrating = std::process::Command::new(env!("CARGO_BIN_EXE_saldos"))
        .args(["migrate", "--database-url", &url, "--db-wait", "30s"])
        .args(["--db-timeout", "1s"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2_000));
    cluster.run();
    let output = migrating.wait_with_output().unwrap();
    assert!(output.status.success(), "migrate waited for the database");

    cluster.stop(Stop::Fast);
    let started = Instant::now();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_saldos"))
        .args(["migrate", "--database-url", &url, "--db-wait", "2s"])
        .args(["--db-timeout", "1s"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "gives up after --db-wait");
    assert!(started.elapsed() < Duration::from_secs(10));
}

// The failover drill (SPEC section 8, RDS Multi-AZ on loopback): a primary
// with a synchronous standby, a proxy standing in for the endpoint, keyed
// load through two instances. The primary stops at once, the standby is
// promoted, the proxy switches. Only 200 or 503, each within --db-timeout
// (+ slack); liveness 200 throughout; debits succeed again within 30 s with
// no restart; every unsettled request retried with its key settles once,
// and every debit acknowledged before the failover is on the new primary.
/// The failover drill's stage: a primary with a synchronous standby, and a
/// proxy standing in for the Multi-AZ endpoint.
pub(crate) struct Drill {
    primary: Cluster,
    standby: Cluster,
    proxy: Proxy,
    /// The application role's URL of the drill's database, through the proxy.
    pub(crate) url: String,
}

impl Drill {
    /// Starts both servers and the proxy, makes the standby synchronous and
    /// creates a database for the application role.
    pub(crate) async fn start() -> Self {
        let primary = Cluster::start();
        let standby = primary.start_standby();
        let proxy = Proxy::start(primary.port).await;
        let admin = primary.connect("postgres").await;
        for statement in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        ] {
            admin.batch_execute(statement).await.unwrap();
        }
        let direct_url = primary.create_database().await;
        let url = direct_url.replace(
            &format!("127.0.0.1:{}/", primary.port),
            &format!("127.0.0.1:{}/", proxy.port),
        );
        // The standby connects and the reload takes effect in a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = admin
                .query_opt("SELECT sync_state FROM pg_stat_replication", &[])
                .await
                .unwrap()
                .map(|row| row.get::<_, String>(0));
            if state.as_deref() == Some("sync") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the standby confirms every commit: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            primary,
            standby,
            proxy,
            url,
        }
    }

    /// The primary stops at once, the standby is promoted, the proxy
    /// switches to it; returns when the primary stopped.
    pub(crate) async fn fail_over(&self) -> Instant {
        let failed_at = Instant::now();
        self.primary.stop(Stop::Immediate);
        let promoted = self.standby.connect("postgres").await;
        promoted
            .query_one("SELECT pg_promote(true, 30)", &[])
            .await
            .unwrap();
        self.proxy.switch(self.standby.port);
        failed_at
    }

    /// The drill's database on the promoted standby, directly.
    pub(crate) fn promoted_url(&self) -> String {
        self.url.replace(
            &format!("127.0.0.1:{}/", self.proxy.port),
            &format!("127.0.0.1:{}/", self.standby.port),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drill() {
    const RECOVERY_MAX: Duration = Duration::from_secs(30);
    let drill = Drill::start().await;
    let url = drill.url.clone();
    let opening = OPENING.to_string();
    let flags = ["--opening-balance", &opening, "--db-timeout", "2s"];
    let servers = [server_on(&url, &flags).await, server_on(&url, &flags).await];
    let addrs = vec![servers[0].addr, servers[1].addr];

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(addrs.clone(), 8, stop.clone()));
    let live_ok = Arc::new(AtomicBool::new(true));
    let watching = {
        let (addrs, live_ok, stop) = (addrs.clone(), live_ok.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for addr in &addrs {
                    let live = Client::connect(*addr).await.get("/health/live").await;
                    if live.status != 200 {
                        live_ok.store(false, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let failed_at = drill.fail_over().await;
    wait_for(addrs[0], "/health", 200, RECOVERY_MAX).await;
    wait_for(addrs[1], "/health", 200, RECOVERY_MAX).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    watching.await.unwrap();
    assert!(live_ok.load(Ordering::Relaxed), "liveness stayed 200");

    let mut first_success_after = None;
    for request in &sent {
        let status = request.reply.as_ref().map(|reply| reply.0);
        assert!(matches!(status, Some(200 | 503)), "{request:?}");
        assert!(
            request.elapsed < Duration::from_secs(2) + REPLY_SLACK,
            "{} took {:?}",
            request.key,
            request.elapsed
        );
        if status == Some(200) && request.sent_at > failed_at {
            let at = request.sent_at + request.elapsed - failed_at;
            first_success_after =
                Some(first_success_after.map_or(at, |first: Duration| first.min(at)));
        }
    }
    let recovery = first_success_after.expect("debits succeeded after the failover");
    assert!(recovery < RECOVERY_MAX, "recovered after {recovery:?}");
    let acknowledged_before: HashMap<&str, u64> = sent
        .iter()
        .filter(|s| s.sent_at + s.elapsed < failed_at)
        .filter_map(|s| match &s.reply {
            Some((200, body)) => Some((s.key.as_str(), crate::postgres::nuevo_saldo(body))),
            _ => None,
        })
        .collect();
    assert!(!acknowledged_before.is_empty());
    let promoted_url = drill.promoted_url();
    let on_new_primary = crate::postgres::audit_trail(&promoted_url).await;
    for (key, saldo) in &acknowledged_before {
        assert_eq!(
            on_new_primary.get(*key).map(|entry| entry.1),
            Some(*saldo),
            "{key} acknowledged before the failover is on the new primary"
        );
    }
    let applied = check_nothing_lost_nothing_doubled(&promoted_url, addrs[0], &sent).await;
    println!(
        "failover drill: {} debits sent ({} acknowledged before the failover); debits succeeded \
         again {:.1} s after the primary stopped; {applied} answered 503 or unanswered had applied",
        sent.len(),
        acknowledged_before.len(),
        recovery.as_secs_f64()
    );
}

// A debit writer that dies (a panic, as a bug would): liveness and
// readiness fail, so the orchestrator (the ALB and the container health
// check both probe `/health/live`) replaces the task; the debit it held
// gets 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_fails_liveness() {
    let url = pg_cluster::shared().create_database().await;
    let server = server_on(&url, &[]).await;
    let mut client = server.client().await;
    assert_eq!(client.get("/health/live").await.status, 200);
    let faults = server.storage.postgres_handle().unwrap().faults();
    // Every writer (--db-connections 4: two of them) dies at its next batch.
    for _ in 0..2 {
        faults.panic_writer.store(true, Ordering::Relaxed);
        let debit = client.post("/retiro", &debit_body("a", 1)).await;
        assert_eq!(debit.status, 503);
    }
    for probe in ["/health/live", "/health"] {
        assert_eq!(client.get(probe).await.status, 503, "{probe}");
    }
}
