//! `POST /pago` and `POST /retiro`: the two names of one check-and-debit,
//! differing only in their response's field name and refusal text.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{ApiError, Body, body, json_response};
use crate::ledger;
use crate::render::render;
use crate::storage::Storage;

/// Which endpoint asked for the debit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebitKind {
    /// `POST /pago`.
    Pago,
    /// `POST /retiro`.
    Retiro,
}

impl DebitKind {
    /// The response field holding the amount debited.
    fn monto_field(self) -> &'static str {
        match self {
            Self::Pago => "monto_pagado",
            Self::Retiro => "monto_retirado",
        }
    }
}

/// Validates the request, debits the account and answers the new balance.
pub async fn post_debit(
    storage: &Storage,
    kind: DebitKind,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if !is_json(request.headers()) {
        return Err(ApiError::TipoContenido);
    }
    let bytes = body::read(request.into_body()).await?;
    let debit = body::parse_debit(&bytes)?;
    let applied =
        storage
            .debit(&debit.usuario, debit.monto)
            .await
            .map_err(|error| match error {
                ledger::Error::SaldoInsuficiente { saldo_disponible } => {
                    ApiError::SaldoInsuficiente {
                        kind,
                        saldo_disponible,
                    }
                }
                ledger::Error::LedgerFull => ApiError::NoDisponible,
            })?;
    let body = render(|w| {
        w.raw("{\"usuario\":");
        w.string(debit.usuario.as_str());
        w.raw(",\"");
        w.raw(kind.monto_field());
        w.raw("\":");
        w.u64(debit.monto);
        w.raw(",\"nuevo_saldo\":");
        w.u64(applied.nuevo_saldo);
        w.raw("}");
    });
    Ok(json_response(StatusCode::OK, body))
}

/// True when the media type is `application/json`, whatever its parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let media_type = value
        .as_bytes()
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default();
    media_type
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

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
