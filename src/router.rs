//! The router: the one place that maps a method and path to a handler, and
//! every refusal to its response. Also stamps `X-Request-Id` on every answer,
//! counts it in the request metrics, and logs it: at `warn` when slow, else
//! at `debug` (SPEC section 7's request log, nothing built below it). Authenticates
//! every request but the health probes, after 404/405 and before anything
//! else (SPEC section 6's order).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::api::{self, ApiError, Body};
use crate::auth::{Auth, Refusal};
use crate::ledger::DebitKind;
use crate::metrics::{MethodLabel, Recorder, RouteLabel};
use crate::request_id;
use crate::storage::Storage;
use crate::traces::{AmznTraceId, RequestTrace, Sampling};

/// Methods of the `GET` routes (`HEAD` is answered like `GET`, without body).
const ALLOW_GET: &str = "GET, HEAD";
/// Methods of the debit routes.
const ALLOW_POST: &str = "POST";
/// Methods of a consumer's position.
const ALLOW_PUT: &str = "PUT";

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
    /// `/movimientos/{usuario}`, with the raw segment.
    Movimientos(&'a str),
    /// `/eventos`.
    Eventos,
    /// `/eventos/cursores/{nombre}`, with the raw segment.
    Cursor(&'a str),
}

/// `segment` when it is one whole, non-empty path segment.
fn one_segment(segment: &str) -> Option<&str> {
    (!segment.is_empty() && !segment.contains('/')).then_some(segment)
}

impl<'a> Route<'a> {
    /// The route of `path` (query string already removed), if any.
    fn resolve(path: &'a str) -> Option<Self> {
        match path {
            "/health" => Some(Self::Health),
            "/health/live" => Some(Self::Live),
            "/pago" => Some(Self::Debit(DebitKind::Pago)),
            "/retiro" => Some(Self::Debit(DebitKind::Retiro)),
            "/eventos" => Some(Self::Eventos),
            _ => {
                if let Some(segment) = path.strip_prefix("/saldo/") {
                    one_segment(segment).map(Self::Saldo)
                } else if let Some(segment) = path.strip_prefix("/movimientos/") {
                    one_segment(segment).map(Self::Movimientos)
                } else {
                    one_segment(path.strip_prefix("/eventos/cursores/")?).map(Self::Cursor)
                }
            }
        }
    }

    /// The route's metric label: its pattern, never the account.
    fn label(self) -> RouteLabel {
        match self {
            Self::Health => RouteLabel::Health,
            Self::Live => RouteLabel::Live,
            Self::Saldo(_) => RouteLabel::Saldo,
            Self::Debit(kind) => RouteLabel::debit(kind),
            Self::Movimientos(_) => RouteLabel::Movimientos,
            Self::Eventos => RouteLabel::Eventos,
            Self::Cursor(_) => RouteLabel::Cursores,
        }
    }

    fn allow(self) -> &'static str {
        match self {
            Self::Health | Self::Live | Self::Saldo(_) | Self::Movimientos(_) | Self::Eventos => {
                ALLOW_GET
            }
            Self::Debit(_) => ALLOW_POST,
            Self::Cursor(_) => ALLOW_PUT,
        }
    }
}

/// What every request is served with.
pub struct App {
    /// Balances, debits and idempotency keys.
    pub storage: Arc<Storage>,
    /// The request path's metrics (records nothing when metrics are off).
    pub metrics: Arc<Recorder>,
    /// A request slower than this is logged at `warn`.
    pub slow_request: Duration,
    /// Which requests get a span; `None`: the trace pipeline is off.
    pub sampling: Option<Sampling>,
    /// Who may do what.
    pub auth: Auth,
}

