//! OpenTelemetry traces (SPEC section 7), exported over OTLP/HTTP (protobuf)
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `_TRACES_ENDPOINT`) is set; off
//! otherwise, and then the request path does no tracing work at all (the
//! router checks [`App::traced`](crate::router::App), a plain `bool`).
//!
//! - One span per request (`{method} {route}`, server kind) continuing an
//!   incoming W3C `traceparent`, with the route pattern, status, request id
//!   and the ALB's `X-Amzn-Trace-Id` (`aws.xray.trace_id`), and a child span
//!   for the time spent waiting on storage.
//! - Spans are `tracing` spans of target [`TARGET`], turned into OpenTelemetry
//!   spans by `tracing-opentelemetry`; the log output never sees them.
//! - Sampler from `OTEL_TRACES_SAMPLER` / `_ARG`, default parent-based ratio
//!   0.05, applied before a span exists ([`sampling`]): an unsampled request
//!   builds no span at all. Service name from `OTEL_SERVICE_NAME`, default
//!   `saldos`.
//! - Export is batched on a thread of its own through a bounded queue
//!   (`OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
//!   `OTEL_BSP_SCHEDULE_DELAY`): a full queue drops the span and counts it
//!   ([`spans_dropped`]), it never blocks a request.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span as SdkSpan, SpanData, SpanExporter, SpanProcessor,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::header::is_visible_ascii;
use crate::metrics::{MethodLabel, RouteLabel};

mod sampling;

pub use sampling::Sampling;

/// The `tracing` target of every span meant for OpenTelemetry (no module's
/// path starts with it: target filters match prefixes).
pub const TARGET: &str = "saldos_spans";

/// The default service name.
const SERVICE_NAME: &str = "saldos";

/// Defaults of the batch settings (the OpenTelemetry specification's).
const QUEUE_SPANS_DEFAULT: usize = 2048;
const BATCH_SPANS_DEFAULT: usize = 512;
const SCHEDULE_DELAY_DEFAULT: Duration = Duration::from_secs(5);

/// The most spans the queue may hold, whatever the environment says.
const QUEUE_SPANS_MAX: usize = 1 << 20;

/// How long shutdown waits for the last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest `X-Amzn-Trace-Id` recorded (the ALB's is about 80 bytes).
const AMZN_TRACE_ID_BYTES_MAX: usize = 128;

/// The ALB's trace header.
const AMZN_TRACE_ID: http::HeaderName = http::HeaderName::from_static("x-amzn-trace-id");

/// Spans dropped because the export queue was full, since start.
static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped because the export queue was full, since start.
pub fn spans_dropped() -> u64 {
    SPANS_DROPPED.load(Ordering::Relaxed)
}

/// Why tracing cannot start.
#[derive(Debug, thiserror::Error)]
#[error("OTEL_* tracing settings: {0}")]
pub struct Error(String);

/// The running trace pipeline; dropping it exports what is queued.
pub struct Pipeline {
    provider: SdkTracerProvider,
    sampling: Sampling,
}

impl Pipeline {
    /// A pipeline when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces one) is
    /// set, else `None`: tracing is off.
    pub fn from_env() -> Result<Option<Self>, Error> {
        let endpoint_set = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
        if !endpoint_set {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()
            .map_err(|error| Error(error.to_string()))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(SERVICE_NAME);
        }
        let sampling = Sampling::from_env()?;
        // Requests are sampled before their span exists (`Sampling`): the
        // SDK keeps every span it is given.
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_span_processor(Exporting::start(exporter, Batching::from_env()?)?)
            .with_sampler(Sampler::AlwaysOn)
            .build();
        Ok(Some(Self { provider, sampling }))
    }

    /// Which requests get a span.
    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// The `tracing` layer that turns spans of [`TARGET`] into
    /// OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use tracing_subscriber::Layer as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer(SERVICE_NAME))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TARGET, tracing::level_filters::LevelFilter::TRACE),
            )
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
    }
}

/// One request's trace: its span, and what log lines about it carry.
pub struct RequestTrace {
    /// The request's span.
    pub span: tracing::Span,
}

impl RequestTrace {
    /// Starts the request's span, continuing the `traceparent` it carries,
    /// when `sampling` samples it; `None` (and no span built, no route
    /// resolved) otherwise.
    /// Its name and route are set here: once a span has a parent, its
    /// name can no longer change.
    pub fn start_sampled(
        sampling: Sampling,
        headers: &HeaderMap,
        method: MethodLabel,
        route: impl FnOnce() -> RouteLabel,
        request_id: &str,
        amzn_trace_id: Option<&AmznTraceId>,
    ) -> Option<Self> {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        if !sampling.samples(&parent) {
            return None;
        }
        let (method, route) = (method.as_str(), route().as_str());
        let span = tracing::info_span!(
            target: TARGET,
            "request",
            otel.name = format!("{method} {route}"),
            otel.kind = "server",
            http.request.method = method,
            http.route = route,
            http.response.status_code = tracing::field::Empty,
            request_id,
            aws.xray.trace_id = amzn_trace_id.map(AmznTraceId::as_str),
        );
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        Some(Self { span })
    }

