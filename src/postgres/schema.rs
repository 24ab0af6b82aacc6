//! The schema: versioned migrations embedded in the binary, applied under a
//! PostgreSQL advisory lock so instances starting together are safe, and the
//! fixed settings (opening balance, seed) recorded on first use and checked
//! at every start. Does DDL only when the schema is behind.
//!
//! A small runner of our own rather than `refinery`: it must check the
//! version without DDL (an application role has none), hold the advisory
//! lock across the check and the migrations, and build indexes on live
//! tables concurrently, outside a transaction, which `refinery` does not do.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::Error;
use crate::usuario::Usuario;

/// A migration: its version (ascending, never reused), its SQL (one
/// transaction), and the index changes it then makes concurrently, in order.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
    indexes: &'static [Index],
}

/// An index change made `CONCURRENTLY` after its migration's transaction: a
/// plain `CREATE INDEX` blocks writes to the table for as long as it scans
/// it, a plain `DROP INDEX` waits for every transaction using the table
/// while queueing every later one behind it. The migration's version is
/// recorded only once every change is made, so an interrupted run is run
/// again whole (its SQL must allow that).
enum Index {
    /// Built; one an interrupted build left `INVALID` is dropped and built
    /// again.
    Build {
        name: &'static str,
        sql: &'static str,
    },
    /// Dropped if it exists (an interrupted drop leaves it `INVALID`, and
    /// the next run drops it).
    Drop { name: &'static str },
}

/// Every migration, in order.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "schema",
        sql: include_str!("migrations/0001_schema.sql"),
        indexes: &[],
    },
    Migration {
        version: 2,
        name: "debit_batch_v2",
        sql: include_str!("migrations/0002_debit_batch_v2.sql"),
        indexes: &[],
    },
    Migration {
        version: 3,
        name: "principal_kinds",
        sql: include_str!("migrations/0003_principal_kinds.sql"),
        indexes: &[],
    },
    Migration {
        version: 4,
        name: "feed",
        sql: include_str!("migrations/0004_feed.sql"),
        indexes: &[
            // The feed: events in a window of transaction ids. Rows are
            // appended in nearly increasing feed_xid order, so each block
            // range's bounds are narrow: a BRIN finds the window's ranges at
            // almost no cost per insert (a btree here doubled the audit
            // row's index upkeep). Ranges not summarized yet always match
            // (read, never skipped): the service summarizes new ones about
            // once a second (saldos_feed_summarize), autovacuum at its
            // visits. Not autosummarize: at full rate its requests, one per
            // range, overflow autovacuum's queue (a log line each) long
            // before a worker takes them. 32 pages (about 2,000 rows) a
            // range: what a page at the head of the feed reads beyond its
            // own rows.
            Index::Build {
                name: "debits_feed",
                sql: "CREATE INDEX CONCURRENTLY IF NOT EXISTS debits_feed ON debits \
                      USING brin (feed_xid) WITH (pages_per_range = 32)",
            },
            // An account's history, newest first, before a cursor (a
            // backward scan); also the index of an account's debits that
            // debits_usuario was (rows before migration 4 have feed_xid
            // NULL, which sorts last).
            Index::Build {
                name: "debits_history",
                sql: "CREATE INDEX CONCURRENTLY IF NOT EXISTS debits_history \
                      ON debits (usuario, feed_xid, seq)",
            },
            // Replaced by debits_history: no query of the service used it.
            Index::Drop {
                name: "debits_usuario",
            },
        ],
    },
];

/// The advisory lock key held while migrating ("saldos" in ASCII).
const MIGRATION_LOCK: i64 = 0x7361_6c64_6f73;

/// Pause between attempts to take [`MIGRATION_LOCK`] while another session
/// migrates.
const MIGRATION_LOCK_PAUSE: Duration = Duration::from_millis(100);

/// The version this binary needs.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |migration| migration.version)
}

/// The schema's version now (0: empty), read without DDL.
async fn current_version(client: &Client) -> Result<i32, Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('saldos_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> = client
        .query_one("SELECT max(version) FROM saldos_migrations", &[])
        .await?
        .get(0);
    Ok(version.unwrap_or(0))
}

