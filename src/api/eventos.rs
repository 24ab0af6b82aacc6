//! `GET /eventos` (a page, a long-polled page, or Server-Sent Events) and
//! `PUT /eventos/cursores/{nombre}` (SPEC section 9): the feed of every
//! applied debit, for other services, and their stored positions.
//!
//! Readers never poll the storage in a loop: they subscribe to its commit
//! signal ([`Storage::feed_changes`]) before each read and wait on it when
//! the read found nothing. A stream's frames go through a small bounded
//! channel: a slow client only slows its own producer task, which holds at
//! most [`STREAM_FRAMES_BUFFERED`] pages, and is cut after
//! [`SLOW_CONSUMER_TIMEOUT`] without progress (it resumes from its
//! `Last-Event-ID`).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::movimientos::{MOVEMENT_BYTES_MAX, movement_fields};
use super::query::{EventsQuery, Start, parse_consumer, parse_id};
use super::{ApiError, Body, body, debit, json_response};
use crate::auth::{self, Access};
use crate::header;
use crate::metrics::{Recorder, StreamOpen};
use crate::render::{Writer, render, render_sized};
use crate::router::App;
use crate::seam::{Consumer, EventId, FeedError, Unavailable};
use crate::server;
use crate::storage::Storage;

/// The most event streams open at once; one more gets 503.
pub const STREAMS_MAX: i64 = 1024;

/// The most events in one stream frame (one read of the storage).
const STREAM_PAGE_MAX: usize = 100;

/// Frames a stream holds for a client that reads slowly.
pub const STREAM_FRAMES_BUFFERED: usize = 4;

/// A stream whose client takes no frame for this long is ended.
pub const SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30);

/// A comment line goes out when nothing else has for this long, so no load
/// balancer closes an idle stream (SPEC: at least every 15 s).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A stream that cannot read the storage tries again after this long.
const UNAVAILABLE_PAUSE: Duration = Duration::from_secs(1);

/// The header a reconnecting event-stream client sends.
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// Answers a page of events, or opens a stream when the client accepts
/// `text/event-stream`.
pub async fn get_eventos(
    app: &App,
    headers: &HeaderMap,
    query: Option<&str>,
    access: Option<&Access>,
) -> Result<Response<Body>, ApiError> {
    if !auth::may_follow_events(access) {
        return Err(ApiError::Prohibido);
    }
    let query = EventsQuery::parse(query)?;
    let last_event_id = match headers.get(LAST_EVENT_ID) {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| ApiError::ParametroInvalido)?;
            Some(parse_id(text)?)
        }
    };
    let after = match (last_event_id, &query.start) {
        (Some(id), _) => Some(id),
        (None, Start::After(id)) => Some(*id),
        (None, Start::Oldest) => None,
        (None, Start::Consumer(consumer)) => stored_position(&app.storage, consumer).await?,
    };
    if accepts_event_stream(headers) {
        return open_stream(app, after).await;
    }
    let events = read_waiting(&app.storage, after, query.limit, query.wait).await?;
    app.metrics.events_sent(events.len());
    let last = events.last().map(|event| event.movement.id).or(after);
    let body = render_sized(64 + EVENT_BYTES_TYPICAL * events.len(), |w| {
        w.raw("{\"eventos\":[");
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                w.raw(",");
            }
            event_json(w, event);
        }
        w.raw("],\"ultimo\":");
        match last {
            Some(id) => quoted_id(w, id),
            None => w.raw("null"),
        }
        w.raw("}");
    });
    Ok(json_response(StatusCode::OK, body))
}

/// Stores a named consumer's position: `{"id":"…"}`.
pub async fn put_cursor(
    app: &App,
    segment: &str,
    request: Request<Incoming>,
    access: Option<&Access>,
) -> Result<Response<Body>, ApiError> {
    if !auth::may_follow_events(access) {
        return Err(ApiError::Prohibido);
    }
    let consumer = parse_consumer(segment)?;
    let (head, incoming) = request.into_parts();
    if !debit::is_json(&head.headers) {
        return Err(ApiError::TipoContenido);
    }
    let bytes = body::read(incoming).await?;
    let id = parse_position(&bytes)?;
    app.storage
        .store_consumer_position(&consumer, id)
        .await
        .map_err(|Unavailable| ApiError::NoDisponible)?;
    let body = render(|w| {
        w.raw("{\"nombre\":");
        w.string(consumer.as_str());
        w.raw(",\"id\":");
        quoted_id(w, id);
        w.raw("}");
    });
    Ok(json_response(StatusCode::OK, body))
}

