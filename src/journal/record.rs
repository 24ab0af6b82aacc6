//! The journal's record format, apart from any file handling.
//!
//! ```text
//! record  = payload_len:u32le crc32c(payload):u32le payload
//! payload = version:u8 flags:u8 time_ms:u64le monto:u64le saldo:u64le
//!           usuario_len:u8 usuario
//!           [principal_len:u8 principal]              (versions 2 and 3)
//!           [key_len:u8 key fingerprint:u64le]        (when flags & KEYED)
//! flags   = RETIRO (else pago) | REFUSED (else debited) | KEYED
//! saldo   = nuevo_saldo when debited, saldo_disponible when refused
//! ```
//! A refused record changes no balance: it exists to remember a keyed
//! request's `SALDO_INSUFICIENTE` answer as durably as a debit.
//!
//! Versions: a record with a principal (authentication on) is version 3, its
//! principal's text naming its kind (`customer:<sub>`, `service:<id>`); one
//! without is version 1, byte for byte what the first format wrote. Version
//! 2, written before principals had kinds, holds a bare name: it is read as
//! a principal of [`Kind::Unknown`] (and written back as version 2, so every
//! encoding stays canonical: one record, one byte string). A data directory
//! written with authentication off is still readable by a binary that knows
//! only version 1.

use crate::idempotency::Scoped;
use crate::idempotency::{KEY_BYTES_MAX, Remembered};
use crate::ledger::MONTO_MAX;
use crate::ledger::{DebitKind, Outcome, SALDO_MAX};
use crate::principal::{Kind, PRINCIPAL_TEXT_BYTES_MAX, Principal};
use crate::usuario::{USUARIO_BYTES_MAX, Usuario};

/// The newest record format, written whenever a record has a principal of a
/// known kind; bumped on any change to the layout or its meaning
/// (ARCHITECTURE.md, "Format changes").
pub const FORMAT_VERSION: u8 = 3;

/// The format of principals without a kind (read, and written back only for
/// such a principal).
const FORMAT_VERSION_KINDLESS: u8 = 2;

/// The first format: no principal.
const FORMAT_VERSION_UNAUTHENTICATED: u8 = 1;

/// Bytes before the payload: length and checksum.
pub const HEADER_BYTES: usize = 8;

/// The largest payload a valid record has.
pub const PAYLOAD_BYTES_MAX: usize =
    2 + 3 * 8 + 1 + USUARIO_BYTES_MAX + 1 + PRINCIPAL_TEXT_BYTES_MAX + 1 + KEY_BYTES_MAX + 8;

const RETIRO: u8 = 1;
const REFUSED: u8 = 1 << 1;
const KEYED: u8 = 1 << 2;
const FLAGS_ALL: u8 = RETIRO | REFUSED | KEYED;

/// An idempotency key with its request's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key, 1 to 255 visible ASCII characters.
    pub key: Box<str>,
    /// Fingerprint of the request that used it.
    pub fingerprint: u64,
}

/// One settled debit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The endpoint.
    pub kind: DebitKind,
    /// The account.
    pub usuario: Usuario,
    /// The amount asked for, 1 ..= 10^12.
    pub monto: u64,
    /// Debited (with the resulting balance) or refused.
    pub outcome: Outcome,
    /// When the request was accepted, in ms since the Unix epoch.
    pub time_ms: u64,
    /// Who made the request; `None` without authentication.
    pub principal: Option<Principal>,
    /// The request's idempotency key, if it had one.
    pub key: Option<Key>,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the record does.
    Incomplete,
    /// The record is complete but wrong (checksum, version, lengths, fields).
    Corrupt(&'static str),
}

