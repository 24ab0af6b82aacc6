//! Movements and events from the audit trail (SPEC section 9): history
//! pages, event pages, named consumers' positions, and the listener that
//! wakes feed readers when any instance commits.
//!
//! An event's id is `(feed_xid << 16) | seq`: the id of the transaction that
//! wrote the audit row (set by the batch function, migration 4) and the
//! debit's place in its batch. Two rules make that a feed without gaps:
//! - **Only below the horizon.** A page lists only rows whose `feed_xid` is
//!   below `pg_snapshot_xmin` of the statement's own snapshot: every
//!   transaction with a smaller id has ended, so no row can appear later
//!   below one already listed. A transaction still running (of any
//!   instance, or outside saldos) holds the feed back until it ends; it
//!   never makes it skip.
//! - **An account's rows commit in `(feed_xid, seq)` order.** A batch may
//!   not debit an account whose `last_xid` is above its own id (the debits
//!   come back blocked and are sent again in a new transaction), so the feed
//!   lists each account's debits in balance order, and a history page needs
//!   no horizon: a later movement of the account always sorts after every
//!   committed one.
//!
//! Rows written before migration 4 (`feed_xid` NULL) are in neither. Never
//! answers [`FeedError::Expired`]: the audit trail keeps everything.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{Client, Row, Statement};

use super::connect::Session as ConnectSession;
use super::reader::{self, Ask, Read, Session};
use super::{Error, Postgres, Shared};
use crate::ledger::DebitKind;
use crate::principal::{Kind, Principal};
use crate::seam::{Consumer, Event, EventId, FeedError, HistoryPage, Movement, Unavailable};
use crate::usuario::Usuario;

/// Bits of an event id below the transaction id: the debit's place in its
/// batch.
const SEQ_BITS: u32 = 16;

// A batch's places must fit below the transaction id.
const _: () = assert!(super::writer::BATCH_DEBITS_MAX < 1 << SEQ_BITS);

/// Transaction ids (`xid8`: epoch and xid) below this fit an event id; a
/// cluster reaches it after 2^48 transactions.
const FEED_XID_END: i64 = 1 << (64 - SEQ_BITS);

/// The channel the batch function notifies after a commit that debited.
const LISTEN_SQL: &str = "LISTEN saldos_events";

/// While the feed is held back (rows committed above the horizon, which a
/// transaction without a notification of its own may be holding), readers
/// are woken this often to look again; also the longest pause between
/// attempts to listen again, each of which wakes them too (a notification
/// may have been missed).
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The first pause before listening again, doubled up to
/// [`RECHECK_INTERVAL`].
const LISTEN_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// An account's movements before a cursor, newest first; one more than asked
/// for, to know whether older ones exist.
const HISTORY_SQL: &str = "SELECT feed_xid, seq, kind, monto, saldo, \
            floor(extract(epoch FROM debited_at) * 1000)::bigint \
       FROM debits \
      WHERE usuario = $1 AND feed_xid IS NOT NULL AND (feed_xid, seq) < ($2, $3) \
      ORDER BY feed_xid DESC, seq DESC LIMIT $4";

/// Events after a cursor, below the horizon (see the module's rules).
const EVENTS_SQL: &str = "SELECT feed_xid, seq, usuario, kind, monto, saldo, \
            floor(extract(epoch FROM debited_at) * 1000)::bigint, principal \
       FROM debits \
      WHERE feed_xid IS NOT NULL AND (feed_xid, seq) > ($1, $2) \
        AND feed_xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
      ORDER BY feed_xid, seq LIMIT $3";

/// Whether committed rows wait above the horizon: one index probe.
const HELD_BACK_SQL: &str = "SELECT EXISTS (SELECT 1 FROM debits \
      WHERE feed_xid >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint)";

const POSITION_SQL: &str = "SELECT position FROM event_consumers WHERE nombre = $1";

/// Positions are stored as the id's 64 bits, signed.
const STORE_POSITION_SQL: &str = "INSERT INTO event_consumers (nombre, position, updated_at) \
     VALUES ($1, $2, now()) \
     ON CONFLICT (nombre) DO UPDATE SET position = EXCLUDED.position, updated_at = now()";

