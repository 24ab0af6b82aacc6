//! The server: accepts connections (at most `connections_max` at once), serves
//! HTTP/1.1 on each with hyper, enforces the connection timeouts, and drains
//! on shutdown.
//!
//! Timeouts, per connection:
//! - idle: a keep-alive connection with no request for `idle_timeout` closes.
//!   It is longer than an ALB's 60 s idle timeout, so the balancer always
//!   closes first and never reuses a connection the server is closing (a 502).
//! - request head: once the first byte of a request arrives, its headers must
//!   be complete within `head_timeout`, or the connection is cut (slowloris).
//! - body: a handler reading a request body ([`body_deadline`]) gets
//!   `body_timeout` from the start of the read, then answers 408 and closes.
//!
//! No timer is armed per connection or per request: each connection only
//! records which [`Phase`] it is in, in one atomic with a count of phase
//! changes. One [`Watchdog`] task per server sweeps every connection a few
//! times per timeout, notes which changed phase since the last sweep, and flags
//! and wakes those that stayed too long in a timed phase. A deadline is thus
//! enforced never early and at most one sweep
//! (`min(head_timeout, body_timeout) / SWEEPS_PER_TIMEOUT`) late.
//!
//! Shutdown: stop accepting, ask every connection to finish its request in
//! flight and close, wait for them up to the grace period.
//!
//! A head over [`HEAD_BYTES_MAX`] or [`HEADERS_MAX`] is refused by hyper
//! before any route, with a bare 431 that it writes itself; the connection's
//! stream ([`Tracked`]) writes the SPEC's answer in its place (the JSON error
//! `CABECERAS_DEMASIADO_GRANDES` and a fresh `X-Request-Id`), so every
//! response the service sends carries both.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::MissedTickBehavior;

use crate::api::ApiError;
use crate::request_id;
use crate::router::{self, App};

/// How long a keep-alive connection may sit with no request, by default.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a request's head may take from its first byte, by default.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a handler may take to read a request body, by default.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sweeps per head or body timeout (the shorter): how late a deadline may be
/// enforced, as a fraction of it.
const SWEEPS_PER_TIMEOUT: u32 = 8;

/// The largest request head (request line and headers); larger gets 431.
const HEAD_BYTES_MAX: usize = 16 * 1024;

/// The most headers one request may carry; more gets 431.
const HEADERS_MAX: usize = 64;

/// Pause after an accept error (such as running out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// How the server runs, fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The most connections served at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`HEAD_TIMEOUT`].
    pub head_timeout: Duration,
    /// See [`BODY_TIMEOUT`].
    pub body_timeout: Duration,
}

impl Settings {
    /// The defaults for everything but the connection limit and grace.
    pub fn new(connections_max: usize, shutdown_grace: Duration) -> Self {
        Self {
            connections_max,
            shutdown_grace,
            idle_timeout: IDLE_TIMEOUT,
            head_timeout: HEAD_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the grace period ran out (0 when clean).
    pub connections_cut: usize,
}

/// Serves `listener` until `shutdown` completes, then drains.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    assert!(settings.connections_max > 0);
    assert!(!settings.head_timeout.is_zero() && settings.head_timeout <= settings.idle_timeout);
    assert!(!settings.body_timeout.is_zero());
    let permits = Arc::new(Semaphore::new(settings.connections_max));
    let watchdog = Arc::new(Watchdog::new(settings));
    let sweeper = tokio::spawn(watchdog.clone().sweep_forever());
    // Every connection task holds a clone of `open_tx`; when all are dropped,
    // `open_rx` yields `None` and the drain is complete (mini-redis' shape).
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let watched = watchdog.register();
        let (app, open_tx) = (app.clone(), open_tx.clone());
        tokio::spawn(async move {
            serve_connection(stream, app, watched).await;
            drop((permit, open_tx));
        });
    }
    drop(listener);
    let open = settings.connections_max - permits.available_permits();
    tracing::info!(connections = open, "draining");
    watchdog.drain();
    drop(open_tx);
    let drained = tokio::time::timeout(settings.shutdown_grace, open_rx.recv()).await;
    sweeper.abort();
    let connections_cut = match drained {
        Ok(_) => 0,
        Err(_) => settings.connections_max - permits.available_permits(),
    };
    Drained { connections_cut }
}

tokio::task_local! {
    /// The [`Watch`] of the connection whose task is running, for the request
    /// handlers inside it (the body deadline).
    static CURRENT: Arc<Watch>;
}

