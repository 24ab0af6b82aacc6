//! Configuration: flags and environment variables (SPEC section 4), parsed and
//! validated once, before anything binds or opens a file. Every bad setting is
//! reported in one line naming it; the binary then exits 2.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::ledger::{SALDO_MAX, SHARDS_MAX};
use crate::usuario::Usuario;

/// The most worker threads the runtime may be given.
pub const WORKERS_MAX: usize = 1024;

/// The longest shutdown grace period: ECS's largest stop timeout.
pub const SHUTDOWN_GRACE_MAX: Duration = Duration::from_secs(120);

/// The longest idempotency-key retention: 30 days.
pub const IDEMPOTENCY_TTL_MAX: Duration = Duration::from_secs(30 * 86_400);

/// The most connections to the database one instance may open.
pub const DB_CONNECTIONS_MAX: usize = 256;

/// The longest database timeout.
pub const DB_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// The longest `saldos migrate` waits for an unreachable database.
pub const DB_WAIT_MAX: Duration = Duration::from_secs(900);
/// The longest slow-request threshold.
pub const SLOW_REQUEST_MAX: Duration = Duration::from_secs(3_600);

/// The most accounts a seed may list.
pub const SEED_ACCOUNTS_MAX: usize = 10_000;

/// `saldos`: Banco Etheria's balance and payments service.
#[derive(Debug, Parser)]
#[command(
    name = "saldos",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Service options, when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The binary's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default). Boxed: far larger than the others.
    Serve(Box<ServeArgs>),
    /// Exit 0 when GET /health/live answers 200 within 2 s, else 1.
    Healthcheck(HealthcheckArgs),
    /// DEVELOPMENT ONLY: sign an access token with a local private key and
    /// print it (or, with --jwks, print the key's public JWKS).
    DevToken(DevTokenArgs),
    /// Apply the PostgreSQL schema migrations, then exit.
    Migrate(MigrateArgs),
}

/// `saldos migrate` options.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// After migrating, make sure this role exists (LOGIN) with only what
    /// the service needs (no DDL), and `rds_iam` when that role exists.
    #[arg(long, env = "SALDOS_DB_APP_ROLE", value_parser = parse_role)]
    pub app_role: Option<String>,
    /// How long to keep trying while the database cannot be reached (a
    /// failover, an instance starting) before giving up, 0s to 15m.
    #[arg(long, env = "SALDOS_DB_WAIT", default_value = "180s", value_parser = parse_db_wait)]
    pub db_wait: Duration,
}

/// How the PostgreSQL storage reaches its database (SPEC section 8).
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL or key=value string [default: the libpq variables
    /// PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT].
    #[arg(long, env = "SALDOS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections to the database, half of them writing debit batches
    /// [default: 4 × usable CPUs, 4 to 32].
    #[arg(long, env = "SALDOS_DB_CONNECTIONS", value_parser = clap::value_parser!(u16).range(2..=DB_CONNECTIONS_MAX as i64))]
    pub db_connections: Option<u16>,
    /// How long a request may wait for its answer from the database.
    #[arg(long, env = "SALDOS_DB_TIMEOUT", default_value = "5s", value_parser = parse_db_timeout)]
    pub db_timeout: Duration,
    /// A file holding the database password, read again for every new
    /// connection, so a rotated password needs no restart.
    #[arg(long, env = "SALDOS_DB_PASSWORD_FILE", conflicts_with = "db_auth")]
    pub db_password_file: Option<PathBuf>,
    /// How the service authenticates to the database.
    #[arg(long, env = "SALDOS_DB_AUTH", value_enum, default_value_t = DbAuth::Password)]
    pub db_auth: DbAuth,
}

/// How the service authenticates to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DbAuth {
    /// The password of the URL, `PGPASSWORD` or `--db-password-file`.
    Password,
    /// An RDS IAM authentication token minted for every new connection from
    /// the task role's credentials (`AWS_REGION`, container credentials).
    RdsIam,
}

impl DatabaseArgs {
    /// Connections: the flag, else 4 × usable CPUs within 4 ..= 32. Several
    /// writers keep batches flowing while one waits for its commit's flush,
    /// and PostgreSQL flushes their commits together.
    pub fn connection_count(&self) -> usize {
        self.db_connections
            .map_or_else(|| (4 * usable_cpus()).clamp(4, 32), usize::from)
    }
}

