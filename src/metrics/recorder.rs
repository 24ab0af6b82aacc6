//! The request path's metrics: what every request, debit and connection
//! adds, kept where adding costs least.
//!
//! Every label a request can have is one of a few fixed values (a route
//! pattern, a method, a status), so each series is a slot in a fixed array,
//! found by index: no lock, no allocation, no map lookup per request. The
//! arrays are kept once per thread slot (cache-padded cells, a thread picks
//! its own by a per-thread ordinal), so worker threads do not fight over
//! cache lines; a scrape sums the cells. A recorder made for "metrics off"
//! has no cells and records nothing.

use std::cell::Cell as ThreadCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use http::{Method, StatusCode};

use crate::auth::Refusal;
use crate::ledger::{DebitKind, Outcome};

/// Most per-thread cells a recorder keeps; threads beyond share them.
const CELLS_MAX: usize = 256;

/// Upper bounds of the request-duration buckets, in seconds: 100 µs to 10 s
/// (SPEC section 7), roughly 1-2.5-5 per decade.
pub const DURATION_BOUNDS_SECONDS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The same bounds in nanoseconds, for the hot path's integer compare.
const DURATION_BOUNDS_NANOS: [u64; 16] = {
    let mut nanos = [0; 16];
    let mut i = 0;
    while i < nanos.len() {
        nanos[i] = (DURATION_BOUNDS_SECONDS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

/// A request's route, as a label: the pattern, never the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    /// `/health`.
    Health,
    /// `/health/live`.
    Live,
    /// `/saldo/{usuario}`.
    Saldo,
    /// `/pago`.
    Pago,
    /// `/retiro`.
    Retiro,
    /// `/movimientos/{usuario}`.
    Movimientos,
    /// `/eventos`.
    Eventos,
    /// `/eventos/cursores/{nombre}`.
    Cursores,
    /// Any path no route has.
    Unmatched,
}

impl RouteLabel {
    /// Every route label, in index order.
    pub const ALL: [Self; 9] = [
        Self::Health,
        Self::Live,
        Self::Saldo,
        Self::Pago,
        Self::Retiro,
        Self::Movimientos,
        Self::Eventos,
        Self::Cursores,
        Self::Unmatched,
    ];

    /// The label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Health => "/health",
            Self::Live => "/health/live",
            Self::Saldo => "/saldo/{usuario}",
            Self::Pago => "/pago",
            Self::Retiro => "/retiro",
            Self::Movimientos => "/movimientos/{usuario}",
            Self::Eventos => "/eventos",
            Self::Cursores => "/eventos/cursores/{nombre}",
            Self::Unmatched => "unmatched",
        }
    }

    /// The debit route of `kind`.
    pub fn debit(kind: DebitKind) -> Self {
        match kind {
            DebitKind::Pago => Self::Pago,
            DebitKind::Retiro => Self::Retiro,
        }
    }
}

/// A request's method, as a label: the API's methods, every other as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodLabel {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// Any other method.
    Other,
}

impl MethodLabel {
    /// Every method label, in index order.
    pub const ALL: [Self; 5] = [Self::Get, Self::Head, Self::Post, Self::Put, Self::Other];

    /// The label of `method`.
    pub fn of(method: &Method) -> Self {
        match *method {
            Method::GET => Self::Get,
            Method::HEAD => Self::Head,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            _ => Self::Other,
        }
    }

    /// The label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Other => "other",
        }
    }
}

/// The statuses the API answers (SPEC section 1); any other is `other`.
pub const STATUSES: [u16; 13] = [
    200, 400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 422, 503,
];

/// Index of `status` in [`STATUSES`], or `STATUSES.len()` for `other`.
fn status_index(status: StatusCode) -> usize {
    let code = status.as_u16();
    STATUSES
        .iter()
        .position(|known| *known == code)
        .unwrap_or(STATUSES.len())
}

/// The `status` label of index `index`.
pub fn status_label(index: usize) -> String {
    STATUSES
        .get(index)
        .map_or_else(|| "other".to_owned(), u16::to_string)
}

const ROUTES: usize = RouteLabel::ALL.len();
const METHODS: usize = MethodLabel::ALL.len();
const STATUS_LABELS: usize = STATUSES.len() + 1;
/// Duration buckets, the last one above every bound (`+Inf` only).
const BUCKETS: usize = DURATION_BOUNDS_NANOS.len() + 1;

