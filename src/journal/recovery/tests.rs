use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::idempotency::Table;
use crate::journal::medium::{Medium, PowerCut};
use crate::journal::{Error, FileKind, Opened, Options, Queued, Record, batch, open, open_on};
use crate::ledger::{DebitKind, Ledger, Limits, Outcome};
use crate::usuario::Usuario;

const OPENING: u64 = 100_000;

fn usuario(name: &str) -> Usuario {
    Usuario::new(name).unwrap()
}

struct Started {
    ledger: Arc<Ledger>,
    result: Result<Opened, Error>,
}

fn start_on(medium: &PowerCut, opening_saldo: u64, accounts_max: usize) -> Started {
    start_with_segments(medium, opening_saldo, accounts_max, 1 << 20)
}

fn start_with_segments(
    medium: &PowerCut,
    opening_saldo: u64,
    accounts_max: usize,
    segment_bytes_max: u64,
) -> Started {
    let ledger = Arc::new(Ledger::new(Limits {
        shard_count: 4,
        opening_saldo,
        accounts_max,
        history_per_account: 0,
    }));
    let keys = Arc::new(Table::new(4, Duration::from_secs(3600), 1_000));
    let seed = [(usuario("usuario1"), 10_000)];
    let options = Options {
        dir: std::path::Path::new("/data"),
        opening_saldo,
        seed: &seed,
        segment_bytes_max,
        events_retention: std::time::Duration::ZERO,
    };
    let medium: Arc<dyn Medium> = Arc::new(medium.clone());
    let result = open_on(medium, &options, ledger.clone(), keys);
    Started { ledger, result }
}

/// How a start that had to refuse as damage did: file, offset and reason.
fn refused_as_damage(medium: &PowerCut, accounts_max: usize) -> (PathBuf, u64, String) {
    match start_on(medium, OPENING, accounts_max).result {
        Err(Error::Corrupt {
            path,
            offset,
            reason,
        }) => (path, offset, reason),
        Err(other) => panic!("refused, but not as damage: {other}"),
        Ok(_) => panic!("damage went unnoticed"),
    }
}

/// Three batches of debits from "ana" (1..=3, 4..=6, 7..=10, each debit of
/// its record number), framed back to back; and where each batch starts.
fn batches() -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut starts = Vec::new();
    let mut saldo = OPENING;
    for numbers in [1..=3u64, 4..=6, 7..=10] {
        starts.push(bytes.len());
        let first = *numbers.start();
        let at = batch::start(&mut bytes);
        let mut count = 0;
        for monto in numbers {
            saldo -= monto;
            Record {
                kind: DebitKind::Pago,
                usuario: usuario("ana"),
                monto,
                outcome: Outcome::Debited { nuevo_saldo: saldo },
                time_ms: 1,
                principal: None,
                key: None,
            }
            .encode(&mut bytes);
            count += 1;
        }
        batch::finish(&mut bytes, at, first, count);
    }
    (bytes, starts)
}

/// A directory as a first start leaves it, its first segment then holding
/// `bytes`, everything durable.
fn directory_with_segment(bytes: &[u8]) -> PowerCut {
    let first = PowerCut::new();
    drop(start_on(&first, OPENING, 100).result.unwrap());
    let mut files = first.files();
    for (name, contents) in &mut files {
        if *name == FileKind::Segment.name(1) {
            *contents = bytes.to_vec();
        }
    }
    PowerCut::with_files(
        files
            .iter()
            .map(|(name, bytes)| (name.as_str(), bytes.as_slice())),
    )
}

fn segment(medium: &PowerCut, index: u64) -> Vec<u8> {
    medium.read(&FileKind::Segment.name(index)).unwrap()
}

/// ana's balance after the debits of records 1..=n.
fn after_records(n: u64) -> u64 {
    OPENING - (1..=n).sum::<u64>()
}

