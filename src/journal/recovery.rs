//! Opening a data directory: ownership, metadata, snapshot, replay, and the
//! writer thread.
//!
//! Layout of the data directory:
//! - `LOCK`: held (`flock`, which Linux maps to NFSv4 locks on EFS) by the
//!   owning process, which writes its PID into it.
//! - `saldos.meta`: format version, opening balance and seed, fixed at creation.
//! - `journal-<index>.log`: segments, appended in index order.
//! - `snapshot-<index>.snap`: the state after every segment before `index`.
//!
//! A torn record at the very end of the last segment (a write cut by a crash
//! before its `fdatasync`, never acknowledged) is dropped and the file
//! truncated there. Any other damage stops the start, naming file and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::writer::Writer;
use super::{DecodeError, Error, Faults, Journal, QUEUE_RECORDS_MAX, Record, Stats, snapshot};
use crate::clock;
use crate::idempotency::Table;
use crate::ledger::{self, Ledger, Outcome};
use crate::usuario::Usuario;

const LOCK_FILE: &str = "LOCK";
const META_FILE: &str = "saldos.meta";
const META_VERSION: &str = "saldos-data-dir 1";

/// The two kinds of numbered files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// `journal-<index>.log`.
    Segment,
    /// `snapshot-<index>.snap`.
    Snapshot,
}

impl FileKind {
    /// The file name for `index`.
    pub fn name(self, index: u64) -> String {
        match self {
            Self::Segment => format!("journal-{index:020}.log"),
            Self::Snapshot => format!("snapshot-{index:020}.snap"),
        }
    }

    fn parse(name: &str) -> Option<(Self, u64)> {
        let (kind, rest) = if let Some(rest) = name.strip_prefix("journal-") {
            (Self::Segment, rest.strip_suffix(".log")?)
        } else {
            (
                Self::Snapshot,
                name.strip_prefix("snapshot-")?.strip_suffix(".snap")?,
            )
        };
        rest.parse().ok().map(|index| (kind, index))
    }
}

/// What the data directory must hold, from the configuration.
pub struct Options<'a> {
    /// The data directory.
    pub dir: &'a Path,
    /// Opening balance of implicit accounts.
    pub opening_saldo: u64,
    /// Seeded accounts, as the ledger was seeded with them.
    pub seed: &'a [(Usuario, u64)],
    /// A segment this large is closed and snapshotted.
    pub segment_bytes_max: u64,
}

/// A journal ready to take records, and what recovery did.
pub struct Recovered {
    /// The running journal.
    pub journal: Journal,
    /// Records replayed from segments.
    pub records_replayed: u64,
    /// The snapshot loaded, by index, if any.
    pub snapshot: Option<u64>,
    /// Bytes of a torn tail dropped from the last segment.
    pub torn_bytes: u64,
    /// How long recovery took.
    pub elapsed: Duration,
}

/// Opens (or creates) the data directory, restores the ledger and the
/// idempotency table, and starts the writer. The ledger arrives seeded with
/// `options.seed` (which the metadata check proves is the directory's own);
/// the snapshot and the journal are applied over it.
pub fn open(
    options: &Options<'_>,
    ledger: Arc<Ledger>,
    keys: Arc<Table>,
) -> Result<Recovered, Error> {
    let started = Instant::now();
    let dir = options.dir;
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let lock = lock(dir)?;
    let files = list(dir).map_err(io_error(dir))?;
    check_meta(options, !files.is_empty())?;
    let snapshot_index = files
        .iter()
        .filter(|(kind, _)| *kind == FileKind::Snapshot)
        .map(|(_, index)| *index)
        .max();
    if let Some(index) = snapshot_index {
        restore_snapshot(&dir.join(FileKind::Snapshot.name(index)), &ledger, &keys)?;
    }
    let first_segment = snapshot_index.unwrap_or(1);
    let segments: Vec<u64> = files
        .iter()
        .filter(|(kind, index)| *kind == FileKind::Segment && *index >= first_segment)
        .map(|(_, index)| *index)
        .collect();
    let mut records_replayed = 0;
    let mut torn_bytes = 0;
    let mut tail = None;
    for (position, index) in segments.iter().enumerate() {
        let path = dir.join(FileKind::Segment.name(*index));
        let is_last = position + 1 == segments.len();
        let replayed = replay_segment(&path, is_last, &ledger, &keys)?;
        records_replayed += replayed.records;
        torn_bytes += replayed.torn_bytes;
        tail = Some((*index, replayed.valid_bytes));
    }
    let (segment_index, segment_bytes) = tail.unwrap_or((first_segment, 0));
    let segment = if tail.is_some() {
        open_segment(dir, segment_index, segment_bytes)?
    } else {
        create_segment(dir, segment_index).map_err(io_error(dir))?
    };
    let journal = start_writer(
        options,
        ledger,
        keys,
        lock,
        segment,
        segment_index,
        segment_bytes,
    )?;
    Ok(Recovered {
        journal,
        records_replayed,
        snapshot: snapshot_index,
        torn_bytes,
        elapsed: started.elapsed(),
    })
}

