//! `GET /movimientos/{usuario}`: an account's movements, newest first, a
//! page at a time (SPEC section 9). Never writes anything.

use http::{Response, StatusCode};

use super::query::HistoryQuery;
use super::{ApiError, Body, json_response};
use crate::auth::{self, Access, Operation};
use crate::ledger::DebitKind;
use crate::render::{Writer, render_sized};
use crate::router::App;
use crate::seam::Movement;
use crate::traces;
use crate::usuario::Usuario;

/// Answers a page of the movements of the account named by the raw (still
/// percent-encoded) path segment, when `access` may read it.
pub async fn get_movimientos(
    app: &App,
    segment: &str,
    query: Option<&str>,
    access: Option<&Access>,
) -> Result<Response<Body>, ApiError> {
    let usuario = Usuario::from_path_segment(segment).map_err(|_| ApiError::UsuarioInvalido)?;
    if !auth::is_allowed(access, &usuario, Operation::Read) {
        return Err(ApiError::Prohibido);
    }
    let query = HistoryQuery::parse(query)?;
    let read = app.storage.history(&usuario, query.before, query.limit);
    let page = traces::waiting_on_storage(app.sampling.is_some(), "storage.history", read)
        .await
        .map_err(|_| ApiError::NoDisponible)?;
    let next = page
        .more
        .then(|| page.movements.last().map(|movement| movement.id))
        .flatten();
    let bytes_hint = 96 + MOVEMENT_BYTES_MAX * page.movements.len();
    let body = render_sized(bytes_hint, |w| {
        w.raw("{\"usuario\":");
        w.string(usuario.as_str());
        w.raw(",\"movimientos\":[");
        for (i, movement) in page.movements.iter().enumerate() {
            if i > 0 {
                w.raw(",");
            }
            w.raw("{");
            movement_fields(w, movement);
            w.raw("}");
        }
        w.raw("],\"siguiente\":");
        match next {
            Some(id) => {
                w.raw("\"");
                w.u64(id.0);
                w.raw("\"");
            }
            None => w.raw("null"),
        }
        w.raw("}");
    });
    Ok(json_response(StatusCode::OK, body))
}

/// The most bytes one movement's JSON takes (20-digit id, 13-digit amounts,
/// the timestamp and punctuation), for sizing a page's rendering.
pub(super) const MOVEMENT_BYTES_MAX: usize = 160;

/// A movement's fields, as history and events both show them:
/// `"id":"…","tipo":…,"monto":…,"saldo":…,"fecha":"…"`.
pub(super) fn movement_fields(w: &mut Writer<'_>, movement: &Movement) {
    w.raw("\"id\":\"");
    w.u64(movement.id.0);
    w.raw("\",\"tipo\":");
    w.raw(match movement.kind {
        DebitKind::Pago => "\"pago\"",
        DebitKind::Retiro => "\"retiro\"",
    });
    w.raw(",\"monto\":");
    w.u64(movement.monto);
    w.raw(",\"saldo\":");
    w.u64(movement.saldo);
    w.raw(",\"fecha\":");
    w.timestamp_ms(movement.time_ms);
}
