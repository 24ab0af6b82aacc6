//! Every row of the SPEC's error table: status, `codigo`, text and headers.
//! The texts are written out here from the SPEC, not taken from the code.

use crate::util::{Backend, contract_tests, error_body, start_server, start_server_on};

const JSON: (&str, &str) = ("Content-Type", "application/json");

struct Case {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    status: u16,
    codigo: &'static str,
    error: &'static str,
}

const fn case(
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    (status, codigo, error): (u16, &'static str, &'static str),
) -> Case {
    Case {
        method,
        path,
        headers,
        body,
        status,
        codigo,
        error,
    }
}

const NOT_FOUND: (u16, &str, &str) = (404, "RUTA_NO_ENCONTRADA", "Ruta no encontrada.");
const METHOD: (u16, &str, &str) = (405, "METODO_NO_PERMITIDO", "Método no permitido.");
const MEDIA: (u16, &str, &str) = (
    415,
    "TIPO_CONTENIDO",
    "El Content-Type debe ser application/json.",
);
const JSON_BAD: (u16, &str, &str) = (
    400,
    "JSON_INVALIDO",
    "El cuerpo debe ser un objeto JSON válido.",
);
const FIELDS: (u16, &str, &str) = (
    400,
    "CAMPOS_REQUERIDOS",
    "Se requieren 'usuario' y 'monto'.",
);
const USUARIO: (u16, &str, &str) = (400, "USUARIO_INVALIDO", "El usuario no es válido.");
const MONTO: (u16, &str, &str) = (
    400,
    "MONTO_INVALIDO",
    "El monto debe ser un número entero positivo.",
);
const TOO_BIG: (u16, &str, &str) = (
    413,
    "CUERPO_DEMASIADO_GRANDE",
    "El cuerpo excede el tamaño máximo permitido.",
);

