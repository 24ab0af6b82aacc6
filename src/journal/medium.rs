//! The file layer under the journal: the only operations it performs on its
//! data directory, behind a trait so that a test can run the journal over a
//! layer it controls ([`PowerCut`]) and cut the power at any instant.
//!
//! Every name is a plain file name inside the data directory; the directory
//! itself is the medium's root. Nothing here decides *when* to sync: that is
//! `data_dir`'s job, the one place to audit the crash model.

mod os;
mod power_cut;

use std::io;

pub use os::Os;
pub use power_cut::PowerCut;

/// A data directory's file operations.
pub trait Medium: Send + Sync {
    /// Creates the directory (and its parents) if missing, and makes its own
    /// entry durable in its parent.
    fn create_root(&self) -> io::Result<()>;
    /// Takes the directory's ownership for this process, or names the holder.
    fn lock(&self) -> Result<Box<dyn Send + Sync>, Locked>;
    /// The names of the directory's files.
    fn list(&self) -> io::Result<Vec<String>>;
    /// A whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// At most `len` bytes of a file from `offset` (fewer at its end).
    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Creates a new, empty file for writing; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Box<dyn MediumFile>>;
    /// Opens an existing file for writing (at its end, or in place).
    fn open_write(&self, name: &str) -> io::Result<Box<dyn MediumFile>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// A file open for writing.
pub trait MediumFile: Send {
    /// Appends all of `bytes` at the file's end.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Writes all of `bytes` at `offset` (in place, or growing the file).
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Starts writing `len` bytes from `offset` back to the disk without
    /// waiting for them: a hint that makes nothing durable, so that a later
    /// sync has less to wait for.
    fn start_writeback(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes the file's bytes and length durable (`fdatasync`): the cheap
    /// sync of every batch.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes the file and all its metadata durable (`fsync`): for the rare
    /// syncs (a truncation, a new snapshot or metadata file) where a
    /// stricter reading of `fdatasync` must not matter.
    fn sync_all(&mut self) -> io::Result<()>;
    /// Cuts (or extends) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// The file's length now.
    fn length(&self) -> io::Result<u64>;
}

/// Another process owns the data directory.
#[derive(Debug)]
pub enum Locked {
    /// The holder's PID, as it wrote it in the lock file.
    By(String),
    /// The lock file could not be used.
    Io(io::Error),
}
