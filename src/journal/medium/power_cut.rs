//! A data directory in memory that obeys the strict POSIX crash model, for
//! power-loss tests and fuzzing: [`PowerCut::cut_after`] makes the n-th next
//! mutating operation (and every one after it) fail as if the power went,
//! and [`PowerCut::survivor`] builds what a disk could hold after that cut:
//!
//! - a file keeps exactly the bytes and length its last `sync_data` made
//!   durable, except where it was written since: each 512-byte sector written
//!   since (appended or overwritten in place) independently comes back as it
//!   was, as written, as zeros, or as garbage; the length is either the
//!   durable one or the current one, and a truncation not yet synced may
//!   vanish (the bytes it cut come back as they were);
//! - a creation, rename or removal survives only if a `sync_dir` followed it;
//!   each one not yet synced independently survives or vanishes.
//!
//! Deterministic for a given seed, so a failing case can be replayed.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Locked, Medium, MediumFile};

/// The granularity at which a disk keeps or loses an unsynced write.
const SECTOR_BYTES: usize = 512;

/// One file's contents, apart from its names.
#[derive(Clone, Default)]
struct Inode {
    /// The bytes as processes see them.
    data: Vec<u8>,
    /// The bytes on stable storage, as of the last sync.
    durable: Vec<u8>,
    /// Sectors of `data` written since the last sync.
    written: BTreeSet<usize>,
}

impl Inode {
    /// A file whose bytes are all durable.
    fn synced(bytes: Vec<u8>) -> Self {
        Self {
            durable: bytes.clone(),
            data: bytes,
            written: BTreeSet::new(),
        }
    }

    /// Writes `bytes` at `offset`, zero-filling any gap after the end.
    fn write(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if self.data.len() < end {
            self.grow(end);
        }
        self.data[offset..end].copy_from_slice(bytes);
        self.mark_written(offset, end);
    }

    fn grow(&mut self, len: usize) {
        let start = self.data.len();
        self.data.resize(len, 0);
        self.mark_written(start, len);
    }

    fn mark_written(&mut self, start: usize, end: usize) {
        if start < end {
            self.written
                .extend(start / SECTOR_BYTES..=(end - 1) / SECTOR_BYTES);
        }
    }

    /// Everything written is durable.
    fn sync(&mut self) {
        self.durable.clone_from(&self.data);
        self.written.clear();
    }
}

#[derive(Default)]
struct State {
    inodes: Vec<Inode>,
    /// The directory as processes see it: name to inode.
    entries: HashMap<String, usize>,
    /// The directory as the disk holds it since the last `sync_dir`.
    durable_entries: HashMap<String, usize>,
    /// Mutating operations left before the power goes; `None`: never.
    ops_left: Option<u64>,
    /// The power went: every operation fails.
    cut: bool,
    /// Mutating operations performed so far.
    ops: u64,
}

/// The simulated data directory; clones share it.
#[derive(Clone, Default)]
pub struct PowerCut {
    state: Arc<Mutex<State>>,
    locked: Arc<AtomicBool>,
}

