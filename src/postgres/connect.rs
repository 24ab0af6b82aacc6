//! Reaching the database: where (`--database-url` or the libpq variables),
//! how (the TLS rules of SPEC section 8) and with which password (read again
//! from `--db-password-file` for every new connection, so a rotated password
//! needs no restart). Owns no connection; never logs a password.
//!
//! A service session carries its bounds in its startup packet, where they
//! win over the database's and the role's defaults (`ALTER DATABASE … SET`,
//! a parameter group): no statement, lock wait or idle transaction outlives
//! `--db-timeout` on the server, and every commit waits for its flush. The
//! settings are read back before the session is used.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_postgres::config::Host;
use tokio_postgres::tls::NoTls;
use tokio_postgres::{CancelToken, Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::Error;
use super::iam::IamAuth;
use crate::config::{DatabaseArgs, DbAuth};

/// The port PostgreSQL listens on unless told otherwise.
const DEFAULT_PORT: u16 = 5432;

/// Shown in `pg_stat_activity`.
const APPLICATION_NAME: &str = "saldos";

/// A peer that stopped answering is given up after this long without an
/// acknowledgement or a keepalive answer (a failed-over host that vanished
/// without closing its sockets), so its connection's place is freed.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Keepalive probes start after this long idle, then every
/// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_RETRIES`] times.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;

/// The longest a cancel request may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection is for.
pub enum Session {
    /// Migrations and settings: no bounds (an advisory lock may be waited
    /// for as long as another instance migrates).
    Admin,
    /// The service's work, bounded by `--db-timeout` on the server. The
    /// permit is its place among the connections the storage may hold; it
    /// is released when the connection's I/O task ends (the server answered
    /// or the socket closed), not when the client is dropped.
    Service(OwnedSemaphorePermit),
    /// A service session that listens: every notification the server
    /// delivers on it is told on the channel (one pending is enough to
    /// wake; more are dropped), which closes when the connection ends; but
    /// those sent by the backend whose id is in the `AtomicI32` (the
    /// session's own, once known: what it announces itself is no news).
    Listener(OwnedSemaphorePermit, mpsc::Sender<()>, Arc<AtomicI32>),
}

/// How the connection is protected.
enum Tls {
    /// Plain TCP: a loopback host, or `PGSSLMODE=disable` said explicitly.
    Plain,
    /// TLS, the server's certificate chain and host name verified against
    /// the CA bundle (`verify-full`).
    Verified(MakeRustlsConnect),
}

/// Where and how to connect; cheap to connect again and again.
pub struct Target {
    /// Host, port, user, database (and the password unless a file holds it).
    config: Config,
    tls: Tls,
    /// Read for every new connection when set.
    password_file: Option<PathBuf>,
    /// Mints a token for every new connection (`--db-auth rds-iam`).
    iam: Option<IamAuth>,
    /// `--db-timeout`: the server-side bound of a service session's
    /// statements, lock waits and idle transactions.
    db_timeout: Duration,
}

impl Target {
    /// The target the arguments and the process environment describe.
    pub fn from_args(args: &DatabaseArgs) -> Result<Self, Error> {
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let mut target = Self::new(
            args.database_url.as_deref(),
            env,
            args.db_password_file.clone(),
        )?;
        if args.db_auth == DbAuth::RdsIam {
            target.iam = Some(IamAuth::from_env(&env)?);
        }
        target.db_timeout = args.db_timeout;
        Ok(target)
    }

    /// `env` looks up a libpq variable; a URL's own parameters win over it.
    fn new(
        url: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        password_file: Option<PathBuf>,
    ) -> Result<Self, Error> {
        let (config, url_tls) = match url {
            Some(url) => {
                let (rest, tls) = take_tls_params(url);
                let config = rest
                    .parse::<Config>()
                    .map_err(|error| setting(format!("--database-url: {error}")))?;
                (config, tls)
            }
            None => (config_from_env(&env)?, TlsParams::default()),
        };
        let mode = url_tls.mode.or_else(|| env("PGSSLMODE"));
        let root_cert = url_tls.root_cert.or_else(|| env("PGSSLROOTCERT"));
        let tls = choose_tls(&config, mode.as_deref(), root_cert.as_deref())?;
        let mut config = config;
        config.application_name(APPLICATION_NAME);
        Ok(Self {
            config,
            tls,
            password_file,
            iam: None,
            db_timeout: crate::config::DB_TIMEOUT_MAX,
        })
    }

    /// `--db-timeout`, which bounds a service session on the server.
    pub fn db_timeout(&self) -> Duration {
        self.db_timeout
    }

    /// The startup options of a service session: its bounds, and the
    /// settings the guarantees depend on, after any the URL gave.
    fn service_options(&self) -> String {
        let ms = self.db_timeout.as_millis();
        let bounds = format!(
            "-c statement_timeout={ms} -c lock_timeout={ms} \
             -c idle_in_transaction_session_timeout={ms} -c synchronous_commit=on"
        );
        match self.config.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {bounds}"),
            _ => bounds,
        }
    }

    /// Opens one connection within `timeout`; its I/O runs on a task of its
    /// own until the returned client is dropped and nothing is pending on
    /// it, or the server closes it. A service session is checked before it
    /// is returned.
    pub async fn connect(&self, timeout: Duration, session: Session) -> Result<Client, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut config = self.config.clone();
        config.connect_timeout(timeout);
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        config.keepalives_idle(KEEPALIVE_IDLE);
        config.keepalives_interval(KEEPALIVE_INTERVAL);
        config.keepalives_retries(KEEPALIVE_RETRIES);
        let (permit, notified) = match session {
            Session::Admin => (None, None),
            Session::Service(permit) => {
                config.options(self.service_options());
                (Some(permit), None)
            }
            Session::Listener(permit, notified, own_pid) => {
                config.options(self.service_options());
                (Some(permit), Some((notified, own_pid)))
            }
        };
        let is_service = permit.is_some();
        if let Some(path) = &self.password_file {
            config.password(read_password(path)?);
        }
        if let Some(iam) = &self.iam {
            let host = match config.get_hosts().first() {
                Some(Host::Tcp(host)) => host.clone(),
                _ => return Err(setting("--db-auth rds-iam needs a TCP host".into())),
            };
            let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
            let user = config.get_user().unwrap_or_default().to_owned();
            config.password(iam.token(&host, port, &user).await?);
        }
        let connecting = async {
            match &self.tls {
                Tls::Plain => {
                    let (client, connection) = config.connect(NoTls).await?;
                    tokio::spawn(drive(connection, permit, notified));
                    Ok(client)
                }
                Tls::Verified(tls) => {
                    let (client, connection) = config.connect(tls.clone()).await?;
                    tokio::spawn(drive(connection, permit, notified));
                    Ok(client)
                }
            }
        };
        let client = tokio::time::timeout_at(deadline, connecting)
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map_err(Error::Database)?;
        if is_service {
            tokio::time::timeout_at(deadline, check_service_settings(&client))
                .await
                .map_err(|_| Error::Timeout(timeout))??;
        }
        Ok(client)
    }

    /// Asks the server to cancel what `token`'s session runs, within
    /// [`CANCEL_TIMEOUT`]; a cancel that cannot be sent is only logged (the
    /// session's `statement_timeout` ends it anyway).
    pub async fn cancel(&self, token: CancelToken) {
        let cancelling = async {
            match &self.tls {
                Tls::Plain => token.cancel_query(NoTls).await,
                Tls::Verified(tls) => token.cancel_query(tls.clone()).await,
            }
        };
        match tokio::time::timeout(CANCEL_TIMEOUT, cancelling).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot cancel a database statement"),
            Err(_) => tracing::warn!("cannot cancel a database statement: no answer in time"),
        }
    }
}

