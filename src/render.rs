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

/// The two decimal digits of 0 to 99, by value.
const DECIMAL_PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0; 2]; 100];
    let mut n = 0;
    while n < 100 {
        pairs[n] = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        n += 1;
    }
    pairs
};

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
    /// The day last rendered by [`Writer::timestamp_ms`], and its text.
    static DATE: std::cell::Cell<(u64, [u8; 12])> = const { std::cell::Cell::new((u64::MAX, [0; 12])) };
}

/// Renders bytes with `write` into the thread's slab and returns them.
pub fn render(write: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    render_sized(RENDER_BYTES_MAX, write)
}

/// Renders about `bytes_hint` bytes (a page of movements or events) with
/// `write`: room for them is made before writing, so the slab never grows,
/// and copies what it holds, in the middle of a rendering.
pub fn render_sized(bytes_hint: usize, write: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    SLAB.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.capacity() < bytes_hint {
            *slab = BytesMut::with_capacity(SLAB_BYTES.max(bytes_hint));
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

    /// Appends a time in ms since the Unix epoch as a quoted RFC 3339 UTC
    /// timestamp with milliseconds: `"2026-12-03T23:00:00.123Z"`.
    pub fn timestamp_ms(&mut self, unix_ms: u64) {
        let (days, ms_of_day) = (unix_ms / 86_400_000, unix_ms % 86_400_000);
        // `"YYYY-MM-DDT`, made once per day per thread: a page's movements
        // mostly share their day.
        let date = DATE.with(|cached| {
            let (cached_days, text) = cached.get();
            if cached_days == days {
                return text;
            }
            let (year, month, day) = civil_from_days(days);
            let [y1, y2] = [(year / 100) as usize, (year % 100) as usize];
            let [m, d] = [month as usize, day as usize];
            let text = [
                b'"',
                DECIMAL_PAIRS[y1][0],
                DECIMAL_PAIRS[y1][1],
                DECIMAL_PAIRS[y2][0],
                DECIMAL_PAIRS[y2][1],
                b'-',
                DECIMAL_PAIRS[m][0],
                DECIMAL_PAIRS[m][1],
                b'-',
                DECIMAL_PAIRS[d][0],
                DECIMAL_PAIRS[d][1],
                b'T',
            ];
            cached.set((days, text));
            text
        });
        self.0.put_slice(&date);
        let seconds = (ms_of_day / 1000) as usize;
        let millis = (ms_of_day % 1000) as usize;
        let time = [
            DECIMAL_PAIRS[seconds / 3600][0],
            DECIMAL_PAIRS[seconds / 3600][1],
            b':',
            DECIMAL_PAIRS[seconds / 60 % 60][0],
            DECIMAL_PAIRS[seconds / 60 % 60][1],
            b':',
            DECIMAL_PAIRS[seconds % 60][0],
            DECIMAL_PAIRS[seconds % 60][1],
            b'.',
            b'0' + (millis / 100) as u8,
            DECIMAL_PAIRS[millis % 100][0],
            DECIMAL_PAIRS[millis % 100][1],
            b'Z',
            b'"',
        ];
        self.0.put_slice(&time);
    }

    fn control(&mut self, byte: u8) {
        self.raw("\\u00");
        self.0.put_u8(HEX_DIGITS[usize::from(byte >> 4)]);
        self.0.put_u8(HEX_DIGITS[usize::from(byte & 0xf)]);
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), for years up to 9999.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
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

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_796_338_800_123, "2026-12-03T23:00:00.123Z"),
            // The same day again: from the thread's cached date.
            (1_796_292_000_009, "2026-12-03T10:00:00.009Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ];
        for (unix_ms, expected) in cases {
            let rendered = render(|w| w.timestamp_ms(unix_ms));
            assert_eq!(
                &rendered[..],
                format!("\"{expected}\"").as_bytes(),
                "{unix_ms}"
            );
        }
    }
}
