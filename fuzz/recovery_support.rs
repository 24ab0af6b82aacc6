//! What the recovery targets share: a data directory in memory (the journal's
//! `PowerCut` medium), opened as the service opens one, twice.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use saldos::idempotency::Table;
use saldos::journal::{self, Medium, PowerCut};
use saldos::ledger::{Ledger, Limits, SALDO_MAX};
use saldos::usuario::Usuario;

/// Opening balance of the fuzzed directories.
pub const OPENING: u64 = 100_000;

/// Accounts the generated records name, and whose balances are compared.
pub const ACCOUNTS: [&str; 4] = ["usuario1", "ana", "bea", "cid"];

/// A directory's files, by name.
pub struct Directory {
    files: Vec<(String, Vec<u8>)>,
}

/// What one recovery showed: each account's balance and how many keys came back.
#[derive(Debug, PartialEq, Eq)]
pub struct Shown {
    saldos: Vec<u64>,
    keys: usize,
}

impl Directory {
    /// A directory holding `files`, all durable.
    pub fn new(files: Vec<(String, Vec<u8>)>) -> Self {
        Self { files }
    }

    /// Opens the directory; if it opens, closes it and opens what it left:
    /// both must show the same state, within range. `None` when refused.
    pub fn open_twice_agreeing(&self) -> Option<Shown> {
        let medium = PowerCut::with_files(
            self.files
                .iter()
                .map(|(name, bytes)| (name.as_str(), bytes.as_slice())),
        );
        let first = open(&medium)?;
        let again = open(&medium.survivor(0))
            .expect("a directory that opened once refuses the second time");
        assert_eq!(first, again, "recovery is not stable");
        assert!(first.saldos.iter().all(|saldo| *saldo <= SALDO_MAX));
        Some(first)
    }
}

fn open(medium: &PowerCut) -> Option<Shown> {
    let ledger = Arc::new(Ledger::new(Limits {
        shard_count: 2,
        opening_saldo: OPENING,
        accounts_max: 64,
    }));
    let keys = Arc::new(Table::new(2, Duration::from_secs(3600), 64));
    let seed = [(Usuario::new("usuario1").unwrap(), 10_000)];
    ledger.seed(&seed[0].0, seed[0].1).unwrap();
    let options = journal::Options {
        dir: Path::new("/fuzz"),
        opening_saldo: OPENING,
        seed: &seed,
        segment_bytes_max: 1 << 20,
        events_retention: std::time::Duration::ZERO,
    };
    let medium: Arc<dyn Medium> = Arc::new(medium.clone());
    let opened = journal::open_on(medium, &options, ledger.clone(), keys.clone()).ok()?;
    drop(opened);
    Some(Shown {
        saldos: ACCOUNTS
            .iter()
            .map(|name| ledger.saldo(&Usuario::new(name).unwrap()))
            .collect(),
        keys: keys.keys_stored(),
    })
}

/// The files a first start leaves in an empty directory (metadata, segment 1),
/// made once per process.
pub fn fresh_directory_files() -> Vec<(String, Vec<u8>)> {
    static FRESH: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    FRESH
        .get_or_init(|| {
            let medium = PowerCut::new();
            open(&medium).expect("an empty directory opens");
            medium.files()
        })
        .clone()
}
