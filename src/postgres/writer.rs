//! The debit batcher: each of the writer connections takes every debit
//! queued (up to [`BATCH_DEBITS_MAX`]) and applies them with one call of
//! `saldos_debit_batch`: one round trip, one transaction, one commit. A
//! debit's answer is sent only after its batch committed.
//!
//! Never answers twice, never debits twice: a deadlock or serialization
//! failure (rolled back) is retried whole under a new batch id; a batch whose
//! connection died before its outcome arrived is resolved on a new connection
//! by fencing its id (see `debit_batches` in the schema) before anything is
//! retried or answered. Only when that fails past `--db-timeout` is a debit
//! answered 503 without knowing whether it applied (SPEC section 8).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row, Statement};

use super::queue::{Deadlined, Receiver};
use super::{Error, Shared};
use crate::idempotency::Remembered;
use crate::ledger::{DebitKind, Outcome};
use crate::storage::{Answer, Refusal};
use crate::usuario::Usuario;

/// The most debits sent in one batch.
pub const BATCH_DEBITS_MAX: usize = 512;

/// The call a batch makes.
const DEBIT_BATCH_SQL: &str = "SELECT outcome, saldo, settled_ms \
     FROM saldos_debit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// A queued debit.
pub struct Debit {
    /// The endpoint.
    pub kind: DebitKind,
    /// The account.
    pub usuario: Usuario,
    /// The amount, 1 ..= 10^12.
    pub monto: u64,
    /// The idempotency key and the request's fingerprint.
    pub key: Option<(Box<str>, u64)>,
    /// Who asked ('' without authentication).
    pub principal: Box<str>,
    /// When its request stops waiting to be sent.
    pub deadline: Instant,
    /// Where its answer goes.
    pub answer: oneshot::Sender<Result<Answer, Refusal>>,
}

impl Deadlined for Debit {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn refuse(self) {
        let _ = self.answer.send(Err(Refusal::Unavailable));
    }
}

/// A writer connection and its prepared call.
struct Session {
    client: Client,
    debit_batch: Statement,
}

/// How a batch whose connection died turned out.
enum Resolution {
    /// Fenced: it never committed and never will.
    NotApplied,
    /// It committed: the audit rows of the debits it applied, by position.
    Applied(Vec<Row>),
    /// The database could not be asked in time.
    Unknown,
}

/// Serves debit batches on one connection (re-opened as needed) until the
/// queue closes.
pub async fn run(shared: Arc<Shared>, queue: Receiver<Debit>) {
    let mut session = None;
    let mut batch = Vec::with_capacity(BATCH_DEBITS_MAX);
    while queue.take(&mut batch, BATCH_DEBITS_MAX).await {
        settle(&shared, &mut session, &mut batch).await;
        assert!(batch.is_empty(), "every debit of a batch is answered");
    }
}

