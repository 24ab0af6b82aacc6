//! The rules the API applies to the header values it gives meaning to:
//! `X-Request-Id` and `Idempotency-Key` are 1 to N visible ASCII characters;
//! `Content-Type` and `Accept` name media types.

/// True when `value` is 1 to `bytes_max` visible ASCII characters (0x21–0x7E:
/// no space, no control, nothing beyond ASCII).
pub fn is_visible_ascii(value: &[u8], bytes_max: usize) -> bool {
    (1..=bytes_max).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// True when `media_range` (one element of `Content-Type` or of `Accept`'s
/// list) is `media_type`, case-insensitively, whatever its parameters.
pub fn is_media_type(media_range: &[u8], media_type: &[u8]) -> bool {
    media_range
        .split(|byte| *byte == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .eq_ignore_ascii_case(media_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_within_bounds() {
        assert!(is_visible_ascii(b"!~aZ09", 6));
        assert!(!is_visible_ascii(b"1234567", 6));
        assert!(!is_visible_ascii(b"", 6));
        for bad in [&b"a b"[..], b"a\tb", b"\x7f", "ñ".as_bytes()] {
            assert!(!is_visible_ascii(bad, 6), "{bad:?}");
        }
    }
}