/// The settings a service session's guarantees depend on, read back: a
/// commit is acknowledged only once flushed (and, with a synchronous
/// standby, replicated), and the server flushes at all.
async fn check_service_settings(client: &Client) -> Result<(), Error> {
    let row = client
        .query_one(
            "SELECT current_setting('synchronous_commit'), current_setting('fsync')",
            &[],
        )
        .await?;
    let (synchronous_commit, fsync): (String, String) = (row.get(0), row.get(1));
    if !matches!(synchronous_commit.as_str(), "on" | "remote_apply") {
        return Err(setting(format!(
            "the database session runs with synchronous_commit = {synchronous_commit} though \
             saldos asked for on (a connection pooler dropping startup options?): an \
             acknowledged debit could be lost"
        )));
    }
    if fsync != "on" {
        return Err(setting(
            "the database server runs with fsync = off: a committed debit could be lost in a \
             crash; saldos refuses to use it"
                .into(),
        ));
    }
    Ok(())
}

/// Runs a connection's I/O until it ends, telling `notified` of each
/// notification, then frees its place.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    permit: Option<OwnedSemaphorePermit>,
    notified: Option<(mpsc::Sender<()>, Arc<AtomicI32>)>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(notification))) => {
                if let Some((notified, own_pid)) = &notified
                    && notification.process_id() != own_pid.load(Ordering::Relaxed)
                {
                    // Full: a wakeup is pending already, which covers this.
                    let _ = notified.try_send(());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::debug!(%error, "database connection ended");
                break;
            }
            None => break,
        }
    }
    drop(permit);
}

