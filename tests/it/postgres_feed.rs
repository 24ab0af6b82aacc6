//! Movements and events on PostgreSQL (SPEC section 9), through the storage
//! seam the HTTP routes call: history pages, the feed followed by a consumer
//! that restarts at random moments while two instances write (and through
//! the failover drill), consumer positions, the bounds on every query, the
//! rule that keeps an account's events in balance order, and the migration
//! of a database that already has an audit trail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use saldos::ledger::{DebitKind, Outcome};
use saldos::seam::{Answer, Consumer, Event, EventId, KeyRequest, Order};
use saldos::storage::Storage;
use saldos::usuario::Usuario;

use crate::pg_cluster::{self, APP_PASSWORD, APP_ROLE};
use crate::postgres::{CUENTA, OPENING, keyed, load, migrate_with, nuevo_saldo, server_on};
use crate::postgres_faults::Drill;
use crate::util::{Client, postgres_args};

/// The opening balance of a database these tests create (saldos' default).
const OPENING_DEFAULT: u64 = 100_000;

/// `--db-timeout` of the tests that time queries, and the slack a reply may
/// take beyond it on a shared 2-core machine.
const DB_TIMEOUT: Duration = Duration::from_secs(1);

/// How much sooner than the service's deadline the server refuses a
/// position store it cannot make (it is given half the time left; a
/// session opened for it takes some of that time first).
const REFUSAL_MARGIN: Duration = Duration::from_millis(100);
const REPLY_SLACK: Duration = Duration::from_millis(400);

/// How long a consumer may take to catch up once writers stopped.
const DRAIN_MAX: Duration = Duration::from_secs(15);

fn usuario(name: &str) -> Usuario {
    Usuario::new(name).unwrap()
}

/// The storage `saldos` opens on `url` with `extra` flags.
async fn storage_on(url: &str, extra: &[&str]) -> Storage {
    let mut argv = vec!["saldos".to_owned()];
    argv.extend(postgres_args(url));
    argv.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let args = saldos::config::Cli::try_parse_from(argv).unwrap().serve;
    saldos::open_storage(&args).await.expect("storage opens")
}

/// One `retiro` through the seam, as the handler makes it; the new balance.
async fn debit(storage: &Storage, name: &str, monto: u64, key: Option<&str>) -> u64 {
    let order = Order {
        kind: DebitKind::Retiro,
        usuario: usuario(name),
        monto,
        principal: None,
        key: key.map(|key| KeyRequest {
            key,
            fingerprint: monto,
        }),
    };
    match storage.debit(order).await {
        Ok(Answer::Fresh(Outcome::Debited { nuevo_saldo })) => nuevo_saldo,
        other => panic!("{name} {monto}: {other:?}"),
    }
}

/// The audit trail's rows written since migration 4, as events, keyed by the
/// id computed in SQL (so the service's own arithmetic is checked too).
async fn audit_events(url: &str) -> BTreeMap<u64, (String, u64, u64)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT ((feed_xid << 16) | seq)::text, usuario, monto, saldo FROM debits \
             WHERE feed_xid IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let id: String = row.get(0);
            let (monto, saldo): (i64, i64) = (row.get(2), row.get(3));
            (
                id.parse().unwrap(),
                (row.get(1), monto as u64, saldo as u64),
            )
        })
        .collect()
}

/// Checks what a consumer received against the audit trail: the same
/// events, each once, in id order, each account's in balance order.
async fn assert_feed_is_the_audit_trail(url: &str, received: &[Event], opening: u64) {
    for pair in received.windows(2) {
        assert!(
            pair[0].movement.id < pair[1].movement.id,
            "ids grow: {:?} then {:?}",
            pair[0].movement.id,
            pair[1].movement.id
        );
    }
    let audit = audit_events(url).await;
    let got: BTreeMap<u64, (String, u64, u64)> = received
        .iter()
        .map(|event| {
            let movement = &event.movement;
            (
                movement.id.0,
                (
                    event.usuario.as_str().to_owned(),
                    movement.monto,
                    movement.saldo,
                ),
            )
        })
        .collect();
    assert_eq!(got.len(), received.len(), "no event twice");
    let missing = audit.keys().filter(|id| !got.contains_key(id)).count();
    let extra = got.keys().filter(|id| !audit.contains_key(id)).count();
    assert_eq!((missing, extra), (0, 0), "the feed is the audit trail");
    assert_eq!(got, audit);
    let mut saldos: HashMap<&str, u64> = HashMap::new();
    for event in received {
        let before = saldos.entry(event.usuario.as_str()).or_insert(opening);
        assert_eq!(
            event.movement.saldo + event.movement.monto,
            *before,
            "{} in balance order",
            event.usuario.as_str()
        );
        *before = event.movement.saldo;
    }
}