/// The body of a position's `PUT`: exactly one member, `id`, an event id.
pub fn parse_position(bytes: &[u8]) -> Result<EventId, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|_| ApiError::JsonInvalido)?;
    let object = value.as_object().ok_or(ApiError::JsonInvalido)?;
    match (object.len(), object.get("id")) {
        (1, Some(serde_json::Value::String(id))) => parse_id(id),
        _ => Err(ApiError::ParametroInvalido),
    }
}

async fn stored_position(
    storage: &Storage,
    consumer: &Consumer,
) -> Result<Option<EventId>, ApiError> {
    storage
        .consumer_position(consumer)
        .await
        .map_err(|Unavailable| ApiError::NoDisponible)
}

/// Events after `after`, waiting up to `wait` for the first one. A page
/// that does not wait never subscribes (so commits meanwhile wake nobody).
async fn read_waiting(
    storage: &Storage,
    after: Option<EventId>,
    limit: usize,
    wait: Duration,
) -> Result<Vec<crate::seam::Event>, ApiError> {
    if wait.is_zero() {
        return storage.events(after, limit).await.map_err(feed_error);
    }
    let deadline = Instant::now() + wait;
    loop {
        // Subscribed before the read: a commit after it wakes the wait.
        let mut changes = storage.feed_changes();
        changes.borrow_and_update();
        let events = storage.events(after, limit).await.map_err(feed_error)?;
        if !events.is_empty() || Instant::now() >= deadline {
            return Ok(events);
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return Ok(events);
        }
    }
}

fn feed_error(error: FeedError) -> ApiError {
    match error {
        FeedError::Unavailable => ApiError::NoDisponible,
        FeedError::Expired => ApiError::CursorExpirado,
    }
}

/// Whether `Accept` names `text/event-stream`.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|value| {
        value
            .as_bytes()
            .split(|byte| *byte == b',')
            .any(|range| header::is_media_type(range, b"text/event-stream"))
    })
}

