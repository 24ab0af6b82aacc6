//! The query strings of `GET /movimientos/{usuario}` and `GET /eventos`
//! (SPEC section 9): each parameter once at most, each value strict. Names
//! this route does not know are ignored, as every route ignores its query
//! string otherwise. No value needs percent-encoding (digits, or a consumer
//! name of letters, digits, `.`, `_`, `-`), so none is decoded: a `%` in a
//! value makes it invalid.

use std::time::Duration;

use super::ApiError;
use crate::seam::{Consumer, EVENTS_PAGE_MAX, EventId, HISTORY_PAGE_MAX, parse_decimal};

/// A history page when `limite` is absent.
pub const HISTORY_PAGE_DEFAULT: usize = 20;

/// A feed page when `limite` is absent.
pub const EVENTS_PAGE_DEFAULT: usize = 100;

/// The longest `espera`.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// The most bytes of a query string looked at: longer is refused.
const QUERY_BYTES_MAX: usize = 1024;

/// `GET /movimientos/{usuario}?limite=&antes=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// 1 ..= [`HISTORY_PAGE_MAX`].
    pub limit: usize,
    /// Only movements older than this one.
    pub before: Option<EventId>,
}

/// `GET /eventos?despues=&limite=&espera=&consumidor=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// 1 ..= [`EVENTS_PAGE_MAX`].
    pub limit: usize,
    /// Where to start.
    pub start: Start,
    /// How long a page may wait for its first event, ≤ [`WAIT_MAX`].
    pub wait: Duration,
}

/// Where a feed read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// From the oldest event kept.
    Oldest,
    /// After this event.
    After(EventId),
    /// After a named consumer's stored position (the oldest kept if none).
    Consumer(Consumer),
}

impl HistoryQuery {
    /// Parses the query string (`None`: there was none).
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut parsed = Self {
            limit: HISTORY_PAGE_DEFAULT,
            before: None,
        };
        let mut seen = Seen::default();
        for (name, value) in pairs(query)? {
            match name {
                "limite" => {
                    seen.first(0)?;
                    parsed.limit = parse_limit(value, HISTORY_PAGE_MAX)?;
                }
                "antes" => {
                    seen.first(1)?;
                    parsed.before = Some(parse_id(value)?);
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

impl EventsQuery {
    /// Parses the query string (`None`: there was none).
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut parsed = Self {
            limit: EVENTS_PAGE_DEFAULT,
            start: Start::Oldest,
            wait: Duration::ZERO,
        };
        let mut seen = Seen::default();
        for (name, value) in pairs(query)? {
            match name {
                "limite" => {
                    seen.first(0)?;
                    parsed.limit = parse_limit(value, EVENTS_PAGE_MAX)?;
                }
                "despues" | "consumidor" => {
                    // One start: `despues` or `consumidor`, never both.
                    seen.first(1)?;
                    parsed.start = match name {
                        "despues" => Start::After(parse_id(value)?),
                        _ => Start::Consumer(parse_consumer(value)?),
                    };
                }
                "espera" => {
                    seen.first(2)?;
                    parsed.wait = parse_wait(value)?;
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// An event id as a client sends it (query, `Last-Event-ID`, a body).
pub fn parse_id(value: &str) -> Result<EventId, ApiError> {
    EventId::parse(value).ok_or(ApiError::ParametroInvalido)
}

/// A consumer's name as a client sends it.
pub fn parse_consumer(value: &str) -> Result<Consumer, ApiError> {
    Consumer::parse(value).ok_or(ApiError::ParametroInvalido)
}

/// Which parameters were given, so a repeated one is refused.
#[derive(Default)]
struct Seen(u8);

impl Seen {
    fn first(&mut self, bit: u8) -> Result<(), ApiError> {
        let mask = 1 << bit;
        if self.0 & mask != 0 {
            return Err(ApiError::ParametroInvalido);
        }
        self.0 |= mask;
        Ok(())
    }
}

/// The `name=value` pairs; a pair without `=` has an empty value.
fn pairs(query: Option<&str>) -> Result<impl Iterator<Item = (&str, &str)>, ApiError> {
    let query = query.unwrap_or_default();
    if query.len() > QUERY_BYTES_MAX {
        return Err(ApiError::ParametroInvalido);
    }
    Ok(query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, ""))))
}

/// A page size in `1..=max`.
fn parse_limit(value: &str, max: usize) -> Result<usize, ApiError> {
    parse_decimal(value)
        .and_then(|limit| usize::try_from(limit).ok())
        .filter(|limit| (1..=max).contains(limit))
        .ok_or(ApiError::ParametroInvalido)
}

/// Whole seconds, 0 ..= 30.
fn parse_wait(value: &str) -> Result<Duration, ApiError> {
    parse_decimal(value)
        .map(Duration::from_secs)
        .filter(|wait| *wait <= WAIT_MAX)
        .ok_or(ApiError::ParametroInvalido)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_queries() {
        let parsed = HistoryQuery::parse(None).unwrap();
        assert_eq!((parsed.limit, parsed.before), (20, None));
        let parsed = HistoryQuery::parse(Some("limite=100&antes=42&x=%zz")).unwrap();
        assert_eq!((parsed.limit, parsed.before), (100, Some(EventId(42))));
        for bad in [
            "limite=0",
            "limite=101",
            "limite=",
            "limite=01",
            "limite=-1",
            "limite=1.5",
            "limite=1&limite=2",
            "antes=",
            "antes=abc",
            "antes=01",
            "antes=18446744073709551616",
            "antes",
        ] {
            assert_eq!(
                HistoryQuery::parse(Some(bad)),
                Err(ApiError::ParametroInvalido),
                "{bad}"
            );
        }
        let long = format!("x={}", "a".repeat(QUERY_BYTES_MAX));
        assert!(HistoryQuery::parse(Some(&long)).is_err());
    }

    #[test]
    fn events_queries() {
        let parsed = EventsQuery::parse(Some("despues=7&limite=1000&espera=30")).unwrap();
        assert_eq!(parsed.start, Start::After(EventId(7)));
        assert_eq!((parsed.limit, parsed.wait), (1000, WAIT_MAX));
        let parsed = EventsQuery::parse(Some("consumidor=notificaciones")).unwrap();
        assert_eq!(
            parsed.start,
            Start::Consumer(Consumer::parse("notificaciones").unwrap())
        );
        assert_eq!(EventsQuery::parse(None).unwrap().start, Start::Oldest);
        for bad in [
            "limite=1001",
            "espera=31",
            "espera=-1",
            "espera=1.5",
            "espera=00",
            "despues=1&consumidor=a",
            "consumidor=a%20b",
            "consumidor=",
            "despues=x",
            "espera=1&espera=1",
        ] {
            assert_eq!(
                EventsQuery::parse(Some(bad)),
                Err(ApiError::ParametroInvalido),
                "{bad}"
            );
        }
    }
}
