//! `X-Request-Id`: keep the caller's when valid, else mint a fresh one.
//!
//! Fresh ids are 32 hexadecimal digits: a random per-thread base and a
//! per-thread counter, so minting takes no lock, no shared atomic and no
//! allocation, and ids from different threads, tasks or restarts do not collide
//! in practice (a 64-bit random base each).

use std::cell::Cell;

use http::{HeaderName, HeaderValue};

use crate::header::is_visible_ascii;
use crate::render::render;

/// The header's name, parsed once: a lookup by `&str` would parse it per request.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id kept from a caller, in bytes (SPEC section 1).
pub const REQUEST_ID_BYTES_MAX: usize = 128;

thread_local! {
    static NEXT: Cell<(u64, u64)> = Cell::new((ahash::RandomState::new().hash_one(0u8), 0));
}

/// The request's own id when it is 1 to 128 visible ASCII characters, else a
/// fresh one.
pub fn for_request(sent: Option<&HeaderValue>) -> HeaderValue {
    match sent {
        Some(value) if is_visible_ascii(value.as_bytes(), REQUEST_ID_BYTES_MAX) => value.clone(),
        _ => fresh(),
    }
}

fn fresh() -> HeaderValue {
    let (base, count) = NEXT.with(|next| {
        let (base, count) = next.get();
        next.set((base, count.wrapping_add(1)));
        (base, count)
    });
    let id = render(|w| {
        w.hex_u64(base);
        w.hex_u64(count);
    });
    // Hex digits are always a valid header value.
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_are_kept_and_others_replaced() {
        let long = "x".repeat(REQUEST_ID_BYTES_MAX);
        for kept in ["abc-123", "~!", long.as_str()] {
            let sent = HeaderValue::from_str(kept).unwrap();
            assert_eq!(for_request(Some(&sent)), kept);
        }
        let too_long = "x".repeat(REQUEST_ID_BYTES_MAX + 1);
        for replaced in ["", "has space", too_long.as_str(), "tab\tinside"] {
            let sent = HeaderValue::from_str(replaced).unwrap();
            let got = for_request(Some(&sent));
            assert_ne!(got, replaced);
            assert_eq!(got.len(), 32);
        }
        let non_ascii = HeaderValue::from_bytes("ñ".as_bytes()).unwrap();
        assert_eq!(for_request(Some(&non_ascii)).len(), 32);
    }

    #[test]
    fn fresh_ids_are_distinct() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| for_request(None)).collect();
        assert_eq!(ids.len(), 10_000);
        let other_thread = std::thread::spawn(|| for_request(None)).join().unwrap();
        assert!(!ids.contains(&other_thread));
    }
}
