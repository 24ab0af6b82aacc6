//! Batch framing: each group commit (one `write`, one `fdatasync`) is one
//! frame, so recovery can tell the last batch's cut write from damage in a
//! batch that was acknowledged.
//!
//! ```text
//! batch  = header records
//! header = magic:u32le first_record:u64le record_count:u32le
//!          records_len:u32le crc32c(records):u32le crc32c(header before it):u32le
//! ```
//! Records are numbered from 1 across the whole journal: a batch's
//! `first_record` is the previous batch's `first_record + record_count`, in
//! the same segment or the one before, so a missing batch or segment shows.
//!
//! Why a frame tells a torn write from damage: the writer appends batch n+1
//! only after batch n was synced (and acknowledged). So any valid header after
//! a damaged batch proves that batch was acknowledged, and the damage is
//! refused; a damaged batch with no valid header after it is the final
//! batch, whose write the crash cut (never acknowledged), and it is dropped.

use super::record::{HEADER_BYTES as RECORD_HEADER_BYTES, PAYLOAD_BYTES_MAX};

/// "SLDB" little-endian: the first bytes of every batch.
const MAGIC: u32 = u32::from_le_bytes(*b"SLDB");

/// The highest first record number a batch may have: numbering stays far from
/// `u64::MAX`, so `first_record + record_count` never overflows.
pub const FIRST_RECORD_MAX: u64 = 1 << 62;

/// Bytes of a batch header.
pub const HEADER_BYTES: usize = 4 + 8 + 4 + 4 + 4 + 4;

/// The most records one batch holds.
pub const RECORDS_MAX: usize = 4096;

/// The most bytes of records one batch holds.
pub const RECORDS_BYTES_MAX: usize = RECORDS_MAX * (RECORD_HEADER_BYTES + PAYLOAD_BYTES_MAX);

/// A batch read back: its numbering and its records' bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The number of the batch's first record.
    pub first_record: u64,
    /// How many records the batch holds (at least one).
    pub record_count: u32,
    /// The records, encoded back to back.
    pub records: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the batch takes in its segment, header included.
    pub fn bytes(&self) -> usize {
        HEADER_BYTES + self.records.len()
    }

    /// The number the next batch's first record must have.
    pub fn next_record(&self) -> u64 {
        self.first_record + u64::from(self.record_count)
    }
}

/// Why bytes are not a whole, valid batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes than a header, or than the header announces.
    Short,
    /// The header is not one the writer wrote (magic, checksum, ranges).
    Header(&'static str),
    /// The header holds, the records' checksum does not.
    Records,
}

impl Damage {
    /// Says what is wrong, for the error naming file and offset.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Short => "batch cut short",
            Self::Header(reason) => reason,
            Self::Records => "batch checksum mismatch",
        }
    }
}

/// Starts a batch in `out`: a header to be completed by [`finish`].
pub fn start(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    start
}

/// Fills in the header of the batch begun at `start` with [`start`], whose
/// records (`record_count` of them) follow it in `out`.
pub fn finish(out: &mut [u8], start: usize, first_record: u64, record_count: u32) {
    let records = &out[start + HEADER_BYTES..];
    assert!(record_count > 0, "an empty batch is never written");
    assert!(records.len() <= RECORDS_BYTES_MAX);
    let records_crc = crc32c::crc32c(records);
    let records_len = records.len() as u32;
    let header = &mut out[start..start + HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..12].copy_from_slice(&first_record.to_le_bytes());
    header[12..16].copy_from_slice(&record_count.to_le_bytes());
    header[16..20].copy_from_slice(&records_len.to_le_bytes());
    header[20..24].copy_from_slice(&records_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..HEADER_BYTES - 4]);
    header[24..28].copy_from_slice(&header_crc.to_le_bytes());
}

/// Reads the batch at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, Damage> {
    let header = bytes.get(..HEADER_BYTES).ok_or(Damage::Short)?;
    let (first_record, record_count, records_len, records_crc) = decode_header(header)?;
    let records = bytes
        .get(HEADER_BYTES..HEADER_BYTES + records_len)
        .ok_or(Damage::Short)?;
    if crc32c::crc32c(records) != records_crc {
        return Err(Damage::Records);
    }
    Ok(Frame {
        first_record,
        record_count,
        records,
    })
}

/// The first record number a valid batch header announces, without its
/// records (which are checked when they are read).
pub fn first_record_of(header: &[u8]) -> Option<u64> {
    let header = header.get(..HEADER_BYTES)?;
    decode_header(header)
        .ok()
        .map(|(first_record, ..)| first_record)
}

/// True when a valid header of a batch numbered after `first_record` starts
/// anywhere in `bytes`: proof that a later write happened.
pub fn has_later_header(bytes: &[u8], first_record: u64) -> bool {
    let magic = MAGIC.to_le_bytes();
    bytes.windows(HEADER_BYTES).any(|window| {
        window[..4] == magic && decode_header(window).is_ok_and(|(later, ..)| later > first_record)
    })
}

fn decode_header(header: &[u8]) -> Result<(u64, u32, usize, u32), Damage> {
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if word(0) != MAGIC {
        return Err(Damage::Header("no batch header here"));
    }
    if crc32c::crc32c(&header[..HEADER_BYTES - 4]) != word(24) {
        return Err(Damage::Header("batch header checksum mismatch"));
    }
    let mut first_record = [0; 8];
    first_record.copy_from_slice(&header[4..12]);
    let first_record = u64::from_le_bytes(first_record);
    let record_count = word(12);
    let records_len = word(16) as usize;
    let numbering_fits = (1..=FIRST_RECORD_MAX).contains(&first_record);
    if !numbering_fits || record_count == 0 || record_count as usize > RECORDS_MAX {
        return Err(Damage::Header("batch numbering out of range"));
    }
    if records_len > RECORDS_BYTES_MAX {
        return Err(Damage::Header("batch length out of range"));
    }
    Ok((first_record, record_count, records_len, word(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first_record: u64, records: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let at = start(&mut out);
        out.extend_from_slice(records);
        finish(&mut out, at, first_record, 2);
        out
    }

    #[test]
    fn batches_round_trip_and_every_cut_is_short() {
        let bytes = batch(7, b"some records");
        let frame = decode(&bytes).unwrap();
        assert_eq!(
            (frame.first_record, frame.record_count, frame.records),
            (7, 2, &b"some records"[..])
        );
        assert_eq!((frame.bytes(), frame.next_record()), (bytes.len(), 9));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Err(Damage::Short), "cut {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = batch(7, b"some records");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn a_later_header_is_found_anywhere() {
        let mut bytes = vec![0xAB; 37];
        bytes.extend_from_slice(&batch(9, b"x"));
        bytes.extend_from_slice(&[0; 5]);
        assert!(has_later_header(&bytes, 8));
        assert!(!has_later_header(&bytes, 9));
        assert!(!has_later_header(&bytes[..60], 8));
    }
}
