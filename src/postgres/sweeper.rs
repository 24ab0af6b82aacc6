//! Forgets expired idempotency keys, and batch rows (and fences) older than
//! the keys' TTL, in bounded batches in the background: never one long
//! transaction, and rows a debit batch holds are skipped, not waited for.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::{Error, Shared};

/// The most rows one sweeping statement deletes.
const SWEEP_ROWS_MAX: i64 = 1_000;

/// The longest pause between sweeps.
const SWEEP_INTERVAL_MAX: Duration = Duration::from_secs(60);

const SWEEP_KEYS_SQL: &str = "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE expires_at <= now()
     LIMIT $1 FOR UPDATE SKIP LOCKED))";

const SWEEP_BATCHES_SQL: &str = "DELETE FROM debit_batches WHERE id = ANY(ARRAY(
    SELECT id FROM debit_batches WHERE recorded_at <= now() - $2::bigint * interval '1 millisecond'
     LIMIT $1 FOR UPDATE SKIP LOCKED))";

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
    let client = shared.target.connect(shared.timeout).await?;
    let keys = delete_in_batches(&client, SWEEP_KEYS_SQL, &[&SWEEP_ROWS_MAX]).await?;
    let batches = delete_in_batches(
        &client,
        SWEEP_BATCHES_SQL,
        &[&SWEEP_ROWS_MAX, &shared.key_ttl_ms],
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
