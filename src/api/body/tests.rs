use super::*;

type Parsed = Result<(String, u64), ApiError>;

fn parse(body: &str) -> Parsed {
    parse_debit(body.as_bytes()).map(|r| (r.usuario.as_str().to_owned(), r.monto))
}

// Every body rule of the SPEC, with the error the first failing row decides.
#[test]
fn bodies_map_to_the_first_failing_rule() {
    use ApiError::*;
    let ok = |u: &str, m: u64| Ok((u.to_owned(), m));
    let cases: &[(&str, Parsed)] = &[
        (
            r#"{"usuario":"usuario1","monto":5000}"#,
            ok("usuario1", 5000),
        ),
        (
            r#" {"monto":1 , "usuario":"a", "extra":[1,{"x":null}]}  "#,
            ok("a", 1),
        ),
        (
            r#"{"usuario":"a","monto":1000000000000}"#,
            ok("a", MONTO_MAX),
        ),
        (r#"{"usuario":"a\"b\u00f1","monto":7}"#, ok("a\"bñ", 7)),
        (r#"{"usuario":"a","monto":-0}"#, Err(MontoInvalido)),
        ("", Err(JsonInvalido)),
        ("   ", Err(JsonInvalido)),
        ("{", Err(JsonInvalido)),
        ("[1,2]", Err(JsonInvalido)),
        ("\"usuario\"", Err(JsonInvalido)),
        ("null", Err(JsonInvalido)),
        (r#"{"usuario":"a","monto":1} {}"#, Err(JsonInvalido)),
        (r#"{"usuario":"a","monto":1}x"#, Err(JsonInvalido)),
        (r#"{"usuario":"a","monto":1,"monto":2}"#, Err(JsonInvalido)),
        (
            r#"{"usuario":"a","monto":1,"x":{"k":1,"k":2}}"#,
            Err(JsonInvalido),
        ),
        (r#"{"usuario":"a","monto":01}"#, Err(JsonInvalido)),
        (r#"{"usuario":'a',"monto":1}"#, Err(JsonInvalido)),
        ("{}", Err(CamposRequeridos)),
        (r#"{"usuario":"a"}"#, Err(CamposRequeridos)),
        (r#"{"monto":5}"#, Err(CamposRequeridos)),
        (r#"{"usuario":null,"monto":5}"#, Err(CamposRequeridos)),
        (r#"{"usuario":"a","monto":null}"#, Err(CamposRequeridos)),
        (r#"{"usuario":"","monto":5}"#, Err(CamposRequeridos)),
        (r#"{"usuario":5,"monto":"x"}"#, Err(UsuarioInvalido)),
        (r#"{"usuario":true,"monto":5}"#, Err(UsuarioInvalido)),
        (r#"{"usuario":["a"],"monto":5}"#, Err(UsuarioInvalido)),
        (r#"{"usuario":"a/b","monto":5}"#, Err(UsuarioInvalido)),
        (r#"{"usuario":"a\u0000","monto":5}"#, Err(UsuarioInvalido)),
        (r#"{"usuario":"a\nb","monto":5}"#, Err(UsuarioInvalido)),
        (r#"{"usuario":"a","monto":0}"#, Err(MontoInvalido)),
        (r#"{"usuario":"a","monto":-5}"#, Err(MontoInvalido)),
        (r#"{"usuario":"a","monto":1.5}"#, Err(MontoInvalido)),
        (r#"{"usuario":"a","monto":1.0}"#, Err(MontoInvalido)),
        (r#"{"usuario":"a","monto":1e3}"#, Err(MontoInvalido)),
        (r#"{"usuario":"a","monto":"5"}"#, Err(MontoInvalido)),
        (r#"{"usuario":"a","monto":true}"#, Err(MontoInvalido)),
        (r#"{"usuario":"a","monto":{}}"#, Err(MontoInvalido)),
        (
            r#"{"usuario":"a","monto":1000000000001}"#,
            Err(MontoInvalido),
        ),
        (
            r#"{"usuario":"a","monto":18446744073709551616}"#,
            Err(MontoInvalido),
        ),
        (
            r#"{"usuario":"a","monto":-99999999999999999999999}"#,
            Err(MontoInvalido),
        ),
        (r#"{"usuario":"a","monto":1e400}"#, Err(MontoInvalido)),
        (
            r#"{"usuario":"a","monto":5,"big":1e999,"neg":-1E+999}"#,
            ok("a", 5),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(&parse(body), expected, "{body}");
    }
}

#[test]
fn non_utf8_bodies_are_invalid_json() {
    assert_eq!(
        parse_debit(b"{\"usuario\":\"\xff\",\"monto\":1}").unwrap_err(),
        ApiError::JsonInvalido
    );
}

#[test]
fn number_grammar() {
    for good in ["0", "-0", "12", "1.5", "1e5", "1E+5", "-1.25e-7"] {
        assert!(is_json_number(good.as_bytes()), "{good}");
    }
    for bad in [
        "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1..2", "--1", "1e5e5",
    ] {
        assert!(!is_json_number(bad.as_bytes()), "{bad}");
    }
}

// Deep nesting and many keys stay within the body limit and are handled.
#[test]
fn adversarial_shapes_do_not_panic() {
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    assert_eq!(parse(&deep).unwrap_err(), ApiError::JsonInvalido);
    let keys: String = (0..300).map(|i| format!("\"k{i}\":{i},")).collect();
    let many = format!("{{{keys}\"usuario\":\"a\",\"monto\":3}}");
    assert!(many.len() <= BODY_BYTES_MAX);
    assert_eq!(parse(&many).unwrap(), ("a".to_owned(), 3));
    let repeated = format!("{{{keys}\"k7\":1,\"usuario\":\"a\",\"monto\":3}}");
    assert_eq!(parse(&repeated).unwrap_err(), ApiError::JsonInvalido);
}

// No input panics the parser: 200,000 pseudo-random bodies built from JSON
// fragments and raw bytes, each parsed and classified.
#[test]
fn random_bodies_never_panic() {
    const FRAGMENTS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"usuario\"",
        "\"monto\"",
        "\"a\"",
        "1",
        "-1",
        "0",
        "1e999",
        "1.5",
        "null",
        "true",
        "\"\\u0000\"",
        "\"\\ud800\"",
        " ",
        "99999999999999999999",
        "-",
        ".",
        "e",
        "\"",
        "\\",
        "\u{00f1}",
    ];
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut body = Vec::with_capacity(BODY_BYTES_MAX);
    let mut accepted = 0;
    for _ in 0..200_000 {
        body.clear();
        let parts = next() % 24;
        for _ in 0..parts {
            let pick = next();
            if pick % 7 == 0 {
                body.push((pick >> 8) as u8);
            } else {
                body.extend_from_slice(
                    FRAGMENTS[(pick >> 8) as usize % FRAGMENTS.len()].as_bytes(),
                );
            }
        }
        body.truncate(BODY_BYTES_MAX);
        if parse_debit(&body).is_ok() {
            accepted += 1;
        }
    }
    // Valid bodies are rare in this mix but the parser ran on every input.
    assert!(accepted < 200_000);
}