/// Brings the schema to [`latest_version`]; returns how many migrations ran.
/// A schema already current is left alone (no lock, no DDL).
pub async fn migrate(client: &mut Client) -> Result<usize, Error> {
    let version = current_version(client).await?;
    if version > latest_version() {
        return Err(Error::SchemaAhead {
            found: version,
            known: latest_version(),
        });
    }
    if version == latest_version() {
        return Ok(0);
    }
    lock_migrations(client).await?;
    let applied = apply_missing(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = applied.map_err(needs_privileges)?;
    unlocked?;
    Ok(applied)
}

/// Takes [`MIGRATION_LOCK`], trying again until it is free. Not
/// `pg_advisory_lock`: a session waiting in it holds a snapshot, which
/// `CREATE INDEX CONCURRENTLY` in the session holding the lock waits for,
/// and each would wait for the other.
async fn lock_migrations(client: &Client) -> Result<(), Error> {
    loop {
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?
            .get(0);
        if locked {
            return Ok(());
        }
        tokio::time::sleep(MIGRATION_LOCK_PAUSE).await;
    }
}

/// Under the lock: re-reads the version (another instance may have just
/// migrated) and applies each missing migration in its own transaction.
async fn apply_missing(client: &mut Client) -> Result<usize, Error> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS saldos_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let version = current_version(client).await?;
    let mut applied = 0;
    for migration in MIGRATIONS.iter().filter(|m| m.version > version) {
        let transaction = client.transaction().await?;
        transaction.batch_execute(migration.sql).await?;
        if migration.indexes.is_empty() {
            record(&transaction, migration).await?;
            transaction.commit().await?;
        } else {
            transaction.commit().await?;
            for index in migration.indexes {
                match index {
                    Index::Build { name, sql } => build_concurrently(client, name, sql).await?,
                    Index::Drop { name } => {
                        client
                            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                            .await?;
                    }
                }
            }
            record(client, migration).await?;
        }
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "database migrated"
        );
        applied += 1;
    }
    Ok(applied)
}

/// Records `migration` as applied.
async fn record(
    client: &impl tokio_postgres::GenericClient,
    migration: &Migration,
) -> Result<(), Error> {
    client
        .execute(
            "INSERT INTO saldos_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
    Ok(())
}

/// Builds index `name` with `sql` without blocking writes; an `INVALID` one
/// an interrupted build left (which `IF NOT EXISTS` would keep) is dropped
/// first.
async fn build_concurrently(client: &Client, name: &str, sql: &str) -> Result<(), Error> {
    let invalid = client
        .query_opt(
            "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) AND NOT indisvalid",
            &[&name],
        )
        .await?
        .is_some();
    if invalid {
        tracing::warn!(
            index = name,
            "an interrupted migration left an invalid index: built again"
        );
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
            .await?;
    }
    client.batch_execute(sql).await?;
    Ok(())
}

/// What the service's role may do: read and write balances, keys and batch
/// rows, append to the audit trail (never change it), record the settings on
/// first use, read the schema version, read where the feed starts, read and
/// store the feed's consumer positions (an upsert: `SELECT` for its conflict
/// target), summarize the feed's index (through the owner's function). No
/// DDL. `UPDATE` on the keys because
/// an expired key is claimed again in place and the sweeper locks the rows
/// it deletes (`FOR UPDATE SKIP LOCKED` needs it); batch rows are never
/// locked by the sweeper, so that table gets no `UPDATE`.
const APP_ROLE_GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON accounts TO {role}",
    "GRANT SELECT, INSERT ON debits TO {role}",
    "GRANT SELECT, INSERT, DELETE ON debit_batches TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO {role}",
    "GRANT SELECT, INSERT ON saldos_settings TO {role}",
    "GRANT SELECT ON saldos_migrations TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON event_consumers TO {role}",
    "GRANT SELECT ON saldos_feed TO {role}",
    "GRANT EXECUTE ON FUNCTION saldos_debit_batch_v2(bigint, bigint, bigint, bigint, text[], \
     text[], bigint[], text[], text[], bigint[]) TO {role}",
    "GRANT EXECUTE ON FUNCTION saldos_feed_summarize() TO {role}",
];

