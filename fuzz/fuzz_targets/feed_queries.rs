//! Fuzzes what clients send to the movements and events routes: the query
//! strings of `GET /movimientos/{usuario}` and `GET /eventos`, an event id
//! (`antes`, `despues`, `Last-Event-ID`), a consumer's name, and the body of
//! `PUT /eventos/cursores/{nombre}`, with arbitrary bytes.
//!
//! Checks:
//! - nothing panics; every refusal is `PARAMETRO_INVALIDO` (or, for a body
//!   that is not a JSON object, `JSON_INVALIDO`);
//! - what is accepted is in range: `limite` 1–100 or 1–1000, `espera` at
//!   most 30 s;
//! - an accepted event id or consumer name has one spelling: it prints back
//!   as the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use saldos::api::{ApiError, EventsQuery, HistoryQuery, Start, WAIT_MAX, parse_position};
use saldos::seam::{Consumer, EVENTS_PAGE_MAX, EventId, HISTORY_PAGE_MAX};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match HistoryQuery::parse(Some(&text)) {
        Ok(query) => assert!((1..=HISTORY_PAGE_MAX).contains(&query.limit), "{query:?}"),
        Err(error) => assert_eq!(error, ApiError::ParametroInvalido),
    }
    match EventsQuery::parse(Some(&text)) {
        Ok(query) => {
            assert!((1..=EVENTS_PAGE_MAX).contains(&query.limit), "{query:?}");
            assert!(query.wait <= WAIT_MAX, "{query:?}");
            if let Start::Consumer(consumer) = &query.start {
                assert!(Consumer::parse(consumer.as_str()).is_some());
            }
        }
        Err(error) => assert_eq!(error, ApiError::ParametroInvalido),
    }
    if let Some(id) = EventId::parse(&text) {
        assert_eq!(id.to_string(), text, "an id has one spelling");
    }
    if let Some(consumer) = Consumer::parse(&text) {
        assert_eq!(consumer.as_str(), text);
    }
    match parse_position(data) {
        Ok(id) => assert!(id.to_string().len() <= 20),
        Err(error) => assert!(
            matches!(error, ApiError::JsonInvalido | ApiError::ParametroInvalido),
            "{error:?}"
        ),
    }
});
