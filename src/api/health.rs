//! `GET /health`: the load balancer's and the container's liveness probe.

use bytes::Bytes;
use http::{Response, StatusCode};

use super::{Body, json_response};

/// 200 `{"status":"ok"}` while the service can serve.
pub fn get_health() -> Response<Body> {
    json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
}