/// The feed's statements, prepared on each reader connection.
pub struct Statements {
    history: Statement,
    events: Statement,
    held_back: Statement,
    position: Statement,
    store_position: Statement,
}

impl Statements {
    /// Prepares them on `client`.
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            history: client.prepare(HISTORY_SQL).await?,
            events: client.prepare(EVENTS_SQL).await?,
            held_back: client.prepare(HELD_BACK_SQL).await?,
            position: client.prepare(POSITION_SQL).await?,
            store_position: client.prepare(STORE_POSITION_SQL).await?,
        })
    }
}

/// A query of the feed, queued to the readers.
pub struct Query {
    ask: FeedAsk,
    answer: oneshot::Sender<Result<Answer, Unavailable>>,
}

enum FeedAsk {
    History {
        usuario: Usuario,
        before: Option<EventId>,
        limit: usize,
    },
    Events {
        after: Option<EventId>,
        limit: usize,
    },
    Position(Consumer),
    StorePosition(Consumer, EventId),
}

enum Answer {
    History(HistoryPage),
    Events(Vec<Event>),
    Position(Option<EventId>),
    Stored,
}

impl Query {
    /// Answers 503.
    pub fn refuse(self) {
        let _ = self.answer.send(Err(Unavailable));
    }
}

/// Answers `queries` one statement each, by `deadline`; empties it. A
/// connection found dead is replaced once (each statement can run again: a
/// read, or an upsert of the same value).
pub async fn serve(
    shared: &Shared,
    session: &mut Option<Session>,
    queries: &mut Vec<Query>,
    deadline: Instant,
) {
    for query in queries.drain(..) {
        let answering = async {
            match run(shared, session, &query.ask).await {
                Err(Error::Database(error)) if super::is_connection_lost(&error) => {
                    *session = None;
                    run(shared, session, &query.ask).await
                }
                other => other,
            }
        };
        let answer = match tokio::time::timeout_at(deadline.into(), answering).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                tracing::warn!(%error, "feed query failed");
                shared.stats.failed();
                *session = None;
                Err(Unavailable)
            }
            Err(_) => {
                shared.stats.failed();
                if let Some(open) = session.take() {
                    // Its place comes back once the server stopped it.
                    let token = open.client.cancel_token();
                    shared.target.cancel(token).await;
                }
                Err(Unavailable)
            }
        };
        let _ = query.answer.send(answer);
    }
}

/// One query on the reader's connection.
async fn run(
    shared: &Shared,
    session: &mut Option<Session>,
    ask: &FeedAsk,
) -> Result<Answer, Error> {
    let open = reader::open(shared, session).await?;
    let (client, statements) = (&open.client, &open.feed);
    match ask {
        FeedAsk::History {
            usuario,
            before,
            limit,
        } => {
            let (xid, seq) = before.map_or((i64::MAX, i32::MAX), split);
            let rows_max = i64::try_from(*limit + 1).expect("a page is small");
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&usuario.as_str(), &xid, &seq, &rows_max];
            let rows = client.query(&statements.history, &params).await?;
            let more = rows.len() > *limit;
            let movements = rows
                .iter()
                .take(*limit)
                .map(movement)
                .collect::<Result<_, _>>()?;
            Ok(Answer::History(HistoryPage { movements, more }))
        }
        FeedAsk::Events { after, limit } => {
            let (xid, seq) = split(after.unwrap_or_default());
            let rows_max = i64::try_from(*limit).expect("a page is small");
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&xid, &seq, &rows_max];
            // Pipelined: one round trip for both.
            let (rows, held_back) = tokio::join!(
                client.query(&statements.events, &params),
                client.query_one(&statements.held_back, &[])
            );
            shared
                .feed_held_back
                .store(held_back?.get(0), Ordering::Relaxed);
            let events = rows?.iter().map(event).collect::<Result<_, _>>()?;
            Ok(Answer::Events(events))
        }
        FeedAsk::Position(consumer) => {
            let row = client
                .query_opt(&statements.position, &[&consumer.as_str()])
                .await?;
            // Stored as the same 64 bits, signed.
            let position = row.map(|row| EventId(row.get::<_, i64>(0) as u64));
            Ok(Answer::Position(position))
        }
        FeedAsk::StorePosition(consumer, id) => {
            let position = id.0 as i64;
            client
                .execute(&statements.store_position, &[&consumer.as_str(), &position])
                .await?;
            Ok(Answer::Stored)
        }
    }
}