// A segment cut at any byte recovers exactly the whole batches before the
// cut, and is cut back to them.
#[test]
fn a_cut_write_recovers_the_batches_before_it() {
    let (bytes, starts) = batches();
    for cut in 0..=bytes.len() {
        let medium = directory_with_segment(&bytes[..cut]);
        let started = start_on(&medium, OPENING, 100);
        let opened = started
            .result
            .unwrap_or_else(|error| panic!("cut {cut}: {error}"));
        let whole = starts
            .iter()
            .skip(1)
            .chain([&bytes.len()])
            .filter(|end| **end <= cut)
            .count();
        let records = [0, 3, 6, 10][whole];
        assert_eq!(opened.records_replayed, records, "cut {cut}");
        assert_eq!(
            started.ledger.saldo(&usuario("ana")),
            after_records(records),
            "cut {cut}"
        );
        let valid = starts.get(whole).copied().unwrap_or(bytes.len());
        assert_eq!(opened.torn_bytes, (cut - valid) as u64, "cut {cut}");
        drop(opened);
        assert_eq!(segment(&medium, 1).len(), valid, "cut {cut}");
    }
}

// Every byte of the journal damaged in turn: inside the final batch, the
// batch is dropped (its write was never acknowledged); anywhere before it,
// the start is refused at the damaged batch's offset, and nothing is cut.
#[test]
fn damage_is_dropped_only_inside_the_final_batch() {
    let (bytes, starts) = batches();
    let final_start = starts[2];
    for at in 0..bytes.len() {
        for garbage in [0x00, 0xFF, bytes[at] ^ 0x01] {
            if garbage == bytes[at] {
                continue;
            }
            let mut damaged = bytes.clone();
            damaged[at] = garbage;
            let medium = directory_with_segment(&damaged);
            let started = start_on(&medium, OPENING, 100);
            let batch_start = *starts.iter().rev().find(|start| **start <= at).unwrap();
            match started.result {
                Ok(opened) if at >= final_start => {
                    assert_eq!(opened.records_replayed, 6, "byte {at}");
                    assert_eq!(started.ledger.saldo(&usuario("ana")), after_records(6));
                }
                Ok(_) => panic!("byte {at} of an acknowledged batch damaged, start accepted"),
                Err(Error::Corrupt { path, offset, .. }) if at < final_start => {
                    assert_eq!(
                        path,
                        std::path::Path::new("/data").join(FileKind::Segment.name(1))
                    );
                    assert_eq!(offset, batch_start as u64, "byte {at}");
                    assert_eq!(segment(&medium, 1), damaged, "byte {at}: nothing cut");
                }
                Err(error) => panic!("byte {at}: {error}"),
            }
        }
    }
}

// A cut write need not be a clean prefix: the disk may keep some sectors of
// the final batch and not others. Such a tail was never acknowledged.
#[test]
fn a_final_batch_with_garbled_sectors_is_dropped() {
    let (mut bytes, _) = batches();
    let final_start = bytes.len();
    bytes.extend_from_slice(&ana_batch(11, 30, after_records(10)));
    assert!(bytes.len() - final_start > 1024, "the batch spans sectors");
    for (from, to) in [
        (final_start, final_start + 512),
        (final_start + 512, final_start + 1024),
    ] {
        let mut garbled = bytes.clone();
        garbled[from..to]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        garbled.extend_from_slice(&[0; 700]);
        let medium = directory_with_segment(&garbled);
        let started = start_on(&medium, OPENING, 100);
        let opened = started.result.unwrap();
        assert_eq!(opened.records_replayed, 10);
        assert_eq!(opened.torn_bytes, (garbled.len() - final_start) as u64);
    }
}

// A missing segment, or batches numbered with a gap, refuse the start.
#[test]
fn missing_segments_and_batches_are_refused() {
    let (bytes, starts) = batches();
    let mut without_second = bytes[..starts[1]].to_vec();
    without_second.extend_from_slice(&bytes[starts[2]..]);
    let medium = directory_with_segment(&without_second);
    let (_, offset, reason) = refused_as_damage(&medium, 100);
    assert_eq!(offset, starts[1] as u64);
    assert!(reason.contains("records are missing"), "{reason}");

    let medium = directory_with_segment(&bytes);
    let mut third = medium.create(&FileKind::Segment.name(3)).unwrap();
    third.append(&[]).unwrap();
    let (path, _, reason) = refused_as_damage(&medium, 100);
    assert!(
        path.ends_with(FileKind::Segment.name(2)),
        "{}",
        path.display()
    );
    assert!(reason.contains("segment missing"), "{reason}");
}

