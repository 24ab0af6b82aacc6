//! Snapshots: every stored balance and every live idempotency key as of a
//! segment boundary. `snapshot-K.snap` holds the state after all segments
//! before K; recovery loads the newest and replays segments K and later.
//!
//! ```text
//! snapshot = "SALDOSNP" version:u8 covers:u64le accounts:u64le
//!            (usuario_len:u8 usuario saldo:u64le)*
//!            keys:u64le record* crc32c(everything before):u32le
//! ```
//! Written atomically: a temporary file, `fsync`, `rename`, `fsync` of the
//! directory. Older segments and snapshots are removed only after that.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::recovery::{self, FileKind};
use super::{Error, Record};
use crate::idempotency::Table;
use crate::ledger::{Ledger, SALDO_MAX};
use crate::usuario::Usuario;

const MAGIC: &[u8; 8] = b"SALDOSNP";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = MAGIC.len() + 1 + 8 + 8;

/// Serializes the current durable state; call only from the writer thread.
pub fn image(ledger: &Ledger, keys: &Table, covers: u64, now_ms: u64) -> Vec<u8> {
    let mut image = Vec::with_capacity(HEADER_BYTES + ledger.accounts_stored() * 24);
    image.extend_from_slice(MAGIC);
    image.push(VERSION);
    image.extend_from_slice(&covers.to_le_bytes());
    image.extend_from_slice(&0u64.to_le_bytes());
    let mut accounts = 0u64;
    ledger.for_each_saldo(|usuario, saldo| {
        image.push(usuario.len() as u8);
        image.extend_from_slice(usuario.as_bytes());
        image.extend_from_slice(&saldo.to_le_bytes());
        accounts += 1;
    });
    image[HEADER_BYTES - 8..HEADER_BYTES].copy_from_slice(&accounts.to_le_bytes());
    let remembered = keys.remembered(now_ms);
    image.extend_from_slice(&(remembered.len() as u64).to_le_bytes());
    for (key, remembered) in remembered {
        Record::from_remembered(&key, &remembered).encode(&mut image);
    }
    let crc = crc32c::crc32c(&image);
    image.extend_from_slice(&crc.to_le_bytes());
    image
}

/// Makes `image` durable as snapshot `covers`, then removes what it replaces.
pub fn persist(dir: &Path, covers: u64, image: &[u8]) -> std::io::Result<()> {
    let final_path = dir.join(FileKind::Snapshot.name(covers));
    let temporary = final_path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(image)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, &final_path)?;
    recovery::sync_dir(dir)?;
    for (kind, index) in recovery::list(dir)? {
        if index < covers {
            fs::remove_file(dir.join(kind.name(index)))?;
        }
    }
    recovery::sync_dir(dir)
}

/// Reads and checks a snapshot, then hands each balance and each live key's
/// record to the callbacks (nothing is handed over unless the whole file's
/// checksum holds); any damage names the file and offset.
pub fn load(
    path: &Path,
    mut balance: impl FnMut(&Usuario, u64) -> Result<(), Error>,
    mut key: impl FnMut(&Record),
) -> Result<(), Error> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let corrupt = |offset: usize, reason: &str| Error::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        reason: reason.to_owned(),
    };
    if bytes.len() < HEADER_BYTES + 8 + 4 {
        return Err(corrupt(0, "snapshot too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(corrupt(body.len(), "snapshot checksum mismatch"));
    }
    if &body[..MAGIC.len()] != MAGIC || body[MAGIC.len()] != VERSION {
        return Err(corrupt(0, "not a snapshot of this format version"));
    }
    let mut at = HEADER_BYTES;
    let accounts = read_u64(body, HEADER_BYTES - 8);
    for _ in 0..accounts {
        let len = usize::from(
            *body
                .get(at)
                .ok_or_else(|| corrupt(at, "truncated account"))?,
        );
        let name = body
            .get(at + 1..at + 1 + len)
            .and_then(|name| std::str::from_utf8(name).ok())
            .and_then(|name| Usuario::new(name).ok())
            .ok_or_else(|| corrupt(at, "invalid account name"))?;
        let saldo_at = at + 1 + len;
        if body.len() < saldo_at + 8 {
            return Err(corrupt(at, "truncated account"));
        }
        let saldo = read_u64(body, saldo_at);
        if saldo > SALDO_MAX {
            return Err(corrupt(saldo_at, "balance out of range"));
        }
        balance(&name, saldo)?;
        at = saldo_at + 8;
    }
    if body.len() < at + 8 {
        return Err(corrupt(at, "truncated key count"));
    }
    let key_count = read_u64(body, at);
    at += 8;
    for _ in 0..key_count {
        let (record, len) =
            Record::decode(&body[at..]).map_err(|_| corrupt(at, "invalid key record"))?;
        key(&record);
        at += len;
    }
    if at != body.len() {
        return Err(corrupt(at, "trailing bytes in snapshot"));
    }
    Ok(())
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}
