//! Account names (`usuario`): the SPEC's rules and the path's percent-decoding.
//!
//! A [`Usuario`] is validated once, where it enters (path or body), and is then
//! a plain `Copy` value stored inline: building one never allocates, so the
//! request path can carry it across an `.await` for free. This module does no
//! I/O and knows nothing of HTTP beyond the path segment's encoding.

use std::fmt;

/// The longest account name, in UTF-8 bytes (SPEC section 1).
pub const USUARIO_BYTES_MAX: usize = 64;

/// A valid account name: 1 to [`USUARIO_BYTES_MAX`] bytes of UTF-8, no control
/// character (U+0000–U+001F, U+007F) and no `/`.
#[derive(Clone, Copy)]
pub struct Usuario {
    /// Number of meaningful bytes in `bytes`; 1 ..= `USUARIO_BYTES_MAX`.
    len: u8,
    /// The name's UTF-8 bytes, zero-padded after `len`.
    bytes: [u8; USUARIO_BYTES_MAX],
}

/// Why a candidate name is not a [`Usuario`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Zero bytes long.
    #[error("the account name is empty")]
    Empty,
    /// More than [`USUARIO_BYTES_MAX`] bytes.
    #[error("the account name is longer than {USUARIO_BYTES_MAX} bytes")]
    TooLong,
    /// A `%` not followed by two hexadecimal digits.
    #[error("the account name has a malformed percent-escape")]
    BadEscape,
    /// The decoded bytes are not UTF-8.
    #[error("the account name is not UTF-8")]
    NotUtf8,
    /// A control character or a `/`.
    #[error("the account name holds a control character or '/'")]
    ForbiddenChar,
}

impl Usuario {
    /// Validates an already decoded name (a JSON string, a configuration value).
    pub fn new(name: &str) -> Result<Self, Invalid> {
        if name.is_empty() {
            return Err(Invalid::Empty);
        }
        if name.len() > USUARIO_BYTES_MAX {
            return Err(Invalid::TooLong);
        }
        let mut bytes = [0u8; USUARIO_BYTES_MAX];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Self::from_parts(bytes, name.len())
    }

    /// Decodes and validates a raw path segment: `%XX` escapes are decoded and
    /// `+` stays a plus (it means a space only in query strings).
    pub fn from_path_segment(segment: &str) -> Result<Self, Invalid> {
        let raw = segment.as_bytes();
        let mut bytes = [0u8; USUARIO_BYTES_MAX];
        let mut len = 0;
        let mut i = 0;
        while i < raw.len() {
            let byte = if raw[i] == b'%' {
                let hi = raw.get(i + 1).and_then(|b| hex_value(*b));
                let lo = raw.get(i + 2).and_then(|b| hex_value(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(Invalid::BadEscape);
                };
                i += 3;
                hi << 4 | lo
            } else {
                i += 1;
                raw[i - 1]
            };
            if len == USUARIO_BYTES_MAX {
                return Err(Invalid::TooLong);
            }
            bytes[len] = byte;
            len += 1;
        }
        if len == 0 {
            return Err(Invalid::Empty);
        }
        Self::from_parts(bytes, len)
    }

    fn from_parts(bytes: [u8; USUARIO_BYTES_MAX], len: usize) -> Result<Self, Invalid> {
        debug_assert!((1..=USUARIO_BYTES_MAX).contains(&len));
        let name = std::str::from_utf8(&bytes[..len]).map_err(|_| Invalid::NotUtf8)?;
        if name.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'/') {
            return Err(Invalid::ForbiddenChar);
        }
        Ok(Self {
            len: len as u8,
            bytes,
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // The constructors only build a `Usuario` from validated UTF-8, so this
        // cannot fail; the fallback keeps the hot path free of a panic branch.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl PartialEq for Usuario {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Usuario {}

impl fmt::Debug for Usuario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Usuario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every account rule of SPEC section 1, for path segments and plain names.
    #[test]
    fn path_segments_decode_and_validate() {
        let cases: &[(&str, Result<&str, Invalid>)] = &[
            ("usuario1", Ok("usuario1")),
            ("a+b", Ok("a+b")),
            ("a%20b", Ok("a b")),
            ("%C3%B1and%C3%BA", Ok("ñandú")),
            ("%c3%b1", Ok("ñ")),
            ("", Err(Invalid::Empty)),
            ("%2F", Err(Invalid::ForbiddenChar)),
            ("%00", Err(Invalid::ForbiddenChar)),
            ("%1F", Err(Invalid::ForbiddenChar)),
            ("%7F", Err(Invalid::ForbiddenChar)),
            ("%", Err(Invalid::BadEscape)),
            ("%4", Err(Invalid::BadEscape)),
            ("%zz", Err(Invalid::BadEscape)),
            ("%FF", Err(Invalid::NotUtf8)),
            ("%C3", Err(Invalid::NotUtf8)),
        ];
        for (segment, expected) in cases {
            let got = Usuario::from_path_segment(segment);
            assert_eq!(
                got.map(|u| u.as_str().to_owned()),
                expected.map(str::to_owned),
                "{segment:?}"
            );
        }
    }

    #[test]
    fn length_is_counted_in_decoded_bytes() {
        let max = "x".repeat(USUARIO_BYTES_MAX);
        assert_eq!(Usuario::new(&max).unwrap().as_str(), max);
        assert_eq!(
            Usuario::new(&format!("{max}x")).unwrap_err(),
            Invalid::TooLong
        );
        // 32 two-byte characters are exactly 64 bytes; one more is too long.
        let ene = "ñ".repeat(32);
        assert!(Usuario::new(&ene).is_ok());
        assert_eq!(
            Usuario::new(&format!("{ene}ñ")).unwrap_err(),
            Invalid::TooLong
        );
        let escaped = "%41".repeat(USUARIO_BYTES_MAX);
        assert_eq!(
            Usuario::from_path_segment(&escaped).unwrap().as_str(),
            "A".repeat(64)
        );
        assert_eq!(
            Usuario::from_path_segment(&format!("{escaped}%41")).unwrap_err(),
            Invalid::TooLong
        );
    }

    #[test]
    fn plain_names_reject_controls_and_slash() {
        for bad in ["a/b", "tab\there", "\u{7f}", "\0"] {
            assert_eq!(
                Usuario::new(bad).unwrap_err(),
                Invalid::ForbiddenChar,
                "{bad:?}"
            );
        }
        assert_eq!(Usuario::new("").unwrap_err(), Invalid::Empty);
        assert!(Usuario::new("\u{80}ok \"quoted\" \\").is_ok());
    }
}