/// Starts a stream after `after`: the first read happens here, so a cursor
/// that expired or a storage that cannot answer gets its status, not an
/// empty stream.
async fn open_stream(app: &App, after: Option<EventId>) -> Result<Response<Body>, ApiError> {
    let Some(open) = app.metrics.stream_within(STREAMS_MAX) else {
        return Err(ApiError::NoDisponible);
    };
    let mut changes = app.storage.feed_changes();
    changes.borrow_and_update();
    let first = app
        .storage
        .events(after, STREAM_PAGE_MAX)
        .await
        .map_err(feed_error)?;
    let (frames, receiver) = mpsc::channel(STREAM_FRAMES_BUFFERED);
    let producer = Producer {
        storage: app.storage.clone(),
        metrics: app.metrics.clone(),
        frames,
        after,
    };
    let task = tokio::spawn(producer.run(first, changes));
    let mut response = Response::new(Body::Events(EventStream {
        frames: receiver,
        producer: task,
        _open: open,
    }));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A stream's body: frames from its producer task until the client leaves
/// (the body is dropped, the task aborted) or the server drains.
pub struct EventStream {
    frames: mpsc::Receiver<Bytes>,
    producer: JoinHandle<()>,
    _open: StreamOpen,
}

impl EventStream {
    /// The next frame; the end when the producer stopped or the server is
    /// draining.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        if server::is_draining() {
            return Poll::Ready(None);
        }
        self.frames
            .poll_recv(cx)
            .map(|frame| frame.map(Frame::data))
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

/// Reads the feed and renders frames for one stream.
struct Producer {
    storage: Arc<Storage>,
    metrics: Arc<Recorder>,
    frames: mpsc::Sender<Bytes>,
    after: Option<EventId>,
}

impl Producer {
    /// Sends `first`, then every later event, until the client is gone or
    /// too slow, or the cursor expires.
    async fn run(
        mut self,
        first: Vec<crate::seam::Event>,
        mut changes: tokio::sync::watch::Receiver<u64>,
    ) {
        // An opening comment, so the client sees the stream start at once.
        if !self.send(Bytes::from_static(b": saldos\n\n")).await {
            return;
        }
        let mut events = first;
        loop {
            if !events.is_empty() {
                if !self.send_events(&events).await {
                    return;
                }
            } else {
                let idle = tokio::time::timeout(HEARTBEAT, changes.changed()).await;
                match idle {
                    Ok(Err(_)) => return,
                    Ok(Ok(())) => {}
                    Err(_) => {
                        if !self.send(Bytes::from_static(b": heartbeat\n\n")).await {
                            return;
                        }
                    }
                }
            }
            changes.borrow_and_update();
            events = match self.storage.events(self.after, STREAM_PAGE_MAX).await {
                Ok(events) => events,
                Err(FeedError::Expired) => {
                    let frame = render(|w| {
                        w.raw("event: error\ndata: ");
                        w.raw(
                            std::str::from_utf8(&ApiError::CursorExpirado.body()).unwrap_or("{}"),
                        );
                        w.raw("\n\n");
                    });
                    self.send(frame).await;
                    return;
                }
                Err(FeedError::Unavailable) => {
                    tokio::time::sleep(UNAVAILABLE_PAUSE).await;
                    Vec::new()
                }
            };
        }
    }

    async fn send_events(&mut self, events: &[crate::seam::Event]) -> bool {
        let frame = render_sized((EVENT_BYTES_TYPICAL + 48) * events.len(), |w| {
            for event in events {
                w.raw("id: ");
                w.u64(event.movement.id.0);
                w.raw("\nevent: debito\ndata: ");
                event_json(w, event);
                w.raw("\n\n");
            }
        });
        if !self.send(frame).await {
            return false;
        }
        self.metrics.events_sent(events.len());
        self.after = events.last().map(|event| event.movement.id);
        true
    }

    /// Hands a frame to the body; false when the client is gone or has not
    /// taken a frame for [`SLOW_CONSUMER_TIMEOUT`].
    async fn send(&self, frame: Bytes) -> bool {
        self.frames
            .send_timeout(frame, SLOW_CONSUMER_TIMEOUT)
            .await
            .is_ok()
    }
}

/// Bytes one event's JSON usually takes (a movement, a short account name
/// and principal), for sizing a page's rendering: a longer page grows once.
const EVENT_BYTES_TYPICAL: usize = MOVEMENT_BYTES_MAX + 96;

fn quoted_id(w: &mut Writer<'_>, id: EventId) {
    w.raw("\"");
    w.u64(id.0);
    w.raw("\"");
}

/// `{"id":"…","tipo":…,"monto":…,"saldo":…,"fecha":…,"usuario":…,"principal":…}`.
fn event_json(w: &mut Writer<'_>, event: &crate::seam::Event) {
    w.raw("{");
    movement_fields(w, &event.movement);
    w.raw(",\"usuario\":");
    w.string(event.usuario.as_str());
    w.raw(",\"principal\":");
    w.string(
        event
            .principal
            .as_ref()
            .map_or("", |principal| principal.as_str()),
    );
    w.raw("}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_have_exactly_an_id() {
        assert_eq!(parse_position(br#"{"id":"42"}"#), Ok(EventId(42)));
        assert_eq!(parse_position(b"[]"), Err(ApiError::JsonInvalido));
        assert_eq!(parse_position(b"{"), Err(ApiError::JsonInvalido));
        for bad in [
            &br#"{}"#[..],
            br#"{"id":42}"#,
            br#"{"id":"042"}"#,
            br#"{"id":"1","x":1}"#,
            br#"{"id":null}"#,
        ] {
            assert_eq!(parse_position(bad), Err(ApiError::ParametroInvalido));
        }
    }

    #[test]
    fn event_stream_is_recognized_in_accept() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_event_stream(&headers));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!accepts_event_stream(&headers));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, Text/Event-Stream; q=0.9"),
        );
        assert!(accepts_event_stream(&headers));
    }
}
