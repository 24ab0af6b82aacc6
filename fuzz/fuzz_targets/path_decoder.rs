//! Fuzzes `saldos::usuario::Usuario::from_path_segment`, the decoder of the
//! `/saldo/{usuario}` path segment, with arbitrary bytes (as the `&str` hyper
//! hands over: the bytes themselves when they are UTF-8, else their lossy
//! decoding).
//!
//! Checks:
//! - it never panics;
//! - it agrees with a plain reference decoder written here from the SPEC
//!   (`%XX` decodes to one byte, `+` and every other byte stay as they are;
//!   the result is a name iff it is 1–64 bytes of UTF-8 without a control
//!   character or '/'): same acceptance, same decoded name;
//! - an accepted name obeys the account rules, `Usuario::new` accepts it as
//!   the same name, and `Display` prints it unchanged;
//! - percent-encoding every byte of an accepted name and decoding that again
//!   gives the same name (what a client that escapes everything sends).
#![no_main]

use std::borrow::Cow;
use std::fmt::Write as _;

use libfuzzer_sys::fuzz_target;
use saldos::usuario::{USUARIO_BYTES_MAX, Usuario};

fuzz_target!(|data: &[u8]| {
    let segment: Cow<'_, str> = String::from_utf8_lossy(data);
    let decoded = Usuario::from_path_segment(&segment);
    let expected = reference_decode(segment.as_bytes());
    assert_eq!(
        decoded.as_ref().ok().map(Usuario::as_str),
        expected.as_deref(),
        "from_path_segment({segment:?}) disagrees with the reference decoder \
         (its error: {:?})",
        decoded.err()
    );
    if let Ok(usuario) = decoded {
        check_accepted(usuario);
    }
});

fn check_accepted(usuario: Usuario) {
    let name = usuario.as_str();
    assert!(
        (1..=USUARIO_BYTES_MAX).contains(&name.len()),
        "accepted name {name:?} is {} bytes long",
        name.len()
    );
    assert!(
        !name.chars().any(is_forbidden),
        "accepted name {name:?} holds a control character or '/'"
    );
    assert_eq!(
        Usuario::new(name),
        Ok(usuario),
        "Usuario::new refuses or changes a name the path decoder accepted"
    );
    assert_eq!(usuario.to_string(), name, "Display changes the name");

    let escaped = name.bytes().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "%{byte:02X}");
        out
    });
    assert_eq!(
        Usuario::from_path_segment(&escaped),
        Ok(usuario),
        "the fully percent-encoded name {escaped:?} does not decode back"
    );
}

/// The SPEC's account rule on characters: U+0000–U+001F, U+007F and '/'.
fn is_forbidden(c: char) -> bool {
    c.is_ascii_control() || c == '/'
}

/// The decoded name, or `None` when the segment is not a valid account name.
/// Deliberately simple (allocating, two passes) to be obviously right.
fn reference_decode(segment: &[u8]) -> Option<String> {
    let mut bytes = Vec::with_capacity(segment.len());
    let mut rest = segment;
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            // `from_str_radix` would also take a sign ("+F"): insist on digits.
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    let name = String::from_utf8(bytes).ok()?;
    let is_valid = (1..=USUARIO_BYTES_MAX).contains(&name.len()) && !name.chars().any(is_forbidden);
    is_valid.then_some(name)
}