/// Applies `batch` and answers each of its debits; empties it.
async fn settle(shared: &Shared, session: &mut Option<Session>, batch: &mut Vec<Debit>) {
    let deadline = batch.iter().map(|debit| debit.deadline).min();
    let deadline = deadline.unwrap_or_else(Instant::now);
    let started = Instant::now();
    loop {
        let Some(open) = open_session(shared, session, deadline).await else {
            // Nothing was sent: nothing applied.
            return refuse_all(batch);
        };
        let batch_id = fastrand::i64(..);
        let params = params(shared, batch_id, batch);
        let refs = params.as_refs();
        let call = open.client.query(&open.debit_batch, &refs);
        let result = tokio::time::timeout_at(deadline.into(), call).await;
        match result {
            Ok(Ok(rows)) => {
                shared
                    .stats
                    .batch(batch.len(), started.elapsed().as_secs_f64());
                tracing::trace!(
                    debits = batch.len(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "debit batch committed"
                );
                return answer_rows(batch, &rows);
            }
            Ok(Err(error)) if !super::is_connection_lost(&error) => {
                // The server answered with an error: the statement's
                // transaction rolled back, nothing applied.
                let retry = [
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                ]
                .iter()
                .any(|code| error.code() == Some(code));
                if retry && Instant::now() < deadline {
                    tracing::debug!(%error, "debit batch rolled back; retried");
                    continue;
                }
                shared.stats.failed();
                tracing::error!(%error, debits = batch.len(), "debit batch failed; nothing applied");
                return refuse_all(batch);
            }
            Ok(Err(_)) | Err(_) => {
                *session = None;

                match resolve(shared, session, batch_id).await {
                    Resolution::NotApplied if Instant::now() < deadline => continue,
                    Resolution::NotApplied => return refuse_all(batch),
                    Resolution::Applied(audit) => return answer_audited(batch, &audit),
                    Resolution::Unknown => {
                        tracing::error!(
                            batch_id,
                            debits = batch.len(),
                            "debit batch outcome unknown: answered 503; keyed retries will \
                             learn the truth"
                        );
                        return refuse_all(batch);
                    }
                }
            }
        }
    }
}

/// The open session, connecting (and preparing) first if needed.
async fn open_session<'s>(
    shared: &Shared,
    session: &'s mut Option<Session>,
    deadline: Instant,
) -> Option<&'s Session> {
    if session.as_ref().is_some_and(|open| open.client.is_closed()) {
        *session = None;
    }
    if session.is_none() {
        let timeout = deadline.saturating_duration_since(Instant::now());
        match connect(shared, timeout).await {
            Ok(open) => *session = Some(open),
            Err(error) => {
                shared.stats.failed();
                tracing::warn!(%error, "cannot connect a debit writer");
                return None;
            }
        }
    }
    session.as_ref()
}

async fn connect(shared: &Shared, timeout: std::time::Duration) -> Result<Session, Error> {
    let client = shared.target.connect(timeout).await?;
    let debit_batch = tokio::time::timeout(timeout, client.prepare(DEBIT_BATCH_SQL))
        .await
        .map_err(|_| Error::Timeout(timeout))??;
    Ok(Session {
        client,
        debit_batch,
    })
}

/// Learns whether batch `batch_id` committed, on a new connection, within
/// `--db-timeout`: fencing its id either proves it never committed (and
/// never will) or finds its row, and then its audit rows.
async fn resolve(shared: &Shared, session: &mut Option<Session>, batch_id: i64) -> Resolution {
    let deadline = Instant::now() + shared.timeout;
    while Instant::now() < deadline {
        let Some(open) = open_session(shared, session, deadline).await else {
            tokio::time::sleep(super::RECONNECT_PAUSE).await;
            continue;
        };
        let asked = async {
            let fenced = open
                .client
                .execute(
                    "INSERT INTO debit_batches (id, debits) VALUES ($1, NULL) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&batch_id],
                )
                .await?;
            if fenced == 1 {
                return Ok(Resolution::NotApplied);
            }
            let audit = open
                .client
                .query(
                    "SELECT seq, saldo FROM debits WHERE batch = $1",
                    &[&batch_id],
                )
                .await?;
            Ok::<_, tokio_postgres::Error>(Resolution::Applied(audit))
        };
        match tokio::time::timeout_at(deadline.into(), asked).await {
            Ok(Ok(resolution)) => {
                shared.stats.answered();
                return resolution;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, batch_id, "cannot resolve a debit batch yet");
                *session = None;
            }
            Err(_) => break,
        }
    }
    Resolution::Unknown
}

/// The batch's arguments, as owned columns.
struct Params {
    batch_id: i64,
    opening: i64,
    key_ttl_ms: i64,
    usuarios: Vec<String>,
    kinds: Vec<&'static str>,
    montos: Vec<i64>,
    principals: Vec<String>,
    keys: Vec<Option<String>>,
    fingerprints: Vec<Option<i64>>,
}

impl Params {
    fn as_refs(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 9] {
        [
            &self.batch_id,
            &self.opening,
            &self.key_ttl_ms,
            &self.usuarios,
            &self.kinds,
            &self.montos,
            &self.principals,
            &self.keys,
            &self.fingerprints,
        ]
    }
}

