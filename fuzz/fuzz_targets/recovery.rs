//! Fuzzes recovery over arbitrary data directory contents: any set of files
//! with any names and bytes, built from the input, some of them framed as the
//! writer frames batches (so the replay behind the checksums is reached),
//! then damaged at arbitrary bytes.
//!
//! Checks:
//! - opening never panics or hangs, whatever the files;
//! - a directory that opens recovers to the same balances and keys the next
//!   time it opens (recovery is deterministic and leaves a directory that
//!   recovers again to the same state), all within the service's ranges.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use saldos::journal::{FileKind, Record, batch};
use saldos::ledger::{DebitKind, Outcome};
use saldos::principal::{Kind, Principal};
use saldos::usuario::Usuario;

#[path = "../recovery_support.rs"]
mod recovery_support;
use recovery_support::{ACCOUNTS, Directory, fresh_directory_files};

/// One file to put in the directory.
#[derive(Debug, Arbitrary)]
enum File {
    /// A segment of framed batches of debits, then damaged.
    Segment {
        index: u8,
        batches: Vec<Batch>,
        damage: Vec<(u16, u8)>,
        cut: Option<u16>,
    },
    /// Raw bytes under a numbered name.
    Raw {
        snapshot: bool,
        index: u8,
        bytes: Vec<u8>,
    },
    /// Raw bytes under any name (metadata, temporary files, strays).
    Named { name: String, bytes: Vec<u8> },
}

#[derive(Debug, Arbitrary)]
struct Batch {
    first_record: u8,
    debits: Vec<(u8, u16, u32, bool)>,
}

fuzz_target!(|input: &[u8]| {
    let mut unstructured = Unstructured::new(input);
    let Ok(wanted) = Vec::<File>::arbitrary(&mut unstructured) else {
        return;
    };
    let mut files = fresh_directory_files();
    files.retain(|(name, _)| !name.starts_with("journal-"));
    for file in wanted {
        let (name, bytes) = match file {
            File::Segment {
                index,
                batches,
                damage,
                cut,
            } => {
                let mut bytes = segment(&batches);
                for (at, xor) in damage {
                    if let Some(byte) = bytes.get_mut(usize::from(at)) {
                        *byte ^= xor;
                    }
                }
                if let Some(cut) = cut {
                    bytes.truncate(usize::from(cut));
                }
                (FileKind::Segment.name(u64::from(index)), bytes)
            }
            File::Raw {
                snapshot: true,
                index,
                bytes,
            } => (FileKind::Snapshot.name(u64::from(index)), bytes),
            File::Raw {
                snapshot: false,
                index,
                bytes,
            } => (FileKind::Segment.name(u64::from(index)), bytes),
            File::Named { name, bytes } => (name, bytes),
        };
        if name.is_empty()
            || name.contains('/')
            || name.contains('\0')
            || name == "."
            || name == ".."
        {
            continue;
        }
        files.retain(|(existing, _)| *existing != name);
        files.push((name, bytes));
    }
    Directory::new(files).open_twice_agreeing();
});

/// Batches framed as the writer frames them; each debit is (account,
/// amount, resulting balance, refused).
fn segment(batches: &[Batch]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for spec in batches.iter().filter(|spec| !spec.debits.is_empty()) {
        let start = batch::start(&mut bytes);
        for (account, monto, saldo, refused) in spec.debits.iter().take(batch::RECORDS_MAX) {
            let outcome = if *refused {
                Outcome::Refused {
                    saldo_disponible: u64::from(*saldo),
                }
            } else {
                Outcome::Debited {
                    nuevo_saldo: u64::from(*saldo),
                }
            };
            Record {
                kind: DebitKind::Retiro,
                usuario: Usuario::new(ACCOUNTS[usize::from(*account) % ACCOUNTS.len()]).unwrap(),
                monto: u64::from(*monto).max(1),
                outcome,
                time_ms: 0,
                // Every record version: without a principal (authentication
                // off), with a kindless one (format 2) and with a kinded one.
                principal: [None, Some(Kind::Unknown), Some(Kind::Service)][usize::from(*account) % 3]
                    .map(|kind| Principal::new(kind, "pagos").unwrap()),
                key: None,
            }
            .encode(&mut bytes);
        }
        let count = spec.debits.len().min(batch::RECORDS_MAX) as u32;
        batch::finish(
            &mut bytes,
            start,
            u64::from(spec.first_record).max(1),
            count,
        );
    }
    bytes
}
