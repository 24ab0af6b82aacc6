//! Rendering response bytes without an allocation per response.
//!
//! Each worker thread keeps one slab ([`SLAB_BYTES`]); a body or header value
//! is written at its end and split off as a reference-counted [`Bytes`]. A
//! fresh slab is allocated only when the current one runs out, so thousands of
//! responses share one allocation. This module knows JSON's string escaping and
//! integers, nothing of HTTP semantics.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};

/// Size of one per-thread rendering slab.
const SLAB_BYTES: usize = 64 * 1024;

/// Lowercase hexadecimal digits, by value.
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two lowercase hexadecimal digits of every byte, by value: one lookup
/// per byte instead of two shifts and lookups.
const HEX_PAIRS: [[u8; 2]; 256] = hex_pairs();

const fn hex_pairs() -> [[u8; 2]; 256] {
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX_DIGITS[byte >> 4], HEX_DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
}

/// The most one rendering may write; a longer one gets its own allocation.
const RENDER_BYTES_MAX: usize = 512;

thread_local! {
    static SLAB: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(SLAB_BYTES));
}

/// Renders bytes with `write` into the thread's slab and returns them.
pub fn render(write: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    SLAB.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.capacity() < RENDER_BYTES_MAX {
            *slab = BytesMut::with_capacity(SLAB_BYTES);
        }
        debug_assert!(slab.is_empty());
        write(&mut Writer(&mut slab));
        slab.split().freeze()
    })
}

/// Appends JSON fragments to a slab.
pub struct Writer<'a>(&'a mut BytesMut);

impl Writer<'_> {
    /// Appends text as is (callers pass JSON punctuation and known-safe keys).
    pub fn raw(&mut self, text: &str) {
        self.0.put_slice(text.as_bytes());
    }

    /// Appends `text` as a JSON string, quotes included.
    pub fn string(&mut self, text: &str) {
        self.0.put_u8(b'"');
        // Names rarely need escaping: one scan, then one copy.
        match text
            .bytes()
            .position(|byte| matches!(byte, b'"' | b'\\' | 0x00..=0x1f))
        {
            None => self.0.put_slice(text.as_bytes()),
            Some(first) => self.escaped(text, first),
        }
        self.0.put_u8(b'"');
    }

    /// Appends `text` escaped, knowing it is clean before byte `first`.
    fn escaped(&mut self, text: &str, first: usize) {
        let mut clean_from = 0;
        for (i, byte) in text.bytes().enumerate().skip(first) {
            let escaped: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x00..=0x1f => {
                    self.0.put_slice(&text.as_bytes()[clean_from..i]);
                    self.control(byte);
                    clean_from = i + 1;
                    continue;
                }
                _ => continue,
            };
            self.0.put_slice(&text.as_bytes()[clean_from..i]);
            self.0.put_slice(escaped);
            clean_from = i + 1;
        }
        self.0.put_slice(&text.as_bytes()[clean_from..]);
    }

    /// Appends an integer.
    pub fn u64(&mut self, value: u64) {
        self.0
            .put_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Appends an integer as 16 lowercase hexadecimal digits.
    pub fn hex_u64(&mut self, value: u64) {
        let mut digits = [0u8; 16];
        for (pair, byte) in digits.chunks_exact_mut(2).zip(value.to_be_bytes()) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        self.0.put_slice(&digits);
    }

    fn control(&mut self, byte: u8) {
        self.raw("\\u00");
        self.0.put_u8(HEX_DIGITS[usize::from(byte >> 4)]);
        self.0.put_u8(HEX_DIGITS[usize::from(byte & 0xf)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        let cases = [
            ("plain", r#""plain""#),
            ("ñandú", "\"ñandú\""),
            (r#"a"b\c"#, r#""a\"b\\c""#),
            ("\u{1}x\n", r#""\u0001x\u000a""#),
            ("", r#""""#),
        ];
        for (input, expected) in cases {
            let rendered = render(|w| w.string(input));
            assert_eq!(std::str::from_utf8(&rendered).unwrap(), expected);
        }
    }

    // Renders past one slab to prove earlier bytes survive the slab's replacement.
    #[test]
    fn renders_stay_intact_across_slabs() {
        let renders: Vec<Bytes> = (0..5_000u64)
            .map(|i| {
                render(|w| {
                    w.raw("{\"n\":");
                    w.u64(i);
                    w.raw("}");
                })
            })
            .collect();
        for (i, bytes) in renders.iter().enumerate() {
            assert_eq!(bytes, format!("{{\"n\":{i}}}").as_bytes());
        }
        assert_eq!(&render(|w| w.hex_u64(0xdead_beef))[..], b"00000000deadbeef");
        assert_eq!(
            &render(|w| w.hex_u64(0x0123_4567_89ab_cdef))[..],
            b"0123456789abcdef"
        );
    }
}