impl Record {
    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_BYTES]);
        let (flags_outcome, saldo) = match self.outcome {
            Outcome::Debited { nuevo_saldo } => (0, nuevo_saldo),
            Outcome::Refused { saldo_disponible } => (REFUSED, saldo_disponible),
        };
        let flags_kind = match self.kind {
            DebitKind::Pago => 0,
            DebitKind::Retiro => RETIRO,
        };
        let flags_key = if self.key.is_some() { KEYED } else { 0 };
        out.push(match self.principal.as_ref().map(Principal::kind) {
            Some(Kind::Customer | Kind::Service) => FORMAT_VERSION,
            Some(Kind::Unknown) => FORMAT_VERSION_KINDLESS,
            None => FORMAT_VERSION_UNAUTHENTICATED,
        });
        out.push(flags_kind | flags_outcome | flags_key);
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.monto.to_le_bytes());
        out.extend_from_slice(&saldo.to_le_bytes());
        let usuario = self.usuario.as_str().as_bytes();
        out.push(usuario.len() as u8);
        out.extend_from_slice(usuario);
        if let Some(principal) = &self.principal {
            let principal = principal.as_str().as_bytes();
            debug_assert!(principal.len() <= PRINCIPAL_TEXT_BYTES_MAX);
            out.push(principal.len() as u8);
            out.extend_from_slice(principal);
        }
        if let Some(key) = &self.key {
            debug_assert!(key.key.len() <= KEY_BYTES_MAX);
            out.push(key.key.len() as u8);
            out.extend_from_slice(key.key.as_bytes());
            out.extend_from_slice(&key.fingerprint.to_le_bytes());
        }
        let payload_len = out.len() - start - HEADER_BYTES;
        debug_assert!(payload_len <= PAYLOAD_BYTES_MAX);
        let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
        out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The record that settled a remembered key.
    pub fn from_remembered(key: Scoped<'_>, remembered: &Remembered) -> Self {
        Self {
            kind: remembered.kind,
            usuario: remembered.usuario,
            monto: remembered.monto,
            outcome: remembered.outcome,
            time_ms: remembered.time_ms,
            principal: key.principal.cloned(),
            key: Some(Key {
                key: key.key.into(),
                fingerprint: remembered.fingerprint,
            }),
        }
    }

    /// The idempotency key (in its principal's scope) and what it
    /// remembers, when the record has a key.
    pub fn remembered(&self) -> Option<(Scoped<'_>, Remembered)> {
        let key = self.key.as_ref()?;
        let remembered = Remembered {
            fingerprint: key.fingerprint,
            kind: self.kind,
            usuario: self.usuario,
            monto: self.monto,
            outcome: self.outcome,
            time_ms: self.time_ms,
        };
        let scoped = Scoped {
            principal: self.principal.as_ref(),
            key: &key.key,
        };
        Some((scoped, remembered))
    }

    /// Decodes the record at the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), DecodeError> {
        let header = bytes.get(..HEADER_BYTES).ok_or(DecodeError::Incomplete)?;
        let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if payload_len > PAYLOAD_BYTES_MAX {
            return Err(DecodeError::Corrupt("record length out of range"));
        }
        let end = HEADER_BYTES + payload_len;
        let payload = bytes
            .get(HEADER_BYTES..end)
            .ok_or(DecodeError::Incomplete)?;
        if crc32c::crc32c(payload) != crc {
            return Err(DecodeError::Corrupt("checksum mismatch"));
        }
        Self::decode_payload(payload).map(|record| (record, end))
    }

    fn decode_payload(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader(payload);
        let version = reader.u8()?;
        let principal_kind = match version {
            FORMAT_VERSION_UNAUTHENTICATED => None,
            FORMAT_VERSION_KINDLESS => Some(Kind::Unknown),
            FORMAT_VERSION => Some(Kind::Customer),
            _ => return Err(DecodeError::Corrupt("unknown record version")),
        };
        let flags = reader.u8()?;
        if flags & !FLAGS_ALL != 0 {
            return Err(DecodeError::Corrupt("unknown record flags"));
        }
        let time_ms = reader.u64()?;
        let monto = reader.u64()?;
        let saldo = reader.u64()?;
        let usuario_len = usize::from(reader.u8()?);
        let usuario = std::str::from_utf8(reader.bytes(usuario_len)?)
            .ok()
            .and_then(|name| Usuario::new(name).ok())
            .ok_or(DecodeError::Corrupt("invalid account name"))?;
        let principal = match principal_kind {
            None => None,
            Some(kind) => {
                let principal_len = usize::from(reader.u8()?);
                let text = std::str::from_utf8(reader.bytes(principal_len)?).ok();
                let principal = match kind {
                    Kind::Unknown => text.and_then(|name| Principal::new(kind, name)),
                    Kind::Customer | Kind::Service => text.and_then(Principal::parse),
                };
                Some(principal.ok_or(DecodeError::Corrupt("invalid principal"))?)
            }
        };
        let key = if flags & KEYED != 0 {
            let key_len = usize::from(reader.u8()?);
            let key = std::str::from_utf8(reader.bytes(key_len)?)
                .ok()
                .filter(|key| crate::idempotency::is_valid_key(key.as_bytes()))
                .ok_or(DecodeError::Corrupt("invalid idempotency key"))?;
            Some(Key {
                key: key.into(),
                fingerprint: reader.u64()?,
            })
        } else {
            None
        };
        if !reader.0.is_empty() {
            return Err(DecodeError::Corrupt("trailing bytes in record"));
        }
        if !(1..=MONTO_MAX).contains(&monto) {
            return Err(DecodeError::Corrupt("amount out of range"));
        }
        if saldo > SALDO_MAX {
            return Err(DecodeError::Corrupt("balance out of range"));
        }
        let kind = if flags & RETIRO != 0 {
            DebitKind::Retiro
        } else {
            DebitKind::Pago
        };
        let outcome = if flags & REFUSED != 0 {
            Outcome::Refused {
                saldo_disponible: saldo,
            }
        } else {
            Outcome::Debited { nuevo_saldo: saldo }
        };
        Ok(Self {
            kind,
            usuario,
            monto,
            outcome,
            time_ms,
            principal,
            key,
        })
    }
}

