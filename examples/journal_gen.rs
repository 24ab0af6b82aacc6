//! Writes a synthetic journal for recovery benchmarks: `debits_per_account`
//! debits of 1 CLP for each of `accounts` accounts, in rounds (every account
//! once, then again), framed in batches of 1024 records, into segments of
//! about `segment_bytes`.
//!
//! The data directory must already exist with its metadata (start and stop
//! `saldos` on it once, with the same opening balance and an empty seed);
//! existing segments and snapshots there are replaced.
//!
//! `cargo run --release --example journal_gen -- DIR ACCOUNTS DEBITS_PER_ACCOUNT [OPENING] [SEGMENT_BYTES]`

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use saldos::journal::{Record, batch};
use saldos::ledger::{DebitKind, Outcome};
use saldos::usuario::Usuario;

/// Records per batch.
const BATCH_RECORDS: usize = 1024;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number =
        |at: usize, default: u64| args.get(at).and_then(|a| a.parse().ok()).unwrap_or(default);
    let dir = Path::new(args.first().map_or("./data", String::as_str));
    let accounts = number(1, 1_000_000);
    let debits_per_account = number(2, 10);
    let opening = number(3, 100_000);
    let segment_bytes = number(4, 64 << 20);
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("journal-") || name.starts_with("snapshot-") {
            fs::remove_file(dir.join(name))?;
        }
    }
    let mut segment = 0;
    let mut written = u64::MAX;
    let mut out = BufWriter::new(File::create(dir.join("unused"))?);
    let mut batch = Vec::with_capacity(BATCH_RECORDS * 128);
    let mut first_record = 1;
    let mut records = 0u32;
    let debits = (1..=debits_per_account)
        .flat_map(|round| (0..accounts).map(move |account| (round, account)));
    for (round, account) in debits {
        if records == 0 {
            batch::start(&mut batch);
        }
        Record {
            kind: DebitKind::Retiro,
            usuario: Usuario::new(&format!("cuenta{account}")).map_err(std::io::Error::other)?,
            monto: 1,
            outcome: Outcome::Debited {
                nuevo_saldo: opening - round,
            },
            time_ms: 0,
            principal: None,
            key: None,
        }
        .encode(&mut batch);
        records += 1;
        if records as usize == BATCH_RECORDS {
            if written >= segment_bytes {
                out.flush()?;
                segment += 1;
                out = BufWriter::new(File::create(
                    dir.join(format!("journal-{segment:020}.log")),
                )?);
                written = 0;
            }
            batch::finish(&mut batch, 0, first_record, records);
            out.write_all(&batch)?;
            written += batch.len() as u64;
            first_record += u64::from(records);
            records = 0;
            batch.clear();
        }
    }
    if records > 0 {
        batch::finish(&mut batch, 0, first_record, records);
        out.write_all(&batch)?;
    }
    out.flush()?;
    drop(out);
    fs::remove_file(dir.join("unused"))?;
    println!(
        "{} records over {accounts} accounts in {segment} segments",
        accounts * debits_per_account
    );
    Ok(())
}
