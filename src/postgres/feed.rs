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
//!
//! The feed's index is a BRIN (cheap to insert into, but it yields block
//! ranges, not rows in order), so a page is read window after window of
//! transaction ids, each below its own statement's horizon: the next window
//! begins where one ended only when that one ended below its horizon, so
//! windows leave no gap between them.
//!
//! Commits are announced to the other instances after the fact, not by the
//! debit transaction: a writer whose batch debited marks [`Announcer`], and
//! the listener sends `NOTIFY` on its own connection, at most one in flight
//! and one per [`ANNOUNCE_PAUSE`], one for every commit made meanwhile. `pg_notify` inside the batch took the
//! cluster-wide notification lock from pre-commit through the WAL flush, so
//! concurrent batches stopped sharing flushes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};

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

/// Every instance listens on this channel for the others' commits, and
/// learns its own backend's id (its own announcements are not news).
const LISTEN_SQL: &str = "LISTEN saldos_events; SELECT pg_backend_pid()";

/// An instance's announcement that it committed debits. A transaction of its
/// own with no write but the notification queue: its commit is not waited
/// for (nothing in it needs durability), so it is cheap and brief.
const NOTIFY_SQL: &str = "NOTIFY saldos_events";

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
/// for, to know whether older ones exist. A backward scan of
/// `debits_history (usuario, feed_xid, seq)`.
const HISTORY_SQL: &str = "SELECT feed_xid, seq, kind, monto, saldo, \
            floor(extract(epoch FROM debited_at) * 1000)::bigint \
       FROM debits \
      WHERE usuario = $1 AND feed_xid IS NOT NULL AND (feed_xid, seq) < ($2, $3) \
      ORDER BY feed_xid DESC, seq DESC LIMIT $4";

/// The first window of an event page, in transaction ids. The feed's index
/// is a BRIN: a query reads every row of the block ranges its window
/// touches and sorts them, so the first window is about a second of debits
/// at full rate (a batch is one id); each window after it is twice as wide
/// (a stretch of ids no debit took, other databases' transactions, is
/// crossed in a few).
const WINDOW_XIDS: i64 = 1_024;

/// The most windows one event page reads. A page that stops here is short,
/// never wrong: its `ultimo` is its last event.
const WINDOWS_PER_PAGE_MAX: usize = 40;

/// The least time between two announcements of one instance: each is a
/// transaction, and a signal to and a wakeup of every listening backend, so
/// at full debit rate they are sent for many batches at once rather than for
/// each; the other instances' long polls wait this much longer at most. A
/// commit after a quiet spell is announced at once. With 10 ms, the
/// feed's cost at 256 connections was 5.1 % of debits per CPU-second, with
/// 50 ms 2.6 % (`benches/recording.sh`, README "Movements and events on
/// PostgreSQL").
const ANNOUNCE_PAUSE: Duration = Duration::from_millis(50);

/// How often, at most, the listener summarizes the feed index's new block
/// ranges (`saldos_feed_summarize`), after this instance debited: what a
/// reader at the head scans beyond its window is about this long of rows.
const SUMMARIZE_INTERVAL: Duration = Duration::from_secs(1);

/// Summarizes the feed index's new block ranges (see migration 4).
const SUMMARIZE_SQL: &str = "SELECT saldos_feed_summarize()";

/// At most `$3` events after the cursor `($1, $2)`, in one window of ids
/// from the cursor (or the feed's start) below the horizon (see the
/// module's rules), with the horizon, the window's end and whether committed
/// rows wait above the horizon (one BRIN probe) in every row; one row of
/// those three alone when the window holds none. `$4`: the window's size.
/// Sent unnamed with its parameters' types ([`EVENTS_TYPES`]), so that it is
/// planned for their values: a generic plan cannot tell that a window is
/// narrow, and reads the whole table instead of the BRIN's ranges.
const EVENTS_SQL: &str = "WITH w AS ( \
         SELECT b.horizon, least(b.horizon, b.low + $4) AS high, b.low, \
                EXISTS (SELECT 1 FROM debits WHERE feed_xid >= b.horizon) AS held_back \
           FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon, \
                        greatest($1, (SELECT start_xid FROM saldos_feed)) AS low) b) \
     SELECT w.horizon, w.high, w.held_back, d.feed_xid, d.seq, d.usuario, d.kind, d.monto, \
            d.saldo, d.ms, d.principal \
       FROM w LEFT JOIN LATERAL ( \
            SELECT feed_xid, seq, usuario, kind, monto, saldo, \
                   floor(extract(epoch FROM debited_at) * 1000)::bigint AS ms, principal \
              FROM debits \
             WHERE feed_xid >= w.low AND feed_xid < w.high AND (feed_xid, seq) > ($1, $2) \
             ORDER BY feed_xid, seq LIMIT $3) d ON true";

