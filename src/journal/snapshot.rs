//! Snapshots: every stored balance and every live idempotency key, so a
//! restart replays only the segments after it. `snapshot-K.snap` holds at
//! least the state after every segment before K, whose first record is
//! `next_record`.
//!
//! ```text
//! snapshot = "SALDOSNP" version:u8 covers:u64le next_record:u64le entry* end
//! entry    = 0x01 usuario_len:u8 usuario saldo:u64le last_record:u64le
//!               moved:u16le (id:u64le time_ms:u64le monto_kind:u64le)*moved
//!          | 0x02 record                     (a remembered key, record.rs)
//! end      = 0xFF accounts:u64le keys:u64le crc32c(everything before):u32le
//! ```
//!
//! Written while the writer goes on (a consistent cut without stopping
//! commits): one ledger shard at a time, copied into a buffer a chunk of at
//! most [`HOLD_BUCKETS_MAX`] buckets per hold of its lock, then appended to
//! the file. Each account is copied whole under the lock; accounts are copied
//! at different moments, so one may be seen with debits from after the cut; it
//! carries the number of the last record applied to it (`last_record`), and
//! recovery replays a record over an account only when the account does not
//! hold it yet. The snapshot starts after every record before the cut was
//! applied, so every account such a record touched is stored by then, and
//! chunks see each of those exactly once (`ledger::ShardCursor`); an account
//! first stored after the start has records only from the cut on, so
//! recovery rebuilds it from the segments whether the snapshot holds it or
//! not. Keys are written a shard per lock hold; replaying a settled key again
//! is harmless. Memory beyond the ledger: one shard's encoding at a time.
//!
//! Version 3 added each account's kept movements (`moved`, oldest first,
//! each as `ledger::Stamp` packs it); version 2 snapshots load with none.

use std::io;
use std::ops::ControlFlow;
use std::time::Duration;

use super::data_dir::{DataDir, FileKind};
use super::events::segment_head;
use super::medium::MediumFile;
use super::{Error, Record};
use crate::clock;
use crate::idempotency::Table;
use crate::ledger::{
    Chunk, HISTORY_PER_ACCOUNT_MAX, Ledger, ReplayError, SALDO_MAX, ShardCursor, Stamp, Stored,
};
use crate::usuario::Usuario;

const MAGIC: &[u8; 8] = b"SALDOSNP";
const VERSION: u8 = 3;
/// The version before movements were kept: read, never written.
const VERSION_WITHOUT_HISTORY: u8 = 2;
/// Bytes of one kept movement.
const STAMP_BYTES: usize = 24;
const HEADER_BYTES: usize = MAGIC.len() + 1 + 8 + 8;
const ACCOUNT: u8 = 0x01;
const KEY: u8 = 0x02;
const END: u8 = 0xFF;
const END_BYTES: usize = 1 + 8 + 8 + 4;
/// Record numbers stay far from `u64::MAX` (2^62 records is centuries at any
/// rate): a snapshot claiming more is not one the writer wrote.
const NEXT_RECORD_MAX: u64 = super::batch::FIRST_RECORD_MAX;
/// The most ledger buckets one lock hold visits: a few hundred accounts,
/// copied in about 10 µs, so a debit of the shard being copied waits that
/// long at most (the whole shard under one hold was milliseconds).
const HOLD_BUCKETS_MAX: usize = 512;
/// A lock hold ends after the account that brings its copy to this many
/// bytes: accounts with long histories (24 KB each at most) are copied a few
/// per hold.
const HOLD_BYTES_MAX: usize = 64 << 10;

/// Where a snapshot cuts the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The first segment it does not cover.
    pub covers: u64,
    /// The first record of that segment.
    pub next_record: u64,
}

/// Appends to the snapshot file while keeping the running checksum.
struct Out<'a> {
    file: &'a mut dyn MediumFile,
    crc: u32,
    bytes: u64,
}

impl Out<'_> {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.bytes += bytes.len() as u64;
        self.file.append(bytes)
    }
}

/// Writes snapshot `cut.covers` durably, then removes the snapshots it
/// replaces and the segments it covers whose records are all older than
/// `events_retention` (the feed reads the younger ones); returns its size in
/// bytes.
pub fn write(
    dir: &DataDir,
    cut: Cut,
    ledger: &Ledger,
    keys: &Table,
    events_retention: Duration,
) -> io::Result<u64> {
    let mut size = 0;
    dir.write_snapshot(cut.covers, |file| {
        let mut out = Out {
            file,
            crc: 0,
            bytes: 0,
        };
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.extend_from_slice(&cut.covers.to_le_bytes());
        header.extend_from_slice(&cut.next_record.to_le_bytes());
        out.append(&header)?;
        let (accounts, keys) = write_entries(&mut out, ledger, keys)?;
        let mut end = Vec::with_capacity(END_BYTES);
        end.push(END);
        end.extend_from_slice(&accounts.to_le_bytes());
        end.extend_from_slice(&keys.to_le_bytes());
        out.append(&end)?;
        let crc = out.crc.to_le_bytes();
        out.append(&crc)?;
        size = out.bytes;
        Ok(())
    })?;
    let retention_ms = u64::try_from(events_retention.as_millis()).unwrap_or(u64::MAX);
    let events_since_ms = clock::unix_ms().saturating_sub(retention_ms);
    let segments_kept_from = first_segment_kept(dir, cut.covers, events_since_ms)?;
    dir.remove_before(cut.covers, segments_kept_from)?;
    Ok(size)
}