/// `saldos healthcheck` options.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// URL to probe [default: http://127.0.0.1:$PORT/health/live]
    #[arg(long)]
    pub url: Option<String>,
    /// The service's port, for the default URL.
    #[arg(long, env = "PORT", default_value_t = 5000, hide = true)]
    pub port: u16,
}

/// Where balances are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// A durable write-ahead journal in the data directory.
    Journal,
    /// RAM only, lost at exit: for benchmarks and experiments.
    Memory,
    /// PostgreSQL (SPEC section 8): many instances, one database.
    Postgres,
}

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// `saldos serve` options. Each is a flag and an environment variable; the
/// flag wins.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TCP port to listen on (0: any free port).
    #[arg(long, env = "PORT", default_value_t = 5000)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "SALDOS_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Where balances are kept.
    #[arg(long, env = "SALDOS_STORAGE", value_enum, default_value_t = StorageKind::Journal)]
    pub storage: StorageKind,
    /// Data directory of the journal storage.
    #[arg(long, env = "SALDOS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Ledger shards, a power of two [default: about 4 × usable CPUs].
    #[arg(long, env = "SALDOS_SHARDS", value_parser = parse_shards)]
    pub shards: Option<usize>,
    /// Runtime worker threads [default: the CPUs the process may use].
    #[arg(long, env = "SALDOS_WORKERS", value_parser = clap::value_parser!(u16).range(1..=WORKERS_MAX as i64))]
    pub workers: Option<u16>,
    /// Balance of every account not seeded and never debited, in CLP.
    #[arg(long, env = "SALDOS_OPENING_BALANCE", default_value_t = 100_000, value_parser = parse_saldo)]
    pub opening_balance: u64,
    /// Seeded accounts as `name=balance,…` (empty: none).
    #[arg(
        long,
        env = "SALDOS_SEED",
        default_value = "usuario1=10000,usuario2=15000,usuario3=5000",
        value_parser = parse_seed
    )]
    pub seed: Seed,
    /// How long idempotency keys are remembered (`30s`, `15m`, `24h`, `7d`).
    #[arg(long, env = "SALDOS_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_idempotency_ttl)]
    pub idempotency_ttl: Duration,
    /// How long shutdown waits for requests in flight.
    #[arg(long, env = "SALDOS_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_shutdown_grace)]
    pub shutdown_grace: Duration,
    /// Log line format.
    #[arg(long, env = "SALDOS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Most client connections served at once; more wait in the backlog.
    #[arg(long, env = "SALDOS_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Most idempotency keys remembered; when full of unexpired keys, a
    /// request with a new key answers 503 NO_DISPONIBLE.
    #[arg(long, env = "SALDOS_IDEMPOTENCY_MAX_KEYS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub idempotency_max_keys: u64,
    /// Journal segment size that triggers a new segment and a snapshot.
    #[arg(long, env = "SALDOS_JOURNAL_SEGMENT_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(4096..=(1 << 40)))]
    pub journal_segment_bytes: u64,
    /// Most accounts stored (seeded or debited); a debit that would add one
    /// more answers 503 NO_DISPONIBLE.
    #[arg(long, env = "SALDOS_MAX_ACCOUNTS", default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub max_accounts: u64,
    /// Movements kept per account for `GET /movimientos` by the memory and
    /// journal storages (24 bytes each; postgres keeps them all).
    #[arg(long, env = "SALDOS_HISTORY_PER_ACCOUNT", default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub history_per_account: u16,
    /// How long the journal keeps segments for the feed of events beyond
    /// what snapshots need (`GET /eventos`); older cursors get 410.
    #[arg(long, env = "SALDOS_EVENTS_RETENTION", default_value = "24h", value_parser = parse_events_retention)]
    pub events_retention: Duration,
    /// The PostgreSQL storage's database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    // Observability (SPEC section 7).
    /// Address of the metrics listener (`GET /metrics`); empty: no metrics.
    #[arg(long, env = "SALDOS_METRICS_ADDR", default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// A request slower than this is logged at `warn` (`0ms`: every request).
    #[arg(long, env = "SALDOS_SLOW_REQUEST", default_value = "1s", value_parser = parse_slow_request)]
    pub slow_request: Duration,

    /// Authentication (SPEC section 6).
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Whether requests need a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every account is open to anyone who reaches the service (local runs).
    None,
    /// A JWT bearer token signed by a key of the issuer's JWKS.
    Jwt,
}