/// Serves one connection until it closes, times out or finishes draining.
async fn serve_connection(stream: TcpStream, app: Arc<App>, watched: Watched) {
    let _open = app.metrics.connection();
    // Small responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let watch = watched.watch.clone();
    let io = TokioIo::new(Tracked {
        stream,
        watch: watch.clone(),
        replacement: None,
    });
    let service = service_fn(|request| {
        let app = &app;
        async move {
            let _ = CURRENT.try_with(|watch| watch.enter(Phase::Handling));
            let response = router::handle(app, request).await;
            let _ = CURRENT.try_with(|watch| watch.enter(Phase::Idle));
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .keep_alive(true)
        // Every response is a small head and a body under 512 bytes: copying
        // the body after the head and sending both with one `write` costs less
        // than hyper's default `writev` of two buffers (measured side by side).
        .writev(false)
        .max_buf_size(HEAD_BYTES_MAX)
        .max_headers(HEADERS_MAX)
        .serve_connection(io, service);
    let mut connection = pin!(connection);
    let mut waker_stored: Option<Waker> = None;
    let mut draining = false;
    let served = poll_fn(|cx| {
        // The waker first, so a flag raised after the checks still wakes us.
        watch.store_waker(cx.waker(), &mut waker_stored);
        if !draining && watch.draining.load(Ordering::Acquire) {
            draining = true;
            connection.as_mut().graceful_shutdown();
        }
        // While draining, the grace period bounds the connection instead.
        if !draining && matches!(watch.overdue_phase(), Some(Phase::Idle | Phase::Head)) {
            return Poll::Ready(None);
        }
        connection.as_mut().poll(cx).map(Some)
    });
    match CURRENT.scope(watch.clone(), served).await {
        None => tracing::debug!("connection timed out"),
        Some(Err(error)) => tracing::debug!(%error, "connection ended with an error"),
        Some(Ok(())) => {}
    }
    drop(watched);
}

/// A request body's read took longer than the body timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTimedOut;

/// Runs `read`, a request body's read, under the serving connection's body
/// deadline: `Err(BodyTimedOut)` once `body_timeout` has passed since it
/// started. Outside a server connection (benchmarks drive the router
/// directly) there is no deadline.
pub async fn body_deadline<F: Future>(read: F) -> Result<F::Output, BodyTimedOut> {
    let _ = CURRENT.try_with(|watch| watch.enter(Phase::Body));
    let mut read = pin!(read);
    let output = poll_fn(|cx| {
        let overdue = CURRENT
            .try_with(|watch| watch.overdue_phase() == Some(Phase::Body))
            .unwrap_or(false);
        if overdue {
            return Poll::Ready(Err(BodyTimedOut));
        }
        read.as_mut().poll(cx).map(Ok)
    })
    .await;
    let _ = CURRENT.try_with(|watch| watch.enter(Phase::Handling));
    output
}

/// Whether the serving connection is draining (shutdown began): a response
/// that would never end on its own (an event stream) ends then. The
/// connection's task is woken when draining starts and polls the response
/// body again, which is where this is asked. Outside a server connection:
/// never.
pub fn is_draining() -> bool {
    CURRENT
        .try_with(|watch| watch.draining.load(Ordering::Acquire))
        .unwrap_or(false)
}

/// What a connection is doing, as far as its timeouts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: `idle_timeout` applies.
    Idle = 0,
    /// Reading a request's head: `head_timeout` applies.
    Head = 1,
    /// A handler is working (waiting on the journal, say): no timeout.
    Handling = 2,
    /// A handler is reading the body: `body_timeout` applies.
    Body = 3,
}

impl Phase {
    /// Bits of a [`Watch`] state holding the phase; the rest count changes.
    const BITS: u32 = 2;

    fn of(state: u64) -> Self {
        match state & ((1 << Self::BITS) - 1) {
            0 => Self::Idle,
            1 => Self::Head,
            2 => Self::Handling,
            _ => Self::Body,
        }
    }
}

/// One connection's phase, as its task reports it and the watchdog reads it.
/// Updated with relaxed atomics: the only writer is the connection's task,
/// and a stale read only delays a verdict by one sweep.
struct Watch {
    /// The [`Phase`] in the low bits, above them a count of phase changes, so
    /// every phase entered has its own value. Never 0.
    state: AtomicU64,
    /// The `state` the watchdog found overdue, 0 for none; it counts only
    /// while it is still the current `state`.
    overdue: AtomicU64,
    /// Shutdown asked the connection to finish its request and close.
    draining: AtomicBool,
    /// The connection task's waker, for the watchdog and the drain.
    waker: Mutex<Option<Waker>>,
}

impl Watch {
    fn new() -> Self {
        Self {
            state: AtomicU64::new(1 << Phase::BITS | Phase::Idle as u64),
            overdue: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    fn phase(&self) -> Phase {
        Phase::of(self.state.load(Ordering::Relaxed))
    }

    /// Starts `phase`, with its own state value. Only the connection's task
    /// calls this, so a load and a store suffice.
    fn enter(&self, phase: Phase) {
        let changes = self.state.load(Ordering::Relaxed) >> Phase::BITS;
        let state = (changes + 1) << Phase::BITS | phase as u64;
        self.state.store(state, Ordering::Relaxed);
    }

    /// Bytes arrived: from idle, that is a request head starting.
    fn bytes_read(&self) {
        if self.phase() == Phase::Idle {
            self.enter(Phase::Head);
        }
    }

    /// The current phase if the watchdog found it overdue.
    fn overdue_phase(&self) -> Option<Phase> {
        let state = self.state.load(Ordering::Relaxed);
        (self.overdue.load(Ordering::Acquire) == state).then(|| Phase::of(state))
    }

    /// Keeps `waker` for [`Self::wake`] unless `stored` (the task's copy of
    /// the kept one) already wakes the same task: one comparison per poll.
    fn store_waker(&self, waker: &Waker, stored: &mut Option<Waker>) {
        if stored.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
            return;
        }
        *lock(&self.waker) = Some(waker.clone());
        *stored = Some(waker.clone());
    }

    fn wake(&self) {
        if let Some(waker) = lock(&self.waker).as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// Locks `mutex`, ignoring poisoning: every value guarded here stays valid
/// if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Enforces every connection's timeouts and tells them to drain.
struct Watchdog {
    connections: Mutex<Connections>,
    /// Time between sweeps.
    sweep_interval: Duration,
    /// How many sweeps a connection may stay idle, in a head, in a body read.
    idle_sweeps: u64,
    head_sweeps: u64,
    body_sweeps: u64,
}

/// The connections being watched, in reusable slots.
#[derive(Default)]
struct Connections {
    slots: Vec<Option<Slot>>,
    /// Indices of empty slots.
    free: Vec<usize>,
    /// Sweeps done so far.
    sweeps: u64,
}

/// One watched connection and what the last sweeps saw of it.
struct Slot {
    watch: Arc<Watch>,
    /// The state seen at the last sweep.
    seen_state: u64,
    /// The sweep that first saw `seen_state`.
    seen_since_sweep: u64,
}

impl Watchdog {
    fn new(settings: Settings) -> Self {
        let sweep_interval = settings.head_timeout.min(settings.body_timeout) / SWEEPS_PER_TIMEOUT;
        assert!(!sweep_interval.is_zero());
        // Rounded up: a phase first seen by a sweep started before it, so it
        // has lasted at least `sweeps * sweep_interval` when cut.
        let sweeps = |timeout: Duration| {
            let sweeps = timeout.as_nanos().div_ceil(sweep_interval.as_nanos());
            u64::try_from(sweeps).unwrap_or(u64::MAX)
        };
        Self {
            connections: Mutex::new(Connections::default()),
            sweep_interval,
            idle_sweeps: sweeps(settings.idle_timeout),
            head_sweeps: sweeps(settings.head_timeout),
            body_sweeps: sweeps(settings.body_timeout),
        }
    }

    /// Starts watching a new connection, until the returned guard drops.
    fn register(self: &Arc<Self>) -> Watched {
        let watch = Arc::new(Watch::new());
        let mut connections = lock(&self.connections);
        let slot = Slot {
            watch: watch.clone(),
            seen_state: 0,
            seen_since_sweep: 0,
        };
        let index = match connections.free.pop() {
            Some(index) => {
                connections.slots[index] = Some(slot);
                index
            }
            None => {
                connections.slots.push(Some(slot));
                connections.slots.len() - 1
            }
        };
        Watched {
            watchdog: self.clone(),
            watch,
            index,
        }
    }

    /// How many sweeps `phase` may last, if it is timed.
    fn sweeps_allowed(&self, phase: Phase) -> Option<u64> {
        match phase {
            Phase::Idle => Some(self.idle_sweeps),
            Phase::Head => Some(self.head_sweeps),
            Phase::Body => Some(self.body_sweeps),
            Phase::Handling => None,
        }
    }

    async fn sweep_forever(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(self.sweep_interval);
        // Never two sweeps closer than the interval, or phases would be cut early.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sweep();
        }
    }

    /// Flags and wakes every connection that stayed in a timed phase for its
    /// whole allowance of sweeps.
    fn sweep(&self) {
        let mut guard = lock(&self.connections);
        let connections = &mut *guard;
        connections.sweeps += 1;
        let sweep = connections.sweeps;
        for slot in connections.slots.iter_mut().flatten() {
            let state = slot.watch.state.load(Ordering::Relaxed);
            if state != slot.seen_state {
                slot.seen_state = state;
                slot.seen_since_sweep = sweep;
                continue;
            }
            let Some(allowed) = self.sweeps_allowed(Phase::of(state)) else {
                continue;
            };
            let is_flagged = slot.watch.overdue.load(Ordering::Relaxed) == state;
            if sweep - slot.seen_since_sweep >= allowed && !is_flagged {
                slot.watch.overdue.store(state, Ordering::Release);
                slot.watch.wake();
            }
        }
    }

    /// Asks every connection to finish its request in flight and close.
    fn drain(&self) {
        for slot in lock(&self.connections).slots.iter().flatten() {
            slot.watch.draining.store(true, Ordering::Release);
            slot.watch.wake();
        }
    }
}

/// A connection's registration with the [`Watchdog`]; dropping it frees the slot.
struct Watched {
    watchdog: Arc<Watchdog>,
    watch: Arc<Watch>,
    index: usize,
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut connections = lock(&self.watchdog.connections);
        connections.slots[self.index] = None;
        connections.free.push(self.index);
    }
}

/// A TCP stream that reports reads to its connection's [`Watch`] and
/// replaces hyper's bare 431 with the SPEC's answer.
struct Tracked {
    stream: TcpStream,
    watch: Arc<Watch>,
    /// The answer written in place of hyper's 431, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
}

/// Whether `buf`, a write hyper starts, is its own 431 (the service never
/// answers 431, so only hyper's head refusal starts this way).
fn is_head_refusal(buf: &[u8]) -> bool {
    const STATUS_AT: usize = "HTTP/1.1".len();
    buf.starts_with(b"HTTP/1.") && buf.get(STATUS_AT..STATUS_AT + 5) == Some(b" 431 ")
}

/// The SPEC's answer to a head over the limits: the JSON error, a fresh
/// request id, and the connection closes (as hyper closes it).
fn head_refusal() -> Vec<u8> {
    let error = ApiError::CabecerasDemasiadoGrandes;
    let body = error.body();
    let request_id = request_id::for_request(None);
    let request_id = request_id.to_str().unwrap_or_default();
    tracing::debug!(
        status = error.status().as_u16(),
        request_id,
        "request head over the limits"
    );
    let head = format!(
        "HTTP/1.1 {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}: {request_id}\r\nconnection: close\r\n\r\n",
        error.status(),
        body.len(),
        request_id::HEADER,
    );
    [head.as_bytes(), &body].concat()
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let filled_before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > filled_before {
            self.watch.bytes_read();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacement.is_none() && is_head_refusal(buf) {
            this.replacement = Some((head_refusal(), 0));
        }
        let Some((answer, written)) = &mut this.replacement else {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        };
        // Whatever hyper writes after its 431 is part of it: swallowed once
        // the replacement is out.
        while *written < answer.len() {
            match Pin::new(&mut this.stream).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_431_is_a_head_refusal() {
        let cases: [(&[u8], bool); 5] = [
            (b"HTTP/1.1 431 Request Header Fields Too Large\r\n", true),
            (b"HTTP/1.0 431 Request Header Fields Too Large\r\n", true),
            (b"HTTP/1.1 400 Bad Request\r\n", false),
            (b"HTTP/1.1 200 OK\r\n\r\n{\"saldo\":431}", false),
            (b"HTTP/1.1 43", false),
        ];
        for (buf, expected) in cases {
            assert_eq!(is_head_refusal(buf), expected, "{buf:?}");
        }
        let answer = String::from_utf8(head_refusal()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(answer.contains("\r\nx-request-id: "), "{answer}");
        assert!(
            answer.ends_with(r#""codigo":"CABECERAS_DEMASIADO_GRANDES"}"#),
            "{answer}"
        );
    }
}
