//! Every cut point of one scripted run: the power goes at each file
//! operation in turn (first start and its metadata, every batch, segment
//! rotations, snapshot writes and renames, removal of old files), each cut
//! gives several survivors, and each survivor is recovered directly and
//! after a second cut during recovery itself. Deterministic: the random
//! `power_loss` test explores concurrency, this one leaves no operation out.

use saldos::journal::PowerCut;
use saldos::ledger::Outcome;

use crate::journal_support::{Debited, OPENING, debit, open_with_segments, usuario};

/// Segments this small rotate (and snapshot) every couple of batches.
const SEGMENT_BYTES_MAX: u64 = 200;
const ACCOUNTS: [&str; 2] = ["ana", "bea"];
/// Debits in the script: alternating accounts, each a distinct power of two.
const DEBITS: u64 = 36;
const SURVIVORS_PER_CUT: u64 = 4;
/// Recovery cut after this many of its own operations (`None`: not cut).
const RECOVERY_CUTS: [Option<u64>; 3] = [None, Some(0), Some(2)];

fn script() -> impl Iterator<Item = (usize, u64)> {
    (0..DEBITS).map(|i| ((i % 2) as usize, 1u64 << (i / 2)))
}

#[test]
fn every_cut_point_keeps_every_acknowledged_debit() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut checked = 0;
    for cut in 0.. {
        let medium = PowerCut::new();
        medium.cut_after(cut);
        let mut acknowledged = [0u64; 2];
        let mut requested = [0u64; 2];
        if let Ok(opened) = open_with_segments(&medium, SEGMENT_BYTES_MAX) {
            for (account, monto) in script() {
                requested[account] |= monto;
                let answer =
                    runtime.block_on(debit(&opened.storage, ACCOUNTS[account], monto, None, 0));
                if let Debited::Answered(Outcome::Debited { .. }) = answer {
                    acknowledged[account] |= monto;
                }
            }
        }
        if !medium.is_cut() {
            // The whole script ran without reaching the cut: every point done.
            assert!(cut > 50, "the script has too few operations: {cut}");
            eprintln!("{cut} cut points, {checked} survivors recovered and checked");
            break;
        }
        for seed in 0..SURVIVORS_PER_CUT {
            for recovery_cut in RECOVERY_CUTS {
                let mut survivor = medium.survivor(cut * SURVIVORS_PER_CUT + seed);
                if let Some(ops) = recovery_cut {
                    survivor.cut_after(ops);
                    drop(open_with_segments(&survivor, SEGMENT_BYTES_MAX));
                    survivor = survivor.survivor(seed);
                }
                let context = format!("cut {cut}, survivor {seed}, recovery cut {recovery_cut:?}");
                let opened = open_with_segments(&survivor, SEGMENT_BYTES_MAX)
                    .unwrap_or_else(|error| panic!("{context}: recovery refused: {error}"));
                for (n, name) in ACCOUNTS.iter().enumerate() {
                    let lost = OPENING - opened.storage.as_local().unwrap().saldo(&usuario(name));
                    assert_eq!(
                        lost & acknowledged[n],
                        acknowledged[n],
                        "{context}: {name} lost acknowledged debits"
                    );
                    assert_eq!(
                        lost & !requested[n],
                        0,
                        "{context}: {name} lost debits never requested"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "only {checked} survivors checked");
}