// A snapshot whose first segment is gone, or whose contents name other
// segments than its file name, refuses the start.
#[test]
fn a_snapshot_that_does_not_match_its_segments_is_refused() {
    let medium = PowerCut::new();
    fill_small_segments(&medium);
    let snapshots: Vec<String> = medium
        .files()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("snapshot-"))
        .collect();
    let newest = snapshots.last().expect("a snapshot was written").clone();
    let index: u64 = newest["snapshot-".len()..newest.len() - ".snap".len()]
        .parse()
        .unwrap();

    let renamed = medium.survivor(0);
    renamed
        .rename(&newest, &FileKind::Snapshot.name(index + 1))
        .unwrap();
    let (_, _, reason) = refused_as_damage(&renamed, 1_000);
    assert!(reason.contains("covers"), "{reason}");

    let headless = medium.survivor(0);
    headless.remove(&FileKind::Segment.name(index)).unwrap();
    let (_, _, reason) = refused_as_damage(&headless, 1_000);
    assert!(reason.contains("segment missing"), "{reason}");
}

/// Debits 18 accounts through a journal of 1 KiB segments, so that
/// snapshots happen, then closes it. Each debit takes the journal's write
/// path as the local storage drives it: reserve under the account's lock,
/// queue, wait for the sync.
fn fill_small_segments(medium: &PowerCut) {
    fill_segments_of(medium, 1024);
}

/// The same through segments of `segment_bytes_max`.
fn fill_segments_of(medium: &PowerCut, segment_bytes_max: u64) {
    let started = start_with_segments(medium, OPENING, 1_000, segment_bytes_max);
    let journal = started.result.unwrap().journal;
    let ledger = started.ledger;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for n in 0..200 {
            let usuario = usuario(&format!("cuenta{}", n % 17));
            let slot = journal.slot().await.unwrap();
            let ticket = ledger
                .reserve(&usuario, 1, |debit, account| {
                    let record = Record {
                        kind: DebitKind::Retiro,
                        usuario,
                        monto: 1,
                        outcome: Outcome::Debited {
                            nuevo_saldo: debit.nuevo_saldo,
                        },
                        time_ms: 0,
                        principal: None,
                        key: None,
                    };
                    let entry = Queued {
                        record: Some(record),
                        account: Some(account),
                    };
                    journal.push(slot, entry)
                })
                .unwrap()
                .unwrap();
            journal.wait(ticket).await.unwrap();
        }
    });
    drop(journal);
}

