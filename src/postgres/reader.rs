//! The read batcher: each reader connection takes every balance read queued
//! (up to [`BATCH_READS_MAX`]) and answers them with one
//! `WHERE usuario = ANY($1)` query. An account without a row has the opening
//! balance. Reading never writes. The readiness probe is a read of no
//! account: a real round trip to the database.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tokio_postgres::{Client, Statement};

use super::queue::{Deadlined, Receiver};
use super::{Error, Shared};
use crate::journal::Unavailable;
use crate::usuario::Usuario;

/// The most reads answered by one query.
pub const BATCH_READS_MAX: usize = 512;

const READ_SQL: &str = "SELECT usuario, saldo FROM accounts WHERE usuario = ANY($1)";

/// A queued read; `usuario` `None` is the readiness probe.
pub struct Read {
    /// The account, if any.
    pub usuario: Option<Usuario>,
    /// When its request stops waiting.
    pub deadline: Instant,
    /// Where its answer goes.
    pub answer: oneshot::Sender<Result<u64, Unavailable>>,
}

impl Deadlined for Read {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn refuse(self) {
        let _ = self.answer.send(Err(Unavailable));
    }
}

struct Session {
    client: Client,
    read: Statement,
}

/// Serves read batches on one connection (re-opened as needed) until the
/// queue closes.
pub async fn run(shared: Arc<Shared>, queue: Receiver<Read>) {
    let mut session: Option<Session> = None;
    let mut batch = Vec::with_capacity(BATCH_READS_MAX);
    while queue.take(&mut batch, BATCH_READS_MAX).await {
        let deadline = batch.iter().map(|read| read.deadline).min();
        let deadline = deadline.unwrap_or_else(Instant::now);
        let read = async {
            // A connection found dead (the database restarted since its
            // last use) is replaced once: reading twice changes nothing.
            match read_batch(&shared, &mut session, &batch).await {
                Err(Error::Database(error)) if super::is_connection_lost(&error) => {
                    session = None;
                    read_batch(&shared, &mut session, &batch).await
                }
                other => other,
            }
        };
        match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(saldos)) => {
                shared.stats.answered();
                for (read, saldo) in batch.drain(..).zip(saldos) {
                    let _ = read.answer.send(Ok(saldo));
                }
            }
            Ok(Err(_)) | Err(_) => {
                shared.stats.failed();
                session = None;
                batch.drain(..).for_each(Deadlined::refuse);
            }
        }
    }
}

/// The balances of `batch`'s accounts, in order (0 for the probe).
async fn read_batch(
    shared: &Shared,
    session: &mut Option<Session>,
    batch: &[Read],
) -> Result<Vec<u64>, Error> {
    if session.as_ref().is_none_or(|open| open.client.is_closed()) {
        let client = shared.target.connect(shared.timeout).await?;
        let read = client.prepare(READ_SQL).await?;
        *session = Some(Session { client, read });
    }
    let open = session.as_ref().expect("connected above");
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
