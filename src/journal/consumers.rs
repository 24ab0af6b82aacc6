//! The feed's named consumers and their positions (SPEC section 9), kept in
//! one small file of the data directory that each store replaces durably.
//!
//! A position is state, not history: only the newest matters, so it is not
//! a journal record (which snapshots would then have to carry) but a file of
//! at most [`CONSUMERS_MAX`] lines, `<name> <event id>\n`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::Error;
use super::data_dir::DataDir;
use crate::seam::{Consumer, EventId, Unavailable};

/// The most named consumers a data directory keeps.
pub const CONSUMERS_MAX: usize = 1000;

/// The positions, and the directory they are made durable in (none for
/// memory storage).
pub struct Consumers {
    dir: Option<Arc<DataDir>>,
    /// Written under this lock, so files are replaced in store order.
    positions: Mutex<BTreeMap<String, u64>>,
}

impl Consumers {
    /// Loads the positions the data directory holds.
    pub fn load(dir: Arc<DataDir>) -> Result<Self, Error> {
        let bytes = dir.read_consumers()?;
        let positions = parse(&bytes).ok_or_else(|| Error::Corrupt {
            path: dir.consumers_path(),
            offset: 0,
            reason: "not a list of consumer positions".into(),
        })?;
        Ok(Self {
            dir: Some(dir),
            positions: Mutex::new(positions),
        })
    }

    /// Positions kept in memory only (memory storage).
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            positions: Mutex::default(),
        }
    }

    /// A consumer's stored position.
    pub fn position(&self, consumer: &Consumer) -> Option<EventId> {
        self.lock().get(consumer.as_str()).copied().map(EventId)
    }

    /// Stores a position durably (blocking: file I/O and two syncs). A new
    /// name beyond [`CONSUMERS_MAX`], or a failed write, is `Unavailable`
    /// and changes nothing.
    pub fn store(&self, consumer: &Consumer, id: EventId) -> Result<(), Unavailable> {
        let mut positions = self.lock();
        let is_new = !positions.contains_key(consumer.as_str());
        if is_new && positions.len() == CONSUMERS_MAX {
            return Err(Unavailable);
        }
        let previous = positions.insert(consumer.as_str().to_owned(), id.0);
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if let Err(error) = dir.write_consumers(&render(&positions)) {
            tracing::error!(%error, "cannot store a consumer position");
            match previous {
                Some(previous) => positions.insert(consumer.as_str().to_owned(), previous),
                None => positions.remove(consumer.as_str()),
            };
            return Err(Unavailable);
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn render(positions: &BTreeMap<String, u64>) -> Vec<u8> {
    let mut out = String::new();
    for (name, id) in positions {
        out.push_str(&format!("{name} {id}\n"));
    }
    out.into_bytes()
}

fn parse(bytes: &[u8]) -> Option<BTreeMap<String, u64>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut positions = BTreeMap::new();
    for line in text.lines() {
        let (name, id) = line.split_once(' ')?;
        let consumer = Consumer::parse(name)?;
        let id = EventId::parse(id)?;
        positions.insert(consumer.as_str().to_owned(), id.0);
    }
    (positions.len() <= CONSUMERS_MAX).then_some(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_as_written_and_bad_files_are_refused() {
        let mut positions = BTreeMap::new();
        positions.insert("notificaciones".to_owned(), 42);
        positions.insert("b-2".to_owned(), 0);
        assert_eq!(parse(&render(&positions)), Some(positions));
        for bad in [&b"a\n"[..], b"a 01\n", b"a b\n", b"a/b 1\n", b"\xff 1\n"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse(b""), Some(BTreeMap::new()));
    }
}
