//! A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary
//! directory owned by the `postgres` user (the server refuses root), started
//! on a free loopback port with `fsync` and `synchronous_commit` on, stopped
//! by PID and removed afterwards. No PostgreSQL binaries: the test fails,
//! saying so (CI installs them).
//!
//! Most tests share one cluster (a database each); tests that stop or
//! restart the server start their own. As in production, a database is
//! migrated by its owner (`saldos migrate --app-role`) and the service runs
//! as the application role that creates, never as the superuser.

use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where Debian puts PostgreSQL 15's server binaries; `SALDOS_TEST_PG_BIN`
/// overrides.
const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The superuser's password (scram-sha-256 over TCP, like RDS).
pub const SUPERUSER_PASSWORD: &str = "postgres";

/// The application role `saldos migrate --app-role` creates, and the
/// password the tests give it.
pub const APP_ROLE: &str = "saldos_app";
pub const APP_PASSWORD: &str = "app";

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) cluster.
pub struct Cluster {
    /// The temporary directory: `data/` and the server's log.
    dir: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    postmaster: Mutex<Option<Child>>,
}

/// How to stop the server.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// SIGINT: abort transactions, shut down cleanly.
    Fast,
    /// SIGQUIT: exit at once, crash recovery at the next start.
    Immediate,
}

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("SALDOS_TEST_PG_BIN").unwrap_or_else(|_| BIN_DIR.into());
    let path = Path::new(&dir).join(name);
    assert!(
        path.exists(),
        "PostgreSQL server binary {} not found: install PostgreSQL 15 \
         (apt-get install postgresql; .ci/run does) or set SALDOS_TEST_PG_BIN",
        path.display()
    );
    path
}

/// The `postgres` OS user when running as root (the server refuses root).
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = c"postgres";
    // SAFETY: a NUL-terminated name; the result is read before any other
    // getpw* call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!entry.is_null(), "running as root and no 'postgres' user");
    // SAFETY: checked non-null above.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

/// A command run as the server's user, killed if the thread that started
/// it exits (a panicking test leaves no server behind): start servers from a
/// thread that outlives them (a test's own, never a blocking-pool thread).
fn as_server_user(program: PathBuf) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = server_user() {
        command.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}

