//! Prometheus metrics (SPEC section 7): the names, the registry a scrape
//! encodes, and the separate listener that serves `GET /metrics`.
//!
//! - `recorder`: what requests add, per thread, with labels resolved to
//!   array indices (the hot path: no lock, no allocation, no lookup).
//! - `process`: the usual `process_*` figures, read at scrape time.
//! - Gauges of the storage (health, accounts, keys) are read at scrape time
//!   too; a storage's own families are registered by
//!   [`Storage::register_metrics`], the one place a storage adds them.
//!
//! Every family name below is the name as scraped (counters with their
//! `_total`); the encoder is given the name without it and appends it.

mod process;
pub use process::Process;
mod recorder;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use recorder::{
    ConnectionOpen, DURATION_BOUNDS_SECONDS, MethodLabel, Recorder, RouteLabel, STATUSES,
    StreamOpen,
};

use crate::auth::Refusal;
use crate::ledger::DebitKind;

/// Requests answered, by route pattern, method and status.
pub const HTTP_REQUESTS: &str = "saldos_http_requests_total";
/// Time to answer a request, by route pattern (a histogram).
pub const HTTP_REQUEST_DURATION: &str = "saldos_http_request_duration_seconds";
/// Debit requests settled, by kind and outcome (replays not counted).
pub const DEBITS: &str = "saldos_debits_total";
/// Answers replayed from an idempotency key.
pub const IDEMPOTENCY_REPLAYS: &str = "saldos_idempotency_replays_total";
/// Requests refused by authentication (401) or authorization (403), by
/// reason (`auth::Refusal`, a fixed set).
pub const AUTH_REFUSALS: &str = "saldos_auth_refusals_total";
/// 1 while debits can be applied (the readiness probe), else 0.
pub const STORAGE_HEALTHY: &str = "saldos_storage_healthy";
/// Client connections being served.
pub const CONNECTIONS_OPEN: &str = "saldos_connections_open";
/// Accounts stored (seeded or debited).
pub const ACCOUNTS_STORED: &str = "saldos_accounts_stored";
/// Idempotency keys remembered.
pub const IDEMPOTENCY_KEYS_STORED: &str = "saldos_idempotency_keys_stored";
/// Always 1, with the running version as a label.
pub const BUILD_INFO: &str = "saldos_build_info";
/// Finished spans dropped because the trace export queue was full.
pub const TRACE_SPANS_DROPPED: &str = "saldos_trace_spans_dropped_total";
/// The usual process metrics.
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// See [`PROCESS_CPU_SECONDS`].
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// See [`PROCESS_CPU_SECONDS`].
pub const PROCESS_VIRTUAL_MEMORY: &str = "process_virtual_memory_bytes";
/// See [`PROCESS_CPU_SECONDS`].
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// See [`PROCESS_CPU_SECONDS`].
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// See [`PROCESS_CPU_SECONDS`].
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// See [`PROCESS_CPU_SECONDS`].
pub const PROCESS_THREADS: &str = "process_threads";
/// The journal's group commits: time of each batch's write and `fdatasync`.
pub const JOURNAL_SYNC_DURATION: &str = "saldos_journal_sync_duration_seconds";
/// The journal's group commits: records in each batch.
pub const JOURNAL_BATCH_RECORDS: &str = "saldos_journal_batch_records";

/// The PostgreSQL storage's debit batches: time from sending to commit.
pub const DB_BATCH_DURATION: &str = "saldos_db_batch_duration_seconds";
/// The PostgreSQL storage's debit batches: debits in each (one commit each).
pub const DB_BATCH_DEBITS: &str = "saldos_db_batch_debits";
/// Database failures: a connection that could not be opened or was lost,
/// a statement that failed.
pub const DB_ERRORS: &str = "saldos_db_errors_total";

/// Event streams (`GET /eventos` as Server-Sent Events) open now.
pub const EVENTS_STREAMS_OPEN: &str = "saldos_events_streams_open";
/// Events sent, in pages and streams.
pub const EVENTS_SENT: &str = "saldos_events_sent_total";

/// The families every server exports, whatever its storage.
pub const FAMILIES: [&str; 20] = [
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    DEBITS,
    IDEMPOTENCY_REPLAYS,
    AUTH_REFUSALS,
    STORAGE_HEALTHY,
    CONNECTIONS_OPEN,
    ACCOUNTS_STORED,
    IDEMPOTENCY_KEYS_STORED,
    BUILD_INFO,
    TRACE_SPANS_DROPPED,
    PROCESS_CPU_SECONDS,
    PROCESS_RESIDENT_MEMORY,
    PROCESS_VIRTUAL_MEMORY,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME,
    PROCESS_THREADS,
    EVENTS_STREAMS_OPEN,
    EVENTS_SENT,
];

/// The families the journal storage adds.
pub const JOURNAL_FAMILIES: [&str; 2] = [JOURNAL_SYNC_DURATION, JOURNAL_BATCH_RECORDS];

/// The families the PostgreSQL storage adds.
pub const POSTGRES_FAMILIES: [&str; 3] = [DB_BATCH_DURATION, DB_BATCH_DEBITS, DB_ERRORS];

