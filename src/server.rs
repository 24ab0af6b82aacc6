//! The server: accepts connections (at most `connections_max` at once), serves
//! HTTP/1.1 on each with hyper, enforces the connection timeouts, and drains
//! on shutdown.
//!
//! Timeouts, per connection, measured by [`Activity`]:
//! - idle: a keep-alive connection with no request for `idle_timeout` closes.
//!   It is longer than an ALB's 60 s idle timeout, so the balancer always
//!   closes first and never reuses a connection the server is closing (a 502).
//! - request head: once the first byte of a request arrives, its headers must
//!   be complete within `head_timeout`, or the connection is cut (slowloris).
//! - body: see `api::body` (the handler bounds its own read).
//!
//! Shutdown: stop accepting, ask every connection to finish its request in
//! flight and close, wait for them up to the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::router;
use crate::storage::Storage;

/// How long a keep-alive connection may sit with no request, by default.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a request's head may take from its first byte, by default.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Settings {
    /// The defaults for everything but the connection limit and grace.
    pub fn new(connections_max: usize, shutdown_grace: Duration) -> Self {
        Self {
            connections_max,
            shutdown_grace,
            idle_timeout: IDLE_TIMEOUT,
            head_timeout: HEAD_TIMEOUT,
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
    storage: Arc<Storage>,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    assert!(settings.connections_max > 0);
    assert!(!settings.head_timeout.is_zero() && settings.head_timeout <= settings.idle_timeout);
    let permits = Arc::new(Semaphore::new(settings.connections_max));
    let (stop_tx, stop_rx) = watch::channel(false);
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
        let connection = Connection {
            storage: storage.clone(),
            activity: Arc::new(Activity::new(settings)),
        };
        let (stop_rx, open_tx) = (stop_rx.clone(), open_tx.clone());
        tokio::spawn(async move {
            connection.serve(stream, stop_rx).await;
            drop((permit, open_tx));
        });
    }
    drop(listener);
    let open = settings.connections_max - permits.available_permits();
    tracing::info!(connections = open, "draining");
    let _ = stop_tx.send(true);
    drop(open_tx);
    let drained = tokio::time::timeout(settings.shutdown_grace, open_rx.recv()).await;
    let connections_cut = match drained {
        Ok(_) => 0,
        Err(_) => settings.connections_max - permits.available_permits(),
    };
    Drained { connections_cut }
}

/// One client connection's shared state.
struct Connection {
    storage: Arc<Storage>,
    activity: Arc<Activity>,
}

impl Connection {
    async fn serve(self, stream: TcpStream, mut stop: watch::Receiver<bool>) {
        // Small responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Tracked {
            stream,
            activity: self.activity.clone(),
        });
        let activity = self.activity.clone();
        let context = Arc::new(self);
        let service = service_fn(move |request| {
            let context = context.clone();
            async move {
                context.activity.request_started();
                let response = router::handle(&context.storage, request).await;
                context.activity.request_finished();
                Ok::<_, Infallible>(response)
            }
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(HEAD_BYTES_MAX)
            .max_headers(HEADERS_MAX)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let mut draining = *stop.borrow();
        if draining {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            // Wake at the deadline, or sooner: a request's first byte can move
            // the deadline earlier while this task sleeps.
            let check = Instant::now() + activity.check_interval();
            let wake = activity
                .deadline()
                .map_or(check, |deadline| deadline.min(check));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(wake), if !draining => {
                    if activity.deadline().is_some_and(|deadline| deadline <= Instant::now()) {
                        tracing::debug!("connection timed out");
                        return;
                    }
                }
                _ = stop.changed(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// When a connection last did something, to enforce its timeouts. Updated
/// with relaxed atomics: the values are hints for a timer, not synchronisation.
struct Activity {
    /// Time zero for the millisecond fields.
    opened: Instant,
    /// Last read or completed response, in ms since `opened`.
    last_io_ms: AtomicU64,
    /// First byte of the request head being read, in ms; `NONE` when idle.
    head_started_ms: AtomicU64,
    /// A request is being handled (its body read, its debit applied).
    in_flight: AtomicBool,
    idle_timeout: Duration,
    head_timeout: Duration,
}

impl Activity {
    const NONE: u64 = u64::MAX;

    fn new(settings: Settings) -> Self {
        Self {
            opened: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(Self::NONE),
            in_flight: AtomicBool::new(false),
            idle_timeout: settings.idle_timeout,
            head_timeout: settings.head_timeout,
        }
    }

    /// How often the connection re-reads its deadline: a head is cut at most
    /// a quarter of its timeout late.
    fn check_interval(&self) -> Duration {
        self.head_timeout / 4
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn bytes_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        let idle = !self.in_flight.load(Ordering::Relaxed);
        if idle && self.head_started_ms.load(Ordering::Relaxed) == Self::NONE {
            self.head_started_ms.store(now, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_flight.store(true, Ordering::Relaxed);
        self.head_started_ms.store(Self::NONE, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
        self.in_flight.store(false, Ordering::Relaxed);
    }

    /// When the connection must be cut unless something happens; `None` while
    /// a request is in flight.
    fn deadline(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) {
            return None;
        }
        let head_started_ms = self.head_started_ms.load(Ordering::Relaxed);
        let deadline = if head_started_ms == Self::NONE {
            Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed)) + self.idle_timeout
        } else {
            Duration::from_millis(head_started_ms) + self.head_timeout
        };
        Some(self.opened + deadline)
    }
}

/// A TCP stream that reports reads to its connection's [`Activity`].
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
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
            self.activity.bytes_read();
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
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
