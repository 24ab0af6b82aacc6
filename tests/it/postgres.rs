//! PostgreSQL storage (SPEC section 8) against a real server started by the
//! tests: migrations, fixed settings, several instances on one database,
//! failures of the database and of an instance.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use saldos::config::{Cli, Command};

use crate::pg_cluster::{self, Cluster, Stop};
use crate::util::{Client, Reply, TestServer, postgres_args, spawn_binary, start_server};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// The account every load test debits.
pub(crate) const CUENTA: &str = "compartida";

/// Opening balance of the load tests: no debit is ever refused.
pub(crate) const OPENING: u64 = 1_000_000_000;

/// The schema's migrations this binary has.
pub(crate) const MIGRATIONS: usize = 4;

/// A server on the database at `url` with `extra` flags.
pub(crate) async fn server_on(url: &str, extra: &[&str]) -> TestServer {
    let mut args = postgres_args(url);
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_server(&args).await
}

/// What opening the storage on `url` with `extra` flags says.
pub(crate) async fn open_on(url: &str, extra: &[&str]) -> Result<(), String> {
    let mut argv = vec!["saldos".to_owned()];
    argv.extend(postgres_args(url));
    argv.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let args = Cli::try_parse_from(argv).unwrap().serve;
    saldos::open_storage(&args)
        .await
        .map(drop)
        .map_err(|error| error.to_string())
}

/// `saldos migrate` on `url` with `extra` flags: how many migrations ran.
pub(crate) async fn migrate_with(url: &str, extra: &[&str]) -> usize {
    let mut argv = vec!["saldos", "migrate", "--database-url", url];
    argv.extend_from_slice(extra);
    let Some(Command::Migrate(args)) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("migrate parses as the migrate command");
    };
    saldos::postgres::migrate(&args).await.unwrap()
}

async fn migrate(url: &str) -> usize {
    migrate_with(url, &[]).await
}

// Migrations: from empty, concurrent runs apply each once, a re-run is a
// no-op, instances starting together agree, changed settings are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_and_fixed_settings() {
    let cluster = pg_cluster::shared();
    let url = cluster.create_empty_database().await;
    let mut applied = [0; 3];
    let runs = tokio::join!(migrate(&url), migrate(&url), migrate(&url));
    (applied[0], applied[1], applied[2]) = runs;
    applied.sort();
    assert_eq!(
        applied,
        [0, 0, MIGRATIONS],
        "one run migrates, the others wait and find it done"
    );
    assert_eq!(migrate(&url).await, 0, "re-run is a no-op");

    let (a, b) = tokio::join!(
        open_on(&url, &["--seed", "ana=5"]),
        open_on(&url, &["--seed", "ana=5"])
    );
    assert_eq!((a, b), (Ok(()), Ok(())));
    for (extra, says) in [
        (&["--seed", "ana=6"][..], "seed 'ana=5'"),
        (
            &["--seed", "ana=5", "--opening-balance", "7"][..],
            "opening balance 100000",
        ),
    ] {
        let refused = open_on(&url, extra).await.unwrap_err();
        assert!(
            refused.contains("refusing to start") && refused.contains(says),
            "{refused}"
        );
    }

    // A fresh database migrated by the service's own start.
    let fresh = cluster.create_empty_database().await;
    let server = server_on(&fresh, &["--seed", "ana=5"]).await;
    server.client().await.assert_saldo("ana", 5).await;
    assert_eq!(migrate(&fresh).await, 0);
}

/// Sends `body` to `path` with `key`; `None` when no reply came.
pub(crate) async fn keyed(
    client: &mut Client,
    path: &str,
    key: &str,
    body: &str,
) -> Option<(u16, String)> {
    let reply = client
        .try_request("POST", path, &[JSON, ("Idempotency-Key", key)], Some(body))
        .await?;
    Some((reply.status, reply.text().to_owned()))
}

pub(crate) fn nuevo_saldo(body: &str) -> u64 {
    body.rsplit_once("\"nuevo_saldo\":")
        .and_then(|(_, rest)| rest.trim_end_matches('}').parse().ok())
        .unwrap_or_else(|| panic!("no nuevo_saldo in {body}"))
}

