//! The feed read back from the segments (SPEC section 9): every synced
//! debit record is an event and its record number is its id, so the feed is
//! gapless, durable and in commit order by construction. Memory holds only
//! the newest events ([`crate::feed`]); a reader behind them, or resuming
//! after a restart, is served from here, for as long as the segments are
//! kept (`--events-retention` beyond what snapshots need).
//!
//! Reads never go past the last synced record (`through`), never touch a
//! file but by reading it, and hold at most one segment's bytes in memory
//! (the last one read, so a consumer catching up reads each segment once).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::data_dir::{DataDir, FileKind};
use super::record::{HEADER_BYTES as RECORD_HEADER_BYTES, PAYLOAD_BYTES_MAX};
use super::{Record, batch};
use crate::feed::Feed;
use crate::ledger::Outcome;
use crate::seam::{Event, EventId, FeedError, Movement};

/// A segment's first record: its number and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHead {
    /// The first record's number.
    pub first_record: u64,
    /// The first record's time, in ms since the Unix epoch.
    pub time_ms: u64,
}

/// The head of segment `index`; `None` while it holds no batch yet.
pub fn segment_head(dir: &DataDir, index: u64) -> io::Result<Option<SegmentHead>> {
    let len = batch::HEADER_BYTES + RECORD_HEADER_BYTES + PAYLOAD_BYTES_MAX;
    let prefix = dir.read_segment_prefix(index, len)?;
    let Some(first_record) = batch::first_record_of(&prefix) else {
        return Ok(None);
    };
    let Ok((record, _)) = Record::decode(&prefix[batch::HEADER_BYTES..]) else {
        return Ok(None);
    };
    Ok(Some(SegmentHead {
        first_record,
        time_ms: record.time_ms,
    }))
}

/// The journal's feed: the newest synced debits from memory, the rest from
/// the segments.
pub struct Events {
    feed: Arc<Feed>,
    segments: SegmentEvents,
    /// The number of the last synced record (the writer's).
    durable_through: Arc<AtomicU64>,
}

impl Events {
    /// The feed over `feed` (memory) and `segments`.
    pub fn new(feed: Arc<Feed>, segments: SegmentEvents, durable_through: Arc<AtomicU64>) -> Self {
        Self {
            feed,
            segments,
            durable_through,
        }
    }

    /// The newest synced debits, in memory.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// At most `limit` synced debits after `after`, when memory holds every
    /// one of them (never blocks).
    pub fn from_memory(&self, after: Option<EventId>, limit: usize) -> Option<Vec<Event>> {
        after.and_then(|after| self.feed.read(Some(after), limit).ok())
    }

    /// At most `limit` synced debits after `after` (from the oldest kept
    /// when `None`), from the segments (blocking: reads files).
    pub fn from_segments(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Event>, FeedError> {
        let through = self.durable_through.load(Ordering::Acquire);
        self.segments.read(after, limit, through)
    }
}

/// Reads events from the data directory's segments.
pub struct SegmentEvents {
    dir: Arc<DataDir>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each listed segment's first record number (it never changes).
    first_records: BTreeMap<u64, u64>,
    /// The segment read last.
    cached: Option<Cached>,
}

/// A segment's bytes as read, and where the last read stopped in them.
struct Cached {
    index: u64,
    bytes: Vec<u8>,
    /// The number of the record at `resume_offset` (a batch's start).
    resume_record: u64,
    resume_offset: usize,
}

impl SegmentEvents {
    /// A reader of `dir`'s segments.
    pub fn new(dir: Arc<DataDir>) -> Self {
        Self {
            dir,
            state: Mutex::default(),
        }
    }

    /// At most `limit` events after `after` (from the oldest kept when
    /// `None`), none after record `through`. Blocking: reads files.
    pub fn read(
        &self,
        after: Option<EventId>,
        limit: usize,
        through: u64,
    ) -> Result<Vec<Event>, FeedError> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let segments = self.heads(&mut state).map_err(unavailable)?;
        let Some((&oldest_index, &oldest_first)) = segments.first_key_value() else {
            return Ok(Vec::new());
        };
        let after = after.map_or(oldest_first - 1, |after| after.0);
        if after + 1 < oldest_first {
            return Err(FeedError::Expired);
        }
        let start = segments
            .iter()
            .take_while(|(_, first)| **first <= after + 1)
            .last()
            .map_or(oldest_index, |(index, _)| *index);
        let mut events = Vec::new();
        for (&index, &first_record) in segments.range(start..) {
            if first_record > through || events.len() == limit {
                break;
            }
            // The segment's records run up to the next one's first (or, for
            // the last, up to the last synced record).
            let next_first = segments.range(index + 1..).next().map(|(_, first)| *first);
            let wanted = Wanted {
                after,
                limit,
                through: next_first.map_or(through, |next| through.min(next - 1)),
            };
            self.read_segment(&mut state, index, wanted, &mut events)
                .map_err(unavailable)?;
        }
        Ok(events)
    }