/// The feed from the start once it lists `count` events: a transaction of
/// another test of the shared cluster may hold it back for a moment (never
/// make it skip); waits on commits, not in a loop.
async fn events_listed(storage: &Storage, count: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut changes = storage.feed_changes();
        let events = storage.events(None, 1000).await.unwrap();
        if events.len() >= count || Instant::now() > deadline {
            assert_eq!(events.len(), count);
            return events;
        }
        let _ = tokio::time::timeout_at(deadline.into(), changes.changed()).await;
    }
}

/// A consumer of the feed: reads pages after its last id from whichever
/// storage it is told, restarting at random moments (from its last id, or
/// from its stored position), until `stop` and then until it read everything
/// the audit trail holds.
async fn consume(storages: Vec<Arc<Storage>>, url: String, stop: Arc<AtomicBool>) -> Vec<Event> {
    let name = Consumer::parse("notificaciones").unwrap();
    let mut received: Vec<Event> = Vec::new();
    let mut at = 0;
    let mut after: Option<EventId> = None;
    let mut changes = storages[at].feed_changes();
    let mut drained_by = None;
    loop {
        let storage = &storages[at];
        let limit = [1, 7, 100, 1000][fastrand::usize(..4)];
        let page = match storage.events(after, limit).await {
            Ok(page) => page,
            // 503 while the database is away: the consumer tries again.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(last) = page.last() {
            after = Some(last.movement.id);
        }
        let empty = page.is_empty();
        received.extend(page);
        if fastrand::u8(..10) == 0 {
            // A restart: another instance, from the stored position.
            if storage
                .store_consumer_position(&name, after.unwrap_or_default())
                .await
                .is_ok()
            {
                at = fastrand::usize(..storages.len());
                if let Ok(stored) = storages[at].consumer_position(&name).await {
                    assert_eq!(stored, Some(after.unwrap_or_default()));
                }
                changes = storages[at].feed_changes();
            }
        }
        if !empty {
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            let drained_by = *drained_by.get_or_insert_with(|| Instant::now() + DRAIN_MAX);
            // Past the deadline, the comparison with the audit trail says
            // what is missing.
            if received.len() >= audit_events(&url).await.len() || Instant::now() > drained_by {
                return received;
            }
        }
        // Woken by a commit of any instance (or the wait runs out).
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
    }
}