/// The types of [`EVENTS_SQL`]'s parameters.
const EVENTS_TYPES: [Type; 4] = [Type::INT8, Type::INT4, Type::INT8, Type::INT8];

const POSITION_SQL: &str = "SELECT position FROM event_consumers WHERE nombre = $1";

/// Positions are stored as the id's 64 bits, signed.
const STORE_POSITION_SQL: &str = "INSERT INTO event_consumers (nombre, position, updated_at) \
     VALUES ($1, $2, now()) \
     ON CONFLICT (nombre) DO UPDATE SET position = EXCLUDED.position, updated_at = now()";

/// The feed's statements, prepared on each reader connection.
pub struct Statements {
    history: Statement,
    position: Statement,
    store_position: Statement,
}

impl Statements {
    /// Prepares them on `client`.
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            history: client.prepare(HISTORY_SQL).await?,
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
            match run(shared, session, &query.ask, deadline).await {
                Err(Error::Database(error)) if super::is_connection_lost(&error) => {
                    *session = None;
                    run(shared, session, &query.ask, deadline).await
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

/// One query on the reader's connection, answered by `deadline`.
async fn run(
    shared: &Shared,
    session: &mut Option<Session>,
    ask: &FeedAsk,
    deadline: Instant,
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
            let events = events_page(shared, open, *after, *limit).await?;
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
            // Bounded on the server (`server_bound`): a store refused there
            // cannot commit after its 503. A failure leaves the transaction
            // open: the caller drops the session, which ends it.
            let ms = super::server_bound(deadline).as_millis().max(1);
            client
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = {ms}"
                ))
                .await?;
            client
                .execute(&statements.store_position, &[&consumer.as_str(), &position])
                .await?;
            client.batch_execute("COMMIT").await?;
            Ok(Answer::Stored)
        }
    }
}

/// At most `limit` events after `after`, window after window (see
/// [`EVENTS_SQL`]) until the page is full, the horizon is reached, or
/// [`WINDOWS_PER_PAGE_MAX`] windows were read.
async fn events_page(
    shared: &Shared,
    open: &Session,
    after: Option<EventId>,
    limit: usize,
) -> Result<Vec<Event>, Error> {
    let (mut xid, mut seq) = split(after.unwrap_or_default());
    let mut window = WINDOW_XIDS;
    let mut events = Vec::with_capacity(limit);
    for _ in 0..WINDOWS_PER_PAGE_MAX {
        let wanted = i64::try_from(limit - events.len()).expect("a page is small");
        let values: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&xid, &seq, &wanted, &window];
        let params: Vec<_> = values.into_iter().zip(EVENTS_TYPES).collect();
        let rows = open.client.query_typed(EVENTS_SQL, &params).await?;
        // The window's own row is always there (a left join of it).
        let first = rows
            .first()
            .ok_or_else(|| Error::Corrupt("an event window without its row".into()))?;
        let (horizon, high): (i64, i64) = (first.get(0), first.get(1));
        shared.feed_held_back.store(first.get(2), Ordering::Relaxed);
        for row in &rows {
            if row.get::<_, Option<i64>>(3).is_some() {
                events.push(event(row)?);
            }
        }
        if events.len() == limit || high >= horizon {
            break;
        }
        // The window is exhausted below the horizon and the page is not
        // full: the next window begins where it ended, twice as wide.
        window = window.saturating_mul(2).min(FEED_XID_END);
        (xid, seq) = (high, -1);
    }
    Ok(events)
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