    /// The first record of every segment holding a batch.
    fn heads(&self, state: &mut State) -> io::Result<BTreeMap<u64, u64>> {
        let listed = self.dir.segments()?;
        state
            .first_records
            .retain(|index, _| listed.contains(index));
        for index in listed {
            if state.first_records.contains_key(&index) {
                continue;
            }
            match segment_head(&self.dir, index) {
                Ok(Some(head)) => {
                    state.first_records.insert(index, head.first_record);
                }
                Ok(None) => {}
                // Removed since it was listed: a snapshot covered it.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(state.first_records.clone())
    }

    /// Appends the events of segment `index` that `wanted` asks for: every
    /// one up to `wanted.through`, or an error, never a gap.
    fn read_segment(
        &self,
        state: &mut State,
        index: u64,
        wanted: Wanted,
        events: &mut Vec<Event>,
    ) -> io::Result<()> {
        let mut cached = match state.cached.take() {
            Some(cached) if cached.index == index => cached,
            _ => self.load(index)?,
        };
        let mut reached = scan(&mut cached, wanted, events);
        let is_short = |reached: u64, events: &Vec<Event>| {
            reached < wanted.through && events.len() < wanted.limit
        };
        // A copy read while the segment was still appended to (the writer
        // has gone on since) holds less than the segment: read it again.
        if is_short(reached, events) {
            cached.bytes = self.load(index)?.bytes;
            let rest = Wanted {
                after: reached,
                ..wanted
            };
            reached = scan(&mut cached, rest, events);
        }
        if is_short(reached, events) {
            return Err(io::Error::other(format!(
                "segment {index} ends at record {reached}, before record {}",
                wanted.through
            )));
        }
        state.cached = Some(cached);
        Ok(())
    }

    fn load(&self, index: u64) -> io::Result<Cached> {
        let bytes = self
            .dir
            .read(FileKind::Segment, index)
            .map_err(io::Error::other)?;
        Ok(Cached {
            index,
            bytes,
            resume_record: 0,
            resume_offset: 0,
        })
    }
}

/// What a read asks of a segment.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    /// Only records numbered after this one.
    after: u64,
    /// Until this many events are gathered in all.
    limit: usize,
    /// None numbered after this one: the last synced record.
    through: u64,
}

/// Appends the debits of `cached` that `wanted` asks for; returns the last
/// record number looked at (`wanted.after` when none) and keeps, in
/// `cached`, the batch to start from next time.
fn scan(cached: &mut Cached, wanted: Wanted, events: &mut Vec<Event>) -> u64 {
    let mut offset = 0;
    if cached.resume_record != 0 && cached.resume_record <= wanted.after + 1 {
        offset = cached.resume_offset;
    }
    let mut reached = wanted.after;
    while events.len() < wanted.limit {
        // A short or damaged batch is the unsynced end of the last segment:
        // nothing at most `through` lies there.
        let Ok(frame) = batch::decode(&cached.bytes[offset..]) else {
            break;
        };
        cached.resume_record = frame.first_record;
        cached.resume_offset = offset;
        let mut at = 0;
        for number in frame.first_record..frame.next_record() {
            let Ok((record, len)) = Record::decode(&frame.records[at..]) else {
                return reached;
            };
            at += len;
            if number > wanted.through {
                return reached;
            }
            reached = number;
            if number > wanted.after
                && let Outcome::Debited { nuevo_saldo } = record.outcome
            {
                events.push(event_of(&record, number, nuevo_saldo));
                if events.len() == wanted.limit {
                    return reached;
                }
            }
        }
        offset += frame.bytes();
    }
    reached
}

/// A synced debit record as the feed shows it.
pub fn event_of(record: &Record, number: u64, nuevo_saldo: u64) -> Event {
    Event {
        movement: Movement {
            id: EventId(number),
            kind: record.kind,
            monto: record.monto,
            saldo: nuevo_saldo,
            time_ms: record.time_ms,
        },
        usuario: record.usuario,
        principal: record.principal.clone(),
    }
}

fn unavailable(error: impl std::fmt::Display) -> FeedError {
    tracing::error!(%error, "cannot read events from the journal's segments");
    FeedError::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::medium::{Medium, PowerCut};
    use crate::ledger::DebitKind;
    use crate::usuario::Usuario;

    /// One batch of debits numbered from `first` (each leaves `saldo` 1).
    fn batch_of(first: u64, count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let start = batch::start(&mut out);
        for _ in 0..count {
            let record = Record {
                kind: DebitKind::Retiro,
                usuario: Usuario::new("a").unwrap(),
                monto: 1,
                outcome: Outcome::Debited { nuevo_saldo: 1 },
                time_ms: 0,
                principal: None,
                key: None,
            };
            record.encode(&mut out);
        }
        batch::finish(&mut out, start, first, count as u32);
        out
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events.iter().map(|event| event.movement.id.0).collect()
    }

    // A segment read while it was the last one (so the reader cached a copy
    // of it) and appended to afterwards, then followed by a new segment:
    // the next read must list the records appended meanwhile, not skip from
    // the copy's end to the next segment.
    #[test]
    fn a_segment_read_while_appended_to_is_read_again() {
        let medium = PowerCut::new();
        let dir =
            Arc::new(DataDir::open(Arc::new(medium.clone()), std::path::Path::new("/d")).unwrap());
        let mut first = medium.create(&FileKind::Segment.name(1)).unwrap();
        first.append(&batch_of(1, 2)).unwrap();
        let reader = SegmentEvents::new(dir);
        assert_eq!(ids(&reader.read(None, 100, 2).unwrap()), [1, 2]);
        first.append(&batch_of(3, 2)).unwrap();
        let mut second = medium.create(&FileKind::Segment.name(2)).unwrap();
        second.append(&batch_of(5, 1)).unwrap();
        let after = Some(EventId(2));
        assert_eq!(ids(&reader.read(after, 100, 5).unwrap()), [3, 4, 5]);
        assert_eq!(ids(&reader.read(Some(EventId(3)), 1, 5).unwrap()), [4]);
    }
}
