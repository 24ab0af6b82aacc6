//! The data directory: ownership, metadata, the numbered files, and every
//! creation, rename and removal with the directory sync that makes it
//! durable. The one place to audit the crash model's directory rule (SPEC
//! section 2: an entry change survives a power cut only once its directory
//! was synced):
//!
//! | change | synced before |
//! |---|---|
//! | the directory itself (and missing parents) | the lock is taken |
//! | `LOCK` | the metadata is checked |
//! | `saldos.meta` (temporary, `fsync`, rename) | the first segment is created |
//! | `journal-<n>.log` created | its first batch is written |
//! | a torn tail cut off (`set_len`) | `fsync` of the segment before new batches |
//! | zeros written ahead of a segment's end (room) | the next batch's `fdatasync`, always before the segment is closed |
//! | `snapshot-<n>.snap` (temporary, `fsync`, rename) | older files are removed |
//! | older segments and snapshots removed | — (a survivor is ignored: the snapshot covers it) |
//!
//! Layout:
//! - `LOCK`: held by the owning process, which writes its PID into it.
//! - `saldos.meta`: format version, opening balance and seed, fixed at creation.
//! - `journal-<n>.log`: segments of batches, appended in index order.
//! - `snapshot-<n>.snap`: the state after every segment before `n`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Error;
use super::medium::{Locked, Medium, MediumFile};
use crate::usuario::Usuario;

const META_FILE: &str = "saldos.meta";
const META_TEMPORARY: &str = "saldos.meta.tmp";
/// The data directory's format; version 1 framed records without batches.
const META_VERSION: &str = "saldos-data-dir 2";
const TEMPORARY_SUFFIX: &str = ".tmp";
/// The feed's named consumers and their positions, replaced whole.
const CONSUMERS_FILE: &str = "consumers";
const CONSUMERS_TEMPORARY: &str = "consumers.tmp";

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
        let (kind, digits) = if let Some(rest) = name.strip_prefix("journal-") {
            (Self::Segment, rest.strip_suffix(".log")?)
        } else {
            let rest = name.strip_prefix("snapshot-")?;
            (Self::Snapshot, rest.strip_suffix(".snap")?)
        };
        let canonical = digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
        canonical
            .then(|| digits.parse().ok())
            .flatten()
            .map(|index| (kind, index))
    }
}

/// The numbered files found in a data directory, each list sorted.
#[derive(Debug, Default)]
pub struct Files {
    /// Segment indexes.
    pub segments: Vec<u64>,
    /// Snapshot indexes.
    pub snapshots: Vec<u64>,
}

/// The settings a data directory is created with and keeps.
#[derive(Debug, Clone, Copy)]
pub struct Fixed<'a> {
    /// Opening balance of implicit accounts.
    pub opening_saldo: u64,
    /// Seeded accounts.
    pub seed: &'a [(Usuario, u64)],
}

/// An owned, open data directory.
pub struct DataDir {
    medium: Arc<dyn Medium>,
    path: PathBuf,
    /// Held for as long as the directory is ours.
    _lock: Box<dyn Send + Sync>,
}