const CASES: &[Case] = &[
    case("GET", "/", &[], None, NOT_FOUND),
    case("GET", "/saldo/", &[], None, NOT_FOUND),
    case("GET", "/saldo/a/b", &[], None, NOT_FOUND),
    case("GET", "/saldo", &[], None, NOT_FOUND),
    case("POST", "/pago/", &[JSON], Some("{}"), NOT_FOUND),
    case("DELETE", "/nope", &[], None, NOT_FOUND),
    case("POST", "/saldo/usuario1", &[JSON], Some("{}"), METHOD),
    case("DELETE", "/saldo/%ZZ", &[], None, METHOD),
    case("PUT", "/health", &[], None, METHOD),
    case("POST", "/health/live", &[JSON], Some("{}"), METHOD),
    case("GET", "/health/live/", &[], None, NOT_FOUND),
    case("GET", "/pago", &[], None, METHOD),
    case("HEAD", "/retiro", &[], None, METHOD),
    case("OPTIONS", "/retiro", &[], None, METHOD),
    case(
        "POST",
        "/pago",
        &[],
        Some(r#"{"usuario":"a","monto":1}"#),
        MEDIA,
    ),
    case(
        "POST",
        "/pago",
        &[("Content-Type", "text/plain")],
        Some(r#"{"usuario":"a","monto":1}"#),
        MEDIA,
    ),
    case(
        "POST",
        "/retiro",
        &[("Content-Type", "application/xml")],
        Some("x"),
        MEDIA,
    ),
    case("POST", "/pago", &[JSON], None, JSON_BAD),
    case("POST", "/pago", &[JSON], Some("{"), JSON_BAD),
    case("POST", "/pago", &[JSON], Some("[]"), JSON_BAD),
    case(
        "POST",
        "/pago",
        &[JSON],
        Some(r#"{"usuario":"a","monto":1}{}"#),
        JSON_BAD,
    ),
    case(
        "POST",
        "/pago",
        &[JSON],
        Some(r#"{"usuario":"a","usuario":"b","monto":1}"#),
        JSON_BAD,
    ),
    case(
        "POST",
        "/retiro",
        &[JSON],
        Some(r#"{"usuario":"a"}"#),
        FIELDS,
    ),
    case(
        "POST",
        "/retiro",
        &[JSON],
        Some(r#"{"usuario":null,"monto":1}"#),
        FIELDS,
    ),
    case(
        "POST",
        "/retiro",
        &[JSON],
        Some(r#"{"usuario":"","monto":1}"#),
        FIELDS,
    ),
    case(
        "POST",
        "/pago",
        &[JSON],
        Some(r#"{"usuario":7,"monto":1}"#),
        USUARIO,
    ),
    case(
        "POST",
        "/pago",
        &[JSON],
        Some(r#"{"usuario":"a/b","monto":1}"#),
        USUARIO,
    ),
    case("GET", "/saldo/%2F", &[], None, USUARIO),
    case("GET", "/saldo/%00", &[], None, USUARIO),
    case("GET", "/saldo/%ZZ", &[], None, USUARIO),
    case("GET", "/saldo/%FF", &[], None, USUARIO),
    case(
        "GET",
        "/saldo/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        &[],
        None,
        USUARIO,
    ),
    case(
        "POST",
        "/pago",
        &[JSON],
        Some(r#"{"usuario":"a","monto":0}"#),
        MONTO,
    ),
    case(
        "POST",
        "/pago",
        &[JSON],
        Some(r#"{"usuario":"a","monto":-1}"#),
        MONTO,
    ),
    case(
        "POST",
        "/retiro",
        &[JSON],
        Some(r#"{"usuario":"a","monto":2.5}"#),
        MONTO,
    ),
    case(
        "POST",
        "/retiro",
        &[JSON],
        Some(r#"{"usuario":"a","monto":1e3}"#),
        MONTO,
    ),
    case(
        "POST",
        "/retiro",
        &[JSON],
        Some(r#"{"usuario":"a","monto":"10"}"#),
        MONTO,
    ),
    case(
        "POST",
        "/retiro",
        &[JSON],
        Some(r#"{"usuario":"a","monto":false}"#),
        MONTO,
    ),
    case(
        "POST",
        "/retiro",
        &[JSON],
        Some(r#"{"usuario":"a","monto":1000000000001}"#),
        MONTO,
    ),
    case(
        "POST",
        "/pago",
        &[JSON, ("Content-Length", "5000")],
        None,
        TOO_BIG,
    ),
];

async fn every_row_of_the_error_table(backend: Backend) {
    let server = start_server_on(backend, &[]).await;
    for case in CASES {
        // A fresh connection each: some errors close theirs.
        let mut client = server.client().await;
        let reply = client
            .request(case.method, case.path, case.headers, case.body)
            .await;
        let what = format!("{} {} {:?}", case.method, case.path, case.body);
        assert_eq!(reply.status, case.status, "{what}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert!(reply.header("x-request-id").is_some(), "{what}");
        if case.method != "HEAD" {
            assert_eq!(reply.text(), error_body(case.error, case.codigo), "{what}");
        }
        let allow = reply.header("allow");
        match case.status {
            405 if case.path.starts_with("/saldo") || case.path.starts_with("/health") => {
                assert_eq!(allow, Some("GET, HEAD"), "{what}")
            }
            405 => assert_eq!(allow, Some("POST"), "{what}"),
            _ => assert_eq!(allow, None, "{what}"),
        }
    }
    // None of the refused debits changed a balance.
    let reply = server.client().await.get("/saldo/a").await;
    assert_eq!(reply.text(), r#"{"usuario":"a","saldo":100000}"#);
}

// A debit that would store one account past the limit: 503, nothing applied.
#[tokio::test]
async fn a_full_ledger_answers_no_disponible() {
    let server = start_server(&["--max-accounts", "2", "--seed", "a=5,b=5"]).await;
    let mut client = server.client().await;
    let reply = client.post("/pago", r#"{"usuario":"c","monto":1}"#).await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.text(),
        error_body("Servicio no disponible temporalmente.", "NO_DISPONIBLE")
    );
    client.assert_saldo("c", 100000).await;
    let reply = client.post("/pago", r#"{"usuario":"a","monto":5}"#).await;
    assert_eq!(
        reply.text(),
        r#"{"usuario":"a","monto_pagado":5,"nuevo_saldo":0}"#
    );
}

contract_tests!(every_row_of_the_error_table,);
