//! The SPEC's error table: every refusal the API can answer, and the one place
//! that maps each to its status, stable `codigo` and Spanish text.

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use super::{Body, json_response};
use crate::auth::Unauthenticated;
use crate::ledger::DebitKind;
use crate::render::render;

/// An answer other than success. Cheap to build: no allocation until rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    /// No route has this path.
    RutaNoEncontrada,
    /// The path exists, the method does not; `allow` lists the methods that do.
    MetodoNoPermitido {
        /// Value of the `Allow` header.
        allow: &'static str,
    },
    /// Authentication is on and no valid bearer token came with the request.
    NoAutenticado {
        /// A token was sent (and refused): `error="invalid_token"`.
        token_sent: bool,
    },
    /// A `POST` whose media type is not `application/json`.
    TipoContenido,
    /// A body over the size limit, declared or streamed.
    CuerpoDemasiadoGrande,
    /// The body did not arrive in time (not in the SPEC's table: a transport
    /// failure answered 408 before the connection closes).
    TiempoAgotado,
    /// The body is not exactly one JSON object.
    JsonInvalido,
    /// `usuario` or `monto` missing or `null`, or `usuario` empty.
    CamposRequeridos,
    /// `usuario` not a string, or breaking the account rules.
    UsuarioInvalido,
    /// `monto` not an integer in 1 ..= 10^12.
    MontoInvalido,
    /// The token does not allow this operation on this account.
    Prohibido,
    /// The debit exceeds the balance.
    SaldoInsuficiente {
        /// `pago` and `retiro` word this error differently.
        kind: DebitKind,
        /// The balance when the debit was refused.
        saldo_disponible: u64,
    },
    /// The service cannot take this debit now (storage failure or full).
    NoDisponible,
    /// The `Idempotency-Key` header is not 1 to 255 visible ASCII characters.
    IdempotenciaInvalida,
    /// The key was used before with a different request.
    IdempotenciaConflicto,
    /// The key's first request is still being processed.
    IdempotenciaEnCurso,
    /// A query parameter (`limite`, `antes`, `despues`, `espera`,
    /// `consumidor`), `Last-Event-ID` or a consumer's name or position is
    /// malformed or out of range.
    ParametroInvalido,
    /// Events after the cursor are no longer kept.
    CursorExpirado,
    /// The request head is over 16 KiB or 64 headers (answered by the server
    /// for the HTTP layer, which refuses the head before any route).
    CabecerasDemasiadoGrandes,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::RutaNoEncontrada => StatusCode::NOT_FOUND,
            Self::MetodoNoPermitido { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoAutenticado { .. } => StatusCode::UNAUTHORIZED,
            Self::Prohibido => StatusCode::FORBIDDEN,
            Self::TipoContenido => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::CuerpoDemasiadoGrande => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TiempoAgotado => StatusCode::REQUEST_TIMEOUT,
            Self::JsonInvalido
            | Self::CamposRequeridos
            | Self::UsuarioInvalido
            | Self::MontoInvalido
            | Self::SaldoInsuficiente { .. }
            | Self::IdempotenciaInvalida
            | Self::ParametroInvalido => StatusCode::BAD_REQUEST,
            Self::CursorExpirado => StatusCode::GONE,
            Self::NoDisponible => StatusCode::SERVICE_UNAVAILABLE,
            Self::IdempotenciaConflicto => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotenciaEnCurso => StatusCode::CONFLICT,
            Self::CabecerasDemasiadoGrandes => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// The stable code for programs.
    pub fn codigo(self) -> &'static str {
        match self {
            Self::RutaNoEncontrada => "RUTA_NO_ENCONTRADA",
            Self::MetodoNoPermitido { .. } => "METODO_NO_PERMITIDO",
            Self::NoAutenticado { .. } => "NO_AUTENTICADO",
            Self::Prohibido => "PROHIBIDO",
            Self::TipoContenido => "TIPO_CONTENIDO",
            Self::CuerpoDemasiadoGrande => "CUERPO_DEMASIADO_GRANDE",
            Self::TiempoAgotado => "TIEMPO_AGOTADO",
            Self::JsonInvalido => "JSON_INVALIDO",
            Self::CamposRequeridos => "CAMPOS_REQUERIDOS",
            Self::UsuarioInvalido => "USUARIO_INVALIDO",
            Self::MontoInvalido => "MONTO_INVALIDO",
            Self::SaldoInsuficiente { .. } => "SALDO_INSUFICIENTE",
            Self::NoDisponible => "NO_DISPONIBLE",
            Self::IdempotenciaInvalida => "IDEMPOTENCIA_INVALIDA",
            Self::IdempotenciaConflicto => "IDEMPOTENCIA_CONFLICTO",
            Self::IdempotenciaEnCurso => "IDEMPOTENCIA_EN_CURSO",
            Self::ParametroInvalido => "PARAMETRO_INVALIDO",
            Self::CursorExpirado => "CURSOR_EXPIRADO",
            Self::CabecerasDemasiadoGrandes => "CABECERAS_DEMASIADO_GRANDES",
        }
    }

    /// The text for people.
    pub fn mensaje(self) -> &'static str {
        match self {
            Self::RutaNoEncontrada => "Ruta no encontrada.",
            Self::MetodoNoPermitido { .. } => "Método no permitido.",
            Self::NoAutenticado { .. } => "Se requiere un token de acceso válido.",
            Self::Prohibido => "El token no permite esta operación.",
            Self::TipoContenido => "El Content-Type debe ser application/json.",
            Self::CuerpoDemasiadoGrande => "El cuerpo excede el tamaño máximo permitido.",
            Self::TiempoAgotado => "Se agotó el tiempo de espera del cuerpo.",
            Self::JsonInvalido => "El cuerpo debe ser un objeto JSON válido.",
            Self::CamposRequeridos => "Se requieren 'usuario' y 'monto'.",
            Self::UsuarioInvalido => "El usuario no es válido.",
            Self::MontoInvalido => "El monto debe ser un número entero positivo.",
            Self::SaldoInsuficiente {
                kind: DebitKind::Pago,
                ..
            } => "Saldo insuficiente.",
            Self::SaldoInsuficiente {
                kind: DebitKind::Retiro,
                ..
            } => "El monto excede el saldo disponible.",
            Self::NoDisponible => "Servicio no disponible temporalmente.",
            Self::IdempotenciaInvalida => "La clave de idempotencia no es válida.",
            Self::IdempotenciaConflicto => "La clave de idempotencia ya se usó con otra solicitud.",
            Self::IdempotenciaEnCurso => {
                "Una solicitud con esta clave de idempotencia está en curso."
            }
            Self::ParametroInvalido => "Parámetro de consulta inválido.",
            Self::CursorExpirado => "El cursor ya no está disponible.",
            Self::CabecerasDemasiadoGrandes => "Las cabeceras exceden el tamaño máximo permitido.",
        }
    }

    /// The body: `{"error":…,"codigo":…}` plus `saldo_disponible` when insufficient.
    pub fn body(self) -> Bytes {
        render(|w| {
            w.raw("{\"error\":");
            w.string(self.mensaje());
            w.raw(",\"codigo\":\"");
            w.raw(self.codigo());
            w.raw("\"");
            if let Self::SaldoInsuficiente {
                saldo_disponible, ..
            } = self
            {
                w.raw(",\"saldo_disponible\":");
                w.u64(saldo_disponible);
            }
            w.raw("}");
        })
    }

    /// The whole response, with `Allow` on 405 and `Connection: close` where
    /// the request's body may be left unread or broken.
    pub fn into_response(self) -> Response<Body> {
        let mut response = json_response(self.status(), self.body());
        let headers = response.headers_mut();
        match self {
            Self::MetodoNoPermitido { allow } => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            Self::NoAutenticado { token_sent } => {
                // RFC 6750: `error` only when a token was sent.
                let challenge = if token_sent {
                    r#"Bearer realm="saldos", error="invalid_token""#
                } else {
                    r#"Bearer realm="saldos""#
                };
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            Self::CuerpoDemasiadoGrande | Self::TiempoAgotado => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<Unauthenticated> for ApiError {
    fn from(unauthenticated: Unauthenticated) -> Self {
        Self::NoAutenticado {
            token_sent: unauthenticated != Unauthenticated::NoToken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insufficient_balance_carries_the_available_balance() {
        let error = ApiError::SaldoInsuficiente {
            kind: DebitKind::Retiro,
            saldo_disponible: 15_000,
        };
        assert_eq!(
            &error.body()[..],
            r#"{"error":"El monto excede el saldo disponible.","codigo":"SALDO_INSUFICIENTE","saldo_disponible":15000}"#.as_bytes()
        );
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }
}