impl DataDir {
    /// Creates the directory if needed (durably) and takes its ownership.
    pub fn open(medium: Arc<dyn Medium>, path: &Path) -> Result<Self, Error> {
        let io_error = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        medium.create_root().map_err(io_error)?;
        let lock = medium.lock().map_err(|locked| match locked {
            Locked::By(holder) => Error::Locked {
                path: path.join("LOCK"),
                holder,
            },
            Locked::Io(source) => Error::Io {
                path: path.join("LOCK"),
                source,
            },
        })?;
        medium.sync_dir().map_err(io_error)?;
        Ok(Self {
            medium,
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The path of a numbered file, for messages.
    pub fn path_of(&self, kind: FileKind, index: u64) -> PathBuf {
        self.path.join(kind.name(index))
    }

    /// The numbered files; stray temporary files (snapshots or metadata that
    /// never completed) are removed. For recovery only: while the journal
    /// runs, a temporary file may be one being written.
    pub fn list(&self) -> Result<Files, Error> {
        let names = self
            .medium
            .list()
            .map_err(|source| self.io_error(&self.path, source))?;
        for name in names.iter().filter(|name| name.ends_with(TEMPORARY_SUFFIX)) {
            self.medium
                .remove(name)
                .map_err(|source| self.io_error(&self.path.join(name), source))?;
        }
        Ok(numbered(&names))
    }

    /// The segments' indexes, sorted, without touching anything: safe while
    /// the writer and the snapshot thread work (unlike [`DataDir::list`],
    /// which removes stray temporary files and is for recovery only).
    pub fn segments(&self) -> io::Result<Vec<u64>> {
        Ok(numbered(&self.medium.list()?).segments)
    }

    /// At most `len` bytes of segment `index` from its start.
    pub fn read_segment_prefix(&self, index: u64, len: usize) -> io::Result<Vec<u8>> {
        self.medium.read_at(&FileKind::Segment.name(index), 0, len)
    }

    /// Writes the metadata of a directory without data, or checks it.
    pub fn check_meta(&self, fixed: Fixed<'_>, has_data: bool) -> Result<(), Error> {
        let path = self.path.join(META_FILE);
        let expected = meta_text(fixed);
        match self.medium.read(META_FILE) {
            Ok(found) if found == expected.as_bytes() => Ok(()),
            Ok(found) => Err(Error::Mismatch {
                path,
                reason: describe_mismatch(&String::from_utf8_lossy(&found), &expected),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound && !has_data => self
                .replace_durably(META_TEMPORARY, META_FILE, |file| {
                    file.append(expected.as_bytes())
                })
                .map_err(|source| self.io_error(&path, source)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(Error::Mismatch {
                path,
                reason: "missing, but journal files exist: restore it from backup".into(),
            }),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Where the consumers file is, for errors.
    pub fn consumers_path(&self) -> PathBuf {
        self.path.join(CONSUMERS_FILE)
    }

    /// The consumers file's bytes; empty when none was ever written.
    pub fn read_consumers(&self) -> Result<Vec<u8>, Error> {
        match self.medium.read(CONSUMERS_FILE) {
            Ok(bytes) => Ok(bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(self.io_error(&self.path.join(CONSUMERS_FILE), source)),
        }
    }

    /// Replaces the consumers file durably (temporary file, sync, rename,
    /// directory sync): after this returns, a crash keeps `bytes`.
    pub fn write_consumers(&self, bytes: &[u8]) -> io::Result<()> {
        self.replace_durably(CONSUMERS_TEMPORARY, CONSUMERS_FILE, |file| {
            file.append(bytes)
        })
    }

    /// A whole numbered file.
    pub fn read(&self, kind: FileKind, index: u64) -> Result<Vec<u8>, Error> {
        self.medium
            .read(&kind.name(index))
            .map_err(|source| self.io_error(&self.path_of(kind, index), source))
    }

    /// Creates an empty segment and makes its name durable. An empty segment
    /// of that name left by an earlier attempt whose directory sync failed is
    /// taken over.
    pub fn create_segment(&self, index: u64) -> io::Result<Box<dyn MediumFile>> {
        let name = FileKind::Segment.name(index);
        let file = match self.medium.create(&name) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let file = self.medium.open_write(&name)?;
                if file.length()? != 0 {
                    return Err(error);
                }
                file
            }
            Err(error) => return Err(error),
        };
        self.medium.sync_dir()?;
        Ok(file)
    }

    /// True when segment `index` holds no bytes.
    pub fn is_segment_empty(&self, index: u64) -> Result<bool, Error> {
        let path = self.path_of(FileKind::Segment, index);
        let file = self
            .medium
            .open_write(&FileKind::Segment.name(index))
            .map_err(|source| self.io_error(&path, source))?;
        let length = file
            .length()
            .map_err(|source| self.io_error(&path, source))?;
        Ok(length == 0)
    }

    /// Removes an empty segment and syncs the directory.
    pub fn remove_empty_segment(&self, index: u64) -> Result<(), Error> {
        let path = self.path_of(FileKind::Segment, index);
        self.medium
            .remove(&FileKind::Segment.name(index))
            .and_then(|()| self.medium.sync_dir())
            .map_err(|source| self.io_error(&path, source))
    }

    /// Opens the last segment for writing after its `valid_bytes`; with
    /// `cut_back` (a torn final batch follows them) the file is first cut
    /// back to them durably. Returns the file and its length (the zeros of
    /// room written ahead stay).
    pub fn open_segment(
        &self,
        index: u64,
        valid_bytes: u64,
        cut_back: bool,
    ) -> Result<(Box<dyn MediumFile>, u64), Error> {
        let path = self.path_of(FileKind::Segment, index);
        let reopen = || {
            let mut file = self.medium.open_write(&FileKind::Segment.name(index))?;
            if cut_back {
                file.set_len(valid_bytes)?;
                file.sync_all()?;
            }
            let length = file.length()?;
            Ok((file, length))
        };
        reopen().map_err(|source| self.io_error(&path, source))
    }

    /// Writes snapshot `index` through `fill` into a temporary file, syncs
    /// it, renames it into place and syncs the directory.
    pub fn write_snapshot(
        &self,
        index: u64,
        fill: impl FnOnce(&mut dyn MediumFile) -> io::Result<()>,
    ) -> io::Result<()> {
        let name = FileKind::Snapshot.name(index);
        self.replace_durably(&format!("{name}{TEMPORARY_SUFFIX}"), &name, fill)
    }

    /// Removes every snapshot numbered below `snapshots_below` and every
    /// segment below `segments_below` (at most `snapshots_below`), then syncs
    /// the directory. Only called once a durable snapshot covers them.
    pub fn remove_before(&self, snapshots_below: u64, segments_below: u64) -> io::Result<()> {
        assert!(segments_below <= snapshots_below);
        // Not `list`: a temporary file now may be one being written (a
        // consumer position is stored while snapshots are taken).
        let files = numbered(&self.medium.list()?);
        let segments = files
            .segments
            .iter()
            .filter(|n| **n < segments_below)
            .map(|n| (FileKind::Segment, *n));
        let snapshots = files
            .snapshots
            .iter()
            .filter(|n| **n < snapshots_below)
            .map(|n| (FileKind::Snapshot, *n));
        for (kind, older) in segments.chain(snapshots) {
            self.medium.remove(&kind.name(older))?;
        }
        self.medium.sync_dir()
    }

    /// Temporary file, filled and synced, renamed over `name`, directory synced.
    fn replace_durably(
        &self,
        temporary: &str,
        name: &str,
        fill: impl FnOnce(&mut dyn MediumFile) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut file = self.medium.create(temporary)?;
        let written = fill(file.as_mut()).and_then(|()| file.sync_all());
        drop(file);
        if let Err(error) = written {
            // A half-written temporary file (a snapshot can be large) must
            // not wait for the next start to go, least of all on a full disk.
            let _ = self.medium.remove(temporary);
            return Err(error);
        }
        self.medium.rename(temporary, name)?;
        self.medium.sync_dir()
    }

    fn io_error(&self, path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The numbered files among `names`, each list sorted.
fn numbered(names: &[String]) -> Files {
    let mut files = Files::default();
    for name in names {
        match FileKind::parse(name) {
            Some((FileKind::Segment, index)) => files.segments.push(index),
            Some((FileKind::Snapshot, index)) => files.snapshots.push(index),
            None => {}
        }
    }
    files.segments.sort_unstable();
    files.snapshots.sort_unstable();
    files
}

fn meta_text(fixed: Fixed<'_>) -> String {
    let mut seed: Vec<String> = fixed
        .seed
        .iter()
        .map(|(usuario, saldo)| format!("{usuario}={saldo}"))
        .collect();
    seed.sort();
    format!(
        "{META_VERSION}\nopening_balance {}\nseed {}\n",
        fixed.opening_saldo,
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
            "{}; a data directory keeps the format, opening balance and seed it was created with",
            differing.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::medium::PowerCut;

    // Removing covered files while the journal runs must leave a temporary
    // file alone: it may be a consumer position being stored at that moment.
    #[test]
    fn removing_covered_files_leaves_temporary_files_being_written() {
        let medium = PowerCut::new();
        let dir = DataDir::open(Arc::new(medium.clone()), Path::new("/data")).unwrap();
        for index in 1..=3 {
            medium.create(&FileKind::Segment.name(index)).unwrap();
        }
        medium.create(&FileKind::Snapshot.name(3)).unwrap();
        medium.create(CONSUMERS_TEMPORARY).unwrap();
        dir.remove_before(3, 3).unwrap();
        let mut names = medium.list().unwrap();
        names.sort();
        assert_eq!(
            names,
            [
                CONSUMERS_TEMPORARY.to_owned(),
                FileKind::Segment.name(3),
                FileKind::Snapshot.name(3)
            ]
        );
        // At recovery nothing is being written: a stray one goes.
        let files = dir.list().unwrap();
        assert_eq!((files.segments, files.snapshots), (vec![3], vec![3]));
        assert!(medium.read(CONSUMERS_TEMPORARY).is_err());
    }
}
