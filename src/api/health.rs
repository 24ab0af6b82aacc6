//! `GET /health`: the load balancer's and the container's liveness probe.

use bytes::Bytes;
use http::{Response, StatusCode};

use super::{ApiError, Body, json_response};
use crate::storage::Storage;

/// 200 `{"status":"ok"}` while the service can serve; 503 `NO_DISPONIBLE`
/// once durable storage failed, so the orchestrator replaces the task.
pub fn get_health(storage: &Storage) -> Result<Response<Body>, ApiError> {
    if !storage.is_healthy() {
        return Err(ApiError::NoDisponible);
    }
    Ok(json_response(
        StatusCode::OK,
        Bytes::from_static(br#"{"status":"ok"}"#),
    ))
}
