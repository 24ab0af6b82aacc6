//! The health probes (SPEC section 3): `GET /health`, readiness, for the load
//! balancer; `GET /health/live`, liveness, for the container's health check.

use bytes::Bytes;
use http::{Response, StatusCode};

use super::{ApiError, Body, json_response};
use crate::storage::Storage;

/// Readiness: 200 `{"status":"ok"}` while debits can be applied; 503
/// `NO_DISPONIBLE` while they cannot, so the load balancer sends no traffic.
pub async fn get_health(storage: &Storage) -> Result<Response<Body>, ApiError> {
    status_ok(storage.is_ready().await)
}

/// Liveness: 200 `{"status":"ok"}` unless the process itself must be
/// replaced (a failed journal, a dead writer thread); 503 `NO_DISPONIBLE` then.
pub fn get_live(storage: &Storage) -> Result<Response<Body>, ApiError> {
    status_ok(storage.is_live())
}

fn status_ok(ok: bool) -> Result<Response<Body>, ApiError> {
    if !ok {
        return Err(ApiError::NoDisponible);
    }
    Ok(json_response(
        StatusCode::OK,
        Bytes::from_static(br#"{"status":"ok"}"#),
    ))
}