    /// Records how the request ended.
    pub fn finish(&self, status: u16) {
        self.span.record("http.response.status_code", status);
    }

    /// The trace id, when this trace is sampled (for log lines).
    pub fn sampled_trace_id(&self) -> Option<String> {
        let context = self.span.context();
        let span = context.span();
        let span_context = span.span_context();
        span_context
            .is_sampled()
            .then(|| span_context.trace_id().to_string())
    }
}

/// The ALB's `X-Amzn-Trace-Id` of a request, copied inline (no allocation)
/// so that log lines about the request can carry it after the request's
/// headers are gone.
#[derive(Clone, Copy)]
pub struct AmznTraceId {
    bytes: [u8; AMZN_TRACE_ID_BYTES_MAX],
    len: usize,
}

impl AmznTraceId {
    /// The request's `X-Amzn-Trace-Id`, when it is a plausible one (1 to
    /// 128 visible ASCII characters; the ALB's is about 80).
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(AMZN_TRACE_ID)?.as_bytes();
        if !is_visible_ascii(value, AMZN_TRACE_ID_BYTES_MAX) {
            return None;
        }
        let mut bytes = [0; AMZN_TRACE_ID_BYTES_MAX];
        bytes[..value.len()].copy_from_slice(value);
        Some(Self {
            bytes,
            len: value.len(),
        })
    }

    /// The header's value.
    pub fn as_str(&self) -> &str {
        // Checked visible ASCII when copied.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl fmt::Display for AmznTraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runs `wait`, a wait on storage, inside a child span of the request's
/// when the request is traced (`traced`: the pipeline is on; and the
/// request was sampled: its span is the current one).
pub async fn waiting_on_storage<F: Future>(traced: bool, name: &'static str, wait: F) -> F::Output {
    if !traced || tracing::Span::current().is_none() {
        return wait.await;
    }
    wait.instrument(tracing::info_span!(target: TARGET, "storage", otel.name = name))
        .await
}

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Batch settings, from the standard `OTEL_BSP_*` variables.
#[derive(Debug, Clone, Copy)]
struct Batching {
    queue_spans: usize,
    batch_spans: usize,
    schedule_delay: Duration,
}

impl Batching {
    fn from_env() -> Result<Self, Error> {
        let number = |name: &str, default: u64| -> Result<u64, Error> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(text) => text
                    .trim()
                    .parse()
                    .map_err(|_| Error(format!("{name}: '{text}' is not a whole number"))),
            }
        };
        let queue_spans = number("OTEL_BSP_MAX_QUEUE_SIZE", QUEUE_SPANS_DEFAULT as u64)?;
        let batch_spans = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", BATCH_SPANS_DEFAULT as u64)?;
        let delay_ms = number(
            "OTEL_BSP_SCHEDULE_DELAY",
            SCHEDULE_DELAY_DEFAULT.as_millis() as u64,
        )?;
        let queue_spans = usize::try_from(queue_spans).unwrap_or(usize::MAX);
        if !(1..=QUEUE_SPANS_MAX).contains(&queue_spans) {
            return Err(Error(format!(
                "OTEL_BSP_MAX_QUEUE_SIZE: must be from 1 to {QUEUE_SPANS_MAX}"
            )));
        }
        Ok(Self {
            queue_spans,
            batch_spans: usize::try_from(batch_spans)
                .unwrap_or(usize::MAX)
                .clamp(1, queue_spans),
            schedule_delay: Duration::from_millis(delay_ms.max(1)),
        })
    }
}

/// What the exporting thread is asked besides spans.
enum Control {
    /// A batch's worth of spans is queued: export it now.
    Export,
    /// Export everything queued, then answer.
    Flush(Sender<()>),
    /// Export everything queued, shut the exporter down, answer and end.
    Shutdown(Sender<()>),
}

/// A span processor that hands ended, sampled spans to an exporting thread
/// through a bounded queue; when the queue is full the span is dropped and
/// counted, never waited for.
struct Exporting<E> {
    spans: Sender<SpanData>,
    control: Sender<Control>,
    /// Spans per export: a queue this long wakes the thread.
    batch_spans: usize,
    /// An [`Control::Export`] is on its way: the thread is woken once per
    /// batch, not once per span.
    nudged: Arc<AtomicBool>,
    exporter: Arc<Mutex<E>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<E> fmt::Debug for Exporting<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporting").finish_non_exhaustive()
    }
}