/// The longest clock skew tolerated on `exp` and `nbf`.
pub const JWT_LEEWAY_MAX: Duration = Duration::from_secs(300);

/// Authentication options (SPEC section 6).
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Whether requests need a bearer token (`none`: every account is open).
    #[arg(long = "auth", env = "SALDOS_AUTH", value_enum, default_value_t = AuthMode::None)]
    pub mode: AuthMode,
    /// The token issuer (`iss`) to accept, exactly; required with `--auth jwt`.
    #[arg(long, env = "SALDOS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The audience (`aud`) tokens must name; required with `--auth jwt`.
    #[arg(long, env = "SALDOS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The issuer's JWKS, `http(s)://…`; fetched at start, every 10 minutes
    /// and on an unknown `kid`.
    #[arg(long, env = "SALDOS_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<http::Uri>,
    /// A JWKS JSON file, re-read when it changes.
    #[arg(long, env = "SALDOS_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Allow an `http://` JWKS URL to a host other than loopback (keys
    /// fetched in the clear can be replaced on the way: never in production).
    #[arg(long, env = "SALDOS_JWKS_ALLOW_HTTP")]
    pub jwks_allow_http: bool,
    /// Signature algorithms accepted (RS256, RS384, RS512, PS256, PS384,
    /// PS512, ES256, ES384, EdDSA; `none` and HS* are refused).
    #[arg(long, env = "SALDOS_JWT_ALGORITHMS", default_value = "RS256,ES256", value_parser = parse_algorithms)]
    pub jwt_algorithms: Algorithms,
    /// Clock skew tolerated on `exp` and `nbf` (at most 5m).
    #[arg(long, env = "SALDOS_JWT_LEEWAY", default_value = "30s", value_parser = parse_jwt_leeway)]
    pub jwt_leeway: Duration,
}

/// The signature algorithms a token may use, without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Algorithms(pub Vec<jsonwebtoken::Algorithm>);