/// Makes sure `role` (already checked to be a plain lower-case identifier)
/// exists, can log in and holds exactly [`APP_ROLE_GRANTS`] (plus `rds_iam`
/// where RDS defines it, for IAM authentication).
pub async fn grant_app_role(client: &mut Client, role: &str) -> Result<(), Error> {
    assert!(
        role.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "role names are validated by the configuration"
    );
    let quoted = format!("\"{role}\"");
    let transaction = client.transaction().await?;
    let exists = transaction
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .is_some();
    let login = if exists { "ALTER ROLE" } else { "CREATE ROLE" };
    transaction
        .batch_execute(&format!("{login} {quoted} LOGIN"))
        .await?;
    for grant in APP_ROLE_GRANTS {
        transaction
            .batch_execute(&grant.replace("{role}", &quoted))
            .await?;
    }
    let rds_iam = transaction
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam'", &[])
        .await?
        .is_some();
    if rds_iam {
        transaction
            .batch_execute(&format!("GRANT rds_iam TO {quoted}"))
            .await?;
    }
    transaction.commit().await?;
    tracing::info!(role, rds_iam, "application role granted");
    Ok(())
}

/// A refused DDL statement says what to do about it.
fn needs_privileges(error: Error) -> Error {
    match &error {
        Error::Database(db) if db.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            Error::SchemaBehind {
                reason: db.to_string(),
            }
        }
        _ => error,
    }
}

/// The settings fixed when the database was first used.
pub struct Settings<'a> {
    /// The balance of accounts never debited.
    pub opening_saldo: u64,
    /// The seeded accounts.
    pub seed: &'a [(Usuario, u64)],
}

impl Settings<'_> {
    /// The seed as `name=balance,…`, as recorded.
    fn seed_text(&self) -> String {
        let entries: Vec<String> = self
            .seed
            .iter()
            .map(|(usuario, saldo)| format!("{}={saldo}", usuario.as_str()))
            .collect();
        entries.join(",")
    }
}

/// Records the settings (and seeds the accounts) on first use; afterwards
/// refuses settings different from the recorded ones.
pub async fn check_settings(client: &mut Client, settings: &Settings<'_>) -> Result<(), Error> {
    let opening = i64::try_from(settings.opening_saldo).map_err(|_| Error::SettingsChanged {
        reason: "opening balance out of range".into(),
    })?;
    let seed = settings.seed_text();
    let transaction = client.transaction().await?;
    let first_use = transaction
        .execute(
            "INSERT INTO saldos_settings (opening_saldo, seed) VALUES ($1, $2)
             ON CONFLICT (singleton) DO NOTHING",
            &[&opening, &seed],
        )
        .await?
        == 1;
    if first_use {
        for (usuario, saldo) in settings.seed {
            let saldo = i64::try_from(*saldo).unwrap_or(i64::MAX);
            transaction
                .execute(
                    "INSERT INTO accounts (usuario, saldo) VALUES ($1, $2)
                     ON CONFLICT (usuario) DO NOTHING",
                    &[&usuario.as_str(), &saldo],
                )
                .await?;
        }
    }
    let row = transaction
        .query_one("SELECT opening_saldo, seed FROM saldos_settings", &[])
        .await?;
    transaction.commit().await?;
    let (recorded_opening, recorded_seed): (i64, String) = (row.get(0), row.get(1));
    if recorded_opening != opening {
        return Err(Error::SettingsChanged {
            reason: format!(
                "the database was created with opening balance {recorded_opening}, \
                 not {opening} (--opening-balance)"
            ),
        });
    }
    if recorded_seed != seed {
        return Err(Error::SettingsChanged {
            reason: format!(
                "the database was created with seed '{recorded_seed}', not '{seed}' (--seed)"
            ),
        });
    }
    Ok(())
}
