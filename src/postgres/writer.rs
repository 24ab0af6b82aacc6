//! The debit batcher: each writer connection takes every debit queued (up
//! to [`BATCH_DEBITS_MAX`]) and applies them with one call of
//! `saldos_debit_batch_v2`: one round trip, one transaction, one commit. A
//! debit's answer is sent only after its batch committed.
//!
//! Never answers twice, never debits twice, never waits past a request's
//! deadline (its arrival + `--db-timeout`), queueing, batch, fencing and
//! resolution included:
//! - A debit whose account row another transaction holds comes back
//!   blocked, applied nothing, and rides the writer's next batch until it
//!   goes through or its deadline passes: a debit waits only on its own
//!   account.
//! - A batch rolled back (deadlock, serialization failure, a lock wait past
//!   its bound) applied nothing: it is retried, split in halves when a lock
//!   wait was the cause, so one debit's wait cannot fail the others.
//! - A batch whose answer did not arrive in time is cancelled on the server
//!   and resolved on a new connection by fencing its id (see
//!   `debit_batches` in the schema) before anything is retried or
//!   answered, leaving [`RESOLVE_SHARE`] of the time for that. Only when
//!   that fails by the deadline is a debit answered 503 without knowing
//!   whether it applied (SPEC section 8); the batch id is fenced or found
//!   later, once the database answers again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row, Statement};

use super::queue::{Deadlined, Receiver};
use super::{Error, Progress, Shared};
use crate::idempotency::Remembered;
use crate::ledger::{DebitKind, Outcome};
use crate::seam::{Answer, Refusal};
use crate::usuario::Usuario;

/// The most debits sent in one batch.
pub const BATCH_DEBITS_MAX: usize = 512;

/// The call a batch makes.
const DEBIT_BATCH_SQL: &str = "SELECT outcome, saldo, settled_ms \
     FROM saldos_debit_batch_v2($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Fences ids in one statement; returns those it fenced (the others had a
/// row already: their batch committed, or an earlier fence).
const FENCE_SQL: &str = "INSERT INTO debit_batches (id, debits) \
     SELECT unnest($1::bigint[]), NULL ON CONFLICT (id) DO NOTHING RETURNING id";

/// The outcome code of a debit applied now.
const OUTCOME_DEBITED: i16 = 0;

/// The outcome code of a debit whose account row was held by another
/// transaction, or last debited by a transaction with a larger id (nothing
/// applied).
const OUTCOME_BLOCKED: i16 = 6;

/// The share of a batch's remaining time kept for resolving it if its answer
/// is lost: 1/3.
const RESOLVE_SHARE: u32 = 3;

/// A debit with less than this share of `--db-timeout` left is answered
/// 503 unsent: too little to commit and resolve, and its deadline would cut
/// the whole batch's time short (1/10).
const SEND_REMAINING_SHARE: u32 = 10;

/// Pause before a blocked debit is sent again (new debits join it).
const BLOCKED_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Batch ids whose outcome stayed unknown, kept to be fenced or found once
/// the database answers again; the oldest are dropped beyond this (their
/// statements died long ago under `statement_timeout`).
const UNRESOLVED_MAX: usize = 64;

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
    /// When its request stops waiting: arrival + `--db-timeout`.
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

/// A writer connection and its prepared calls.
struct Session {
    client: Client,
    debit_batch: Statement,
}

/// How a batch whose answer was lost turned out.
enum Resolution {
    /// Fenced: it never committed and never will.
    NotApplied,
    /// It committed: the audit rows of the debits it applied, by position.
    Applied(Vec<Row>),
    /// The database could not be asked in time.
    Unknown,
}

/// One writer: its connection, and what it carries from batch to batch.
pub struct Writer {
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    /// This writer's place in `progress`.
    index: usize,
    session: Option<Session>,
    /// Debits blocked or split off, sent first in the next batch.
    carried: Vec<Debit>,
    /// Batch ids answered 503 with their outcome unknown.
    unresolved: Vec<i64>,
}

impl Writer {
    /// Writer number `index` of the storage.
    pub fn new(shared: Arc<Shared>, progress: Arc<Progress>, index: usize) -> Self {
        assert!(index < progress.busy_since_ms.len());
        Self {
            shared,
            progress,
            index,
            session: None,
            carried: Vec::new(),
            unresolved: Vec::new(),
        }
    }

    /// Serves debit batches on one connection (re-opened as needed) until
    /// the queue closes.
    pub async fn run(mut self, queue: Receiver<Debit>) {
        let mut batch = Vec::with_capacity(BATCH_DEBITS_MAX);
        loop {
            let now = Instant::now();
            for debit in self.carried.drain(..) {
                if debit.deadline <= now {
                    debit.refuse();
                } else {
                    batch.push(debit);
                }
            }
            let wait_until = (!batch.is_empty()).then(|| now + BLOCKED_RETRY_PAUSE);
            if !queue.take(&mut batch, BATCH_DEBITS_MAX, wait_until).await {
                refuse_all(&mut batch);
                return;
            }
            if batch.is_empty() {
                continue;
            }
            if self
                .shared
                .faults
                .panic_writer
                .swap(false, Ordering::Relaxed)
            {
                panic!("injected debit writer panic");
            }
            let progress = self.progress.clone();
            let busy = &progress.busy_since_ms[self.index];
            busy.store(progress.now_ms(), Ordering::Relaxed);
            self.settle(&mut batch).await;
            busy.store(0, Ordering::Relaxed);
            assert!(
                batch.is_empty(),
                "every debit of a batch is answered or carried"
            );
            assert!(self.carried.len() <= BATCH_DEBITS_MAX);
        }
    }