impl AuthArgs {
    /// With `jwt`: an issuer, an audience and one source of keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == AuthMode::None {
            return Ok(());
        }
        let missing =
            |flag: &str, variable: &str| format!("{flag}/{variable}: required with --auth jwt");
        if self.jwt_issuer.as_deref().is_none_or(str::is_empty) {
            return Err(missing("--jwt-issuer", "SALDOS_JWT_ISSUER"));
        }
        if self.jwt_audience.as_deref().is_none_or(str::is_empty) {
            return Err(missing("--jwt-audience", "SALDOS_JWT_AUDIENCE"));
        }
        match (&self.jwks_url, &self.jwks_file) {
            (None, None) => Err(
                "--jwks-url/SALDOS_JWKS_URL or --jwks-file/SALDOS_JWKS_FILE: one is required with --auth jwt"
                    .into(),
            ),
            (Some(url), _) if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() => {
                Err(format!("--jwks-url/SALDOS_JWKS_URL: '{url}' is not an http(s):// URL"))
            }
            (Some(url), _) if url.scheme_str() == Some("http") && !self.jwks_allow_http && !is_loopback(url) => {
                Err(format!(
                    "--jwks-url/SALDOS_JWKS_URL: '{url}' is plain http:// to a host other than loopback; use https:// (or --jwks-allow-http/SALDOS_JWKS_ALLOW_HTTP)"
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Whether `url`'s host is this machine: `localhost` or a loopback address.
fn is_loopback(url: &http::Uri) -> bool {
    let host = url.host().unwrap_or_default();
    let address = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// `saldos dev-token` options: DEVELOPMENT ONLY.
#[derive(Debug, Args)]
pub struct DevTokenArgs {
    /// The PEM private key to sign with (RSA, or EC P-256 / P-384).
    #[arg(long)]
    pub key: PathBuf,
    /// The key's id (`kid`), as the JWKS names it.
    #[arg(long, default_value = "dev")]
    pub kid: String,
    /// The signature algorithm (RS256, ES256, …; matching the key).
    #[arg(long, default_value = "RS256", value_parser = parse_algorithm)]
    pub algorithm: jsonwebtoken::Algorithm,
    /// Print the public JWKS of the key instead of a token.
    #[arg(long)]
    pub jwks: bool,
    /// Issuer (`iss`).
    #[arg(long, default_value = "http://localhost/dev")]
    pub issuer: String,
    /// Audience (`aud`).
    #[arg(long, default_value = "saldos")]
    pub audience: String,
    /// Subject (`sub`): the customer's account.
    #[arg(long)]
    pub sub: Option<String>,
    /// `client_id`, for a service token.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Space-separated scopes (`saldos:read saldos:debit`).
    #[arg(long)]
    pub scope: Option<String>,
    /// Lifetime (`exp` − now).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// Where metrics are served, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// Seeded accounts, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seed(pub Vec<(Usuario, u64)>);

impl ServeArgs {
    /// Checks relations between settings that no single parser sees.
    pub fn validate(&self) -> Result<(), String> {
        if self.seed.0.len() as u64 > self.max_accounts {
            return Err(
                "--seed/SALDOS_SEED: more seeded accounts than --max-accounts allows".into(),
            );
        }
        self.auth.validate()
    }

    /// Worker threads: the flag, else the CPUs this process may use (cgroup
    /// quota and affinity, as the standard library reads them).
    pub fn worker_count(&self) -> usize {
        self.workers.map_or_else(usable_cpus, usize::from)
    }

    /// Shards: the flag, else the power of two nearest above 4 × workers.
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            (4 * self.worker_count())
                .next_power_of_two()
                .min(SHARDS_MAX)
        })
    }
}

/// The CPUs this process may use, at least 1. On Fargate a 0.25 vCPU task
/// has a quota below one CPU: it gets one worker.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Algorithms that the issuer's public keys verify; `none` and the HMAC
/// family (a shared secret, or a public key misused as one) never are.
fn parse_algorithms(text: &str) -> Result<Algorithms, String> {
    let mut algorithms = Vec::new();
    for name in text.split(',').map(str::trim) {
        let algorithm = parse_algorithm(name)?;
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    Ok(Algorithms(algorithms))
}

fn parse_algorithm(name: &str) -> Result<jsonwebtoken::Algorithm, String> {
    use jsonwebtoken::Algorithm;
    let algorithm: Algorithm = name
        .parse()
        .map_err(|_| format!("'{name}' is not a JWS algorithm"))?;
    match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Err(format!(
            "'{name}' is refused: HMAC needs a shared secret, and lets a public key be misused as one"
        )),
        _ => Ok(algorithm),
    }
}

fn parse_jwt_leeway(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::ZERO, JWT_LEEWAY_MAX)
}

fn parse_shards(text: &str) -> Result<usize, String> {
    let shards: usize = text
        .parse()
        .map_err(|_| format!("'{text}' is not a whole number"))?;
    if !shards.is_power_of_two() || shards > SHARDS_MAX {
        return Err(format!("must be a power of two from 1 to {SHARDS_MAX}"));
    }
    Ok(shards)
}

fn parse_saldo(text: &str) -> Result<u64, String> {
    let saldo: u64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a whole number of CLP"))?;
    if saldo > SALDO_MAX {
        return Err(format!("must be at most {SALDO_MAX}"));
    }
    Ok(saldo)
}

fn parse_seed(text: &str) -> Result<Seed, String> {
    let mut seed = Vec::new();
    for entry in text.split(',').filter(|entry| !entry.trim().is_empty()) {
        let (name, saldo) = entry
            .split_once('=')
            .ok_or_else(|| format!("'{entry}' is not name=balance"))?;
        let usuario = Usuario::new(name.trim()).map_err(|error| format!("'{name}': {error}"))?;
        let saldo = parse_saldo(saldo.trim()).map_err(|error| format!("'{name}': {error}"))?;
        if seed.iter().any(|(seeded, _)| *seeded == usuario) {
            return Err(format!("'{name}' is listed twice"));
        }
        if seed.len() == SEED_ACCOUNTS_MAX {
            return Err(format!("more than {SEED_ACCOUNTS_MAX} accounts"));
        }
        seed.push((usuario, saldo));
    }
    Ok(Seed(seed))
}

fn parse_idempotency_ttl(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::from_secs(1), IDEMPOTENCY_TTL_MAX)
}

/// The longest role name PostgreSQL keeps.
pub const ROLE_BYTES_MAX: usize = 63;

fn parse_role(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_well = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !starts_well || !rest_well || text.len() > ROLE_BYTES_MAX {
        return Err(format!(
            "'{text}' is not a role name: 1 to {ROLE_BYTES_MAX} of a-z, 0-9 and _, not starting with a digit"
        ));
    }
    Ok(text.to_owned())
}

fn parse_db_timeout(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::from_millis(100), DB_TIMEOUT_MAX)
}