/// The first segment before `covers` the feed still needs: a segment's
/// records are all older than the next segment's first, so segment `n` may
/// go once segment `n + 1` began at or before `events_since_ms` (and not
/// while `n + 1` holds no record yet).
fn first_segment_kept(dir: &DataDir, covers: u64, events_since_ms: u64) -> io::Result<u64> {
    let segments = dir.segments()?;
    for pair in segments.windows(2).filter(|pair| pair[0] < covers) {
        let next_began = segment_head(dir, pair[1])?.map_or(u64::MAX, |head| head.time_ms);
        if next_began > events_since_ms {
            return Ok(pair[0]);
        }
    }
    Ok(covers)
}

/// Every account, then every live key, one shard at a time.
fn write_entries(out: &mut Out<'_>, ledger: &Ledger, keys: &Table) -> io::Result<(u64, u64)> {
    let mut buffer = Vec::new();
    let mut accounts = 0u64;
    for shard in 0..ledger.shard_count() {
        accounts += encode_shard(ledger, shard, &mut buffer);
        out.append(&buffer)?;
    }
    let now_ms = clock::unix_ms();
    let mut key_count = 0u64;
    for shard in 0..keys.shard_count() {
        buffer.clear();
        keys.for_each_remembered_in_shard(shard, now_ms, |key, remembered| {
            buffer.push(KEY);
            Record::from_remembered(key, remembered).encode(&mut buffer);
            key_count += 1;
        });
        out.append(&buffer)?;
    }
    Ok((accounts, key_count))
}

