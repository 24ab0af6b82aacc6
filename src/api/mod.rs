//! The endpoints: one file per family, each turning a routed request into a
//! response. Handlers validate input, call [`Storage`](crate::storage::Storage)
//! and render; they never touch the socket, and every refusal is an
//! [`ApiError`] rendered in `error.rs`.

mod body;
mod debit;
mod error;
mod eventos;
mod health;
mod movimientos;
mod query;
mod saldo;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};

pub use body::{BODY_BYTES_MAX, DebitRequest, parse_debit};
pub use debit::post_debit;
pub use error::ApiError;
pub use eventos::{get_eventos, put_cursor};
pub use health::{get_health, get_live};
pub use movimientos::get_movimientos;
pub use query::{EventsQuery, HistoryQuery};
pub use saldo::get_saldo;

/// A response body: one contiguous buffer (every answer but a stream), or
/// an event stream's frames as they come.
pub enum Body {
    /// The whole body at once.
    Full(Full<Bytes>),
    /// Server-Sent Events, until the client leaves or the server drains.
    Events(eventos::EventStream),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(full) => Pin::new(full).poll_frame(cx),
            Self::Events(stream) => stream.poll_frame(cx).map(|frame| frame.map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(full) => full.is_end_stream(),
            Self::Events(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(full) => full.size_hint(),
            Self::Events(_) => SizeHint::default(),
        }
    }
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::Full(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
