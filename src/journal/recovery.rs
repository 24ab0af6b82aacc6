//! Recovery: from what a data directory holds back to the ledger and the key
//! table it acknowledged, and the tail where the writer goes on.
//!
//! The newest snapshot is loaded, then every segment from the one it names,
//! in index order, batch by batch. Checked on the way, each refusing the start
//! with file and offset: segments numbered without gaps from the snapshot's
//! (or from 1), batches numbered without gaps across them, every record
//! agreeing with the balances. Only the final batch of the last segment may
//! be damaged (its write was cut by the crash, never acknowledged): it is
//! dropped, and the segment cut back durably before anything is appended.
//! After a segment's last batch there may be zeros (room the writer wrote
//! ahead, see `writer`); any other byte there is damage, except in the last
//! segment, where it is the torn final batch.

use super::batch;
use super::data_dir::{DataDir, FileKind, Files, Fixed};
use super::snapshot::{self, Cut, Restore};
use super::writer::Tail;
use super::{DecodeError, Error, Record};
use crate::clock;
use crate::idempotency::{Scoped, Table};
use crate::ledger::{Ledger, Outcome, ReplayError, Stamp};
use crate::principal::Kind;
use crate::usuario::Usuario;

/// What recovery found and did.
pub struct Recovered {
    /// Where the writer appends next.
    pub tail: Tail,
    /// Records replayed from segments.
    pub records_replayed: u64,
    /// The snapshot loaded, by index, if any.
    pub snapshot: Option<u64>,
    /// Bytes of a torn final batch dropped from the last segment.
    pub torn_bytes: u64,
}

/// Restores the ledger (arriving seeded) and the keys from the directory.
pub fn recover(
    dir: &DataDir,
    fixed: Fixed<'_>,
    ledger: &Ledger,
    keys: &Table,
) -> Result<Recovered, Error> {
    let files = dir.list()?;
    let has_data = !files.segments.is_empty() || !files.snapshots.is_empty();
    dir.check_meta(fixed, has_data)?;
    let mut restorer = Restorer {
        ledger,
        keys,
        now_ms: clock::unix_ms(),
    };
    let snapshot = files.snapshots.last().copied();
    let (cut, last_record_max) = match snapshot {
        Some(index) => {
            let loaded = snapshot::load(dir, index, &mut restorer)?;
            (loaded.cut, Some(loaded.last_record_max))
        }
        None => (
            Cut {
                covers: 1,
                next_record: 1,
            },
            None,
        ),
    };
    let mut segments = segments_after(dir, &files, cut, snapshot.is_some())?;
    // Empty segments at the end (a rotation whose directory sync failed, or
    // a cut right after one) hold nothing: the journal's final batch is the
    // last one of the last segment with bytes, where the writer goes on.
    while let [_, .., last] = segments[..] {
        if !dir.is_segment_empty(last)? {
            break;
        }
        dir.remove_empty_segment(last)?;
        segments.pop();
    }
    let mut next_record = cut.next_record;
    let mut records_replayed = 0;
    let mut end = None;
    for (position, index) in segments.iter().enumerate() {
        let is_last = position + 1 == segments.len();
        let replayed = replay_segment(dir, *index, is_last, next_record, &mut restorer)?;
        records_replayed += replayed.next_record - next_record;
        next_record = replayed.next_record;
        end = Some((*index, replayed));
    }
    if let (Some(index), Some((record, offset))) = (snapshot, last_record_max)
        && record >= next_record
    {
        return Err(Error::Corrupt {
            path: dir.path_of(FileKind::Snapshot, index),
            offset,
            reason: format!(
                "the snapshot holds record {record} but the journal ends before it: it does not match its segments"
            ),
        });
    }
    let (tail, torn_bytes) = match end {
        Some((index, replayed)) => {
            let (segment, file_bytes) =
                dir.open_segment(index, replayed.valid_bytes, replayed.torn_bytes > 0)?;
            let tail = Tail {
                segment,
                segment_index: index,
                segment_bytes: replayed.valid_bytes,
                segment_file_bytes: file_bytes,
                next_record,
            };
            (tail, replayed.torn_bytes)
        }
        None => {
            let segment = dir.create_segment(cut.covers).map_err(|source| Error::Io {
                path: dir.path_of(FileKind::Segment, cut.covers),
                source,
            })?;
            let tail = Tail {
                segment,
                segment_index: cut.covers,
                segment_bytes: 0,
                segment_file_bytes: 0,
                next_record,
            };
            (tail, 0)
        }
    };
    Ok(Recovered {
        tail,
        records_replayed,
        snapshot,
        torn_bytes,
    })
}

/// The segments to replay: from the cut's, numbered without gaps. A snapshot
/// always has its first segment (created before the snapshot was written).
fn segments_after(
    dir: &DataDir,
    files: &Files,
    cut: Cut,
    has_snapshot: bool,
) -> Result<Vec<u64>, Error> {
    let segments: Vec<u64> = files
        .segments
        .iter()
        .copied()
        .filter(|index| *index >= cut.covers)
        .collect();
    let missing = |index: u64, why: &str| Error::Corrupt {
        path: dir.path_of(FileKind::Segment, index),
        offset: 0,
        reason: format!("segment missing: {why}"),
    };
    match segments.first() {
        None if has_snapshot => {
            return Err(missing(cut.covers, "the newest snapshot continues in it"));
        }
        None if !files.segments.is_empty() => {
            return Err(missing(1, "later segments exist and no snapshot covers it"));
        }
        Some(first) if *first != cut.covers => {
            return Err(missing(cut.covers, "the journal must start with it"));
        }
        _ => {}
    }
    for pair in segments.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(missing(pair[0] + 1, "segments are numbered without gaps"));
        }
    }
    Ok(segments)
}