impl<E: SpanExporter + 'static> Exporting<E> {
    fn start(exporter: E, batching: Batching) -> Result<Self, Error> {
        let (spans, spans_rx) = crossbeam_channel::bounded(batching.queue_spans);
        let (control, control_rx) = crossbeam_channel::unbounded();
        let exporter = Arc::new(Mutex::new(exporter));
        let nudged = Arc::new(AtomicBool::new(false));
        let queue = Queue {
            spans: spans_rx,
            control: control_rx,
            nudged: nudged.clone(),
        };
        let thread_exporter = exporter.clone();
        let thread = std::thread::Builder::new()
            .name("saldos-traces".into())
            .spawn(move || export_forever(&thread_exporter, &queue, batching))
            .map_err(|error| Error(format!("cannot start the export thread: {error}")))?;
        Ok(Self {
            spans,
            control,
            batch_spans: batching.batch_spans,
            nudged,
            exporter,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn ask(&self, control: impl FnOnce(Sender<()>) -> Control, timeout: Duration) -> OTelSdkResult {
        let (done, answered) = crossbeam_channel::bounded(1);
        self.control
            .send(control(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answered
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl<E: SpanExporter + 'static> SpanProcessor for Exporting<E> {
    fn on_start(&self, _span: &mut SdkSpan, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {
                let is_batch = self.spans.len() >= self.batch_spans;
                if is_batch && !self.nudged.swap(true, Ordering::AcqRel) {
                    let _ = self.control.send(Control::Export);
                }
            }
            Err(TrySendError::Full(_)) => {
                SPANS_DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, SHUTDOWN_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let asked = self.ask(Control::Shutdown, timeout);
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let (Ok(()), Some(thread)) = (&asked, thread) {
            let _ = thread.join();
        }
        asked
    }

    fn set_resource(&mut self, resource: &Resource) {
        let mut exporter = self.exporter.lock().unwrap_or_else(PoisonError::into_inner);
        exporter.set_resource(resource);
    }
}

/// The exporting thread's side of the queue.
struct Queue {
    spans: Receiver<SpanData>,
    control: Receiver<Control>,
    nudged: Arc<AtomicBool>,
}

/// The exporting thread: it sleeps until a batch's worth of spans is queued,
/// the schedule delay has passed, or it is asked to flush or stop; then it
/// exports everything queued, a batch at a time.
fn export_forever<E: SpanExporter>(exporter: &Mutex<E>, queue: &Queue, batching: Batching) {
    let export_queued = || {
        // Cleared first: a batch filling up during the export wakes us again.
        queue.nudged.store(false, Ordering::Release);
        let queued: Vec<SpanData> = queue.spans.try_iter().collect();
        for batch in queued.chunks(batching.batch_spans) {
            let exporter = exporter.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(error) = futures_executor::block_on(exporter.export(batch.to_vec())) {
                tracing::debug!(%error, "trace export failed");
            }
        }
    };
    loop {
        let asked = queue.control.recv_timeout(batching.schedule_delay);
        export_queued();
        match asked {
            Ok(Control::Export) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Control::Flush(done)) => {
                let _ = done.send(());
            }
            Ok(Control::Shutdown(done)) => {
                let exporter = exporter.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = exporter.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    /// An exporter stuck in its first export until the test lets it go.
    #[derive(Debug)]
    struct Stuck(Mutex<Receiver<()>>);

    impl SpanExporter for Stuck {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            let _ = self.0.lock().unwrap().recv();
            Ok(())
        }
    }

    fn sampled_span(n: u64) -> SpanData {
        let context = SpanContext::new(
            TraceId::from(u128::from(n) + 1),
            SpanId::from(n + 1),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        SpanData {
            span_context: context,
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "request".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::default(),
        }
    }

    // A full queue drops spans and counts them; ending a span never waits
    // for the exporter.
    #[test]
    fn a_full_queue_drops_and_counts_spans() {
        let (release, stuck) = crossbeam_channel::unbounded();
        let batching = Batching {
            queue_spans: 2,
            batch_spans: 1,
            schedule_delay: Duration::from_secs(60),
        };
        let exporting = Exporting::start(Stuck(Mutex::new(stuck)), batching).unwrap();
        let dropped_before = spans_dropped();
        for n in 0..10 {
            exporting.on_end(sampled_span(n));
        }
        // The exporting thread holds at most the two it drained (one stuck
        // in the export) and the queue two more: six to eight of the ten
        // are dropped.
        let dropped = spans_dropped() - dropped_before;
        assert!((6..=8).contains(&dropped), "{dropped}");
        drop(release);
        assert!(exporting.shutdown_with_timeout(SHUTDOWN_TIMEOUT).is_ok());
    }

    #[test]
    fn only_plausible_amzn_trace_ids_are_kept() {
        let kept = |headers: &HeaderMap| AmznTraceId::of(headers).map(|id| id.to_string());
        let mut headers = HeaderMap::new();
        assert_eq!(kept(&headers), None);
        let alb = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1";
        headers.insert(AMZN_TRACE_ID, alb.parse().unwrap());
        assert_eq!(kept(&headers).as_deref(), Some(alb));
        for bad in ["a b".to_owned(), "x".repeat(AMZN_TRACE_ID_BYTES_MAX + 1)] {
            headers.insert(AMZN_TRACE_ID, bad.parse().unwrap());
            assert_eq!(kept(&headers), None);
        }
    }
}