    /// Applies `batch`: answers each debit, or carries it to the next batch;
    /// empties it.
    async fn settle(&mut self, batch: &mut Vec<Debit>) {
        let cutoff = Instant::now() + self.shared.timeout / SEND_REMAINING_SHARE;
        batch
            .extract_if(.., |debit| debit.deadline < cutoff)
            .for_each(Deadlined::refuse);
        let deadline = batch.iter().map(|debit| debit.deadline).min();
        let deadline = deadline.unwrap_or_else(Instant::now);
        let started = Instant::now();
        if !self.unresolved.is_empty() {
            self.fence_unresolved(deadline).await;
        }
        while !batch.is_empty() {
            if !self.open_session(deadline).await {
                // Nothing was sent: nothing applied.
                return refuse_all(batch);
            }
            let open = self.session.as_ref().expect("opened above");
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            let attempt_deadline = now + remaining - remaining / RESOLVE_SHARE;
            let lock_wait = super::server_bound(attempt_deadline);
            let batch_id = fastrand::i64(..);
            let params = params(&self.shared, batch_id, lock_wait, batch);
            let refs = params.as_refs();
            let call = open.client.query(&open.debit_batch, &refs);
            let result = tokio::time::timeout_at(attempt_deadline.into(), call).await;
            match result {
                Ok(Ok(rows)) => {
                    let seconds = started.elapsed().as_secs_f64();
                    self.shared.stats.batch(batch.len(), seconds);
                    if answer_rows(batch, &rows, &mut self.carried) {
                        self.shared.debited();
                    }
                    return;
                }
                Ok(Err(error)) if !super::is_connection_lost(&error) => {
                    // The server answered with an error: the statement's
                    // transaction rolled back, nothing applied.
                    if !self.after_rollback(&error, batch, deadline) {
                        return refuse_all(batch);
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    if result.is_err() {
                        self.cancel_session();
                    }
                    self.session = None;
                    match self.resolve(batch_id, deadline).await {
                        Resolution::NotApplied if Instant::now() < deadline => {}
                        Resolution::NotApplied => return refuse_all(batch),
                        Resolution::Applied(audit) => {
                            if !audit.is_empty() {
                                self.shared.debited();
                            }
                            return answer_audited(batch, &audit);
                        }
                        Resolution::Unknown => {
                            tracing::error!(
                                batch_id,
                                debits = batch.len(),
                                "debit batch outcome unknown: answered 503; keyed retries \
                                 will learn the truth"
                            );
                            self.remember_unresolved(batch_id);
                            return refuse_all(batch);
                        }
                    }
                }
            }
        }
    }

    /// After a batch rolled back: true when it is worth sending again now
    /// (what remains of `batch`), false when its debits get 503. A lock wait
    /// past its bound splits the batch: the second half is carried.
    fn after_rollback(
        &mut self,
        error: &tokio_postgres::Error,
        batch: &mut Vec<Debit>,
        deadline: Instant,
    ) -> bool {
        let code = error.code();
        let transient = [
            &SqlState::T_R_DEADLOCK_DETECTED,
            &SqlState::T_R_SERIALIZATION_FAILURE,
            &SqlState::LOCK_NOT_AVAILABLE,
        ]
        .iter()
        .any(|transient| code == Some(transient));
        if transient && Instant::now() < deadline {
            tracing::debug!(%error, debits = batch.len(), "debit batch rolled back; retried");
            if code == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                let half = batch.len().div_ceil(2);
                self.carried.extend(batch.drain(half..));
            }
            return true;
        }
        self.shared.stats.failed();
        tracing::error!(%error, debits = batch.len(), "debit batch failed; nothing applied");
        false
    }

    /// Opens the session (connecting and preparing) if needed, by
    /// `deadline`; false when it cannot.
    async fn open_session(&mut self, deadline: Instant) -> bool {
        if self
            .session
            .as_ref()
            .is_some_and(|open| open.client.is_closed())
        {
            self.session = None;
        }
        if self.session.is_none() {
            match connect(&self.shared, deadline).await {
                Ok(open) => self.session = Some(open),
                Err(error) => {
                    self.shared.stats.failed();
                    tracing::warn!(%error, "cannot connect a debit writer");
                    return false;
                }
            }
        }
        true
    }

    /// Asks the server to stop the statement the session runs; its
    /// connection keeps its place until the server answered.
    fn cancel_session(&self) {
        if let Some(open) = &self.session {
            let token = open.client.cancel_token();
            let shared = self.shared.clone();
            tokio::spawn(async move { shared.target.cancel(token).await });
        }
    }