/// Reads fixed-size fields off a checksummed payload; running short inside a
/// payload whose checksum matched is corruption, not a torn write.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < len {
            return Err(DecodeError::Corrupt("record shorter than its fields"));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.bytes(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::PRINCIPAL_BYTES_MAX;

    fn records() -> Vec<Record> {
        let usuario = |name: &str| Usuario::new(name).unwrap();
        vec![
            Record {
                kind: DebitKind::Pago,
                usuario: usuario("usuario1"),
                monto: 5_000,
                outcome: Outcome::Debited { nuevo_saldo: 5_000 },
                time_ms: 1_700_000_000_000,
                principal: None,
                key: None,
            },
            Record {
                kind: DebitKind::Retiro,
                usuario: usuario(&"ñ".repeat(32)),
                monto: 1_000_000_000_000,
                outcome: Outcome::Refused {
                    saldo_disponible: 15_000,
                },
                time_ms: u64::MAX,
                principal: None,
                key: Some(Key {
                    key: "k".repeat(KEY_BYTES_MAX).into(),
                    fingerprint: u64::MAX - 1,
                }),
            },
            Record {
                kind: DebitKind::Pago,
                usuario: usuario("usuario2"),
                monto: 7,
                outcome: Outcome::Debited { nuevo_saldo: 3 },
                time_ms: 1_700_000_000_001,
                principal: Principal::new(Kind::Customer, &"é".repeat(PRINCIPAL_BYTES_MAX / 2)),
                key: Some(Key {
                    key: "clave".into(),
                    fingerprint: 42,
                }),
            },
            Record {
                kind: DebitKind::Retiro,
                usuario: usuario("usuario3"),
                monto: 9,
                outcome: Outcome::Debited { nuevo_saldo: 1 },
                time_ms: 1_700_000_000_002,
                principal: Principal::new(Kind::Service, &"s".repeat(PRINCIPAL_BYTES_MAX)),
                key: Some(Key {
                    key: "k".repeat(KEY_BYTES_MAX).into(),
                    fingerprint: 43,
                }),
            },
            Record {
                kind: DebitKind::Pago,
                usuario: usuario("usuario4"),
                monto: 10,
                outcome: Outcome::Debited { nuevo_saldo: 2 },
                time_ms: 1_700_000_000_003,
                principal: Principal::new(Kind::Unknown, "pagos"),
                key: Some(Key {
                    key: "antes".into(),
                    fingerprint: 44,
                }),
            },
        ]
    }

    // A record without a principal is written exactly as the first format
    // did (the bytes below are version 1's); one with a kinded principal is
    // version 3, a kindless one (read from version 2) version 2; versions 2
    // and 3 must carry one, and version 3's names its kind.
    #[test]
    fn versions_follow_the_principal() {
        let mut bytes = Vec::new();
        records()[0].encode(&mut bytes);
        let mut payload = vec![1, 0];
        payload.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
        payload.extend_from_slice(&5_000u64.to_le_bytes());
        payload.extend_from_slice(&5_000u64.to_le_bytes());
        payload.push(8);
        payload.extend_from_slice(b"usuario1");
        assert_eq!(bytes, framed(&payload));
        let mut bytes = Vec::new();
        records()[2].encode(&mut bytes);
        assert_eq!(bytes[HEADER_BYTES], FORMAT_VERSION);
        let mut no_principal = records()[2].clone();
        no_principal.principal = None;
        let mut shorter = Vec::new();
        no_principal.encode(&mut shorter);
        assert_eq!(shorter[HEADER_BYTES], 1);
        let mut kindless = Vec::new();
        records()[4].encode(&mut kindless);
        assert_eq!(kindless[HEADER_BYTES], FORMAT_VERSION_KINDLESS);
        // Claiming version 2 or 3 without the principal field is corrupt.
        for version in [FORMAT_VERSION_KINDLESS, FORMAT_VERSION] {
            let mut forged = shorter[HEADER_BYTES..].to_vec();
            forged[0] = version;
            assert!(matches!(
                Record::decode(&framed(&forged)),
                Err(DecodeError::Corrupt(_))
            ));
        }
        // A version 3 principal without its kind is corrupt.
        let mut forged = kindless[HEADER_BYTES..].to_vec();
        forged[0] = FORMAT_VERSION;
        assert!(matches!(
            Record::decode(&framed(&forged)),
            Err(DecodeError::Corrupt(_))
        ));
    }

    /// A payload with its length and checksum in front.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn records_round_trip() {
        for record in records() {
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            assert!(bytes.len() <= HEADER_BYTES + PAYLOAD_BYTES_MAX);
            assert_eq!(Record::decode(&bytes), Ok((record.clone(), bytes.len())));
            for cut in 0..bytes.len() {
                assert_eq!(
                    Record::decode(&bytes[..cut]).unwrap_err(),
                    DecodeError::Incomplete,
                    "cut {cut}"
                );
            }
        }
    }

    // A record whose checksum holds but whose amount or balance the service
    // could never have written is refused.
    #[test]
    fn out_of_range_amounts_and_balances_are_corrupt() {
        for (monto, saldo) in [(0, 1), (MONTO_MAX + 1, 1), (1, SALDO_MAX + 1)] {
            let mut record = records().remove(0);
            record.monto = monto;
            record.outcome = Outcome::Debited { nuevo_saldo: saldo };
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            assert!(
                matches!(Record::decode(&bytes), Err(DecodeError::Corrupt(_))),
                "{monto} {saldo}"
            );
        }
    }

    // Every single flipped bit of a record is detected.
    #[test]
    fn every_flipped_bit_is_caught() {
        for record in records() {
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            for bit in 0..bytes.len() * 8 {
                let mut damaged = bytes.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                match Record::decode(&damaged) {
                    Err(_) => {}
                    Ok((decoded, _)) => panic!("bit {bit} flipped went unnoticed: {decoded:?}"),
                }
            }
        }
    }
}