/// A cursor as the `(feed_xid, seq)` it stands for.
fn split(id: EventId) -> (i64, i32) {
    let xid = i64::try_from(id.0 >> SEQ_BITS).expect("48 bits fit");
    let seq = i32::try_from(id.0 & ((1 << SEQ_BITS) - 1)).expect("16 bits fit");
    (xid, seq)
}

/// The id of the event at `(feed_xid, seq)`.
fn event_id(feed_xid: i64, seq: i32) -> EventId {
    assert!(
        (1..FEED_XID_END).contains(&feed_xid),
        "transaction id {feed_xid} out of the feed's range"
    );
    let seq = u64::try_from(seq).expect("seq is positive");
    assert!(seq < 1 << SEQ_BITS, "seq {seq} beyond a batch");
    EventId(((feed_xid as u64) << SEQ_BITS) | seq)
}

/// The movement in `row`: feed_xid and seq from column `xid_at`, then
/// kind, monto, saldo and time in ms from column `rest_at`.
fn movement_at(row: &Row, xid_at: usize, rest_at: usize) -> Result<Movement, Error> {
    let kind: &str = row.get(rest_at);
    let kind = match kind {
        "pago" => DebitKind::Pago,
        "retiro" => DebitKind::Retiro,
        other => return Err(Error::Corrupt(format!("debit kind '{other}'"))),
    };
    let unsigned = |at: usize| u64::try_from(row.get::<_, i64>(at)).ok();
    let read = (|| {
        Some(Movement {
            id: event_id(row.get(xid_at), row.get(xid_at + 1)),
            kind,
            monto: unsigned(rest_at + 1)?,
            saldo: unsigned(rest_at + 2)?,
            time_ms: unsigned(rest_at + 3)?,
        })
    })();
    read.ok_or_else(|| Error::Corrupt("a negative amount, balance or time".into()))
}

/// A history row: feed_xid, seq, kind, monto, saldo, ms.
fn movement(row: &Row) -> Result<Movement, Error> {
    movement_at(row, 0, 2)
}

/// An events row: feed_xid, seq, usuario, kind, monto, saldo, ms, principal.
fn event(row: &Row) -> Result<Event, Error> {
    let movement = movement_at(row, 0, 3)?;
    let name: &str = row.get(2);
    let usuario =
        Usuario::new(name).map_err(|_| Error::Corrupt(format!("account name '{name}'")))?;
    let principal: &str = row.get(7);
    // The audit row's text as written: kinded since schema version 3; a
    // bare name (an instance of an older release, mid rolling deploy) is a
    // principal of unknown kind, rendered as it was recorded.
    let principal = match principal {
        super::NO_PRINCIPAL => None,
        text => Some(
            Principal::parse(text)
                .or_else(|| Principal::new(Kind::Unknown, text))
                .ok_or_else(|| Error::Corrupt(format!("principal '{text}'")))?,
        ),
    };
    Ok(Event {
        movement,
        usuario,
        principal,
    })
}

impl Postgres {
    /// The account's movements older than `before`, newest first.
    pub async fn history(
        &self,
        usuario: &Usuario,
        before: Option<EventId>,
        limit: usize,
    ) -> Result<HistoryPage, Unavailable> {
        let ask = FeedAsk::History {
            usuario: *usuario,
            before,
            limit,
        };
        match self.ask(ask).await? {
            Answer::History(page) => Ok(page),
            _ => unreachable!("a history query answers a page"),
        }
    }

