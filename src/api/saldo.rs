//! `GET /saldo/{usuario}`: an account's balance. Never writes anything.

use http::{Response, StatusCode};

use super::{ApiError, Body, json_response};
use crate::auth::{self, Access, Operation};
use crate::render::render;
use crate::router::App;
use crate::traces;
use crate::usuario::Usuario;

/// Answers the balance of the account named by the raw (still
/// percent-encoded) path segment, when `access` may read it.
pub async fn get_saldo(
    app: &App,
    segment: &str,
    access: Option<&Access>,
) -> Result<Response<Body>, ApiError> {
    let usuario = Usuario::from_path_segment(segment).map_err(|_| ApiError::UsuarioInvalido)?;
    if !auth::is_allowed(access, &usuario, Operation::Read) {
        return Err(ApiError::Prohibido);
    }
    let read = app.storage.read_saldo(&usuario);
    let saldo = traces::waiting_on_storage(app.sampling.is_some(), "storage.saldo", read)
        .await
        .map_err(|_| ApiError::NoDisponible)?;
    let body = render(|w| {
        w.raw("{\"usuario\":");
        w.string(usuario.as_str());
        w.raw(",\"saldo\":");
        w.u64(saldo);
        w.raw("}");
    });
    Ok(json_response(StatusCode::OK, body))
}
