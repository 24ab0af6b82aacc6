//! Metrics (SPEC section 7): `/metrics` on its own listener, parsed by a
//! Prometheus text parser; exact counts per route, method and status; debits
//! by outcome; replays; bounded label sets; the storage's health.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use openmetrics_parser::{PrometheusValue, prometheus::parse_prometheus};
use saldos::metrics::{
    ACCOUNTS_STORED, FAMILIES, IDEMPOTENCY_KEYS_STORED, JOURNAL_FAMILIES, POSTGRES_FAMILIES,
    STORAGE_HEALTHY,
};

use crate::journal::journal_server;
use crate::util::{Backend, Client, Reply, TestServer, start_server, start_server_on};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A series: its family and its labels, sorted.
type Series = (String, BTreeMap<String, String>);

/// One scrape of `/metrics`, parsed.
pub struct Scrape {
    /// The raw body.
    body: String,
    /// Every family name in the scrape.
    families: BTreeSet<String>,
    /// Every series and its value (a histogram's: its count).
    values: BTreeMap<Series, f64>,
}

impl Scrape {
    /// The value of the series, 0 when it is absent (a counter never
    /// incremented is not exported).
    pub fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        self.values
            .get(&series(family, labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// How much every series of `family` grew since `before`.
    pub fn deltas(&self, before: &Scrape, family: &str) -> BTreeMap<BTreeMap<String, String>, f64> {
        self.values
            .iter()
            .filter(|((name, _), _)| name == family)
            .map(|((_, labels), value)| {
                let was = before
                    .values
                    .get(&(family.to_owned(), labels.clone()))
                    .copied()
                    .unwrap_or(0.0);
                (labels.clone(), value - was)
            })
            .filter(|(_, delta)| *delta != 0.0)
            .collect()
    }
}

fn series(family: &str, labels: &[(&str, &str)]) -> Series {
    let labels = labels
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    (family.to_owned(), labels)
}

/// Scrapes the server's metrics listener and parses the body strictly.
pub async fn scrape(server: &TestServer) -> Scrape {
    let reply = get_metrics(server, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = reply.text().to_owned();
    let parsed = parse_prometheus(&body).unwrap_or_else(|error| panic!("{error:?}\n{body}"));
    let mut values = BTreeMap::new();
    for family in parsed.families.values() {
        for sample in family.iter_samples() {
            let labelset = sample.get_labelset().expect("labels");
            let labels = labelset
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            let value = match &sample.value {
                PrometheusValue::Counter(counter) => counter.value.as_f64(),
                PrometheusValue::Gauge(value) | PrometheusValue::Unknown(value) => value.as_f64(),
                PrometheusValue::Histogram(histogram) => histogram.count.unwrap_or(0) as f64,
                PrometheusValue::Summary(_) => panic!("no summaries are exported"),
            };
            values.insert((family.family_name.clone(), labels), value);
        }
    }
    let families = parsed.families.keys().cloned().collect();
    Scrape {
        body,
        families,
        values,
    }
}

async fn get_metrics(server: &TestServer, headers: &[(&str, &str)]) -> Reply {
    let address = server.metrics_addr.expect("metrics are on");
    let mut client = Client::connect(address).await;
    client.request("GET", "/metrics", headers, None).await
}

fn names(families: &[&str]) -> BTreeSet<String> {
    families.iter().map(|name| name.to_string()).collect()
}

// The scrape exports exactly the families the source names, for each
// storage: a renamed or forgotten family fails here.
#[tokio::test]
async fn every_named_family_is_exported_and_no_other() {
    let memory = start_server(&[]).await;
    let mut client = memory.client().await;
    assert_eq!(client.get("/saldo/usuario1").await.status, 200);
    assert_eq!(scrape(&memory).await.families, names(&FAMILIES));

    let dir = tempfile::tempdir().unwrap();
    let journal = journal_server(dir.path(), &[]).await;
    let mut client = journal.client().await;
    let debit = r#"{"usuario":"usuario1","monto":1}"#;
    assert_eq!(client.post("/pago", debit).await.status, 200);
    let expected = names(&FAMILIES)
        .into_iter()
        .chain(names(&JOURNAL_FAMILIES))
        .collect();
    assert_eq!(scrape(&journal).await.families, expected);

    // PostgreSQL: its own families; the stored counts are rows of the
    // database, not counted at every scrape.
    let postgres = start_server_on(Backend::Postgres, &[]).await;
    let mut client = postgres.client().await;
    assert_eq!(client.post("/pago", debit).await.status, 200);
    let scraped = scrape(&postgres).await;
    let expected = names(&FAMILIES)
        .into_iter()
        .filter(|name| name != ACCOUNTS_STORED && name != IDEMPOTENCY_KEYS_STORED)
        .chain(names(&POSTGRES_FAMILIES))
        .collect();
    assert_eq!(scraped.families, expected);
    assert_eq!(scraped.value(STORAGE_HEALTHY, &[]), 1.0);
}

// After exactly K requests of each kind, each (route, method, status) counter
// moved by exactly K, no other moved, and each route's histogram counted them.
#[tokio::test]
async fn requests_are_counted_exactly_by_route_method_and_status() {
    const K: usize = 5;
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, &'a str, &'a str);
    let debit = r#"{"usuario":"usuario1","monto":1}"#;
    let cases: &[Case] = &[
        (
            "GET",
            "/saldo/usuario1",
            None,
            "/saldo/{usuario}",
            "GET",
            "200",
        ),
        (
            "HEAD",
            "/saldo/usuario1",
            None,
            "/saldo/{usuario}",
            "HEAD",
            "200",
        ),
        (
            "GET",
            "/saldo/a%00b",
            None,
            "/saldo/{usuario}",
            "GET",
            "400",
        ),
        (
            "DELETE",
            "/saldo/usuario1",
            None,
            "/saldo/{usuario}",
            "other",
            "405",
        ),
        ("POST", "/pago", Some(debit), "/pago", "POST", "200"),
        ("POST", "/retiro", Some("[]"), "/retiro", "POST", "400"),
        ("GET", "/retiro", None, "/retiro", "GET", "405"),
        ("GET", "/health", None, "/health", "GET", "200"),
        ("GET", "/health/live", None, "/health/live", "GET", "200"),
        ("GET", "/saldo/a/b", None, "unmatched", "GET", "404"),
        ("GET", "/metrics", None, "unmatched", "GET", "404"),
    ];
    let server = start_server(&[]).await;
    let mut client = server.client().await;
    let before = scrape(&server).await;
    for (method, path, body, _, _, status) in cases {
        for _ in 0..K {
            let headers: &[(&str, &str)] = if body.is_some() { &[JSON] } else { &[] };
            let reply = client.request(method, path, headers, *body).await;
            assert_eq!(reply.status.to_string(), *status, "{method} {path}");
        }
    }
    let after = scrape(&server).await;
    let mut expected = BTreeMap::new();
    for (_, _, _, route, method, status) in cases {
        let (_, labels) = series(
            "",
            &[("route", route), ("method", method), ("status", status)],
        );
        *expected.entry(labels).or_insert(0.0) += K as f64;
    }
    assert_eq!(
        after.deltas(&before, "saldos_http_requests_total"),
        expected
    );
    let mut per_route = BTreeMap::new();
    for (_, _, _, route, _, _) in cases {
        let (_, labels) = series("", &[("route", route)]);
        *per_route.entry(labels).or_insert(0.0) += K as f64;
    }
    assert_eq!(
        after.deltas(&before, "saldos_http_request_duration_seconds"),
        per_route
    );
}

// Debits by kind and outcome, exactly; a replay is counted as a replay and
// not as a second debit.
#[tokio::test]
async fn debits_are_counted_by_outcome_and_replays_apart() {
    let server = start_server(&[]).await;
    let mut client = server.client().await;
    let before = scrape(&server).await;
    let pago = r#"{"usuario":"usuario1","monto":1000}"#;
    let too_much = r#"{"usuario":"usuario3","monto":10000}"#;
    for _ in 0..3 {
        assert_eq!(client.post("/pago", pago).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(client.post("/retiro", too_much).await.status, 400);
    }
    let keyed = [JSON, ("Idempotency-Key", "metrics-replay")];
    let first = client.request("POST", "/pago", &keyed, Some(pago)).await;
    let again = client.request("POST", "/pago", &keyed, Some(pago)).await;
    assert_eq!((first.status, again.status), (200, 200));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let after = scrape(&server).await;
    let debits = |kind, outcome| [("kind", kind), ("outcome", outcome)];
    let expected: BTreeMap<_, _> = [
        (series("", &debits("pago", "debited")).1, 4.0),
        (series("", &debits("retiro", "refused")).1, 2.0),
    ]
    .into();
    assert_eq!(after.deltas(&before, "saldos_debits_total"), expected);
    assert_eq!(
        after.value("saldos_idempotency_replays_total", &[])
            - before.value("saldos_idempotency_replays_total", &[]),
        1.0
    );
    assert_eq!(after.value("saldos_idempotency_keys_stored", &[]), 1.0);
    assert_eq!(after.value("saldos_connections_open", &[]), 1.0);
    assert_eq!(
        after.value(
            "saldos_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(after.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(after.value("process_open_fds", &[]) > 0.0);
}

// No label holds an account: 2,000 accounts read and debited leave the
// series, and the number of lines, of `/metrics` unchanged.
#[tokio::test]
async fn accounts_never_become_labels() {
    let server = start_server(&["--opening-balance", "1000"]).await;
    let mut client = server.client().await;
    let debit = |usuario: &str| format!(r#"{{"usuario":"{usuario}","monto":1}}"#);
    assert_eq!(client.get("/saldo/warm-up").await.status, 200);
    assert_eq!(client.post("/retiro", &debit("warm-up")).await.status, 200);
    let before = scrape(&server).await;
    for n in 0..2_000 {
        let usuario = format!("cuenta-{n}");
        assert_eq!(client.get(&format!("/saldo/{usuario}")).await.status, 200);
        assert_eq!(client.post("/retiro", &debit(&usuario)).await.status, 200);
    }
    let after = scrape(&server).await;
    let keys = |scrape: &Scrape| scrape.values.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&after), keys(&before));
    assert_eq!(after.body.lines().count(), before.body.lines().count());
    assert!(!after.body.contains("cuenta-"));
    assert_eq!(after.value("saldos_accounts_stored", &[]), 2_004.0);
}

// Metrics are served on their own listener only: the public port answers
// 404 to `/metrics`, and the metrics listener nothing but `/metrics`.
#[tokio::test]
async fn metrics_are_not_on_the_public_port() {
    let server = start_server(&[]).await;
    let mut client = server.client().await;
    assert_eq!(client.get("/metrics").await.status, 404);
    let mut metrics = Client::connect(server.metrics_addr.unwrap()).await;
    assert_eq!(metrics.get("/").await.status, 404);
    assert_eq!(metrics.get("/saldo/usuario1").await.status, 404);
    let off = start_server(&["--metrics-addr", ""]).await;
    assert_eq!(off.metrics_addr, None);
    assert_eq!(off.client().await.get("/saldo/usuario1").await.status, 200);
}

// A scraper that asks for OpenMetrics gets it, and it parses as such.
#[tokio::test]
async fn openmetrics_when_asked() {
    let server = start_server(&[]).await;
    let accept = (
        "Accept",
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    );
    let reply = get_metrics(&server, &[accept]).await;
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(reply.text())
        .unwrap_or_else(|error| panic!("{error:?}\n{}", reply.text()));
    assert!(parsed.families.contains_key("saldos_storage_healthy"));
}

// The journal's histograms count every batch and every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_batches_are_exported() {
    let dir = tempfile::tempdir().unwrap();
    let server = journal_server(dir.path(), &[]).await;
    let mut client = server.client().await;
    let body = r#"{"usuario":"usuario2","monto":1000}"#;
    for _ in 0..3 {
        assert_eq!(client.post("/retiro", body).await.status, 200);
    }
    let scraped = scrape(&server).await;
    let stats = server.storage.journal_handle().unwrap().stats();
    let batches = stats.batches.load(Ordering::Relaxed) as f64;
    assert!(batches >= 1.0);
    let count = |family| scraped.value(family, &[]);
    assert_eq!(count("saldos_journal_sync_duration_seconds"), batches);
    assert_eq!(count("saldos_journal_batch_records"), batches);
    let records_sum = scraped
        .body
        .lines()
        .find_map(|line| line.strip_prefix("saldos_journal_batch_records_sum "))
        .expect("a sum");
    assert_eq!(records_sum.parse::<f64>().unwrap(), 3.0);
}

// The Grafana dashboard queries only families the service exports (a
// histogram through its `_bucket`, `_sum` or `_count`): a renamed family
// fails here, not on a blank panel.
#[test]
fn the_dashboard_queries_only_exported_families() {
    let dashboard = include_str!("../../deploy/grafana/saldos.json");
    let exported: BTreeSet<&str> = FAMILIES
        .iter()
        .chain(&JOURNAL_FAMILIES)
        .chain(&POSTGRES_FAMILIES)
        .copied()
        .collect();
    let mut queried = BTreeSet::new();
    for prefix in ["saldos_", "process_"] {
        for (at, _) in dashboard.match_indices(prefix) {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            queried.insert(name);
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| exported.contains(base))
            .unwrap_or(name);
        assert!(exported.contains(family), "{name} is not exported");
    }
}