/// A temporary directory the server's user owns, kept until removed.
fn server_dir(prefix: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap()
        .keep();
    if let Some((uid, gid)) = server_user() {
        chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    dir
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Cluster {
    /// A new cluster, started.
    pub fn start() -> Self {
        let dir = server_dir("saldos-pg-");
        let password_file = dir.join("superuser-password");
        std::fs::write(&password_file, SUPERUSER_PASSWORD).unwrap();
        if let Some((uid, gid)) = server_user() {
            chown(&password_file, Some(uid), Some(gid)).unwrap();
        }
        let status = as_server_user(bin("initdb"))
            .args(["-D", "data", "-U", "postgres", "-E", "UTF8", "--locale=C"])
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed in {}", dir.display());
        let cluster = Self {
            dir,
            port: free_port(),
            postmaster: Mutex::new(None),
        };
        cluster.run();
        cluster
    }

    /// Starts the server (again) on the same directory and port.
    pub fn run(&self) {
        self.run_with(&[]);
    }

    /// Starts the server (again) with `settings` (`name=value`) on top.
    pub fn run_with(&self, settings: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = as_server_user(bin("postgres"))
            .args(["-D", "data", "-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"])
            .args(settings.iter().flat_map(|setting| ["-c", setting]))
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        *self.postmaster.lock().unwrap() = Some(child);
        let started = Instant::now();
        loop {
            let ready = Command::new(bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "PostgreSQL did not start; see {}",
                self.dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server by PID and waits for it to exit.
    pub fn stop(&self, how: Stop) {
        let Some(mut child) = self.postmaster.lock().unwrap().take() else {
            return;
        };
        let signal = match how {
            Stop::Fast => libc::SIGINT,
            Stop::Immediate => libc::SIGQUIT,
        };
        // SAFETY: the PID is our own child's, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        child.wait().unwrap();
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the postmaster and every
    /// process it started: a database that holds its connections open but
    /// answers nothing, as behind a network partition.
    pub fn signal_all(&self, signal: libc::c_int) {
        let guard = self.postmaster.lock().unwrap();
        let postmaster = guard.as_ref().expect("the server runs").id();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent's PID is the second field after the name's ')'.
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        for pid in pids {
            // SAFETY: our own server's processes.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// A streaming standby of this (running) cluster, made with
    /// `pg_basebackup -R` and started on a port of its own.
    pub fn start_standby(&self) -> Self {
        let dir = server_dir("saldos-pg-standby-");
        let status = as_server_user(bin("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-D", "data", "-R", "-X", "stream", "--no-sync"])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("pg_basebackup runs");
        assert!(
            status.success(),
            "pg_basebackup failed in {}",
            dir.display()
        );
        let standby = Self {
            dir,
            port: free_port(),
            postmaster: Mutex::new(None),
        };
        standby.run();
        standby
    }

    /// The superuser's URL for database `name`.
    pub fn url(&self, name: &str) -> String {
        self.url_as("postgres", SUPERUSER_PASSWORD, name)
    }

    /// A URL for `user` with `password` and database `name`.
    pub fn url_as(&self, user: &str, password: &str, name: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    /// A connection as the superuser to database `name`.
    pub async fn connect(&self, name: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(name), tokio_postgres::NoTls)
            .await
            .expect("connects to the test cluster");
        tokio::spawn(connection);
        client
    }

    /// A fresh database migrated by its owner for the application role: the
    /// role's URL, the database's name, and a superuser connection to it.
    pub async fn create_database_with_admin(&self) -> (String, String, tokio_postgres::Client) {
        let url = self.create_database().await;
        let name = url
            .rsplit('/')
            .next()
            .expect("the URL ends with the database");
        let name = name.to_owned();
        let admin = self.connect(&name).await;
        (url, name, admin)
    }

    /// A fresh database, migrated by `saldos migrate --app-role` as its
    /// owner; returns the application role's URL.
    pub async fn create_database(&self) -> String {
        let owner_url = self.create_empty_database().await;
        self.migrate_for_app_role(&owner_url).await
    }

    /// `saldos migrate --app-role` on the database at `owner_url`, as its
    /// owner; returns the application role's URL.
    pub async fn migrate_for_app_role(&self, owner_url: &str) -> String {
        // Roles are the cluster's: one migration granting at a time.
        static GRANTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _granting = GRANTING.lock().await;
        let argv = [
            "saldos",
            "migrate",
            "--database-url",
            owner_url,
            "--app-role",
            APP_ROLE,
        ];
        let Some(saldos::config::Command::Migrate(args)) =
            <saldos::config::Cli as clap::Parser>::try_parse_from(argv)
                .unwrap()
                .command
        else {
            panic!("migrate parses as the migrate command");
        };
        saldos::postgres::migrate(&args).await.unwrap();
        let name = owner_url.rsplit('/').next().expect("a database name");
        self.connect(name)
            .await
            .batch_execute(&format!("ALTER ROLE {APP_ROLE} PASSWORD '{APP_PASSWORD}'"))
            .await
            .unwrap();
        self.url_as(APP_ROLE, APP_PASSWORD, name)
    }

    /// A fresh, empty database; returns its owner's (the superuser's) URL.
    pub async fn create_empty_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        self.url(&name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop(Stop::Immediate);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster most tests share.
static SHARED: OnceLock<Cluster> = OnceLock::new();

/// The shared cluster, started on first use by a thread that lives as long
/// as the process (its server dies with the process), removed at exit.
pub fn shared() -> &'static Cluster {
    SHARED.get_or_init(|| {
        let (started, cluster) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            started.send(Cluster::start()).unwrap();
            loop {
                std::thread::park();
            }
        });
        let cluster = cluster.recv().expect("the shared cluster starts");
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_shared) };
        cluster
    })
}

extern "C" fn remove_shared() {
    if let Some(cluster) = SHARED.get() {
        cluster.stop(Stop::Immediate);
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }
}