/// A duration histogram's counts: per bucket (not cumulative), count, sum.
#[derive(Default)]
struct Durations {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// One thread slot's counts.
#[derive(Default)]
struct Cell {
    requests: [[[AtomicU64; STATUS_LABELS]; METHODS]; ROUTES],
    durations: [Durations; ROUTES],
    /// By [`DebitKind`], then debited (0) or refused (1).
    debits: [[AtomicU64; 2]; 2],
    replays: AtomicU64,
    /// By [`Refusal`].
    auth_refusals: [AtomicU64; Refusal::ALL.len()],
}

/// Counts of the request path, per thread slot; see the module's doc.
pub struct Recorder {
    cells: Box<[CachePadded<Cell>]>,
    /// Connections being served now.
    connections_open: CachePadded<AtomicI64>,
    /// Event streams open now.
    streams_open: CachePadded<AtomicI64>,
    /// Events sent, in pages and streams.
    events_sent: CachePadded<AtomicU64>,
}

/// Adds `n` to a counter only this thread slot writes, mostly.
fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

thread_local! {
    /// This thread's ordinal, for picking a cell.
    static ORDINAL: ThreadCell<usize> = const { ThreadCell::new(usize::MAX) };
}

/// This thread's ordinal: threads are numbered as they first record.
fn ordinal() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    ORDINAL.with(|ordinal| {
        if ordinal.get() == usize::MAX {
            ordinal.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        ordinal.get()
    })
}

impl Recorder {
    /// A recorder for `threads` threads (the runtime's workers).
    pub fn new(threads: usize) -> Self {
        let cells = threads.clamp(1, CELLS_MAX).next_power_of_two();
        Self {
            cells: (0..cells)
                .map(|_| CachePadded::new(Cell::default()))
                .collect(),
            connections_open: CachePadded::new(AtomicI64::new(0)),
            streams_open: CachePadded::new(AtomicI64::new(0)),
            events_sent: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// A recorder that records nothing: metrics are off.
    pub fn off() -> Self {
        Self {
            cells: Box::new([]),
            connections_open: CachePadded::new(AtomicI64::new(0)),
            streams_open: CachePadded::new(AtomicI64::new(0)),
            events_sent: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// True when this recorder records.
    pub fn is_on(&self) -> bool {
        !self.cells.is_empty()
    }

    fn cell(&self) -> Option<&Cell> {
        if self.cells.is_empty() {
            return None;
        }
        // A power of two: the mask picks a cell.
        Some(&self.cells[ordinal() & (self.cells.len() - 1)])
    }

    /// One answered request.
    pub fn request(
        &self,
        route: RouteLabel,
        method: MethodLabel,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let Some(cell) = self.cell() else { return };
        add(
            &cell.requests[route as usize][method as usize][status_index(status)],
            1,
        );
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let durations = &cell.durations[route as usize];
        let bucket = DURATION_BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        add(&durations.buckets[bucket], 1);
        add(&durations.count, 1);
        add(&durations.sum_nanos, nanos);
    }

    /// One debit request settled (not a replay).
    pub fn debit(&self, kind: DebitKind, outcome: Outcome) {
        let Some(cell) = self.cell() else { return };
        let refused = matches!(outcome, Outcome::Refused { .. });
        add(&cell.debits[kind as usize][usize::from(refused)], 1);
    }

    /// One answer replayed from an idempotency key.
    pub fn replay(&self) {
        if let Some(cell) = self.cell() {
            add(&cell.replays, 1);
        }
    }

    /// One request refused by authentication (401) or authorization (403).
    pub fn auth_refusal(&self, reason: Refusal) {
        if let Some(cell) = self.cell() {
            add(&cell.auth_refusals[reason as usize], 1);
        }
    }

    /// A connection is being served, until the returned guard drops.
    pub fn connection(&self) -> Option<ConnectionOpen<'_>> {
        self.is_on().then(|| {
            self.connections_open.fetch_add(1, Ordering::Relaxed);
            ConnectionOpen(self)
        })
    }

    /// Connections being served now.
    pub fn connections_open(&self) -> i64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// An event stream is open, until the returned guard drops; `None`
    /// when `max` are open already. Counted whether metrics are on or not:
    /// the count is also the streams' bound.
    pub fn stream_within(self: &Arc<Self>, max: i64) -> Option<StreamOpen> {
        let open = self.streams_open.fetch_add(1, Ordering::Relaxed);
        let guard = StreamOpen(self.clone());
        (open < max).then_some(guard)
    }

    /// Event streams open now.
    pub fn streams_open(&self) -> i64 {
        self.streams_open.load(Ordering::Relaxed)
    }

    /// `count` events were sent.
    pub fn events_sent(&self, count: usize) {
        self.events_sent.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Events sent so far.
    pub fn events_sent_total(&self) -> u64 {
        self.events_sent.load(Ordering::Relaxed)
    }

    /// Sums a counter over the cells.
    fn sum(&self, counter: impl Fn(&Cell) -> &AtomicU64) -> u64 {
        self.cells
            .iter()
            .map(|cell| counter(cell).load(Ordering::Relaxed))
            .sum()
    }

    /// Requests answered, for each (route, method, status index) seen at
    /// least once.
    pub fn requests(&self) -> Vec<(RouteLabel, MethodLabel, usize, u64)> {
        let mut seen = Vec::new();
        for route in RouteLabel::ALL {
            for method in MethodLabel::ALL {
                for status in 0..STATUS_LABELS {
                    let count =
                        self.sum(|cell| &cell.requests[route as usize][method as usize][status]);
                    if count > 0 {
                        seen.push((route, method, status, count));
                    }
                }
            }
        }
        seen
    }

    /// The request-duration histogram of `route`.
    pub fn durations(&self, route: RouteLabel) -> Histogram {
        let route = route as usize;
        let buckets = DURATION_BOUNDS_SECONDS
            .iter()
            .enumerate()
            .map(|(index, bound)| {
                (
                    *bound,
                    self.sum(|cell| &cell.durations[route].buckets[index]),
                )
            })
            .collect();
        Histogram {
            // Seconds from nanoseconds.
            sum: self.sum(|cell| &cell.durations[route].sum_nanos) as f64 / 1e9,
            count: self.sum(|cell| &cell.durations[route].count),
            buckets,
        }
    }

    /// Debit requests settled with `kind` and `outcome` (`refused` or not).
    pub fn debits(&self, kind: DebitKind, refused: bool) -> u64 {
        self.sum(|cell| &cell.debits[kind as usize][usize::from(refused)])
    }

    /// Answers replayed from idempotency keys.
    pub fn replays(&self) -> u64 {
        self.sum(|cell| &cell.replays)
    }

    /// Requests refused for `reason`.
    pub fn auth_refusals(&self, reason: Refusal) -> u64 {
        self.sum(|cell| &cell.auth_refusals[reason as usize])
    }
}

/// A histogram's state at a scrape, as the encoder takes it.
pub struct Histogram {
    /// Sum of observations, in seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
    /// (upper bound, observations in this bucket only), finite bounds only.
    pub buckets: Vec<(f64, u64)>,
}

/// One connection counted open; dropping it counts it closed.
pub struct ConnectionOpen<'a>(&'a Recorder);

impl Drop for ConnectionOpen<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one open event stream while alive.
pub struct StreamOpen(Arc<Recorder>);

impl Drop for StreamOpen {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let recorder = Recorder::new(1);
        let cases = [
            (Duration::from_micros(50), Some(0)),
            (Duration::from_micros(100), Some(0)),
            (Duration::from_micros(101), Some(1)),
            (Duration::from_millis(1), Some(3)),
            (Duration::from_secs(10), Some(15)),
            (Duration::from_secs(11), None),
        ];
        for (elapsed, _) in cases {
            recorder.request(RouteLabel::Saldo, MethodLabel::Get, StatusCode::OK, elapsed);
        }
        let histogram = recorder.durations(RouteLabel::Saldo);
        assert_eq!(histogram.count, cases.len() as u64);
        for (index, (_, count)) in histogram.buckets.iter().enumerate() {
            let expected = cases.iter().filter(|(_, at)| *at == Some(index)).count();
            assert_eq!(*count, expected as u64, "bucket {index}");
        }
        assert!(
            (histogram.sum - 21.001_251).abs() < 1e-9,
            "{}",
            histogram.sum
        );
    }

    #[test]
    fn statuses_outside_the_api_count_as_other() {
        assert_eq!(status_index(StatusCode::OK), 0);
        assert_eq!(status_label(status_index(StatusCode::OK)), "200");
        let other = status_index(StatusCode::IM_A_TEAPOT);
        assert_eq!(status_label(other), "other");
    }

    #[test]
    fn an_off_recorder_records_nothing() {
        let recorder = Recorder::off();
        recorder.request(
            RouteLabel::Pago,
            MethodLabel::Post,
            StatusCode::OK,
            Duration::ZERO,
        );
        recorder.replay();
        assert!(recorder.connection().is_none());
        assert!(recorder.requests().is_empty());
        assert_eq!(recorder.replays(), 0);
    }
}
