//! The read batcher: each reader connection takes every read queued (up to
//! [`BATCH_READS_MAX`]) and answers the balance reads among them with one
//! `WHERE usuario = ANY($1)` query, then the feed's queries (history pages,
//! event pages, consumer positions: `feed`) one statement each, all by the
//! earliest deadline among them. An account without a row has the opening
//! balance. Reading never writes, but for two things: the readiness probe,
//! a read of no account followed by a write (a batch marker of no debits,
//! committed as a debit batch commits, so readiness means a debit could
//! commit now), and storing a consumer's position.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tokio_postgres::{Client, Statement};

use super::feed::{self, Query};
use super::queue::{Deadlined, Receiver};
use super::{Error, Shared};
use crate::seam::Unavailable;
use crate::usuario::Usuario;

/// The most reads answered by one query.
pub const BATCH_READS_MAX: usize = 512;

const READ_SQL: &str = "SELECT usuario, saldo FROM accounts WHERE usuario = ANY($1)";

/// The readiness probe's write (swept with the batch rows).
const PROBE_SQL: &str = "INSERT INTO debit_batches (id, debits) VALUES ($1, 0)";

/// A queued read.
pub struct Read {
    /// When its request stops waiting.
    pub deadline: Instant,
    /// What it asks.
    pub ask: Ask,
}

/// What a read asks.
pub enum Ask {
    /// A balance; `None` is the readiness probe.
    Saldo(Option<Usuario>, oneshot::Sender<Result<u64, Unavailable>>),
    /// One of the feed's queries.
    Feed(Query),
}

impl Deadlined for Read {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn refuse(self) {
        match self.ask {
            Ask::Saldo(_, answer) => {
                let _ = answer.send(Err(Unavailable));
            }
            Ask::Feed(query) => query.refuse(),
        }
    }
}

/// A balance read taken from the queue.
struct SaldoRead {
    usuario: Option<Usuario>,
    answer: oneshot::Sender<Result<u64, Unavailable>>,
}

/// A reader connection and its prepared statements.
pub struct Session {
    /// The connection.
    pub client: Client,
    read: Statement,
    probe: Statement,
    /// The feed's statements.
    pub feed: feed::Statements,
}

/// Serves read batches on one connection (re-opened as needed) until the
/// queue closes.
pub async fn run(shared: Arc<Shared>, queue: Receiver<Read>) {
    let mut session: Option<Session> = None;
    let mut taken = Vec::with_capacity(BATCH_READS_MAX);
    let mut batch = Vec::with_capacity(BATCH_READS_MAX);
    let mut queries = Vec::new();
    while queue.take(&mut taken, BATCH_READS_MAX, None).await {
        let deadline = taken.iter().map(|read| read.deadline).min();
        let deadline = deadline.unwrap_or_else(Instant::now);
        for read in taken.drain(..) {
            match read.ask {
                Ask::Saldo(usuario, answer) => batch.push(SaldoRead { usuario, answer }),
                Ask::Feed(query) => queries.push(query),
            }
        }
        if !batch.is_empty() {
            read_saldos(&shared, &mut session, &mut batch, deadline).await;
        }
        if !queries.is_empty() {
            feed::serve(&shared, &mut session, &mut queries, deadline).await;
        }
    }
}

/// Answers the balance reads of `batch` (and the probe, if it is there) by
/// `deadline`; empties it.
async fn read_saldos(
    shared: &Shared,
    session: &mut Option<Session>,
    batch: &mut Vec<SaldoRead>,
    deadline: Instant,
) {
    let read = async {
        // A connection found dead (the database restarted since its
        // last use) is replaced once: reading twice changes nothing.
        match read_batch(shared, session, batch).await {
            Err(Error::Database(error)) if super::is_connection_lost(&error) => {
                *session = None;
                read_batch(shared, session, batch).await
            }
            other => other,
        }
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(saldos)) => {
            // Only a write says whether debits can commit: a read that
            // succeeds leaves the storage's health as it was.
            let has_probe = batch.iter().any(|read| read.usuario.is_none());
            let probed = match has_probe {
                true => probe(shared, session, deadline).await,
                false => Ok(()),
            };
            match (has_probe, &probed) {
                (true, Ok(())) => shared.stats.answered(),
                (true, Err(_)) => shared.stats.failed(),
                (false, _) => {}
            }
            for (read, saldo) in batch.drain(..).zip(saldos) {
                let answer = match read.usuario {
                    Some(_) => Ok(saldo),
                    None => probed.map(|()| 0),
                };
                let _ = read.answer.send(answer);
            }
        }
        Ok(Err(_)) | Err(_) => {
            shared.stats.failed();
            *session = None;
            for read in batch.drain(..) {
                let _ = read.answer.send(Err(Unavailable));
            }
        }
    }
}

/// The readiness probe's write and commit, by `deadline`.
async fn probe(
    shared: &Shared,
    session: &Option<Session>,
    deadline: Instant,
) -> Result<(), Unavailable> {
    let open = session.as_ref().ok_or(Unavailable)?;
    let probe_id = fastrand::i64(..);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&probe_id];
    let write = open.client.execute(&open.probe, &params);
    match tokio::time::timeout_at(deadline.into(), write).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: the database refuses writes");
            Err(Unavailable)
        }
        Err(_) => {
            let token = open.client.cancel_token();
            shared.target.cancel(token).await;
            Err(Unavailable)
        }
    }
}

/// The reader's session, connected and prepared if it was not.
pub async fn open<'a>(
    shared: &Shared,
    session: &'a mut Option<Session>,
) -> Result<&'a Session, Error> {
    if session.as_ref().is_none_or(|open| open.client.is_closed()) {
        let client = shared.connect(Instant::now() + shared.timeout).await?;
        let read = client.prepare(READ_SQL).await?;
        let probe = client.prepare(PROBE_SQL).await?;
        let feed = feed::Statements::prepare(&client).await?;
        *session = Some(Session {
            client,
            read,
            probe,
            feed,
        });
    }
    Ok(session.as_ref().expect("connected above"))
}

/// The balances of `batch`'s accounts, in order (0 for the probe).
async fn read_batch(
    shared: &Shared,
    session: &mut Option<Session>,
    batch: &[SaldoRead],
) -> Result<Vec<u64>, Error> {
    let open = open(shared, session).await?;
    let names: Vec<&str> = batch
        .iter()
        .filter_map(|read| read.usuario.as_ref().map(Usuario::as_str))
        .collect();
    let rows = open.client.query(&open.read, &[&names]).await?;
    let found: hashbrown::HashMap<&str, i64> =
        rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let saldo_of = |usuario: &Usuario| {
        found
            .get(usuario.as_str())
            .map_or(shared.opening_saldo_u64(), |saldo| {
                super::writer::saldo_u64(*saldo)
            })
    };
    Ok(batch
        .iter()
        .map(|read| read.usuario.as_ref().map_or(0, saldo_of))
        .collect())
}