// Two instances on one database, many clients on one account through both:
// every success saw a distinct balance, and the end is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_debit_one_account_exactly() {
    const CLIENTS: usize = 32;
    const DEBITS_PER_CLIENT: usize = 20;
    const SALDO: u64 = 3_000;
    const MONTO: u64 = 7;
    let url = pg_cluster::shared().create_database().await;
    let seed = format!("{CUENTA}={SALDO}");
    let servers = [
        server_on(&url, &["--seed", &seed]).await,
        server_on(&url, &["--seed", &seed]).await,
    ];
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let addr = servers[client % 2].addr;
        tasks.push(tokio::spawn(async move {
            let mut connection = Client::connect(addr).await;
            let mut replies = Vec::new();
            for _ in 0..DEBITS_PER_CLIENT {
                let body = format!(r#"{{"usuario":"{CUENTA}","monto":{MONTO}}}"#);
                let reply = connection.post("/retiro", &body).await;
                replies.push((reply.status, reply.text().to_owned()));
            }
            replies
        }));
    }
    let mut balances = HashSet::new();
    for task in tasks {
        for (status, body) in task.await.unwrap() {
            match status {
                200 => assert!(balances.insert(nuevo_saldo(&body)), "{body} twice"),
                400 => assert!(body.contains("SALDO_INSUFICIENTE"), "{body}"),
                other => panic!("{other}: {body}"),
            }
        }
    }
    let expected: HashSet<u64> = (1..=SALDO / MONTO).map(|k| SALDO - k * MONTO).collect();
    assert_eq!(balances, expected);
    for server in &servers {
        server
            .client()
            .await
            .assert_saldo(CUENTA, SALDO % MONTO)
            .await;
    }
}

// One key raced through both instances: one debit; the other request gets
// the replay (byte for byte) or 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_raced_through_two_instances_debits_once() {
    const RACES: usize = 30;
    let url = pg_cluster::shared().create_database().await;
    let servers = [server_on(&url, &[]).await, server_on(&url, &[]).await];
    let body = format!(r#"{{"usuario":"{CUENTA}","monto":10}}"#);
    for race in 0..RACES {
        let key = format!("carrera-{race}");
        let (mut a, mut b) = (servers[0].client().await, servers[1].client().await);
        let (ra, rb) = tokio::join!(
            keyed(&mut a, "/retiro", &key, &body),
            keyed(&mut b, "/retiro", &key, &body)
        );
        let mut replies = [ra.unwrap(), rb.unwrap()];
        replies.sort();
        assert_eq!(replies[0].0, 200, "race {race}: {replies:?}");
        match replies[1].0 {
            200 => assert_eq!(replies[1].1, replies[0].1, "race {race}"),
            409 => assert!(replies[1].1.contains("IDEMPOTENCIA_EN_CURSO")),
            other => panic!("race {race}: {other}"),
        }
    }
    let mut client = servers[1].client().await;
    client
        .assert_saldo(CUENTA, 100_000 - 10 * RACES as u64)
        .await;
    let audit = audit_trail(&url).await;
    assert_eq!(audit.len(), RACES, "one audit row per key");
}

/// The audit trail of [`CUENTA`]: key → (monto, resulting balance); panics
/// if a key was debited twice.
pub(crate) async fn audit_trail(url: &str) -> HashMap<String, (u64, u64)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT idempotency_key, monto, saldo FROM debits WHERE usuario = $1",
            &[&CUENTA],
        )
        .await
        .unwrap();
    let mut audit = HashMap::new();
    for row in rows {
        let key: String = row.get(0);
        let (monto, saldo): (i64, i64) = (row.get(1), row.get(2));
        let entry = (monto as u64, saldo as u64);
        assert!(
            audit.insert(key.clone(), entry).is_none(),
            "{key} debited twice"
        );
    }
    audit
}

/// A keyed debit of the load and what became of it.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) key: String,
    monto: u64,
    /// Status and body, or `None` when no reply came.
    pub(crate) reply: Option<(u16, String)>,
    /// How long the reply took.
    pub(crate) elapsed: Duration,
    /// When it was sent.
    pub(crate) sent_at: Instant,
}