    /// Learns whether batch `batch_id` committed, on a new connection, by
    /// `deadline`: fencing its id either proves it never committed (and
    /// never will) or finds its row, and then its audit rows.
    async fn resolve(&mut self, batch_id: i64, deadline: Instant) -> Resolution {
        while Instant::now() < deadline {
            if !self.open_session(deadline).await {
                let pause = Instant::now() + super::RECONNECT_PAUSE;
                tokio::time::sleep_until(pause.min(deadline).into()).await;
                continue;
            }
            let open = self.session.as_ref().expect("opened above");
            let fence = vec![batch_id];
            let asked = async {
                let fenced = open.client.query(FENCE_SQL, &[&fence]).await?;
                if fenced.len() == 1 {
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
                    self.shared.stats.answered();
                    return resolution;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, batch_id, "cannot resolve a debit batch yet");
                    self.session = None;
                }
                Err(_) => {
                    self.cancel_session();
                    self.session = None;
                }
            }
        }
        Resolution::Unknown
    }

    fn remember_unresolved(&mut self, batch_id: i64) {
        if self.unresolved.len() == UNRESOLVED_MAX {
            let dropped = self.unresolved.remove(0);
            tracing::warn!(
                batch_id = dropped,
                "too many unresolved debit batches; forgot one"
            );
        }
        self.unresolved.push(batch_id);
    }

    /// Fences every batch whose outcome was unknown, in one statement, with
    /// a part of this batch's time; says which had committed after all.
    async fn fence_unresolved(&mut self, deadline: Instant) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let until = Instant::now() + remaining / RESOLVE_SHARE;
        if !self.open_session(until).await {
            return;
        }
        let open = self.session.as_ref().expect("opened above");
        let unresolved = std::mem::take(&mut self.unresolved);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&unresolved];
        let fencing = open.client.query(FENCE_SQL, &params);
        match tokio::time::timeout_at(until.into(), fencing).await {
            Ok(Ok(rows)) => {
                let fenced: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
                for batch_id in unresolved {
                    if fenced.contains(&batch_id) {
                        tracing::info!(
                            batch_id,
                            "debit batch of unknown outcome fenced: not applied"
                        );
                    } else {
                        tracing::warn!(
                            batch_id,
                            "debit batch answered 503 had committed; keyed retries replay it"
                        );
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot fence unresolved debit batches yet");
                self.unresolved = unresolved;
                self.session = None;
            }
            Err(_) => {
                self.unresolved = unresolved;
                self.cancel_session();
                self.session = None;
            }
        }
    }
}

async fn connect(shared: &Shared, deadline: Instant) -> Result<Session, Error> {
    let client = shared.connect(deadline).await?;
    let timeout = deadline.saturating_duration_since(Instant::now());
    let debit_batch = tokio::time::timeout_at(deadline.into(), client.prepare(DEBIT_BATCH_SQL))
        .await
        .map_err(|_| Error::Timeout(timeout))??;
    Ok(Session {
        client,
        debit_batch,
    })
}

/// The batch's arguments, as owned columns.
struct Params {
    batch_id: i64,
    opening: i64,
    key_ttl_ms: i64,
    lock_wait_ms: i64,
    usuarios: Vec<String>,
    kinds: Vec<&'static str>,
    montos: Vec<i64>,
    principals: Vec<String>,
    keys: Vec<Option<String>>,
    fingerprints: Vec<Option<i64>>,
}

impl Params {
    fn as_refs(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 10] {
        [
            &self.batch_id,
            &self.opening,
            &self.key_ttl_ms,
            &self.lock_wait_ms,
            &self.usuarios,
            &self.kinds,
            &self.montos,
            &self.principals,
            &self.keys,
            &self.fingerprints,
        ]
    }
}

fn params(shared: &Shared, batch_id: i64, lock_wait: Duration, batch: &[Debit]) -> Params {
    Params {
        batch_id,
        opening: shared.opening_saldo,
        key_ttl_ms: shared.key_ttl_ms,
        // At least 1 ms: 0 would mean no bound at all.
        lock_wait_ms: (lock_wait.as_millis() as i64).max(1),
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

/// Answers each debit from its row of the batch's result; a blocked one is
/// carried to the next batch instead. True when one was debited.
fn answer_rows(batch: &mut Vec<Debit>, rows: &[Row], carried: &mut Vec<Debit>) -> bool {
    assert_eq!(rows.len(), batch.len(), "one outcome per debit");
    let mut debited = false;
    for (debit, row) in batch.drain(..).zip(rows) {
        let outcome: i16 = row.get(0);
        if outcome == OUTCOME_BLOCKED {
            carried.push(debit);
            continue;
        }
        debited |= outcome == OUTCOME_DEBITED;
        let saldo: Option<i64> = row.get(1);
        let settled_ms: Option<i64> = row.get(2);
        let answer = decode(&debit, outcome, saldo.map(saldo_u64), settled_ms);
        let _ = debit.answer.send(answer);
    }
    debited
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
        OUTCOME_DEBITED => Ok(Answer::Fresh(Outcome::Debited { nuevo_saldo: saldo })),
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
