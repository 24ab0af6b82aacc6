//! The real file system (`std::fs`), rooted at the data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Locked, Medium, MediumFile};

/// The lock file's name: `flock`ed by the owner (Linux maps `flock` to NFSv4
/// locks on EFS), which writes its PID into it.
const LOCK_FILE: &str = "LOCK";

/// The data directory on the operating system's file system.
pub struct Os {
    root: PathBuf,
}

impl Os {
    /// The medium rooted at `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Medium for Os {
    fn create_root(&self) -> io::Result<()> {
        // Every directory this call creates gets its entry synced in its
        // parent, top down, and the root's own entry is synced even when it
        // exists (a crashed earlier start may have created it unsynced): a
        // power cut must not take the directory away from under a journal
        // that acknowledged debits in it.
        let mut entries = vec![self.root.clone()];
        let mut at = self.root.parent();
        while let Some(dir) = at.filter(|dir| !dir.as_os_str().is_empty()) {
            if fs::symlink_metadata(dir).is_ok() {
                break;
            }
            entries.push(dir.to_owned());
            at = dir.parent();
        }
        fs::create_dir_all(&self.root)?;
        for entry in entries.iter().rev() {
            let parent = match entry.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            sync_directory(parent)?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<Box<dyn Send + Sync>, Locked> {
        let path = self.path(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Locked::Io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                return Err(Locked::By(holder.trim().to_owned()));
            }
            Err(fs::TryLockError::Error(error)) => return Err(Locked::Io(error)),
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all())
            .map_err(Locked::Io)?;
        Ok(Box::new(file))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = fs::File::open(self.path(name))?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn MediumFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path(name))?;
        Ok(Box::new(OsFile { file, end: 0 }))
    }

    fn open_write(&self, name: &str) -> io::Result<Box<dyn MediumFile>> {
        // Not `O_APPEND`: Linux's `pwrite` would append whatever its offset.
        let file = OpenOptions::new().write(true).open(self.path(name))?;
        let end = file.metadata()?.len();
        Ok(Box::new(OsFile { file, end }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        sync_directory(&self.root)
    }
}

fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An open file and where its end is (this process is its only writer).
struct OsFile {
    file: File,
    end: u64,
}

impl MediumFile for OsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_at(self.end, bytes)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)?;
        self.end = self.end.max(offset + bytes.len() as u64);
        Ok(())
    }

    fn start_writeback(&mut self, offset: u64, len: u64) -> io::Result<()> {
        start_writeback(&self.file, offset, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.end = len;
        Ok(())
    }

    fn length(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::other("writeback range out of range"));
    };
    // SAFETY: a plain system call on a file descriptor this `File` owns and
    // keeps open for the call's duration; no memory is passed.
    let result = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}