/// Upper bounds of the journal's sync-duration buckets, in seconds.
pub const SYNC_BOUNDS_SECONDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Upper bounds of the journal's batch-size buckets, in records (a batch
/// holds at most 4096).
pub const BATCH_BOUNDS_RECORDS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Most scrapes served at once on the metrics listener.
const SCRAPE_CONNECTIONS_MAX: usize = 16;

/// How long a scraper may take to send its request head.
const SCRAPE_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The media type a scraper names in `Accept` to get OpenMetrics.
const OPENMETRICS_MEDIA_TYPE: &[u8] = b"application/openmetrics-text";

/// The OpenMetrics text format, served when a scraper's `Accept` asks for it.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A counter's name as given to the encoder: the scraped name without the
/// `_total` the encoder appends.
pub fn counter_base(name: &'static str) -> &'static str {
    let base = name.strip_suffix("_total");
    debug_assert!(base.is_some(), "counter {name} must end in _total");
    base.unwrap_or(name)
}

/// The request path's counts, from the [`Recorder`], as a scrape encodes
/// them.
pub struct Requests(pub Arc<Recorder>);

// `Collector` asks for `Debug`; the figures are what a scrape shows.
impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Requests")
    }
}

impl Requests {
    /// Requests by route, method and status, and the routes' durations.
    fn encode_requests(
        &self,
        encoder: &mut DescriptorEncoder,
        requests: &[(RouteLabel, MethodLabel, usize, u64)],
    ) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            counter_base(HTTP_REQUESTS),
            "Requests answered, by route pattern, method and status.",
            None,
            MetricType::Counter,
        )?;
        for (route, method, status, count) in requests {
            let labels = [
                ("route", route.as_str().to_owned()),
                ("method", method.as_str().to_owned()),
                ("status", recorder::status_label(*status)),
            ];
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            HTTP_REQUEST_DURATION,
            "Time from routing a request to its response, by route pattern.",
            None,
            MetricType::Histogram,
        )?;
        for route in RouteLabel::ALL {
            let histogram = self.0.durations(route);
            if histogram.count > 0 {
                let labels = [("route", route.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        histogram.sum,
                        histogram.count,
                        &histogram.buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

impl Collector for Requests {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let recorder = &self.0;
        // The request families are written once they have a series: some
        // parsers refuse a family with none, and it holds nothing to read.
        let requests = recorder.requests();
        if !requests.is_empty() {
            self.encode_requests(&mut encoder, &requests)?;
        }
        let mut family = encoder.encode_descriptor(
            counter_base(DEBITS),
            "Debit requests settled, by kind and outcome (replays not counted).",
            None,
            MetricType::Counter,
        )?;
        for (kind, kind_label) in [(DebitKind::Pago, "pago"), (DebitKind::Retiro, "retiro")] {
            for (refused, outcome) in [(false, "debited"), (true, "refused")] {
                let labels = [("kind", kind_label), ("outcome", outcome)];
                let count = ConstCounter::new(recorder.debits(kind, refused));
                count.encode(family.encode_family(&labels)?)?;
            }
        }
        let replays = ConstCounter::new(recorder.replays());
        replays.encode(encoder.encode_descriptor(
            counter_base(IDEMPOTENCY_REPLAYS),
            "Answers replayed from an idempotency key.",
            None,
            replays.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            counter_base(AUTH_REFUSALS),
            "Requests refused by authentication (401) or authorization (403), by reason.",
            None,
            MetricType::Counter,
        )?;
        for reason in Refusal::ALL {
            let count = ConstCounter::new(recorder.auth_refusals(reason));
            count.encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }
        let open = ConstGauge::new(recorder.connections_open());
        open.encode(encoder.encode_descriptor(
            CONNECTIONS_OPEN,
            "Client connections being served.",
            None,
            open.metric_type(),
        )?)?;
        let streams = ConstGauge::new(recorder.streams_open());
        streams.encode(encoder.encode_descriptor(
            EVENTS_STREAMS_OPEN,
            "Event streams (Server-Sent Events) open now.",
            None,
            streams.metric_type(),
        )?)?;
        let sent = ConstCounter::new(recorder.events_sent_total());
        sent.encode(encoder.encode_descriptor(
            counter_base(EVENTS_SENT),
            "Events sent, in pages and streams.",
            None,
            sent.metric_type(),
        )?)
    }
}

/// Serves `GET /metrics` on `listener` forever: Prometheus text, or
/// OpenMetrics text when the scraper's `Accept` names it.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let permits = Arc::new(Semaphore::new(SCRAPE_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = scrape(&registry, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// Answers one request on the metrics listener.
fn scrape(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND);
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return plain(StatusCode::METHOD_NOT_ALLOWED);
    }
    let openmetrics = request.headers().get_all(ACCEPT).iter().any(|value| {
        value
            .as_bytes()
            .windows(OPENMETRICS_MEDIA_TYPE.len())
            .any(|window| window.eq_ignore_ascii_case(OPENMETRICS_MEDIA_TYPE))
    });
    let mut body = String::new();
    let (encoded, content_type) = if openmetrics {
        (
            prometheus_client::encoding::text::encode(&mut body, registry),
            OPENMETRICS_CONTENT_TYPE,
        )
    } else {
        (
            prometheus_client::encoding::prometheus_text::encode(&mut body, registry),
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    };
    if encoded.is_err() {
        return plain(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