fn setting(reason: String) -> Error {
    Error::Setting(reason)
}

/// The password file's first line, read now.
fn read_password(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        setting(format!(
            "--db-password-file {}: cannot read: {error}",
            path.display()
        ))
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`.
fn config_from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
    let mut config = Config::new();
    config.host(env("PGHOST").as_deref().unwrap_or("localhost"));
    let port = match env("PGPORT") {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse()
            .map_err(|_| setting(format!("PGPORT: '{port}' is not a port")))?,
    };
    config.port(port);
    let user = env("PGUSER").ok_or_else(|| {
        setting("--database-url/SALDOS_DATABASE_URL or PGUSER: no database user given".into())
    })?;
    config.dbname(env("PGDATABASE").as_deref().unwrap_or(&user));
    config.user(&user);
    if let Some(password) = env("PGPASSWORD") {
        config.password(password);
    }
    Ok(config)
}

/// The TLS parameters tokio-postgres does not parse itself.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a URL's query string or a
/// key=value string, returning the rest for tokio-postgres.
fn take_tls_params(url: &str) -> (String, TlsParams) {
    let mut tls = TlsParams::default();
    let mut keep = |pair: &str| match pair.split_once('=') {
        Some(("sslmode", value)) => {
            tls.mode = Some(value.to_owned());
            false
        }
        Some(("sslrootcert", value)) => {
            tls.root_cert = Some(value.to_owned());
            false
        }
        _ => true,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|pair| keep(pair)).collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let kept: Vec<&str> = url.split_whitespace().filter(|pair| keep(pair)).collect();
        kept.join(" ")
    };
    (rest, tls)
}

/// SPEC section 8: `verify-full` (and `require`, `verify-ca`, which saldos
/// verifies as fully) needs the CA bundle; plain TCP only to a loopback host
/// or with `disable` said explicitly.
fn choose_tls(config: &Config, mode: Option<&str>, root_cert: Option<&str>) -> Result<Tls, Error> {
    match mode.unwrap_or("prefer") {
        "disable" => Ok(Tls::Plain),
        "allow" | "prefer" if is_loopback(config) => Ok(Tls::Plain),
        "allow" | "prefer" => Err(setting(
            "PGSSLMODE: a non-loopback database host needs TLS: set PGSSLMODE=verify-full \
             and PGSSLROOTCERT, or PGSSLMODE=disable explicitly"
                .into(),
        )),
        "require" | "verify-ca" | "verify-full" => {
            let path = root_cert.ok_or_else(|| {
                setting(
                    "PGSSLROOTCERT: TLS to the database verifies the server; give the CA bundle"
                        .into(),
                )
            })?;
            Ok(Tls::Verified(MakeRustlsConnect::new(client_config(
                Path::new(path),
            )?)))
        }
        other => Err(setting(format!(
            "PGSSLMODE: '{other}' is not disable, allow, prefer, require, verify-ca or verify-full"
        ))),
    }
}

/// A rustls client trusting only the certificates of the bundle at `path`.
fn client_config(path: &Path) -> Result<rustls::ClientConfig, Error> {
    let unreadable = |error: &dyn std::fmt::Display| {
        setting(format!("PGSSLROOTCERT {}: {error}", path.display()))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|error| unreadable(&error))? {
        let cert = cert.map_err(|error| unreadable(&error))?;
        roots.add(cert).map_err(|error| unreadable(&error))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in the bundle"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| unreadable(&error))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// True when every host is this machine (a loopback name or address, or a
/// Unix socket).
fn is_loopback(config: &Config) -> bool {
    !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|host| match host {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<IpAddr>()
                        .is_ok_and(|address| address.is_loopback())
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: Option<&str>, env: &[(&str, &str)]) -> Result<Target, Error> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Target::new(
            url,
            |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            None,
        )
    }

    // SPEC section 8: plain TCP only to loopback or when disable is explicit;
    // TLS always verifies, so it needs the CA bundle.
    #[test]
    fn tls_rules() {
        let plain = |url: &str, env: &[(&str, &str)]| {
            matches!(target(Some(url), env).map(|t| t.tls), Ok(Tls::Plain))
        };
        assert!(plain("postgres://u@127.0.0.1/db", &[]));
        assert!(plain("postgres://u@localhost:5433/db", &[]));
        assert!(plain("host=/var/run/postgresql user=u", &[]));
        assert!(plain("postgres://u@db.example.com/db?sslmode=disable", &[]));
        assert!(plain(
            "postgres://u@db.example.com/db",
            &[("PGSSLMODE", "disable")]
        ));
        for refused in [
            ("postgres://u@db.example.com/db", &[][..]),
            ("postgres://u@10.0.0.5/db?sslmode=prefer", &[][..]),
            (
                "postgres://u@db.example.com/db?sslmode=verify-full",
                &[][..],
            ),
            (
                "postgres://u@db.example.com/db",
                &[("PGSSLMODE", "require")][..],
            ),
            (
                "postgres://u@db.example.com/db?sslmode=verify-full&sslrootcert=/nonexistent",
                &[][..],
            ),
            ("postgres://u@127.0.0.1/db?sslmode=bogus", &[][..]),
        ] {
            assert!(target(Some(refused.0), refused.1).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn tls_params_are_split_off_the_url() {
        let (rest, tls) = take_tls_params(
            "postgres://u:p@h:1/d?sslmode=verify-full&connect_timeout=3&sslrootcert=/ca.pem",
        );
        assert_eq!(rest, "postgres://u:p@h:1/d?connect_timeout=3");
        assert_eq!(
            tls,
            TlsParams {
                mode: Some("verify-full".into()),
                root_cert: Some("/ca.pem".into())
            }
        );
        let (rest, tls) = take_tls_params("host=h sslmode=disable user=u");
        assert_eq!(rest, "host=h user=u");
        assert_eq!(tls.mode.as_deref(), Some("disable"));
    }

    #[test]
    fn libpq_variables_without_url() {
        let found = target(
            None,
            &[
                ("PGHOST", "127.0.0.1"),
                ("PGPORT", "6543"),
                ("PGUSER", "app"),
            ],
        )
        .unwrap();
        assert_eq!(found.config.get_ports(), [6543]);
        assert_eq!(found.config.get_user(), Some("app"));
        assert_eq!(found.config.get_dbname(), Some("app"));
        assert!(target(None, &[]).is_err(), "no user");
        assert!(target(None, &[("PGUSER", "u"), ("PGPORT", "x")]).is_err());
    }
}
