//! Fuzzes `saldos::journal::Record::decode`, the journal record decoder,
//! with arbitrary bytes.
//!
//! Checks:
//! - it never panics;
//! - whatever it accepts is canonical: encoding the decoded record gives back
//!   exactly the bytes it consumed, so no damaged or foreign bytes are ever
//!   taken for a record the writer wrote;
//! - an accepted record's amount is 1 ..= 10^12 and its balance at most
//!   2^53 − 1, the ranges the service can write;
//! - it is deterministic, and a record cut anywhere is `Incomplete`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use saldos::ledger::MONTO_MAX;
use saldos::journal::{DecodeError, Record};
use saldos::ledger::{Outcome, SALDO_MAX};

fuzz_target!(|bytes: &[u8]| {
    let decoded = Record::decode(bytes);
    assert_eq!(decoded, Record::decode(bytes), "decoding is deterministic");
    let Ok((record, len)) = decoded else {
        return;
    };
    assert!(len <= bytes.len());
    let mut encoded = Vec::new();
    record.encode(&mut encoded);
    assert_eq!(
        encoded,
        &bytes[..len],
        "accepted bytes are not canonical: {record:?}"
    );
    assert!((1..=MONTO_MAX).contains(&record.monto), "{record:?}");
    let saldo = match record.outcome {
        Outcome::Debited { nuevo_saldo } => nuevo_saldo,
        Outcome::Refused { saldo_disponible } => saldo_disponible,
    };
    assert!(saldo <= SALDO_MAX, "{record:?}");
    for cut in [0, len / 2, len - 1] {
        assert_eq!(
            Record::decode(&bytes[..cut]),
            Err(DecodeError::Incomplete),
            "cut at {cut}"
        );
    }
});