/// Encodes every account of ledger shard `shard` into `buffer` (cleared
/// first), a chunk per lock hold; returns how many.
fn encode_shard(ledger: &Ledger, shard: usize, buffer: &mut Vec<u8>) -> u64 {
    buffer.clear();
    let mut accounts = 0;
    let mut cursor = ShardCursor::new(shard);
    loop {
        let chunk_start = buffer.len();
        let chunk = ledger.visit_chunk(&mut cursor, HOLD_BUCKETS_MAX, |stored| {
            encode_account(buffer, stored);
            accounts += 1;
            if buffer.len() - chunk_start >= HOLD_BYTES_MAX {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        match chunk {
            Chunk::More => {}
            Chunk::Done => return accounts,
            // The shard grew and its accounts moved: this shard's copy
            // starts over.
            Chunk::Moved => {
                buffer.clear();
                accounts = 0;
            }
        }
    }
}

fn encode_account(buffer: &mut Vec<u8>, stored: Stored<'_>) {
    buffer.push(ACCOUNT);
    buffer.push(stored.usuario.len() as u8);
    buffer.extend_from_slice(stored.usuario.as_bytes());
    buffer.extend_from_slice(&stored.saldo.to_le_bytes());
    buffer.extend_from_slice(&stored.last_record.to_le_bytes());
    let moved = stored.history.map_or(0, |history| history.len());
    buffer.extend_from_slice(&(moved as u16).to_le_bytes());
    for stamp in stored.history.into_iter().flatten() {
        for word in stamp.words() {
            buffer.extend_from_slice(&word.to_le_bytes());
        }
    }
}

/// What a snapshot hands to recovery, in file order.
pub trait Restore {
    /// An account with its balance, its last applied record and its kept
    /// movements, oldest first.
    fn account(
        &mut self,
        usuario: &Usuario,
        saldo: u64,
        last_record: u64,
        history: &[Stamp],
    ) -> Result<(), ReplayError>;
    /// A remembered key, as the record that settled it.
    fn key(&mut self, record: &Record);
}

/// A loaded snapshot: its cut, and the newest record any account holds,
/// which the journal after the cut must reach (else the snapshot holds debits
/// the segments lack: it does not match them).
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    /// Where the snapshot cuts the journal.
    pub cut: Cut,
    /// The highest `last_record` of an account, and the offset of its entry.
    pub last_record_max: (u64, u64),
}

/// Why a snapshot did not load.
enum Refusal {
    /// Damage at an offset.
    Damage(usize, &'static str),
    /// `restore` refused the entry at an offset.
    Restore(usize, ReplayError),
}

impl From<(usize, &'static str)> for Refusal {
    fn from((offset, reason): (usize, &'static str)) -> Self {
        Self::Damage(offset, reason)
    }
}

/// Reads and checks a snapshot and hands each account and key to `restore`
/// (nothing is handed over unless the whole file's checksum holds). Any
/// damage names the file and offset.
pub fn load(dir: &DataDir, index: u64, restore: &mut impl Restore) -> Result<Loaded, Error> {
    let bytes = dir.read(FileKind::Snapshot, index)?;
    parse(&bytes, index, restore).map_err(|refusal| match refusal {
        Refusal::Damage(offset, reason) => Error::Corrupt {
            path: dir.path_of(FileKind::Snapshot, index),
            offset: offset as u64,
            reason: reason.to_owned(),
        },
        Refusal::Restore(offset, error) => {
            Error::replay(dir.path_of(FileKind::Snapshot, index), offset as u64, error)
        }
    })
}

fn parse(bytes: &[u8], index: u64, restore: &mut impl Restore) -> Result<Loaded, Refusal> {
    if bytes.len() < HEADER_BYTES + END_BYTES {
        return Err((0, "snapshot too short").into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err((body.len(), "snapshot checksum mismatch").into());
    }
    let version = body[MAGIC.len()];
    if &body[..MAGIC.len()] != MAGIC || !(VERSION_WITHOUT_HISTORY..=VERSION).contains(&version) {
        return Err((0, "not a snapshot of this format version").into());
    }
    let mut reader = Reader {
        bytes: body,
        at: MAGIC.len() + 1,
    };
    let cut = Cut {
        covers: reader.u64()?,
        next_record: reader.u64()?,
    };
    if cut.covers != index {
        return Err((
            MAGIC.len() + 1,
            "snapshot covers other segments than its name says",
        )
            .into());
    }
    if cut.next_record == 0 || cut.next_record > NEXT_RECORD_MAX {
        return Err((MAGIC.len() + 9, "snapshot record numbering out of range").into());
    }
    let (mut accounts, mut keys) = (0u64, 0u64);
    let mut last_record_max = (0, 0);
    let mut history = Vec::new();
    loop {
        let entry_at = reader.at;
        match reader.u8()? {
            ACCOUNT => {
                let len = usize::from(reader.u8()?);
                let usuario = std::str::from_utf8(reader.take(len)?)
                    .ok()
                    .and_then(|name| Usuario::new(name).ok())
                    .ok_or((entry_at, "invalid account name"))?;
                let saldo = reader.u64()?;
                let last_record = reader.u64()?;
                if saldo > SALDO_MAX {
                    return Err((entry_at, "balance out of range").into());
                }
                if last_record > last_record_max.0 {
                    last_record_max = (last_record, entry_at as u64);
                }
                history.clear();
                if version > VERSION_WITHOUT_HISTORY {
                    read_history(&mut reader, last_record, &mut history)?;
                }
                restore
                    .account(&usuario, saldo, last_record, &history)
                    .map_err(|error| Refusal::Restore(entry_at, error))?;
                accounts += 1;
            }
            KEY => {
                let (record, len) = Record::decode(&reader.bytes[reader.at..])
                    .map_err(|_| (reader.at, "invalid key record"))?;
                reader.at += len;
                restore.key(&record);
                keys += 1;
            }
            END => break,
            _ => return Err((entry_at, "unknown snapshot entry").into()),
        }
    }
    let counts_at = reader.at;
    if reader.u64()? != accounts || reader.u64()? != keys {
        return Err((counts_at, "snapshot entry counts do not match").into());
    }
    if reader.at != body.len() {
        return Err((reader.at, "trailing bytes in snapshot").into());
    }
    Ok(Loaded {
        cut,
        last_record_max,
    })
}

/// An account's kept movements: at most [`HISTORY_PER_ACCOUNT_MAX`], ids
/// increasing up to the account's `last_record`, amounts in range.
fn read_history(
    reader: &mut Reader<'_>,
    last_record: u64,
    history: &mut Vec<Stamp>,
) -> Result<(), (usize, &'static str)> {
    let at = reader.at;
    let moved = usize::from(u16::from_le_bytes(
        reader.take(2)?.try_into().expect("two bytes"),
    ));
    if moved > HISTORY_PER_ACCOUNT_MAX {
        return Err((at, "too many movements kept"));
    }
    let mut previous = 0;
    for _ in 0..moved {
        let at = reader.at;
        let bytes = reader.take(STAMP_BYTES)?;
        let word = |n: usize| u64::from_le_bytes(bytes[n * 8..n * 8 + 8].try_into().expect("8"));
        let stamp = Stamp::from_words([word(0), word(1), word(2)])
            .filter(|stamp| stamp.id() > previous && stamp.id() <= last_record)
            .ok_or((at, "kept movement out of range"))?;
        previous = stamp.id();
        history.push(stamp);
    }
    Ok(())
}

/// Reads fields off a checksummed snapshot body.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], (usize, &'static str)> {
        let taken = self
            .bytes
            .get(self.at..self.at + len)
            .ok_or((self.at, "snapshot ends inside an entry"))?;
        self.at += len;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, (usize, &'static str)> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, (usize, &'static str)> {
        let mut word = [0; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }
}
