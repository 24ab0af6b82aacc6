//! Fuzzes `saldos::api::parse_debit`, the debit request-body parser, with
//! arbitrary bytes.
//!
//! Checks, for every input the server could hand it (at most `BODY_BYTES_MAX`
//! bytes: `body::read` refuses longer bodies before parsing):
//! - it never panics (ASan also catches memory errors in simd-json's unsafe
//!   code);
//! - it is deterministic: a second parse of the same bytes gives the same
//!   answer, although the parser reuses per-thread buffers and tape between
//!   calls (every libFuzzer input runs on the same thread, so stale state
//!   from earlier inputs is exercised too);
//! - a refusal is one of the body rows of the SPEC's error table, never a
//!   transport or ledger error;
//! - a body that is not UTF-8 is refused as `JSON_INVALIDO`: it is not JSON;
//! - an accepted body has `monto` in 1 ..= 10^12 and a `usuario` that obeys
//!   the account rules and that `Usuario::new` accepts as the same name;
//! - an accepted body is a JSON object to an independent parser (serde_json),
//!   whose `usuario` and `monto` members are the ones accepted. This catches
//!   the out-of-range-number rewrite or the tape walk reading the wrong node.
#![no_main]

use libfuzzer_sys::fuzz_target;
use saldos::api::{ApiError, BODY_BYTES_MAX, DebitRequest, parse_debit};
use saldos::ledger::MONTO_MAX;
use saldos::usuario::{USUARIO_BYTES_MAX, Usuario};

fuzz_target!(|body: &[u8]| {
    // The caller's contract (debug-asserted in `parse_debit`): longer bodies
    // are answered 413 before any parsing.
    if body.len() > BODY_BYTES_MAX {
        return;
    }
    let first = parse_debit(body);
    let second = parse_debit(body);
    assert_eq!(
        comparable(&first),
        comparable(&second),
        "parsing the same body twice gave two answers"
    );
    match first {
        Ok(request) => check_accepted(body, request),
        Err(error) => check_refused(body, error),
    }
});

/// `DebitRequest` has no `PartialEq`; its fields do.
fn comparable(parsed: &Result<DebitRequest, ApiError>) -> Result<(Usuario, u64), ApiError> {
    parsed.map(|request| (request.usuario, request.monto))
}

fn check_refused(body: &[u8], error: ApiError) {
    assert!(
        matches!(
            error,
            ApiError::JsonInvalido
                | ApiError::CamposRequeridos
                | ApiError::UsuarioInvalido
                | ApiError::MontoInvalido
        ),
        "a body parse answered {error:?}, which is not a body rule"
    );
    if std::str::from_utf8(body).is_err() {
        assert_eq!(
            error,
            ApiError::JsonInvalido,
            "a non-UTF-8 body must be refused as invalid JSON"
        );
    }
}

fn check_accepted(body: &[u8], request: DebitRequest) {
    assert!(
        (1..=MONTO_MAX).contains(&request.monto),
        "accepted monto {} is outside 1..={MONTO_MAX}",
        request.monto
    );
    let name = request.usuario.as_str();
    assert!(
        (1..=USUARIO_BYTES_MAX).contains(&name.len()),
        "accepted usuario {name:?} is {} bytes long",
        name.len()
    );
    assert!(
        !name.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'/'),
        "accepted usuario {name:?} holds a control character or '/'"
    );
    assert_eq!(
        Usuario::new(name),
        Ok(request.usuario),
        "Usuario::new refuses or changes an accepted usuario"
    );

    let text = std::str::from_utf8(body).expect("an accepted body must be UTF-8");
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        // serde_json stops at 128 levels of nesting; simd-json does not, and
        // deep nesting is legal JSON. Any other refusal means simd-json and
        // this parser disagree on what JSON is.
        Err(error) if error.to_string().contains("recursion limit") => return,
        Err(error) => panic!("accepted body is not JSON to serde_json: {error}"),
    };
    let object = value
        .as_object()
        .expect("an accepted body must be a JSON object");
    assert_eq!(
        object.get("usuario").and_then(serde_json::Value::as_str),
        Some(name),
        "the accepted usuario is not the body's \"usuario\" member"
    );
    assert_eq!(
        object.get("monto").and_then(serde_json::Value::as_u64),
        Some(request.monto),
        "the accepted monto is not the body's \"monto\" member"
    );
}
