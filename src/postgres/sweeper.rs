//! Forgets expired idempotency keys, and batch rows (commit markers and
//! fences) older than [`BATCH_ROWS_KEPT_S`], in bounded batches in the
//! background: never one long transaction, and keys a debit batch holds are
//! skipped, not waited for.
//!
//! The fencing invariant (ARCHITECTURE.md): a batch id's row is never
//! removed while a transaction carrying that id could still commit. A batch
//! inserts its row within its statement, which the server ends within
//! `--db-timeout` (`statement_timeout`, at most [`DB_TIMEOUT_MAX`]); rows
//! are kept [`BATCH_ROWS_KEPT_S`], ten times longer, whatever the keys' TTL.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::{Error, Shared};
use crate::config::DB_TIMEOUT_MAX;

/// How long batch rows are kept, in seconds.
pub const BATCH_ROWS_KEPT_S: i64 = 600;

const _: () = assert!(BATCH_ROWS_KEPT_S as u64 >= 10 * DB_TIMEOUT_MAX.as_secs());

/// The most rows one sweeping statement deletes.
const SWEEP_ROWS_MAX: i64 = 1_000;

/// The longest pause between sweeps.
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(60);

const SWEEP_KEYS_SQL: &str = "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE expires_at <= now()
     LIMIT $1 FOR UPDATE SKIP LOCKED))";

// No row lock: a batch row this old is held by no transaction, and the
// application role has no UPDATE on the table.
const SWEEP_BATCHES_SQL: &str = "DELETE FROM debit_batches WHERE id = ANY(ARRAY(
    SELECT id FROM debit_batches WHERE recorded_at <= now() - $2::bigint * interval '1 second'
     LIMIT $1))";

/// Sweeps every `min(TTL, 60 s)` for as long as the process runs.
pub async fn run(shared: Arc<Shared>) {
    let interval = Duration::from_millis(shared.key_ttl_ms.unsigned_abs()).min(SWEEP_INTERVAL_MAX);
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        match sweep(&shared).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "expired idempotency keys and batches swept"),
            Err(error) => tracing::warn!(%error, "cannot sweep expired idempotency keys"),
        }
    }
}

/// One sweep: deletes in bounded statements until nothing expired is left.
async fn sweep(shared: &Shared) -> Result<u64, Error> {
    let client = shared
        .connect(std::time::Instant::now() + shared.timeout)
        .await?;
    let keys = delete_in_batches(&client, SWEEP_KEYS_SQL, &[&SWEEP_ROWS_MAX]).await?;
    let batches = delete_in_batches(
        &client,
        SWEEP_BATCHES_SQL,
        &[&SWEEP_ROWS_MAX, &BATCH_ROWS_KEPT_S],
    )
    .await?;
    Ok(keys + batches)
}

/// Runs a bounded `DELETE` until it deletes fewer rows than its bound.
async fn delete_in_batches(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, Error> {
    let statement = client.prepare(sql).await?;
    let mut removed = 0;
    loop {
        let deleted = client.execute(&statement, params).await?;
        removed += deleted;
        if deleted < SWEEP_ROWS_MAX.unsigned_abs() {
            return Ok(removed);
        }
    }
}
