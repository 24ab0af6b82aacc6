//! `POST /pago` and `POST /retiro`: the two names of one check-and-debit,
//! differing only in their response's field name and refusal text, with
//! optional idempotency keys.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{ApiError, Body, body, json_response};
use crate::auth::{self, Access, Operation};
use crate::header;
use crate::idempotency;
use crate::ledger::{DebitKind, Outcome};
use crate::render::render;
use crate::router::App;
use crate::seam::{Answer, KeyRequest, Order, Refusal};
use crate::traces;
use crate::usuario::Usuario;

/// The header marking a replayed answer.
const REPLAYED: &str = "idempotent-replayed";

/// The response field holding the amount debited.
fn monto_field(kind: DebitKind) -> &'static str {
    match kind {
        DebitKind::Pago => "monto_pagado",
        DebitKind::Retiro => "monto_retirado",
    }
}

/// Validates the request, checks that `access` may debit the account, debits
/// it and answers the new balance.
pub async fn post_debit(
    app: &App,
    kind: DebitKind,
    request: Request<Incoming>,
    access: Option<&Access>,
) -> Result<Response<Body>, ApiError> {
    let (head, incoming) = request.into_parts();
    if !is_json(&head.headers) {
        return Err(ApiError::TipoContenido);
    }
    let key = idempotency_key(&head.headers)?;
    let bytes = body::read(incoming).await?;
    let debit = body::parse_debit(&bytes)?;
    // Before the key is looked at or the balance read: a 403 remembers
    // nothing and shows nothing.
    if !auth::is_allowed(access, &debit.usuario, Operation::Debit) {
        return Err(ApiError::Prohibido);
    }
    let key = match &key {
        None => None,
        Some(key) => Some(KeyRequest {
            key: key.to_str().map_err(|_| ApiError::IdempotenciaInvalida)?,
            fingerprint: idempotency::fingerprint(head.method.as_str(), head.uri.path(), &bytes),
        }),
    };
    let order = Order {
        kind,
        usuario: debit.usuario,
        monto: debit.monto,
        principal: access.map(|access| &access.principal),
        key,
    };
    let settled = traces::waiting_on_storage(
        app.sampling.is_some(),
        "storage.debit",
        app.storage.debit(order),
    );
    match settled.await {
        Ok(Answer::Fresh(outcome)) => {
            app.metrics.debit(kind, outcome);
            Ok(answer(kind, debit.usuario, debit.monto, outcome))
        }
        Ok(Answer::Replay(remembered)) => {
            let mut response = answer(
                remembered.kind,
                remembered.usuario,
                remembered.monto,
                remembered.outcome,
            );
            response.headers_mut().insert(
                HeaderName::from_static(REPLAYED),
                HeaderValue::from_static("true"),
            );
            app.metrics.replay();
            Ok(response)
        }
        Err(Refusal::KeyConflict) => Err(ApiError::IdempotenciaConflicto),
        Err(Refusal::KeyInFlight) => Err(ApiError::IdempotenciaEnCurso),
        Err(Refusal::Unavailable) => Err(ApiError::NoDisponible),
    }
}

/// The answer to a settled debit request; a replay renders the same bytes.
fn answer(kind: DebitKind, usuario: Usuario, monto: u64, outcome: Outcome) -> Response<Body> {
    match outcome {
        Outcome::Debited { nuevo_saldo } => {
            let body = render(|w| {
                w.raw("{\"usuario\":");
                w.string(usuario.as_str());
                w.raw(",\"");
                w.raw(monto_field(kind));
                w.raw("\":");
                w.u64(monto);
                w.raw(",\"nuevo_saldo\":");
                w.u64(nuevo_saldo);
                w.raw("}");
            });
            json_response(StatusCode::OK, body)
        }
        Outcome::Refused { saldo_disponible } => ApiError::SaldoInsuficiente {
            kind,
            saldo_disponible,
        }
        .into_response(),
    }
}

/// The `Idempotency-Key` header, if present and valid.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<HeaderValue>, ApiError> {
    let mut values = headers.get_all(&idempotency::HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(key), None) if idempotency::is_valid_key(key.as_bytes()) => Ok(Some(key.clone())),
        _ => Err(ApiError::IdempotenciaInvalida),
    }
}

/// True when the media type is `application/json`, whatever its parameters.
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|value| header::is_media_type(value.as_bytes(), b"application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_accepts_parameters_and_case() {
        let cases = [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            (" application/json ;charset=UTF-8", true),
            ("text/plain", false),
            ("application/json-patch+json", false),
            ("application/jsonx", false),
            ("", false),
        ];
        for (value, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), expected, "{value:?}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