impl PowerCut {
    /// An empty directory with power that never goes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory holding `files` (name, bytes), all durable: what a fuzzer
    /// or a test hands to recovery.
    pub fn with_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let medium = Self::new();
        {
            let mut state = medium.lock_state();
            for (name, bytes) in files {
                let inode = state.inodes.len();
                state.inodes.push(Inode::synced(bytes.to_vec()));
                state.entries.insert(name.to_owned(), inode);
            }
            state.durable_entries = state.entries.clone();
        }
        medium
    }

    /// The power goes during the `ops`-th mutating operation from now
    /// (0: the very next one fails).
    pub fn cut_after(&self, ops: u64) {
        self.lock_state().ops_left = Some(ops);
    }

    /// Mutating operations performed so far (to choose cut points).
    pub fn ops(&self) -> u64 {
        self.lock_state().ops
    }

    /// True once the power went.
    pub fn is_cut(&self) -> bool {
        self.lock_state().cut
    }

    /// The files as the processes see them now: name and bytes.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let state = self.lock_state();
        let mut files: Vec<_> = state
            .entries
            .iter()
            .map(|(name, inode)| (name.clone(), state.inodes[*inode].data.clone()))
            .collect();
        files.sort();
        files
    }

    /// What a disk could hold after the power went now, chosen by `seed`
    /// among everything the crash model allows; with power on again.
    pub fn survivor(&self, seed: u64) -> Self {
        let state = self.lock_state();
        let mut random = SplitMix(seed);
        let mut entries = state.durable_entries.clone();
        // Names in a fixed order, so a seed always makes the same choices.
        let names: std::collections::BTreeSet<&String> = state
            .entries
            .keys()
            .chain(state.durable_entries.keys())
            .collect();
        for name in names {
            // An unsynced change to this name survives or vanishes.
            if state.entries.get(name) != state.durable_entries.get(name) && random.coin() {
                match state.entries.get(name) {
                    Some(inode) => entries.insert(name.clone(), *inode),
                    None => entries.remove(name),
                };
            }
        }
        let survivor = Self::new();
        {
            let mut fresh = survivor.lock_state();
            let mut renumbered = HashMap::new();
            let mut sorted: Vec<_> = entries.into_iter().collect();
            sorted.sort();
            for (name, inode) in sorted {
                let index = *renumbered.entry(inode).or_insert_with(|| {
                    fresh
                        .inodes
                        .push(surviving_bytes(&state.inodes[inode], &mut random));
                    fresh.inodes.len() - 1
                });
                fresh.entries.insert(name, index);
            }
            fresh.durable_entries = fresh.entries.clone();
        }
        survivor
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a mutating operation; fails once the power went.
    fn mutate<R>(&self, change: impl FnOnce(&mut State) -> io::Result<R>) -> io::Result<R> {
        let mut state = self.lock_state();
        if let Some(left) = state.ops_left {
            if left == 0 {
                state.cut = true;
            }
            state.ops_left = Some(left.saturating_sub(1));
        }
        if state.cut {
            return Err(power_went());
        }
        state.ops += 1;
        change(&mut state)
    }

    fn inspect<R>(&self, look: impl FnOnce(&State) -> io::Result<R>) -> io::Result<R> {
        let state = self.lock_state();
        if state.cut {
            return Err(power_went());
        }
        look(&state)
    }
}

/// The bytes of a file after a cut: durable ones exact; each sector written
/// since the last sync kept as it was, as written, zeroed or garbled; the
/// length the durable one or the current one.
fn surviving_bytes(inode: &Inode, random: &mut SplitMix) -> Inode {
    let len = if random.coin() {
        inode.data.len()
    } else {
        inode.durable.len()
    };
    let mut data = Vec::with_capacity(len);
    for start in (0..len).step_by(SECTOR_BYTES) {
        let end = (start + SECTOR_BYTES).min(len);
        let old = bytes_in(&inode.durable, start, end);
        let new = bytes_in(&inode.data, start, end);
        let sector = if !inode.written.contains(&(start / SECTOR_BYTES)) {
            // Unwritten since the sync: as it was (a truncation not synced
            // gives back what it cut).
            old.or(new).map(<[u8]>::to_vec)
        } else {
            match random.below(4) {
                0 => old.map(<[u8]>::to_vec),
                1 => new.map(<[u8]>::to_vec),
                2 => None,
                _ => Some((start..end).map(|_| random.next() as u8).collect()),
            }
        };
        let mut sector = sector.unwrap_or_default();
        sector.resize(end - start, 0);
        // Bytes the write left as they were are durable whatever became of
        // the sector's other bytes.
        if let (Some(old), Some(new)) = (old, new) {
            for (at, byte) in sector.iter_mut().enumerate() {
                if old
                    .get(at)
                    .is_some_and(|durable| new.get(at) == Some(durable))
                {
                    *byte = old[at];
                }
            }
        }
        data.extend_from_slice(&sector);
    }
    Inode::synced(data)
}