fn params(shared: &Shared, batch_id: i64, batch: &[Debit]) -> Params {
    Params {
        batch_id,
        opening: shared.opening_saldo,
        key_ttl_ms: shared.key_ttl_ms,
        usuarios: batch
            .iter()
            .map(|d| d.usuario.as_str().to_owned())
            .collect(),
        kinds: batch.iter().map(|d| kind_name(d.kind)).collect(),
        montos: batch.iter().map(|d| monto_i64(d.monto)).collect(),
        principals: batch.iter().map(|d| d.principal.to_string()).collect(),
        keys: batch
            .iter()
            .map(|d| d.key.as_ref().map(|(key, _)| key.to_string()))
            .collect(),
        // Stored as the same 64 bits, signed.
        fingerprints: batch
            .iter()
            .map(|d| d.key.as_ref().map(|(_, fingerprint)| *fingerprint as i64))
            .collect(),
    }
}

/// The audit trail's name of a kind.
pub fn kind_name(kind: DebitKind) -> &'static str {
    match kind {
        DebitKind::Pago => "pago",
        DebitKind::Retiro => "retiro",
    }
}

/// Amounts are at most 10^12: they fit.
fn monto_i64(monto: u64) -> i64 {
    i64::try_from(monto).expect("monto is at most 10^12")
}

/// A balance from the database (never negative: `CHECK (saldo >= 0)`).
pub fn saldo_u64(saldo: i64) -> u64 {
    u64::try_from(saldo).expect("balances are never negative")
}

/// Answers each debit from its row of the batch's result.
fn answer_rows(batch: &mut Vec<Debit>, rows: &[Row]) {
    assert_eq!(rows.len(), batch.len(), "one outcome per debit");
    for (debit, row) in batch.drain(..).zip(rows) {
        let outcome: i16 = row.get(0);
        let saldo: Option<i64> = row.get(1);
        let settled_ms: Option<i64> = row.get(2);
        let answer = decode(&debit, outcome, saldo.map(saldo_u64), settled_ms);
        let _ = debit.answer.send(answer);
    }
}

/// One debit's answer from the batch function's outcome code.
fn decode(
    debit: &Debit,
    outcome: i16,
    saldo: Option<u64>,
    settled_ms: Option<i64>,
) -> Result<Answer, Refusal> {
    let saldo = saldo.unwrap_or_default();
    let replay = |outcome| {
        Answer::Replay(Remembered {
            fingerprint: debit
                .key
                .as_ref()
                .map_or(0, |(_, fingerprint)| *fingerprint),
            kind: debit.kind,
            usuario: debit.usuario,
            monto: debit.monto,
            outcome,
            time_ms: settled_ms
                .and_then(|ms| u64::try_from(ms).ok())
                .unwrap_or_default(),
        })
    };
    match outcome {
        0 => Ok(Answer::Fresh(Outcome::Debited { nuevo_saldo: saldo })),
        1 => Ok(Answer::Fresh(Outcome::Refused {
            saldo_disponible: saldo,
        })),
        2 => Ok(replay(Outcome::Debited { nuevo_saldo: saldo })),
        3 => Ok(replay(Outcome::Refused {
            saldo_disponible: saldo,
        })),
        4 => Err(Refusal::KeyConflict),
        5 => Err(Refusal::KeyInFlight),
        other => unreachable!("saldos_debit_batch returned outcome {other}"),
    }
}

/// A committed batch whose result was lost: its applied debits are answered
/// from the audit trail; the others applied nothing and get 503 (a keyed
/// retry replays a remembered refusal).
fn answer_audited(batch: &mut Vec<Debit>, audit: &[Row]) {
    let mut applied: Vec<Option<u64>> = vec![None; batch.len()];
    for row in audit {
        let seq: i32 = row.get(0);
        let saldo: i64 = row.get(1);
        // The function numbers debits from 1, in argument order.
        let index = usize::try_from(seq - 1).expect("seq starts at 1");
        applied[index] = Some(saldo_u64(saldo));
    }
    for (debit, applied) in batch.drain(..).zip(applied) {
        let answer = match applied {
            Some(nuevo_saldo) => Ok(Answer::Fresh(Outcome::Debited { nuevo_saldo })),
            None => Err(Refusal::Unavailable),
        };
        let _ = debit.answer.send(answer);
    }
}

fn refuse_all(batch: &mut Vec<Debit>) {
    for debit in batch.drain(..) {
        debit.refuse();
    }
}
