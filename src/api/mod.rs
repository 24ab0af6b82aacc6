//! The endpoints: one file per family, each turning a routed request into a
//! response. Handlers validate input, call [`Storage`](crate::storage::Storage)
//! and render; they never touch the socket, and every refusal is an
//! [`ApiError`] rendered in `error.rs`.

mod body;
mod debit;
mod error;
mod health;
mod saldo;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

pub use body::{BODY_BYTES_MAX, DebitRequest, parse_debit};
pub use debit::post_debit;
pub use error::ApiError;
pub use health::{get_health, get_live};
pub use saldo::get_saldo;

/// Every response body is one contiguous buffer.
pub type Body = Full<Bytes>;

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