/// The bytes of `start..end` that `bytes` holds, if any.
fn bytes_in(bytes: &[u8], start: usize, end: usize) -> Option<&[u8]> {
    let end = end.min(bytes.len());
    (start < end).then(|| &bytes[start..end])
}

fn power_went() -> io::Error {
    io::Error::other("simulated power cut")
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl Medium for PowerCut {
    fn create_root(&self) -> io::Result<()> {
        self.inspect(|_| Ok(()))
    }

    fn lock(&self) -> Result<Box<dyn Send + Sync>, Locked> {
        if self.locked.swap(true, Ordering::AcqRel) {
            return Err(Locked::By("another journal in this process".into()));
        }
        Ok(Box::new(LockGuard(self.locked.clone())))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.inspect(|state| Ok(state.entries.keys().cloned().collect()))
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.inspect(|state| {
            let inode = state.entries.get(name).ok_or_else(|| not_found(name))?;
            Ok(state.inodes[*inode].data.clone())
        })
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inspect(|state| {
            let inode = state.entries.get(name).ok_or_else(|| not_found(name))?;
            let data = &state.inodes[*inode].data;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let end = start.saturating_add(len).min(data.len());
            Ok(data[start..end].to_vec())
        })
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn MediumFile>> {
        let inode = self.mutate(|state| {
            if state.entries.contains_key(name) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, name));
            }
            state.inodes.push(Inode::default());
            let inode = state.inodes.len() - 1;
            state.entries.insert(name.to_owned(), inode);
            Ok(inode)
        })?;
        Ok(Box::new(SimulatedFile {
            medium: self.clone(),
            inode,
        }))
    }

    fn open_write(&self, name: &str) -> io::Result<Box<dyn MediumFile>> {
        let inode = self.inspect(|state| {
            state
                .entries
                .get(name)
                .copied()
                .ok_or_else(|| not_found(name))
        })?;
        Ok(Box::new(SimulatedFile {
            medium: self.clone(),
            inode,
        }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.mutate(|state| {
            let inode = state.entries.remove(from).ok_or_else(|| not_found(from))?;
            state.entries.insert(to.to_owned(), inode);
            Ok(())
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.mutate(|state| {
            state
                .entries
                .remove(name)
                .map(drop)
                .ok_or_else(|| not_found(name))
        })
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.mutate(|state| {
            state.durable_entries = state.entries.clone();
            Ok(())
        })
    }
}

/// Releases the simulated lock.
struct LockGuard(Arc<AtomicBool>);

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct SimulatedFile {
    medium: PowerCut,
    inode: usize,
}

impl MediumFile for SimulatedFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.medium.mutate(|state| {
            let inode = &mut state.inodes[self.inode];
            inode.write(inode.data.len(), bytes);
            Ok(())
        })
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        self.medium.mutate(|state| {
            state.inodes[self.inode].write(offset, bytes);
            Ok(())
        })
    }

    fn start_writeback(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        // A hint that makes nothing durable: the model has nothing to do.
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.medium.mutate(|state| {
            state.inodes[self.inode].sync();
            Ok(())
        })
    }

    fn sync_all(&mut self) -> io::Result<()> {
        // The model keeps no metadata beyond the length, which `sync_data`
        // already makes durable.
        self.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        self.medium.mutate(|state| {
            let inode = &mut state.inodes[self.inode];
            if len > inode.data.len() {
                inode.grow(len);
            } else {
                inode.data.truncate(len);
            }
            Ok(())
        })
    }

    fn length(&self) -> io::Result<u64> {
        self.medium
            .inspect(|state| Ok(state.inodes[self.inode].data.len() as u64))
    }
}

/// A small, seedable generator (SplitMix64): the cut's choices must replay
/// exactly from a printed seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_bytes_and_entries_always_survive() {
        let medium = PowerCut::new();
        let mut file = medium.create("a").unwrap();
        medium.sync_dir().unwrap();
        file.append(&[7; 1000]).unwrap();
        file.sync_data().unwrap();
        file.append(&[9; 2000]).unwrap();
        medium.create("b").unwrap();
        for seed in 0..64 {
            let survivor = medium.survivor(seed);
            let bytes = survivor.read("a").unwrap();
            assert!(bytes.len() == 1000 || bytes.len() == 3000, "{seed}");
            assert_eq!(&bytes[..1000], &[7; 1000][..]);
        }
        // Every allowed outcome shows up across seeds.
        let outcomes: std::collections::HashSet<(bool, usize)> = (0..64)
            .map(|seed| {
                let survivor = medium.survivor(seed);
                (
                    survivor.read("b").is_ok(),
                    survivor.read("a").unwrap().len(),
                )
            })
            .collect();
        assert_eq!(outcomes.len(), 4);
    }

    #[test]
    fn the_cut_fails_every_later_operation() {
        let medium = PowerCut::new();
        let mut file = medium.create("a").unwrap();
        medium.cut_after(1);
        file.append(b"x").unwrap();
        assert!(file.sync_data().is_err());
        assert!(medium.is_cut());
        assert!(medium.read("a").is_err());
        // Neither the entry nor the byte was synced: each may or may not be there.
        for seed in 0..16 {
            let survivor = medium.survivor(seed);
            if let Ok(bytes) = survivor.read("a") {
                assert!(bytes.len() <= 1, "{seed}: {bytes:?}");
            }
            assert!(survivor.list().unwrap().len() <= 1);
        }
    }

    #[test]
    fn a_seed_always_makes_the_same_survivor() {
        let medium = PowerCut::new();
        for name in ["a", "b", "c", "d", "e", "f"] {
            medium.create(name).unwrap().append(&[1; 700]).unwrap();
        }
        for seed in 0..16 {
            assert_eq!(
                medium.survivor(seed).files(),
                medium.survivor(seed).files(),
                "{seed}"
            );
        }
    }

    #[test]
    fn an_unsynced_truncation_may_vanish() {
        let medium = PowerCut::new();
        let mut file = medium.create("a").unwrap();
        medium.sync_dir().unwrap();
        file.append(&[1; 600]).unwrap();
        file.sync_data().unwrap();
        file.set_len(100).unwrap();
        let lengths: std::collections::HashSet<usize> = (0..32)
            .map(|seed| medium.survivor(seed).read("a").unwrap().len())
            .collect();
        assert_eq!(lengths, [100, 600].into_iter().collect());
    }

    #[test]
    fn an_unsynced_overwrite_may_come_back_old_new_or_garbled() {
        let medium = PowerCut::new();
        let mut file = medium.create("a").unwrap();
        medium.sync_dir().unwrap();
        file.append(&[0; 2048]).unwrap();
        file.sync_data().unwrap();
        file.write_at(600, &[5; 100]).unwrap();
        let mut kinds = std::collections::HashSet::new();
        for seed in 0..64 {
            let bytes = medium.survivor(seed).read("a").unwrap();
            assert_eq!(bytes.len(), 2048, "{seed}: the length was durable");
            assert!(
                bytes[..600].iter().chain(&bytes[700..]).all(|b| *b == 0),
                "{seed}"
            );
            kinds.insert(match &bytes[600..700] {
                written if written == [5; 100] => "new",
                old if old == [0; 100] => "old or zeros",
                _ => "garbage",
            });
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        file.sync_data().unwrap();
        for seed in 0..16 {
            assert_eq!(
                &medium.survivor(seed).read("a").unwrap()[600..700],
                &[5; 100]
            );
        }
    }
}
