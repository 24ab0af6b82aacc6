//! Fuzzes the snapshot loader through recovery: the input becomes the
//! newest snapshot of an otherwise valid data directory (its metadata and
//! an empty first segment after it), which is then opened.
//!
//! The first input byte chooses whether the rest is taken as the whole file
//! or as its body with the right CRC32C appended: a random checksum almost
//! never holds, and the parser behind it must be explored too.
//!
//! Checks:
//! - opening never panics or hangs;
//! - a snapshot is accepted only with a valid checksum;
//! - an accepted directory recovers to the same balances and keys twice (a
//!   second start over what the first left), and every balance it shows is
//!   within the service's range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use saldos::journal::FileKind;

#[path = "../recovery_support.rs"]
mod recovery_support;
use recovery_support::{Directory, fresh_directory_files};

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    let mut snapshot = body.to_vec();
    if mode & 1 == 1 {
        snapshot.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    }
    // Named after the segment it says it covers (when that is a plausible
    // index), with that segment present and empty: replay starts there, so
    // the snapshot alone decides the state.
    let covers = snapshot
        .get(9..17)
        .map(|field| u64::from_le_bytes(field.try_into().unwrap()))
        .filter(|covers| (1..=u64::from(u32::MAX)).contains(covers))
        .unwrap_or(1);
    let mut files = fresh_directory_files();
    files.retain(|(name, _)| !name.starts_with("journal-"));
    files.push((FileKind::Snapshot.name(covers), snapshot.clone()));
    files.push((FileKind::Segment.name(covers), Vec::new()));
    let directory = Directory::new(files);
    if directory.open_twice_agreeing().is_some() {
        let checksum_holds = snapshot.len() >= 4
            && crc32c::crc32c(&snapshot[..snapshot.len() - 4]).to_le_bytes()[..]
                == snapshot[snapshot.len() - 4..];
        assert!(
            checksum_holds,
            "a snapshot with a bad checksum was accepted"
        );
    }
});