impl Sent {
    fn body(&self) -> String {
        format!(r#"{{"usuario":"{CUENTA}","monto":{}}}"#, self.monto)
    }
}

/// Keyed debits of [`CUENTA`] from `clients` connections spread over
/// `addrs`, until `stop`; each reply (or its absence) is recorded.
pub(crate) async fn load(
    addrs: Vec<SocketAddr>,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Sent> {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let addr = addrs[client % addrs.len()];
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut connection = None;
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if connection.is_none() {
                    connection = Client::try_connect(addr).await;
                }
                let Some(open) = connection.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut request = Sent {
                    key: format!("c{client}-{n}"),
                    monto: 1 + (n % 7) as u64,
                    reply: None,
                    elapsed: Duration::ZERO,
                    sent_at: Instant::now(),
                };
                request.reply = keyed(open, "/retiro", &request.key, &request.body()).await;
                request.elapsed = request.sent_at.elapsed();
                match &request.reply {
                    None => connection = None,
                    // A client backs off after a 503.
                    Some((503, _)) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Some(_) => {}
                }
                sent.push(request);
            }
            sent
        }));
    }
    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.unwrap());
    }
    sent
}

/// After the storm: every request without a definite answer is retried with
/// its key through `addr` (SPEC section 8: the retry learns the truth).
/// Then the audit trail holds exactly one row per request answered 200, with
/// the balance its answer showed, and the account's balance is the opening
/// minus their sum. Returns how many 503s or silences had in fact applied.
pub(crate) async fn check_nothing_lost_nothing_doubled(
    url: &str,
    addr: SocketAddr,
    sent: &[Sent],
) -> usize {
    let mut client = Client::connect(addr).await;
    let mut acknowledged: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut applied_unanswered = 0;
    for request in sent {
        let first = request.reply.clone();
        if let Some((200, body)) = &first {
            acknowledged.insert(&request.key, (request.monto, nuevo_saldo(body)));
            continue;
        }
        if let Some((status, body)) = &first {
            assert_eq!(*status, 503, "only 200 and 503 under failure: {body}");
        }
        let headers = [JSON, ("Idempotency-Key", request.key.as_str())];
        let body = request.body();
        // A 503 applied nothing: a client retries it with its key.
        let retry = past_503s(async || {
            client
                .request("POST", "/retiro", &headers, Some(&body))
                .await
        })
        .await;
        assert_eq!(retry.status, 200, "{}: {}", request.key, retry.text());
        if retry.header("idempotent-replayed") == Some("true") {
            applied_unanswered += 1;
        }
        acknowledged.insert(&request.key, (request.monto, nuevo_saldo(retry.text())));
    }
    let audit = audit_trail(url).await;
    assert_eq!(
        audit.len(),
        acknowledged.len(),
        "one audit row per acknowledged debit"
    );
    for (key, entry) in &acknowledged {
        assert_eq!(audit.get(*key), Some(entry), "{key}");
    }
    let spent: u64 = audit.values().map(|(monto, _)| monto).sum();
    let path = format!("/saldo/{CUENTA}");
    let read = past_503s(async || client.get(&path).await).await;
    let expected = format!(r#"{{"usuario":"{CUENTA}","saldo":{}}}"#, OPENING - spent);
    assert_eq!((read.status, read.text()), (200, expected.as_str()));
    applied_unanswered
}

/// The first reply to `send` that is not 503, within 20 s (a shared
/// machine's disk may take longer than `--db-timeout` to commit now and then).
pub(crate) async fn past_503s(mut send: impl AsyncFnMut() -> Reply) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = send().await;
        if reply.status != 503 || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `path` until it answers `status`, within `within`.
pub(crate) async fn wait_for(addr: SocketAddr, path: &str, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let reply = Client::connect(addr).await.get(path).await;
        if reply.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still {} after {within:?}",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// The database stopped (cleanly, or at once as in a crash, during commits)
// under keyed load, then started again: only 200s and 503s, each within the
// timeout's bound; /health 503 and /health/live 200 meanwhile; the service
// recovers by itself; no acknowledged debit lost, none applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_stopped_and_restarted_under_load() {
    for how in [Stop::Fast, Stop::Immediate] {
        let cluster = Cluster::start();
        let url = cluster.create_database().await;
        let opening = OPENING.to_string();
        let server = server_on(&url, &["--opening-balance", &opening, "--db-timeout", "2s"]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(load(vec![server.addr], 8, stop.clone()));
        tokio::time::sleep(Duration::from_millis(700)).await;
        // On the test's own thread: the server dies with the thread that
        // started it (see pg_cluster), and a blocking-pool thread is reaped.
        cluster.stop(how);
        wait_for(server.addr, "/health", 503, Duration::from_secs(5)).await;
        let live = Client::connect(server.addr).await.get("/health/live").await;
        assert_eq!(live.status, 200, "{how:?}: liveness ignores the database");
        // Down longer than --db-timeout: requests get their 503 in time.
        let started = Instant::now();
        let reply = Client::connect(server.addr).await.get("/saldo/nadie").await;
        assert_eq!(reply.status, 503);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        cluster.run();
        wait_for(server.addr, "/health", 200, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let sent = load.await.unwrap();
        let answered_503 = sent
            .iter()
            .filter(|s| s.reply.as_ref().is_some_and(|r| r.0 == 503))
            .count();
        assert!(answered_503 > 0, "{how:?}: the outage was seen");
        let applied = check_nothing_lost_nothing_doubled(&url, server.addr, &sent).await;
        // Applied behind a 503: commits whose outcome stayed unknown past
        // --db-timeout (SPEC section 8's one case); their keyed retry
        // replayed them above.
        println!(
            "{how:?}: {} debits sent, {answered_503} answered 503, {applied} of them had applied",
            sent.len()
        );
        drop(server);
        drop(cluster);
    }
}

// An instance killed with SIGKILL under load: everything it acknowledged
// is in the database, read back through the other instance and from the
// audit trail; retries through the other instance settle the rest once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_under_load_loses_nothing() {
    let url = pg_cluster::shared().create_database().await;
    let opening = OPENING.to_string();
    let survivor = server_on(&url, &["--opening-balance", &opening]).await;
    let mut args = postgres_args(&url);
    args.extend(["--opening-balance".to_owned(), opening.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut victim, victim_addr) = spawn_binary(&args);
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(vec![victim_addr, survivor.addr], 16, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    victim.kill().unwrap();
    victim.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = load.await.unwrap();
    let unanswered = sent.iter().filter(|s| s.reply.is_none()).count();
    check_nothing_lost_nothing_doubled(&url, survivor.addr, &sent).await;
    println!("{} debits sent, {unanswered} cut by the kill", sent.len());
}

// Credential rotation (--db-password-file): the role's password changes
// while the service runs, the file is rewritten, the service's connections
// are cut; new requests succeed on new connections, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_needs_no_restart() {
    let cluster = pg_cluster::shared();
    let url = cluster.create_empty_database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    let admin = cluster.connect(&database).await;
    admin
        .batch_execute(
            "CREATE ROLE rotada LOGIN PASSWORD 'primera';
             GRANT ALL ON SCHEMA public TO rotada;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "primera\n").unwrap();
    let app_url = format!("postgres://rotada@127.0.0.1:{}/{database}", cluster.port);
    let file = password_file.to_str().unwrap();
    let server = server_on(&app_url, &["--db-password-file", file]).await;
    let mut client = server.client().await;
    assert_eq!(
        client
            .post("/retiro", r#"{"usuario":"a","monto":1}"#)
            .await
            .status,
        200
    );

    admin
        .batch_execute("ALTER ROLE rotada PASSWORD 'segunda'")
        .await
        .unwrap();
    std::fs::write(&password_file, "segunda\n").unwrap();
    let cut =
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'rotada'";
    let terminated: i64 = admin.query_one(cut, &[]).await.unwrap().get(0);
    assert!(terminated > 0, "the service's connections were cut");
    // The first request after the cut may meet a dead connection (503);
    // within a second every request goes through again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut statuses = Vec::new();
    loop {
        let status = client
            .post("/retiro", r#"{"usuario":"a","monto":1}"#)
            .await
            .status;
        statuses.push(status);
        if statuses.ends_with(&[200, 200, 200]) {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {statuses:?}");
    }
    let reads = client.get("/saldo/a").await;
    assert_eq!(reads.status, 200);

    // A stale password file: new connections fail (503), nothing hangs.
    std::fs::write(&password_file, "vieja\n").unwrap();
    let terminated: i64 = admin.query_one(cut, &[]).await.unwrap().get(0);
    assert!(terminated > 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = client.post("/retiro", r#"{"usuario":"a","monto":1}"#).await;
    assert_eq!(refused.status, 503);
}

// `saldos migrate --app-role`: the role can run the service on the migrated
// schema (debits, reads, keys) but has no DDL and cannot rewrite the audit
// trail; started on a schema that is behind, it refuses, saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_runs_the_service_without_ddl() {
    let cluster = pg_cluster::shared();
    let url = cluster.create_empty_database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    let admin = cluster.connect(&database).await;
    admin
        .batch_execute("CREATE ROLE app_saldos LOGIN PASSWORD 'clave'")
        .await
        .unwrap();
    let app_url = cluster.url_as("app_saldos", "clave", &database);
    let refused = open_on(&app_url, &[]).await.unwrap_err();
    assert!(refused.contains("saldos migrate"), "{refused}");

    assert_eq!(
        migrate_with(&url, &["--app-role", "app_saldos"]).await,
        MIGRATIONS
    );
    assert_eq!(
        migrate_with(&url, &["--app-role", "app_saldos"]).await,
        0,
        "idempotent"
    );
    let server = server_on(&app_url, &[]).await;
    let mut client = server.client().await;
    let keyed_reply = keyed(&mut client, "/pago", "k", r#"{"usuario":"ana","monto":5}"#).await;
    assert_eq!(keyed_reply.unwrap().0, 200);
    client.assert_saldo("ana", 99_995).await;

    let (app, connection) = tokio_postgres::connect(&app_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for forbidden in [
        "CREATE TABLE otra (x int)",
        "DROP TABLE accounts",
        "UPDATE debits SET monto = 1",
        "DELETE FROM debits",
        "ALTER TABLE accounts ADD COLUMN x int",
    ] {
        let error = app.batch_execute(forbidden).await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{forbidden}: {error:?}"
        );
    }

    // Exactly what the service needs (least privilege): each grant is used
    // by a statement of the service, the sweeper's deletes included.
    let granted = |sql: &'static str| {
        let admin = &admin;
        async move {
            let rows = admin.query(sql, &[]).await.unwrap();
            rows.iter().map(|row| row.get(0)).collect::<Vec<String>>()
        }
    };
    let tables = granted(
        "SELECT table_name || ' ' || privilege_type FROM information_schema.role_table_grants \
         WHERE grantee = 'app_saldos' ORDER BY 1",
    )
    .await;
    let expected = [
        "accounts INSERT",
        "accounts SELECT",
        "accounts UPDATE",
        "debit_batches DELETE",
        "debit_batches INSERT",
        "debit_batches SELECT",
        "debits INSERT",
        "debits SELECT",
        "event_consumers INSERT",
        "event_consumers SELECT",
        "event_consumers UPDATE",
        "idempotency_keys DELETE",
        "idempotency_keys INSERT",
        "idempotency_keys SELECT",
        "idempotency_keys UPDATE",
        "saldos_feed SELECT",
        "saldos_migrations SELECT",
        "saldos_settings INSERT",
        "saldos_settings SELECT",
    ];
    assert_eq!(tables, expected);
    let routines = granted(
        "SELECT routine_name || ' ' || privilege_type FROM information_schema.role_routine_grants \
         WHERE grantee = 'app_saldos' ORDER BY 1",
    )
    .await;
    assert_eq!(
        routines,
        [
            "saldos_debit_batch_v2 EXECUTE",
            "saldos_feed_summarize EXECUTE"
        ]
    );
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (PostgreSQL's packages depend on it)");
    assert!(status.success(), "openssl {args:?}");
}

/// A self-signed CA `name.pem` / `name.key` in `dir`.
fn make_ca(dir: &std::path::Path, name: &str) {
    let (pem, key, subject) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "1",
            "-subj",
            &subject,
        ],
    );
}

// TLS (SPEC section 8): verify-full against the CA bundle connects (every
// service connection is TLS); a server certificate from another CA, or not
// naming the host, refuses the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_server() {
    let cluster = Cluster::start();
    let url = cluster.create_database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    make_ca(dir.path(), "other-ca");
    openssl(
        dir.path(),
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.path().join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    // The server reads its key as the postgres user, which must own it.
    let postgres_owned = tempfile::tempdir().unwrap();
    for file in ["server.pem", "server.key"] {
        let to = postgres_owned.path().join(file);
        std::fs::copy(dir.path().join(file), &to).unwrap();
        let status = std::process::Command::new("chown")
            .args(["postgres", to.to_str().unwrap()])
            .status();
        assert!(status.is_ok());
    }
    std::fs::set_permissions(
        postgres_owned.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let admin = cluster.connect("postgres").await;
    let files = postgres_owned.path().display();
    // One statement each: ALTER SYSTEM refuses a transaction block.
    for setting in [
        format!("ssl_cert_file = '{files}/server.pem'"),
        format!("ssl_key_file = '{files}/server.key'"),
        "ssl = on".to_owned(),
    ] {
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .await
            .unwrap();
    }
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tls_url = |host: &str, ca: &str| {
        format!(
            "host={host} hostaddr=127.0.0.1 port={} user=postgres password={} dbname={database} \
             sslmode=verify-full sslrootcert={}",
            cluster.port,
            pg_cluster::SUPERUSER_PASSWORD,
            dir.path().join(ca).display()
        )
    };
    let server = server_on(&tls_url("localhost", "ca.pem"), &[]).await;
    let mut client = server.client().await;
    assert_eq!(
        client
            .post("/retiro", r#"{"usuario":"a","monto":1}"#)
            .await
            .status,
        200
    );
    client.assert_saldo("a", 99_999).await;
    let plain: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name = 'saldos' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name = 'saldos' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0);
    assert!(encrypted > 0);
    for (host, ca) in [("localhost", "other-ca.pem"), ("127.0.0.1", "ca.pem")] {
        let refused = open_on(&tls_url(host, ca), &[]).await;
        assert!(refused.is_err(), "{host} with {ca}");
    }
}

// Expired keys: a key past its TTL is new again, and the sweeper deletes
// expired key rows (and old batch rows) in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_new_again_and_swept() {
    let cluster = pg_cluster::shared();
    let url = cluster.create_database().await;
    let database = url.rsplit('/').next().unwrap().to_owned();
    let server = server_on(&url, &["--idempotency-ttl", "1s"]).await;
    let mut client = server.client().await;
    let first = keyed(&mut client, "/retiro", "k", r#"{"usuario":"a","monto":1}"#).await;
    assert_eq!(first.unwrap().0, 200);
    let conflict = keyed(&mut client, "/retiro", "k", r#"{"usuario":"a","monto":2}"#).await;
    assert_eq!(conflict.unwrap().0, 422);
    let admin = cluster.connect(&database).await;
    let count = async |table: &str| -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        admin.query_one(&sql, &[]).await.unwrap().get(0)
    };
    assert_eq!(count("idempotency_keys").await, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count("idempotency_keys").await > 0 {
        assert!(Instant::now() < deadline, "expired keys not swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Batch rows outlive the keys (the fencing invariant): still there,
    // until they are older than their own retention (ten minutes).
    assert!(
        count("debit_batches").await > 0,
        "batch rows kept past the key TTL"
    );
    admin
        .batch_execute("UPDATE debit_batches SET recorded_at = now() - interval '11 minutes'")
        .await
        .unwrap();
    while count("debit_batches").await > 0 {
        assert!(Instant::now() < deadline, "old batch rows not swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count("debits").await, 1, "the audit trail is never swept");
    let again = keyed(&mut client, "/retiro", "k", r#"{"usuario":"a","monto":2}"#).await;
    assert_eq!(
        again.unwrap(),
        (
            200,
            r#"{"usuario":"a","monto_retirado":2,"nuevo_saldo":99997}"#.to_owned()
        )
    );
}
