//! The router: the one place that maps a method and path to a handler, and
//! every refusal to its response. Also stamps `X-Request-Id` on every answer.

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::api::{self, ApiError, Body};
use crate::ledger::DebitKind;
use crate::request_id;
use crate::storage::Storage;

/// Methods of the `GET` routes (`HEAD` is answered like `GET`, without body).
const ALLOW_GET: &str = "GET, HEAD";
/// Methods of the debit routes.
const ALLOW_POST: &str = "POST";

/// A known path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    /// `/health`: readiness.
    Health,
    /// `/health/live`: liveness.
    Live,
    /// `/saldo/{usuario}`, with the raw (percent-encoded) segment.
    Saldo(&'a str),
    Debit(DebitKind),
}

impl<'a> Route<'a> {
    /// The route of `path` (query string already removed), if any.
    fn resolve(path: &'a str) -> Option<Self> {
        match path {
            "/health" => Some(Self::Health),
            "/health/live" => Some(Self::Live),
            "/pago" => Some(Self::Debit(DebitKind::Pago)),
            "/retiro" => Some(Self::Debit(DebitKind::Retiro)),
            _ => {
                let segment = path.strip_prefix("/saldo/")?;
                let is_one_segment = !segment.is_empty() && !segment.contains('/');
                is_one_segment.then_some(Self::Saldo(segment))
            }
        }
    }

    fn allow(self) -> &'static str {
        match self {
            Self::Health | Self::Live | Self::Saldo(_) => ALLOW_GET,
            Self::Debit(_) => ALLOW_POST,
        }
    }
}

/// Answers one request. Never fails: every refusal is a response.
pub async fn handle(storage: &Storage, request: Request<Incoming>) -> Response<Body> {
    let request_id = request_id::for_request(request.headers().get(&request_id::HEADER));
    let mut response = route(storage, request)
        .await
        .unwrap_or_else(ApiError::into_response);
    response
        .headers_mut()
        .insert(request_id::HEADER, request_id);
    response
}

async fn route(storage: &Storage, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let Some(route) = Route::resolve(request.uri().path()) else {
        return Err(ApiError::RutaNoEncontrada);
    };
    let is_get = matches!(*request.method(), Method::GET | Method::HEAD);
    let is_post = *request.method() == Method::POST;
    match route {
        Route::Health if is_get => api::get_health(storage).await,
        Route::Live if is_get => api::get_live(storage),
        Route::Saldo(segment) if is_get => api::get_saldo(storage, segment).await,
        Route::Debit(kind) if is_post => api::post_debit(storage, kind, request).await,
        _ => Err(ApiError::MetodoNoPermitido {
            allow: route.allow(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_routes() {
        let cases = [
            ("/health", Some(Route::Health)),
            ("/pago", Some(Route::Debit(DebitKind::Pago))),
            ("/retiro", Some(Route::Debit(DebitKind::Retiro))),
            ("/saldo/usuario1", Some(Route::Saldo("usuario1"))),
            ("/saldo/%2F", Some(Route::Saldo("%2F"))),
            ("/", None),
            ("/saldo", None),
            ("/saldo/", None),
            ("/saldo/a/b", None),
            ("/saldo//", None),
            ("/health/live", Some(Route::Live)),
            ("/health/", None),
            ("/health/live/", None),
            ("/pago/", None),
            ("/Health", None),
            ("*", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Route::resolve(path), expected, "{path}");
        }
    }
}