fn start_writer(
    options: &Options<'_>,
    ledger: Arc<Ledger>,
    keys: Arc<Table>,
    lock: File,
    segment: File,
    segment_index: u64,
    segment_bytes: u64,
) -> Result<Journal, Error> {
    let (queue, receiver) = crossbeam_channel::bounded(QUEUE_RECORDS_MAX);
    let failed = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(Faults::default());
    let stats = Arc::new(Stats::default());
    let writer = Writer {
        dir: options.dir.to_owned(),
        segment,
        segment_index,
        segment_bytes,
        segment_bytes_max: options.segment_bytes_max,
        queue: receiver,
        ledger,
        keys,
        failed: failed.clone(),
        faults: faults.clone(),
        stats: stats.clone(),
        snapshotting: Arc::new(AtomicBool::new(false)),
    };
    let thread = std::thread::Builder::new()
        .name("saldos-journal".into())
        .spawn(move || {
            // The lock lives as long as the writer: the directory stays ours
            // until the last record is durable.
            let _lock = lock;
            writer.run();
        })
        .map_err(io_error(options.dir))?;
    Ok(Journal {
        queue,
        slots: Arc::new(Semaphore::new(QUEUE_RECORDS_MAX)),
        failed,
        faults,
        stats,
        writer: Some(thread),
    })
}

/// Takes the directory's lock, or names the process that holds it.
fn lock(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_owned();
            return Err(Error::Locked { path, holder });
        }
        Err(fs::TryLockError::Error(source)) => return Err(Error::Io { path, source }),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
    Ok(file)
}