/// How a segment ended.
struct Replayed {
    /// Bytes of whole, valid batches.
    valid_bytes: u64,
    /// Bytes of a torn final batch after them (zeros of room not counted).
    torn_bytes: u64,
    /// The number the next record gets.
    next_record: u64,
}

/// Applies every batch of a segment, in order.
fn replay_segment(
    dir: &DataDir,
    index: u64,
    is_last: bool,
    mut next_record: u64,
    restorer: &mut Restorer<'_>,
) -> Result<Replayed, Error> {
    let bytes = dir.read(FileKind::Segment, index)?;
    let path = dir.path_of(FileKind::Segment, index);
    let corrupt = |offset: usize, reason: String| Error::Corrupt {
        path: path.clone(),
        offset: offset as u64,
        reason,
    };
    let mut at = 0;
    let mut torn_bytes = 0;
    while at < bytes.len() {
        let frame = match batch::decode(&bytes[at..]) {
            Ok(frame) => frame,
            Err(_) if is_room(&bytes[at..]) => break,
            Err(_) if is_last && is_torn_final_batch(&bytes[at..], next_record) => {
                torn_bytes = (bytes.len() - at) as u64;
                break;
            }
            Err(damage) => return Err(corrupt(at, damage.reason().into())),
        };
        if frame.first_record != next_record {
            return Err(corrupt(
                at,
                format!(
                    "batch starts at record {} where record {next_record} was expected: records are missing",
                    frame.first_record
                ),
            ));
        }
        let records_at = at + batch::HEADER_BYTES;
        replay_batch(frame.records, frame.record_count, next_record, restorer).map_err(
            |(offset, error)| match error {
                BatchError::Replay(error) => {
                    Error::replay(path.clone(), (records_at + offset) as u64, error)
                }
                BatchError::Record(reason) => corrupt(records_at + offset, reason.into()),
            },
        )?;
        next_record = frame.next_record();
        at += frame.bytes();
    }
    if torn_bytes > 0 {
        tracing::warn!(path = %path.display(), offset = at, torn_bytes, "dropping the torn final batch of the journal");
    }
    Ok(Replayed {
        valid_bytes: at as u64,
        torn_bytes,
        next_record,
    })
}

/// Zeros the writer wrote ahead of its end, never written over yet.
fn is_room(rest: &[u8]) -> bool {
    rest.iter().all(|byte| *byte == 0)
}

/// The final batch's write, cut by a crash: damaged, and no valid batch
/// header follows it (so nothing was appended, hence acknowledged, after it).
fn is_torn_final_batch(rest: &[u8], next_record: u64) -> bool {
    !batch::has_later_header(rest.get(1..).unwrap_or_default(), next_record)
}

/// Why a checksummed batch's records do not replay.
enum BatchError {
    Record(&'static str),
    Replay(ReplayError),
}

/// Applies the records of one checksummed batch; an error carries the offset
/// inside the batch's records.
fn replay_batch(
    mut records: &[u8],
    record_count: u32,
    first_record: u64,
    restorer: &mut Restorer<'_>,
) -> Result<(), (usize, BatchError)> {
    let total = records.len();
    for number in first_record..first_record + u64::from(record_count) {
        let offset = total - records.len();
        let (record, len) = Record::decode(records).map_err(|error| match error {
            DecodeError::Incomplete => (
                offset,
                BatchError::Record("record cut short inside its batch"),
            ),
            DecodeError::Corrupt(reason) => (offset, BatchError::Record(reason)),
        })?;
        restorer
            .replay(&record, number)
            .map_err(|error| (offset, BatchError::Replay(error)))?;
        records = &records[len..];
    }
    if !records.is_empty() {
        return Err((
            total - records.len(),
            BatchError::Record("bytes after the batch's last record"),
        ));
    }
    Ok(())
}

/// Applies what the snapshot and the segments hold.
struct Restorer<'a> {
    ledger: &'a Ledger,
    keys: &'a Table,
    now_ms: u64,
}

impl Restorer<'_> {
    fn replay(&mut self, record: &Record, number: u64) -> Result<(), ReplayError> {
        if let Outcome::Debited { nuevo_saldo } = record.outcome {
            let stamp = Stamp::new(number, record.kind, record.monto, record.time_ms);
            self.ledger.replay(&record.usuario, stamp, nuevo_saldo)?;
        }
        self.key(record);
        Ok(())
    }
}

impl Restore for Restorer<'_> {
    fn account(
        &mut self,
        usuario: &Usuario,
        saldo: u64,
        last_record: u64,
        history: &[Stamp],
    ) -> Result<(), ReplayError> {
        self.ledger
            .restore(usuario, saldo, last_record, history)
            .map_err(|_| ReplayError::TooManyAccounts {
                accounts_max: self.ledger.accounts_max(),
            })
    }

    /// Remembers the record's key. A principal without a kind (journal
    /// format 2) may have been either: its key is remembered for both, so a
    /// retry across the upgrade replays whichever kind its token now names,
    /// and is never debited twice.
    fn key(&mut self, record: &Record) {
        let Some((key, remembered)) = record.remembered() else {
            return;
        };
        if self.keys.is_expired(&remembered, self.now_ms) {
            return;
        }
        match key
            .principal
            .filter(|principal| principal.kind() == Kind::Unknown)
        {
            None => self.keys.finish(key, remembered),
            Some(kindless) => {
                for kind in Kind::KNOWN {
                    let principal = kindless.with_kind(kind);
                    let scoped = Scoped {
                        principal: Some(&principal),
                        key: key.key,
                    };
                    self.keys.finish(scoped, remembered);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