/// `saldos migrate --db-wait`: at most [`DB_WAIT_MAX`].
fn parse_db_wait(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::ZERO, DB_WAIT_MAX)
}

fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text.trim().is_empty() {
        return Ok(MetricsAddr(None));
    }
    let address = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not an address such as 127.0.0.1:9464 (empty: off)"))?;
    Ok(MetricsAddr(Some(address)))
}

/// The longest `--events-retention`.
pub const EVENTS_RETENTION_MAX: Duration = Duration::from_secs(30 * 86_400);

fn parse_events_retention(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::ZERO, EVENTS_RETENTION_MAX)
}

fn parse_slow_request(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::ZERO, SLOW_REQUEST_MAX)
}

fn parse_shutdown_grace(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::ZERO, SHUTDOWN_GRACE_MAX)
}

fn parse_duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < min || duration > max {
        return Err(format!("must be from {min:?} to {max:?}"));
    }
    Ok(duration)
}

/// A whole number followed by a unit: `ms`, `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || format!("'{text}' is not a duration such as 500ms, 20s, 15m, 24h or 7d");
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in [
            "",
            "20",
            "s",
            "1.5s",
            "-1s",
            "20 s",
            "99999999999999999999d",
            "1w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn seeds_parse_and_reject_bad_entries() {
        let seed = parse_seed("usuario1=10000, usuario2=15000").unwrap();
        let names: Vec<_> = seed
            .0
            .iter()
            .map(|(u, s)| (u.as_str().to_owned(), *s))
            .collect();
        assert_eq!(
            names,
            [
                ("usuario1".to_owned(), 10_000),
                ("usuario2".to_owned(), 15_000)
            ]
        );
        assert_eq!(parse_seed("").unwrap(), Seed::default());
        for bad in [
            "a",
            "a=x",
            "a=-1",
            "=5",
            "a/b=1",
            "a=1,a=2",
            "a=9007199254740992",
        ] {
            assert!(parse_seed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_loopback_hosts_are_loopback() {
        let cases = [
            ("http://localhost/jwks.json", true),
            ("http://LOCALHOST:8080/jwks.json", true),
            ("http://127.0.0.1:9000/jwks.json", true),
            ("http://127.8.9.1/jwks.json", true),
            ("http://[::1]:9000/jwks.json", true),
            ("http://keys.example.com/jwks.json", false),
            ("http://10.0.0.1/jwks.json", false),
            ("http://localhost.example.com/jwks.json", false),
        ];
        for (url, expected) in cases {
            let url: http::Uri = url.parse().unwrap();
            assert_eq!(is_loopback(&url), expected, "{url}");
        }
    }

    #[test]
    fn algorithms_refuse_none_and_hmac() {
        use jsonwebtoken::Algorithm;
        assert_eq!(
            parse_algorithms("RS256, ES256,EdDSA,RS256"),
            Ok(Algorithms(vec![
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::EdDSA
            ]))
        );
        for bad in ["none", "HS256", "RS256,HS512", "hs384", "", "RS256,"] {
            assert!(parse_algorithms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metrics_addresses_parse_or_turn_metrics_off() {
        let on = parse_metrics_addr("127.0.0.1:9464").unwrap();
        assert_eq!(on.0, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(parse_metrics_addr("").unwrap(), MetricsAddr(None));
        for bad in ["9464", "localhost:9464", "127.0.0.1", "1.2.3.4:99999"] {
            assert!(parse_metrics_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shards_are_powers_of_two() {
        assert_eq!(parse_shards("64"), Ok(64));
        for bad in ["0", "3", "131072", "x"] {
            assert!(parse_shards(bad).is_err(), "{bad:?}");
        }
    }
}