/// An events row: horizon, window end, held back, then feed_xid, seq,
/// usuario, kind, monto, saldo, ms, principal.
fn event(row: &Row) -> Result<Event, Error> {
    let movement = movement_at(row, 3, 6)?;
    let name: &str = row.get(5);
    let usuario =
        Usuario::new(name).map_err(|_| Error::Corrupt(format!("account name '{name}'")))?;
    let principal: &str = row.get(10);
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

/// Commits of this instance that debited and that the other instances have
/// not been told of yet: set by each such commit, taken by the listener,
/// which then sends one `NOTIFY` for all of them. Every commit is followed by
/// a notification sent after it.
#[derive(Default)]
pub struct Announcer {
    /// A commit waits for its announcement.
    pending: AtomicBool,
    /// A commit wrote audit rows since the feed's index was last
    /// summarized by this instance.
    unsummarized: AtomicBool,
    /// Wakes the listener when `pending` is set.
    wake: Notify,
}

impl Announcer {
    /// A commit that debited: announce it (with any others made meanwhile).
    pub fn committed(&self) {
        self.unsummarized.store(true, Ordering::Relaxed);
        // Already set: the listener has been woken and has not taken it yet,
        // so its next notification is sent after this commit.
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Waits for commits to announce and takes them. Cancel safe: `pending`
    /// is taken only in the poll that returns.
    async fn next(&self) {
        while !self.pending.swap(false, Ordering::AcqRel) {
            self.wake.notified().await;
        }
    }
}

/// Listens on a connection of its own (one place among the connections)
/// for the other instances' announcements, and wakes feed readers on each;
/// on the same connection, announces this instance's commits
/// ([`Announcer`]). Also wakes readers every [`RECHECK_INTERVAL`] while the
/// feed is held back (a transaction outside saldos, or a batch that rolled
/// back or debited nothing, ends without an announcement), and whenever it
/// starts listening again. Runs until aborted.
pub async fn listen(shared: Arc<Shared>) {
    let mut pause = LISTEN_RETRY_PAUSE;
    let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summarize = tokio::time::interval(SUMMARIZE_INTERVAL);
    summarize.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                        () = shared.announcer.next() => {
                            if let Err(error) = announce(&shared, &client).await {
                                // Told again on the next connection.
                                shared.announcer.committed();
                                tracing::warn!(%error, "cannot announce commits");
                                break;
                            }
                            // Notifications meanwhile wait (one pending
                            // covers them all), commits set the flag.
                            tokio::time::sleep(ANNOUNCE_PAUSE).await;
                        }
                        _ = recheck.tick() => {
                            if shared.feed_held_back.load(Ordering::Relaxed) {
                                shared.commits.committed();
                            }
                        }
                        _ = summarize.tick() => {
                            if shared.announcer.unsummarized.swap(false, Ordering::Relaxed)
                                && let Err(error) = summarize_feed(&shared, &client).await
                            {
                                // Autovacuum summarizes too: reads cost more
                                // meanwhile, none is wrong.
                                tracing::warn!(%error, "cannot summarize the feed's index");
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

/// A listening connection: `LISTEN` sent, the other backends'
/// notifications told on `notified` (this instance's readers were woken at
/// its own commits).
async fn subscribe(shared: &Shared, notified: mpsc::Sender<()>) -> Result<Client, Error> {
    let deadline = Instant::now() + shared.timeout;
    let place = shared.place(deadline).await?;
    let timeout = deadline.saturating_duration_since(Instant::now());
    let own_pid = Arc::new(AtomicI32::new(0));
    let session = ConnectSession::Listener(place, notified, own_pid.clone());
    let client = shared.target.connect(timeout, session).await?;
    let messages = tokio::time::timeout_at(deadline.into(), client.simple_query(LISTEN_SQL))
        .await
        .map_err(|_| Error::Timeout(shared.timeout))??;
    let pid = messages
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
            _ => None,
        })
        .ok_or_else(|| Error::Corrupt("pg_backend_pid() answered no number".into()))?;
    // Before the first announcement, which is sent on this client.
    own_pid.store(pid, Ordering::Relaxed);
    Ok(client)
}

/// Summarizes the feed index's new block ranges on the listener's
/// connection, by `--db-timeout`.
async fn summarize_feed(shared: &Shared, client: &Client) -> Result<(), Error> {
    tokio::time::timeout(shared.timeout, client.batch_execute(SUMMARIZE_SQL))
        .await
        .map_err(|_| Error::Timeout(shared.timeout))??;
    Ok(())
}

/// Sends one announcement on the listener's connection, by `--db-timeout`.
async fn announce(shared: &Shared, client: &Client) -> Result<(), Error> {
    tokio::time::timeout(shared.timeout, client.batch_execute(NOTIFY_SQL))
        .await
        .map_err(|_| Error::Timeout(shared.timeout))??;
    Ok(())
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