/// Writes the metadata of a new directory, or checks an existing one.
fn check_meta(options: &Options<'_>, has_data: bool) -> Result<(), Error> {
    let path = options.dir.join(META_FILE);
    let expected = meta_text(options);
    match fs::read_to_string(&path) {
        Ok(found) if found == expected => Ok(()),
        Ok(found) => Err(Error::Mismatch {
            path,
            reason: describe_mismatch(&found, &expected),
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound && !has_data => {
            let temporary = path.with_extension("tmp");
            fs::write(&temporary, &expected)
                .and_then(|()| File::open(&temporary)?.sync_all())
                .and_then(|()| fs::rename(&temporary, &path))
                .and_then(|()| sync_dir(options.dir))
                .map_err(io_error(&path))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err(Error::Mismatch {
            path,
            reason: "missing, but journal files exist: restore it from backup".into(),
        }),
        Err(source) => Err(Error::Io { path, source }),
    }
}

fn meta_text(options: &Options<'_>) -> String {
    let mut seed: Vec<String> = options
        .seed
        .iter()
        .map(|(usuario, saldo)| format!("{usuario}={saldo}"))
        .collect();
    seed.sort();
    format!(
        "{META_VERSION}\nopening_balance {}\nseed {}\n",
        options.opening_saldo,
        seed.join(",")
    )
}

fn describe_mismatch(found: &str, expected: &str) -> String {
    let differing: Vec<String> = found
        .lines()
        .zip(expected.lines())
        .filter(|(found, expected)| found != expected)
        .map(|(found, expected)| {
            format!("the directory has '{found}', the configuration asks for '{expected}'")
        })
        .collect();
    if differing.is_empty() {
        "unrecognised metadata".into()
    } else {
        format!(
            "{}; a data directory keeps the opening balance and seed it was created with",
            differing.join("; ")
        )
    }
}

fn restore_snapshot(path: &Path, ledger: &Ledger, keys: &Table) -> Result<(), Error> {
    let now_ms = clock::unix_ms();
    snapshot::load(
        path,
        |usuario, saldo| {
            ledger
                .seed(usuario, saldo)
                .map_err(|error| ledger_error(path, error))
        },
        |record| restore_key(record, keys, now_ms),
    )
}

fn restore_key(record: &Record, keys: &Table, now_ms: u64) {
    if let Some((key, remembered)) = record.remembered()
        && !keys.is_expired(&remembered, now_ms)
    {
        keys.finish(key, remembered);
    }
}

struct Replayed {
    records: u64,
    valid_bytes: u64,
    torn_bytes: u64,
}

/// Applies every record of a segment, in order.
fn replay_segment(
    path: &Path,
    is_last: bool,
    ledger: &Ledger,
    keys: &Table,
) -> Result<Replayed, Error> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let now_ms = clock::unix_ms();
    let mut at = 0;
    let mut records = 0;
    while at < bytes.len() {
        let (record, len) = match Record::decode(&bytes[at..]) {
            Ok(decoded) => decoded,
            Err(error) if is_last && is_torn_tail(&bytes[at..], error) => break,
            Err(DecodeError::Incomplete) => return Err(corrupt(path, at, "record cut short")),
            Err(DecodeError::Corrupt(reason)) => return Err(corrupt(path, at, reason)),
        };
        replay_record(&record, ledger).map_err(|reason| corrupt(path, at, &reason))?;
        restore_key(&record, keys, now_ms);
        records += 1;
        at += len;
    }
    let torn_bytes = (bytes.len() - at) as u64;
    if torn_bytes > 0 {
        tracing::warn!(path = %path.display(), offset = at, torn_bytes, "dropping a torn record at the journal's end");
    }
    Ok(Replayed {
        records,
        valid_bytes: at as u64,
        torn_bytes,
    })
}

/// A write cut by a crash: a record that runs past the end of the file, or
/// a damaged record followed by nothing but zeros (unwritten pages).
fn is_torn_tail(rest: &[u8], error: DecodeError) -> bool {
    match error {
        DecodeError::Incomplete => true,
        DecodeError::Corrupt(_) => {
            let declared = rest
                .get(..4)
                .map(|len| u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize);
            let record_end = declared.map_or(rest.len(), |len| super::record::HEADER_BYTES + len);
            rest.iter().all(|b| *b == 0)
                || rest
                    .get(record_end..)
                    .is_some_and(|after| after.iter().all(|b| *b == 0))
        }
    }
}

/// Replays one record; a disagreement with the balances is corruption.
fn replay_record(record: &Record, ledger: &Ledger) -> Result<(), String> {
    let Outcome::Debited { nuevo_saldo } = record.outcome else {
        return Ok(());
    };
    match ledger.debit(&record.usuario, record.monto) {
        Ok(debit) if debit.nuevo_saldo == nuevo_saldo => Ok(()),
        Ok(debit) => Err(format!(
            "debit of {} leaves {} at {} but the journal says {nuevo_saldo}",
            record.monto, record.usuario, debit.nuevo_saldo
        )),
        Err(ledger::Error::LedgerFull) => Err("more accounts than --max-accounts allows".into()),
        Err(error) => Err(format!(
            "debit of {} from {} cannot apply: {error}",
            record.monto, record.usuario
        )),
    }
}

/// Opens the last segment for appending, cut back to its valid length.
fn open_segment(dir: &Path, index: u64, valid_bytes: u64) -> Result<File, Error> {
    let path = dir.join(FileKind::Segment.name(index));
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    if file.metadata().map_err(io_error(&path))?.len() != valid_bytes {
        file.set_len(valid_bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_error(&path))?;
    }
    Ok(file)
}

/// Creates an empty segment and makes its name durable.
pub fn create_segment(dir: &Path, index: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(dir.join(FileKind::Segment.name(index)))?;
    sync_dir(dir)?;
    Ok(file)
}

/// The numbered files of the directory, sorted; stray temporary files are
/// removed (they are snapshots that never completed).
pub fn list(dir: &Path) -> io::Result<Vec<(FileKind, u64)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snapshot-") && name.ends_with(".tmp") {
            fs::remove_file(entry.path())?;
        } else if let Some(file) = FileKind::parse(&name) {
            files.push(file);
        }
    }
    files.sort_by_key(|(kind, index)| (*index, *kind));
    Ok(files)
}

/// Makes renames and creations in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, offset: usize, reason: &str) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        reason: reason.to_owned(),
    }
}

fn ledger_error(path: &Path, error: ledger::Error) -> Error {
    Error::Corrupt {
        path: PathBuf::from(path),
        offset: 0,
        reason: format!("cannot restore balances: {error}"),
    }
}

#[cfg(test)]
mod tests;