// Fewer accounts allowed than the directory holds: said as such, not as damage.
#[test]
fn a_lower_account_limit_is_named() {
    let medium = PowerCut::new();
    fill_small_segments(&medium);
    for accounts_max in [3, 10] {
        match start_on(&medium.survivor(0), OPENING, accounts_max).result {
            Err(error @ Error::Exceeds { .. }) => {
                assert!(error.to_string().contains("--max-accounts"), "{error}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("{accounts_max} accounts allowed, 18 stored, start accepted"),
        }
    }
    assert!(start_on(&medium.survivor(0), OPENING, 18).result.is_ok());
}

#[test]
fn a_different_opening_balance_refuses_to_start() {
    let medium = PowerCut::new();
    drop(start_on(&medium, OPENING, 100).result.unwrap());
    match start_on(&medium, 5, 100).result {
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
    let open_dir = || {
        let ledger = Arc::new(Ledger::new(Limits {
            shard_count: 4,
            opening_saldo: OPENING,
            accounts_max: 100,
            history_per_account: 0,
        }));
        let keys = Arc::new(Table::new(4, Duration::from_secs(3600), 100));
        let options = Options {
            dir: dir.path(),
            opening_saldo: OPENING,
            seed: &[],
            segment_bytes_max: 1 << 20,
            events_retention: std::time::Duration::ZERO,
        };
        open(&options, ledger, keys)
    };
    let first = open_dir().unwrap();
    match open_dir() {
        Err(Error::Locked { holder, .. }) => assert_eq!(holder, std::process::id().to_string()),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("two owners"),
    }
    drop(first);
    assert!(open_dir().is_ok(), "free once the owner closed");
}

/// A snapshot's bytes, as `snapshot::write` lays them out.
fn snapshot_bytes(covers: u64, next_record: u64, accounts: &[(&str, u64, u64)]) -> Vec<u8> {
    let mut out = b"SALDOSNP".to_vec();
    out.push(2);
    out.extend_from_slice(&covers.to_le_bytes());
    out.extend_from_slice(&next_record.to_le_bytes());
    for (name, saldo, last_record) in accounts {
        out.push(1);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&saldo.to_le_bytes());
        out.extend_from_slice(&last_record.to_le_bytes());
    }
    out.push(0xFF);
    out.extend_from_slice(&(accounts.len() as u64).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A first start's metadata with `files` beside it, all durable.
fn directory_with(files: Vec<(String, Vec<u8>)>) -> PowerCut {
    let first = PowerCut::new();
    drop(start_on(&first, OPENING, 100).result.unwrap());
    let mut all: Vec<_> = first
        .files()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("journal-"))
        .collect();
    all.extend(files);
    PowerCut::with_files(
        all.iter()
            .map(|(name, bytes)| (name.as_str(), bytes.as_slice())),
    )
}

// A snapshot holding a record the journal does not reach does not match its
// segments: refused, naming the snapshot (not accepted, to kill the writer at
// the account's next debit).
#[test]
fn a_snapshot_ahead_of_its_segments_is_refused() {
    let medium = directory_with(vec![
        (
            FileKind::Snapshot.name(2),
            snapshot_bytes(2, 5, &[("ana", 500, 1_000)]),
        ),
        (FileKind::Segment.name(2), Vec::new()),
    ]);
    let (path, _, reason) = refused_as_damage(&medium, 100);
    assert!(
        path.ends_with(FileKind::Snapshot.name(2)),
        "{}",
        path.display()
    );
    assert!(reason.contains("record 1000"), "{reason}");
    let medium = directory_with(vec![
        (
            FileKind::Snapshot.name(2),
            snapshot_bytes(2, 5, &[("ana", 500, 4)]),
        ),
        (FileKind::Segment.name(2), Vec::new()),
    ]);
    let started = start_on(&medium, OPENING, 100);
    assert!(started.result.is_ok());
    assert_eq!(started.ledger.saldo(&usuario("ana")), 500);
}

// Record numbers near `u64::MAX`, in a snapshot or a batch, are refused
// (never an overflow).
#[test]
fn record_numbering_out_of_range_is_refused() {
    let first = u64::MAX - 1;
    let mut segment = Vec::new();
    let at = batch::start(&mut segment);
    Record {
        kind: DebitKind::Retiro,
        usuario: usuario("ana"),
        monto: 1,
        outcome: Outcome::Debited {
            nuevo_saldo: OPENING - 1,
        },
        time_ms: 0,
        principal: None,
        key: None,
    }
    .encode(&mut segment);
    batch::finish(&mut segment, at, first, 1);
    for next_record in [first, 0] {
        let medium = directory_with(vec![
            (
                FileKind::Snapshot.name(2),
                snapshot_bytes(2, next_record, &[]),
            ),
            (FileKind::Segment.name(2), segment.clone()),
        ]);
        let (_, _, reason) = refused_as_damage(&medium, 100);
        assert!(reason.contains("out of range"), "{next_record}: {reason}");
    }
}

// An empty segment after the last one with bytes (a rotation whose directory
// sync failed, or a cut just after one) does not make the final batch before
// it an acknowledged one: the torn batch is dropped, the empty segment
// removed, and the writer goes on in the segment before it.
#[test]
fn empty_segments_at_the_end_do_not_hide_the_final_batch() {
    let (bytes, starts) = batches();
    let medium = directory_with_segment(&bytes[..bytes.len() - 3]);
    medium.create(&FileKind::Segment.name(2)).unwrap();
    let started = start_on(&medium, OPENING, 100);
    let opened = started.result.unwrap();
    assert_eq!(opened.records_replayed, 6);
    assert_eq!(opened.torn_bytes, (bytes.len() - 3 - starts[2]) as u64);
    drop(opened);
    assert!(medium.read(&FileKind::Segment.name(2)).is_err(), "removed");
    assert_eq!(segment(&medium, 1).len(), starts[2]);
}

/// A batch of `count` debits of 1 from "ana" numbered from `first`, her
/// balance before it `saldo`.
fn ana_batch(first: u64, count: u32, mut saldo: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let at = batch::start(&mut bytes);
    for _ in 0..count {
        saldo -= 1;
        Record {
            kind: DebitKind::Retiro,
            usuario: usuario("ana"),
            monto: 1,
            outcome: Outcome::Debited { nuevo_saldo: saldo },
            time_ms: 1,
            principal: None,
            key: None,
        }
        .encode(&mut bytes);
    }
    batch::finish(&mut bytes, at, first, count);
    bytes
}

/// Two segments, each its batches then `room` zeros written ahead; the
/// first segment's room with `stray` bytes set to 1 at its start.
fn segments_with_room(room: usize, stray: usize) -> (PowerCut, usize) {
    let (mut first, _) = batches();
    let batches_end = first.len();
    first.resize(batches_end + room, 0);
    first[batches_end..batches_end + stray].fill(1);
    let mut second = ana_batch(11, 5, after_records(10));
    second.resize(second.len() + room, 0);
    let medium = directory_with_segment(&first);
    let mut file = medium.create(&FileKind::Segment.name(2)).unwrap();
    file.append(&second).unwrap();
    file.sync_data().unwrap();
    medium.sync_dir().unwrap();
    (medium, batches_end)
}

// Zeros after a segment's last batch are the room the writer wrote ahead:
// closed segments and the last one replay whole, nothing is dropped as torn,
// and the last segment keeps its room.
#[test]
fn room_after_the_last_batch_is_not_damage() {
    let (medium, _) = segments_with_room(3000, 0);
    let length = segment(&medium, 2).len();
    let started = start_on(&medium, OPENING, 100);
    let opened = started.result.unwrap();
    assert_eq!(opened.records_replayed, 15);
    assert_eq!(opened.torn_bytes, 0);
    assert_eq!(started.ledger.saldo(&usuario("ana")), after_records(10) - 5);
    drop(opened);
    assert_eq!(segment(&medium, 2).len(), length, "the room stays");
}

// Anything but zeros after a closed segment's last batch is damage: only the
// last segment can end in a torn batch.
#[test]
fn anything_but_zeros_after_a_closed_segments_last_batch_is_damage() {
    let (medium, batches_end) = segments_with_room(3000, 1);
    let (path, offset, _) = refused_as_damage(&medium, 100);
    assert!(
        path.ends_with(FileKind::Segment.name(1)),
        "{}",
        path.display()
    );
    assert_eq!(offset, batches_end as u64);
}

// The writer keeps room ahead of the end (zeros, up to the segment's size),
// and a restart goes on writing over the room, not after it.
#[test]
fn the_writer_keeps_room_and_writes_over_it() {
    const SEGMENT_BYTES: u64 = 64 << 10;
    let medium = PowerCut::new();
    for restart in 0..3 {
        fill_segments_of(&medium, SEGMENT_BYTES);
        let segments: Vec<(String, Vec<u8>)> = medium
            .files()
            .into_iter()
            .filter(|(name, _)| name.starts_with("journal-"))
            .collect();
        let (name, bytes) = segments.last().unwrap();
        let mut at = 0;
        while let Ok(frame) = batch::decode(&bytes[at..]) {
            at += frame.bytes();
        }
        assert!(
            at > 0 && at < bytes.len(),
            "{restart} {name}: batches, then room"
        );
        assert_eq!(bytes.len() as u64, SEGMENT_BYTES, "{restart} {name}");
        assert!(
            bytes[at..].iter().all(|byte| *byte == 0),
            "{restart} {name}"
        );
    }
    let started = start_with_segments(&medium, OPENING, 1_000, SEGMENT_BYTES);
    let opened = started.result.unwrap();
    assert_eq!(opened.torn_bytes, 0);
    let debited: u64 = (0..17)
        .map(|n| OPENING - started.ledger.saldo(&usuario(&format!("cuenta{n}"))))
        .sum();
    assert_eq!(debited, 600);
}
