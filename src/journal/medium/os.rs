//! The real file system (`std::fs`), rooted at the data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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
            .append(true)
            .create_new(true)
            .open(self.path(name))?;
        Ok(Box::new(OsFile(file)))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn MediumFile>> {
        let file = OpenOptions::new().append(true).open(self.path(name))?;
        Ok(Box::new(OsFile(file)))
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

struct OsFile(File);

impl MediumFile for OsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn length(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}
