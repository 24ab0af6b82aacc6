use super::*;
use crate::ledger::{DebitKind, Limits};

const OPENING: u64 = 100_000;

fn usuario(name: &str) -> Usuario {
    Usuario::new(name).unwrap()
}

fn seed() -> Vec<(Usuario, u64)> {
    vec![(usuario("usuario1"), 10_000)]
}

struct Opened {
    ledger: Arc<Ledger>,
    result: Result<Recovered, Error>,
}

fn open_dir(dir: &Path, opening_saldo: u64, segment_bytes_max: u64) -> Opened {
    let ledger = Arc::new(Ledger::new(Limits {
        shard_count: 4,
        opening_saldo,
        accounts_max: 1_000,
    }));
    let keys = Arc::new(Table::new(4, Duration::from_secs(3600), 1_000));
    let seed = seed();
    let options = Options {
        dir,
        opening_saldo,
        seed: &seed,
        segment_bytes_max,
    };
    let result = open(&options, ledger.clone(), keys);
    Opened { ledger, result }
}

/// Ten debits of 1..=10 from "ana", encoded back to back.
fn debits() -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut ends = Vec::new();
    let mut saldo = OPENING;
    for monto in 1..=10 {
        saldo -= monto;
        Record {
            kind: DebitKind::Pago,
            usuario: usuario("ana"),
            monto,
            outcome: Outcome::Debited { nuevo_saldo: saldo },
            time_ms: 1,
            key: None,
        }
        .encode(&mut bytes);
        ends.push(bytes.len());
    }
    (bytes, ends)
}

fn segment_path(dir: &Path) -> PathBuf {
    dir.join(FileKind::Segment.name(1))
}

/// A directory created by a first start, whose segment then holds `bytes`.
fn directory_with_segment(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    drop(open_dir(dir.path(), OPENING, 1 << 20).result.unwrap());
    fs::write(segment_path(dir.path()), bytes).unwrap();
    dir
}

// A tail cut at any byte recovers exactly the complete records before it,
// and the file is truncated back to them.
#[test]
fn a_truncated_tail_recovers_the_prefix() {
    let (bytes, ends) = debits();
    for cut in 0..=bytes.len() {
        let dir = directory_with_segment(&bytes[..cut]);
        let opened = open_dir(dir.path(), OPENING, 1 << 20);
        let recovered = opened
            .result
            .unwrap_or_else(|error| panic!("cut {cut}: {error}"));
        let complete = ends.iter().filter(|end| **end <= cut).count() as u64;
        assert_eq!(recovered.records_replayed, complete, "cut {cut}");
        let debited: u64 = (1..=complete).sum();
        assert_eq!(
            opened.ledger.saldo(&usuario("ana")),
            OPENING - debited,
            "cut {cut}"
        );
        let valid = if complete == 0 {
            0
        } else {
            ends[complete as usize - 1]
        };
        assert_eq!(recovered.torn_bytes, (cut - valid) as u64);
        drop(recovered);
        assert_eq!(
            fs::metadata(segment_path(dir.path())).unwrap().len(),
            valid as u64
        );
    }
}

// Zeros after the last record (unwritten pages) are a torn tail too.
#[test]
fn zeroed_tail_is_torn() {
    let (mut bytes, _) = debits();
    bytes.extend_from_slice(&[0; 300]);
    let dir = directory_with_segment(&bytes);
    let recovered = open_dir(dir.path(), OPENING, 1 << 20).result.unwrap();
    assert_eq!(
        (recovered.records_replayed, recovered.torn_bytes),
        (10, 300)
    );
}

// Damage before the end stops the start, naming the file and the offset.
#[test]
fn a_corrupted_middle_record_refuses_to_start() {
    let (bytes, ends) = debits();
    for record in 0..9 {
        let start = if record == 0 { 0 } else { ends[record - 1] };
        let mut damaged = bytes.clone();
        damaged[start + 12] ^= 0x40;
        let dir = directory_with_segment(&damaged);
        match open_dir(dir.path(), OPENING, 1 << 20).result {
            Err(Error::Corrupt { path, offset, .. }) => {
                assert_eq!(path, segment_path(dir.path()));
                assert_eq!(offset, start as u64, "record {record}");
            }
            Err(other) => panic!("record {record}: {other}"),
            Ok(_) => panic!("record {record}: damage went unnoticed"),
        }
        // Nothing was cut: the operator still has every byte.
        assert_eq!(fs::read(segment_path(dir.path())).unwrap(), damaged);
    }
}

#[test]
fn a_different_opening_balance_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_dir(dir.path(), OPENING, 1 << 20).result.unwrap());
    match open_dir(dir.path(), 5, 1 << 20).result {
        Err(error @ Error::Mismatch { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains("opening_balance 100000") && message.contains("opening_balance 5"),
                "{message}"
            );
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a different opening balance was accepted"),
    }
}

#[test]
fn a_second_owner_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_dir(dir.path(), OPENING, 1 << 20).result.unwrap();
    match open_dir(dir.path(), OPENING, 1 << 20).result {
        Err(Error::Locked { holder, .. }) => assert_eq!(holder, std::process::id().to_string()),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("two owners"),
    }
    drop(first);
    assert!(
        open_dir(dir.path(), OPENING, 1 << 20).result.is_ok(),
        "free once the owner closed"
    );
}