/// Answers one request. Never fails: every refusal is a response.
pub async fn handle(app: &App, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id::for_request(request.headers().get(&request_id::HEADER));
    let method = MethodLabel::of(request.method());
    // For the log line, which may come after the headers are gone.
    let amzn_trace_id = AmznTraceId::of(request.headers());
    // Built only when tracing is on: otherwise no tracing work at all.
    let trace = app.sampling.and_then(|sampling| {
        let id = request_id.to_str().unwrap_or_default();
        // Resolved again only for a sampled request, whose span needs its
        // route before the handler runs.
        let route =
            || Route::resolve(request.uri().path()).map_or(RouteLabel::Unmatched, Route::label);
        let headers = request.headers();
        RequestTrace::start_sampled(sampling, headers, method, route, id, amzn_trace_id.as_ref())
    });
    let (route, answered) = match &trace {
        None => route(app, request).await,
        Some(trace) => route(app, request).instrument(trace.span.clone()).await,
    };
    let mut response = answered.unwrap_or_else(ApiError::into_response);
    let status = response.status();
    let elapsed = started.elapsed();
    app.metrics.request(route, method, status, elapsed);
    if let Some(trace) = &trace {
        trace.finish(status.as_u16());
    }
    // One line per request: at `warn` when slow, else at `debug`, whose
    // fields are built only when that level is on (the macro checks the
    // level first: nothing is formatted at the default level).
    macro_rules! request_line {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                route = route.as_str(),
                method = method.as_str(),
                status = status.as_u16(),
                duration_us = elapsed.as_micros() as u64,
                duration_ms = elapsed.as_millis() as u64,
                request_id = request_id.to_str().unwrap_or_default(),
                trace_id = trace.as_ref().and_then(RequestTrace::sampled_trace_id),
                amzn_trace_id = amzn_trace_id.as_ref().map(AmznTraceId::as_str),
                $message
            )
        };
    }
    if elapsed >= app.slow_request {
        request_line!(warn, "slow request");
    } else {
        request_line!(debug, "request");
    }
    response
        .headers_mut()
        .insert(request_id::HEADER, request_id);
    response
}

/// The request's route (its label) and its answer.
async fn route(
    app: &App,
    request: Request<Incoming>,
) -> (RouteLabel, Result<Response<Body>, ApiError>) {
    let Some(route) = Route::resolve(request.uri().path()) else {
        return (RouteLabel::Unmatched, Err(ApiError::RutaNoEncontrada));
    };
    let is_allowed = match route {
        Route::Health | Route::Live | Route::Saldo(_) | Route::Movimientos(_) | Route::Eventos => {
            matches!(*request.method(), Method::GET | Method::HEAD)
        }
        Route::Debit(_) => *request.method() == Method::POST,
        Route::Cursor(_) => *request.method() == Method::PUT,
    };
    let label = route.label();
    if !is_allowed {
        let allow = route.allow();
        return (label, Err(ApiError::MetodoNoPermitido { allow }));
    }
    let access = match route {
        Route::Health | Route::Live => Ok(None),
        _ => app.auth.authenticate(request.headers()).await,
    };
    let access = match access {
        Ok(access) => access,
        Err(unauthenticated) => {
            app.metrics.auth_refusal(unauthenticated.reason());
            return (label, Err(unauthenticated.into()));
        }
    };
    let access = access.as_ref();
    let answered = match route {
        Route::Health => api::get_health(&app.storage).await,
        Route::Live => api::get_live(&app.storage),
        Route::Saldo(segment) => api::get_saldo(app, segment, access).await,
        Route::Debit(kind) => api::post_debit(app, kind, request, access).await,
        Route::Movimientos(segment) => {
            api::get_movimientos(app, segment, request.uri().query(), access).await
        }
        Route::Eventos => {
            api::get_eventos(app, request.headers(), request.uri().query(), access).await
        }
        Route::Cursor(segment) => {
            // Owned: the request moves into the handler, which reads its body.
            let segment = segment.to_owned();
            api::put_cursor(app, &segment, request, access).await
        }
    };
    if answered
        .as_ref()
        .is_err_and(|error| *error == ApiError::Prohibido)
    {
        app.metrics.auth_refusal(Refusal::Forbidden);
    }
    (label, answered)
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
            (
                "/movimientos/usuario1",
                Some(Route::Movimientos("usuario1")),
            ),
            ("/movimientos/", None),
            ("/movimientos/a/b", None),
            ("/eventos", Some(Route::Eventos)),
            ("/eventos/", None),
            (
                "/eventos/cursores/notificaciones",
                Some(Route::Cursor("notificaciones")),
            ),
            ("/eventos/cursores/", None),
            ("/eventos/cursores/a/b", None),
        ];
        for (path, expected) in cases {
            assert_eq!(Route::resolve(path), expected, "{path}");
        }
    }
}