    /// Durable events after `after`, in feed order.
    pub async fn events(
        &self,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<Event>, FeedError> {
        match self.ask(FeedAsk::Events { after, limit }).await? {
            Answer::Events(events) => Ok(events),
            _ => unreachable!("an events query answers events"),
        }
    }

    /// Woken after commits of any instance (see [`listen`]).
    pub fn feed_changes(&self) -> watch::Receiver<u64> {
        self.shared.commits.subscribe()
    }

    /// A named consumer's stored position.
    pub async fn consumer_position(
        &self,
        consumer: &Consumer,
    ) -> Result<Option<EventId>, Unavailable> {
        match self.ask(FeedAsk::Position(consumer.clone())).await? {
            Answer::Position(position) => Ok(position),
            _ => unreachable!("a position query answers a position"),
        }
    }

    /// Stores a named consumer's position, durably (a commit).
    pub async fn store_consumer_position(
        &self,
        consumer: &Consumer,
        id: EventId,
    ) -> Result<(), Unavailable> {
        match self
            .ask(FeedAsk::StorePosition(consumer.clone(), id))
            .await?
        {
            Answer::Stored => Ok(()),
            _ => unreachable!("a store answers stored"),
        }
    }

    /// Queues `ask` to the readers and waits, at most `--db-timeout`.
    async fn ask(&self, ask: FeedAsk) -> Result<Answer, Unavailable> {
        let (answer, answered) = oneshot::channel();
        let read = Read {
            deadline: Instant::now() + self.shared.timeout,
            ask: Ask::Feed(Query { ask, answer }),
        };
        self.reads.push(read).await?;
        // The reader answers every query it took by its deadline.
        answered.await.map_err(|_| Unavailable)?
    }
}

/// Listens on a connection of its own (one place among the connections)
/// for the notification each debiting batch sends at commit, and wakes feed
/// readers on each. Also wakes them every [`RECHECK_INTERVAL`] while the
/// feed is held back (a transaction outside saldos, or a batch that rolled
/// back or debited nothing, ends without a notification), and whenever it
/// starts listening again. Runs until aborted.
pub async fn listen(shared: Arc<Shared>) {
    let mut pause = LISTEN_RETRY_PAUSE;
    let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (notified, mut notifications) = mpsc::channel(1);
        match subscribe(&shared, notified).await {
            Ok(client) => {
                pause = LISTEN_RETRY_PAUSE;
                // What committed while nobody listened.
                shared.commits.committed();
                loop {
                    tokio::select! {
                        notification = notifications.recv() => match notification {
                            Some(()) => shared.commits.committed(),
                            None => break,
                        },
                        _ = recheck.tick() => {
                            if shared.feed_held_back.load(Ordering::Relaxed) {
                                shared.commits.committed();
                            }
                        }
                    }
                }
                drop(client);
                tracing::warn!("the feed's listening connection ended; listening again");
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "cannot listen for commits");
            }
        }
        tokio::time::sleep(pause).await;
        shared.commits.committed();
        pause = (pause * 2).min(RECHECK_INTERVAL);
    }
}

/// A listening connection: `LISTEN` sent, notifications told on `notified`.
async fn subscribe(shared: &Shared, notified: mpsc::Sender<()>) -> Result<Client, Error> {
    let deadline = Instant::now() + shared.timeout;
    let place = shared.place(deadline).await?;
    let timeout = deadline.saturating_duration_since(Instant::now());
    let client = shared
        .target
        .connect(timeout, ConnectSession::Listener(place, notified))
        .await?;
    tokio::time::timeout_at(deadline.into(), client.batch_execute(LISTEN_SQL))
        .await
        .map_err(|_| Error::Timeout(shared.timeout))??;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A cursor names the (feed_xid, seq) of its event, and ids sort as
    // (feed_xid, seq) do.
    #[test]
    fn ids_split_back_into_their_parts() {
        for (xid, seq) in [(3, 1), (3, 512), (4, 1), (FEED_XID_END - 1, 65_535)] {
            assert_eq!(split(event_id(xid, seq)), (xid, seq));
        }
        assert!(event_id(3, 512) < event_id(4, 1));
        assert_eq!(split(EventId(0)), (0, 0));
    }
}