// History through the seam: 45 movements of one account among others,
// walked in pages of 7 with the cursor: each exactly once, newest first,
// balances chaining, `more` false only at the end; an account never debited
// has none. Then read-your-writes: a debit acknowledged by instance A is on
// instance B's first page at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_walk_every_movement_once_newest_first() {
    const MOVEMENTS: usize = 45;
    const PAGE: usize = 7;
    let url = pg_cluster::shared().create_database().await;
    let storage = Arc::new(storage_on(&url, &[]).await);
    let mut tasks = Vec::new();
    for n in 0..MOVEMENTS {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let monto = 1 + (n % 5) as u64;
            debit(&storage, "historia", monto, None).await;
            debit(&storage, &format!("otra{}", n % 3), 2, None).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let cuenta = usuario("historia");
    let mut walked = Vec::new();
    let mut before = None;
    loop {
        let page = storage.history(&cuenta, before, PAGE).await.unwrap();
        assert!(page.movements.len() <= PAGE);
        walked.extend(page.movements.iter().copied());
        before = page.movements.last().map(|movement| movement.id);
        if !page.more {
            break;
        }
        assert_eq!(page.movements.len(), PAGE, "a page short only at the end");
    }
    assert_eq!(walked.len(), MOVEMENTS);
    assert_eq!(
        walked[0].saldo,
        storage.read_saldo(&cuenta).await.unwrap(),
        "newest first"
    );
    for pair in walked.windows(2) {
        assert!(pair[0].id > pair[1].id, "newest first, none twice");
        assert_eq!(pair[0].saldo, pair[1].saldo - pair[0].monto, "saldo chains");
    }
    let oldest = walked.last().unwrap();
    assert_eq!(oldest.saldo, OPENING_DEFAULT - oldest.monto);
    let total: u64 = walked.iter().map(|movement| movement.monto).sum();
    assert_eq!(total, (0..MOVEMENTS as u64).map(|n| 1 + n % 5).sum::<u64>());
    let nobody = storage.history(&usuario("nadie"), None, 20).await.unwrap();
    assert!(nobody.movements.is_empty() && !nobody.more);

    // Read-your-writes across instances.
    let servers = [server_on(&url, &[]).await, server_on(&url, &[]).await];
    for n in 0..20 {
        let (a, b) = (&servers[n % 2], &servers[(n + 1) % 2]);
        let mut client = a.client().await;
        let reply = client
            .post("/retiro", r#"{"usuario":"historia","monto":1}"#)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page = b.storage.history(&cuenta, None, 1).await.unwrap();
        assert_eq!(page.movements[0].saldo, nuevo_saldo(reply.text()), "#{n}");
    }
}

// The feed (SPEC section 9's guarantee): two instances, eight writers of
// keyed debits over 40 accounts, and a consumer that restarts at random
// moments (switching instance, resuming from its stored position): once
// the writers stop and the feed drains, what it received is the audit trail
// exactly, each event once, each account's in balance order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_the_audit_trail_across_instances() {
    const WRITERS: usize = 8;
    const DEBITS_PER_WRITER: usize = 300;
    const ACCOUNTS: usize = 40;
    let url = pg_cluster::shared().create_database().await;
    let servers = [server_on(&url, &[]).await, server_on(&url, &[]).await];
    let stop = Arc::new(AtomicBool::new(false));
    let storages = servers.iter().map(|s| s.storage.clone()).collect();
    let consumer = tokio::spawn(consume(storages, url.clone(), stop.clone()));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let addr = servers[writer % 2].addr;
        writers.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            for n in 0..DEBITS_PER_WRITER {
                let name = format!("cuenta{}", fastrand::usize(..ACCOUNTS));
                let body = format!(r#"{{"usuario":"{name}","monto":{}}}"#, 1 + n % 9);
                let key = format!("w{writer}-{n}");
                let (status, text) = keyed(&mut client, "/retiro", &key, &body).await.unwrap();
                assert_eq!(status, 200, "{text}");
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let received = consumer.await.unwrap();
    assert_eq!(received.len(), WRITERS * DEBITS_PER_WRITER);
    assert_feed_is_the_audit_trail(&url, &received, OPENING_DEFAULT).await;
}

// The same consumer through the failover drill: keyed load through two
// instances, the primary stopped at once and its synchronous standby
// promoted; the consumer keeps reading (503s meanwhile) and, once the load
// stops, has received exactly the new primary's audit trail: no event it
// saw before the failover was lost, none skipped, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_survives_a_failover() {
    let drill = Drill::start().await;
    let opening = OPENING.to_string();
    let flags = ["--opening-balance", &opening, "--db-timeout", "2s"];
    let servers = [
        server_on(&drill.url, &flags).await,
        server_on(&drill.url, &flags).await,
    ];
    let stop_load = Arc::new(AtomicBool::new(false));
    let stop_consumer = Arc::new(AtomicBool::new(false));
    let addrs = servers.iter().map(|server| server.addr).collect();
    let loading = tokio::spawn(load(addrs, 8, stop_load.clone()));
    let storages = servers.iter().map(|s| s.storage.clone()).collect();
    let consumer = tokio::spawn(consume(storages, drill.url.clone(), stop_consumer.clone()));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    drill.fail_over().await;
    for server in &servers {
        crate::postgres::wait_for(server.addr, "/health", 200, Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop_load.store(true, Ordering::Relaxed);
    let sent = loading.await.unwrap();
    // Requests without an answer are settled by their keyed retries first,
    // so that the audit trail no longer changes.
    crate::postgres::check_nothing_lost_nothing_doubled(&drill.url, servers[0].addr, &sent).await;
    stop_consumer.store(true, Ordering::Relaxed);
    let received = consumer.await.unwrap();
    assert!(
        received
            .iter()
            .all(|event| event.usuario.as_str() == CUENTA)
    );
    assert_feed_is_the_audit_trail(&drill.promoted_url(), &received, OPENING).await;
    println!(
        "failover feed: {} events received, the new primary's audit trail exactly",
        received.len()
    );
}

// Long polls are woken by the other instances' commits: each debit
// committed through instance A wakes a feed reader of instance B within
// less than the re-check interval (B reads no page, so nothing of its own
// would wake it: the wake is A's announcement), and B's page then lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_one_instance_wakes_the_others_readers() {
    const ROUNDS: usize = 5;
    const WAKE_MAX: Duration = Duration::from_millis(900);
    let url = pg_cluster::shared().create_database().await;
    let (a, b) = (storage_on(&url, &[]).await, storage_on(&url, &[]).await);
    let mut changes = b.feed_changes();
    // The first wake may be B's listener starting; the rounds after it are
    // A's announcements alone.
    debit(&a, "avisada", 1, None).await;
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("B listens")
        .unwrap();
    for round in 1..=ROUNDS {
        changes.borrow_and_update();
        debit(&a, "avisada", 1, None).await;
        let started = Instant::now();
        tokio::time::timeout(WAKE_MAX, changes.changed())
            .await
            .unwrap_or_else(|_| panic!("round {round}: B not woken within {WAKE_MAX:?}"))
            .unwrap();
        assert!(started.elapsed() < WAKE_MAX);
        events_listed(&b, 1 + round).await;
    }
}

// Consumer positions: stored through one instance, read through another,
// moved, unknown names have none. Every feed query is bounded by
// --db-timeout: with the audit trail or the positions locked by an outside
// transaction, history, events and positions answer Unavailable in time,
// and answer again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_are_shared_and_every_query_is_bounded() {
    let cluster = pg_cluster::shared();
    let (url, database, _admin) = cluster.create_database_with_admin().await;
    let flags = ["--db-timeout", "1s"];
    let (a, b) = (
        storage_on(&url, &flags).await,
        storage_on(&url, &flags).await,
    );
    let name = Consumer::parse("notificaciones").unwrap();
    assert_eq!(b.consumer_position(&name).await, Ok(None));
    a.store_consumer_position(&name, EventId(42)).await.unwrap();
    assert_eq!(b.consumer_position(&name).await, Ok(Some(EventId(42))));
    b.store_consumer_position(&name, EventId(u64::MAX))
        .await
        .unwrap();
    assert_eq!(
        a.consumer_position(&name).await,
        Ok(Some(EventId(u64::MAX)))
    );
    let other = Consumer::parse("otro").unwrap();
    assert_eq!(a.consumer_position(&other).await, Ok(None));
    debit(&a, "bloqueada", 1, None).await;

    let holder = cluster.connect(&database).await;
    holder
        .batch_execute(
            "BEGIN; LOCK TABLE debits IN ACCESS EXCLUSIVE MODE; \
             LOCK TABLE event_consumers IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    let cuenta = usuario("bloqueada");
    let timed = |started: Instant, what: &str| {
        let took = started.elapsed();
        assert!(took < DB_TIMEOUT + REPLY_SLACK, "{what} took {took:?}");
    };
    let started = Instant::now();
    assert!(a.history(&cuenta, None, 20).await.is_err());
    timed(started, "history");
    let started = Instant::now();
    assert!(b.events(None, 100).await.is_err());
    timed(started, "events");
    let started = Instant::now();
    assert!(a.consumer_position(&name).await.is_err());
    timed(started, "a position");
    let started = Instant::now();
    assert!(b.store_consumer_position(&name, EventId(1)).await.is_err());
    timed(started, "storing a position");

    holder.batch_execute("ROLLBACK").await.unwrap();
    let page = a.history(&cuenta, None, 20).await.unwrap();
    assert_eq!(page.movements.len(), 1);
    events_listed(&b, 1).await;
    assert_eq!(
        a.consumer_position(&name).await,
        Ok(Some(EventId(u64::MAX)))
    );

    // Only the consumer's row held (every session opens and prepares): the
    // server refuses the store by itself, well before the service stops
    // waiting. A store the service gave up on first could still be queued
    // behind the row, and commit once it is free, after its 503.
    holder
        .batch_execute(
            "BEGIN; SELECT 1 FROM event_consumers WHERE nombre = 'notificaciones' FOR UPDATE",
        )
        .await
        .unwrap();
    let started = Instant::now();
    assert!(b.store_consumer_position(&name, EventId(1)).await.is_err());
    let took = started.elapsed();
    assert!(
        took < DB_TIMEOUT - REFUSAL_MARGIN,
        "the store was refused after {took:?}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(REPLY_SLACK).await;
    assert_eq!(
        a.consumer_position(&name).await,
        Ok(Some(EventId(u64::MAX)))
    );
}

// The rule that keeps an account's events in balance order: a transaction
// whose id was taken before another transaction debited the account and
// committed may not debit it after (its debits would sort before that
// commit's in the feed): the batch function answers blocked (6) and applies
// nothing; a fresh transaction debits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_transaction_cannot_debit_after_a_newer_one() {
    let url = pg_cluster::shared().create_database().await;
    let storage = storage_on(&url, &[]).await;
    debit(&storage, "orden", 1, None).await;
    let (early, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    early.batch_execute("BEGIN").await.unwrap();
    early
        .batch_execute("SELECT pg_current_xact_id()")
        .await
        .unwrap();
    let saldo = debit(&storage, "orden", 1, None).await;
    let batch = "SELECT outcome, saldo FROM saldos_debit_batch_v2( \
                 $1, 100000, 60000, 1000, ARRAY['orden'], ARRAY['retiro'], ARRAY[5::bigint], \
                 ARRAY[''], ARRAY[NULL::text], ARRAY[NULL::bigint])";
    let row = early.query_one(batch, &[&1_i64]).await.unwrap();
    assert_eq!(row.get::<_, i16>(0), 6, "blocked, not debited");
    early.batch_execute("COMMIT").await.unwrap();
    assert_eq!(storage.read_saldo(&usuario("orden")).await, Ok(saldo));

    let row = early.query_one(batch, &[&2_i64]).await.unwrap();
    assert_eq!(
        (row.get::<_, i16>(0), row.get::<_, i64>(1)),
        (0, saldo as i64 - 5),
        "a newer transaction debits"
    );
    let history = storage.history(&usuario("orden"), None, 10).await.unwrap();
    let saldos: Vec<u64> = history.movements.iter().map(|m| m.saldo).collect();
    assert_eq!(saldos, [saldo - 5, saldo, saldo + 1]);
}

// A database at version 3 (the release before the feed: kinded principals)
// with an audit trail migrates to 4: old rows untouched (and in neither
// history nor feed), new debits listed, the account's balance carried on. A run interrupted after its transaction
// (version not recorded, an index left INVALID) is completed by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_database_with_an_audit_trail_migrates() {
    let cluster = pg_cluster::shared();
    let owner_url = cluster.create_empty_database().await;
    let database = owner_url.rsplit('/').next().unwrap().to_owned();
    let admin = cluster.connect(&database).await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE saldos_migrations (version integer PRIMARY KEY, name text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now()); \
             BEGIN; {} ; INSERT INTO saldos_migrations (version, name) VALUES (1, 'schema'); COMMIT; \
             BEGIN; {} ; INSERT INTO saldos_migrations (version, name) VALUES (2, 'debit_batch_v2'); \
             COMMIT; \
             BEGIN; {} ; INSERT INTO saldos_migrations (version, name) VALUES (3, 'principal_kinds'); \
             COMMIT;",
            include_str!("../../src/postgres/migrations/0001_schema.sql"),
            include_str!("../../src/postgres/migrations/0002_debit_batch_v2.sql"),
            include_str!("../../src/postgres/migrations/0003_principal_kinds.sql"),
        ))
        .await
        .unwrap();
    for batch in 1..=3_i64 {
        admin
            .query(
                "SELECT * FROM saldos_debit_batch_v2($1, 100000, 60000, 1000, \
                 ARRAY['vieja', 'vieja', 'otra'], ARRAY['pago', 'retiro', 'pago'], \
                 ARRAY[10, 20, 30]::bigint[], ARRAY['', '', 'service:svc'], ARRAY[NULL, NULL, NULL]::text[], \
                 ARRAY[NULL, NULL, NULL]::bigint[])",
                &[&batch],
            )
            .await
            .unwrap();
    }
    let audit_sql = "SELECT batch, seq, usuario, kind, monto, saldo, debited_at::text, principal, \
                     coalesce(idempotency_key, '') FROM debits ORDER BY batch, seq";
    let snapshot = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|at| match at {
                        0 | 4 | 5 => row.get::<_, i64>(at).to_string(),
                        1 => row.get::<_, i32>(at).to_string(),
                        _ => row.get::<_, String>(at),
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let before = snapshot(admin.query(audit_sql, &[]).await.unwrap());
    assert_eq!(before.len(), 9);

    let url = cluster.migrate_for_app_role(&owner_url).await;
    assert_eq!(
        snapshot(admin.query(audit_sql, &[]).await.unwrap()),
        before,
        "old rows untouched"
    );
    let untagged: i64 = admin
        .query_one("SELECT count(*) FROM debits WHERE feed_xid IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(untagged, 9);
    let storage = storage_on(&url, &[]).await;
    let vieja = usuario("vieja");
    assert!(
        storage
            .history(&vieja, None, 20)
            .await
            .unwrap()
            .movements
            .is_empty()
    );
    assert!(storage.events(None, 100).await.unwrap().is_empty());
    let saldo = debit(&storage, "vieja", 5, None).await;
    assert_eq!(saldo, 100_000 - 3 * 30 - 5, "the balance carries on");
    let page = storage.history(&vieja, None, 20).await.unwrap();
    assert_eq!(page.movements.len(), 1);
    assert_eq!(page.movements[0].saldo, saldo);
    events_listed(&storage, 1).await;
    drop(storage);

    let indexes_sql = "SELECT string_agg(c.relname || CASE WHEN i.indisvalid THEN '' \
                       ELSE ' invalid' END, ', ' ORDER BY c.relname) \
                       FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                       WHERE i.indrelid = 'debits'::regclass";
    let indexes = || async {
        let row = admin.query_one(indexes_sql, &[]).await.unwrap();
        row.get::<_, String>(0)
    };
    let migrated = "debits_feed, debits_history, debits_pkey";
    assert_eq!(
        indexes().await,
        migrated,
        "the history's index replaced debits_usuario"
    );

    // An interrupted run: the version not recorded, an index INVALID, the
    // replaced one not dropped yet.
    admin
        .batch_execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'debits_feed'::regclass; \
             CREATE INDEX debits_usuario ON debits (usuario, debited_at); \
             DELETE FROM saldos_migrations WHERE version = 4",
        )
        .await
        .unwrap();
    assert_eq!(migrate_with(&owner_url, &[]).await, 1);
    assert_eq!(indexes().await, migrated, "built again, dropped");
    let storage = storage_on(&cluster.url_as(APP_ROLE, APP_PASSWORD, &database), &[]).await;
    debit(&storage, "vieja", 5, None).await;
    events_listed(&storage, 2).await;
}
