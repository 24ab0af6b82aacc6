//! The binary itself: `--help`, configuration errors (exit 2, one line),
//! logs, `healthcheck`, and a clean exit on SIGTERM and SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_saldos");

const ENV_VARS: &[&str] = &[
    "SALDOS_AUTH",
    "SALDOS_JWT_ISSUER",
    "SALDOS_JWT_AUDIENCE",
    "SALDOS_JWKS_URL",
    "SALDOS_JWKS_FILE",
    "SALDOS_JWKS_ALLOW_HTTP",
    "SALDOS_JWT_ALGORITHMS",
    "SALDOS_JWT_LEEWAY",
    "PORT",
    "SALDOS_BIND",
    "SALDOS_STORAGE",
    "SALDOS_DATA_DIR",
    "SALDOS_SHARDS",
    "SALDOS_WORKERS",
    "SALDOS_OPENING_BALANCE",
    "SALDOS_SEED",
    "SALDOS_IDEMPOTENCY_TTL",
    "SALDOS_SHUTDOWN_GRACE",
    "SALDOS_LOG_FORMAT",
    "SALDOS_MAX_CONNECTIONS",
    "SALDOS_MAX_ACCOUNTS",
    "SALDOS_METRICS_ADDR",
    "SALDOS_SLOW_REQUEST",
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

pub fn saldos(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args);
    for var in ENV_VARS {
        command.env_remove(var);
    }
    // Tests run side by side: each server's metrics on a port of its own.
    command.env("SALDOS_METRICS_ADDR", "127.0.0.1:0");
    command.envs(env.iter().copied());
    command
}

#[test]
fn help_documents_every_option() {
    let output = saldos(&["--help"], &[]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (flag, var) in [
        ("--port", "PORT"),
        ("--bind", "SALDOS_BIND"),
        ("--storage", "SALDOS_STORAGE"),
        ("--data-dir", "SALDOS_DATA_DIR"),
        ("--shards", "SALDOS_SHARDS"),
        ("--opening-balance", "SALDOS_OPENING_BALANCE"),
        ("--seed", "SALDOS_SEED"),
        ("--idempotency-ttl", "SALDOS_IDEMPOTENCY_TTL"),
        ("--shutdown-grace", "SALDOS_SHUTDOWN_GRACE"),
        ("--log-format", "SALDOS_LOG_FORMAT"),
        ("--auth", "SALDOS_AUTH"),
        ("--jwt-issuer", "SALDOS_JWT_ISSUER"),
        ("--jwt-audience", "SALDOS_JWT_AUDIENCE"),
        ("--jwks-url", "SALDOS_JWKS_URL"),
        ("--jwks-file", "SALDOS_JWKS_FILE"),
        ("--jwks-allow-http", "SALDOS_JWKS_ALLOW_HTTP"),
        ("--jwt-algorithms", "SALDOS_JWT_ALGORITHMS"),
        ("--jwt-leeway", "SALDOS_JWT_LEEWAY"),
    ] {
        assert!(
            help.contains(flag) && help.contains(var),
            "{flag} {var} in:\n{help}"
        );
    }
    assert!(help.contains("healthcheck"));
    assert!(help.contains("dev-token") && help.contains("DEVELOPMENT ONLY"));
}

// Each bad setting: exit 2 and one line on stderr that names it.
#[test]
fn bad_configuration_exits_2_naming_the_setting() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--port", "http"], &[], "--port"),
        (&[], &[("PORT", "70000")], "--port"),
        (&["--bind", "localhost:5"], &[], "--bind"),
        (&[], &[("SALDOS_SHARDS", "3")], "--shards"),
        (&["--opening-balance=-1"], &[], "--opening-balance"),
        (
            &[],
            &[("SALDOS_OPENING_BALANCE", "9007199254740992")],
            "--opening-balance",
        ),
        (&["--seed", "usuario1=lots"], &[], "--seed"),
        (
            &[],
            &[("SALDOS_IDEMPOTENCY_TTL", "24")],
            "--idempotency-ttl",
        ),
        (&["--shutdown-grace", "10m"], &[], "--shutdown-grace"),
        (&["--log-format", "xml"], &[], "--log-format"),
        (&["--storage", "disk"], &[], "--storage"),
        (&["--no-such-flag"], &[], "--no-such-flag"),
        (&["--auth", "basic"], &[], "--auth"),
        (&["--auth", "jwt"], &[], "--jwt-issuer"),
        (
            &["--auth", "jwt", "--jwt-issuer", "https://i"],
            &[],
            "--jwt-audience",
        ),
        (
            &["--auth", "jwt", "--jwt-issuer", "i", "--jwt-audience", "a"],
            &[],
            "--jwks-url",
        ),
        (
            &[],
            &[
                ("SALDOS_AUTH", "jwt"),
                ("SALDOS_JWT_ISSUER", "i"),
                ("SALDOS_JWT_AUDIENCE", "a"),
                ("SALDOS_JWKS_URL", "ftp://keys"),
            ],
            "--jwks-url",
        ),
        (&["--jwt-algorithms", "none"], &[], "--jwt-algorithms"),
        (
            &[],
            &[("SALDOS_JWT_ALGORITHMS", "RS256,HS256")],
            "--jwt-algorithms",
        ),
        (&["--jwt-leeway", "6m"], &[], "--jwt-leeway"),
        (&["--metrics-addr", "9464"], &[], "--metrics-addr"),
        (
            &[],
            &[("SALDOS_METRICS_ADDR", "localhost")],
            "--metrics-addr",
        ),
        (&["--slow-request", "fast"], &[], "--slow-request"),
    ];
    for (args, env, named) in cases {
        let output = saldos(args, env).stdin(Stdio::null()).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?} {env:?}: {stderr}"
        );
        assert!(stderr.contains(named), "{args:?} {env:?}: {stderr}");
    }
}

/// A running binary whose stdout lines arrive on a channel.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// The journal's data directory, removed when the test ends.
    pub data_dir: tempfile::TempDir,
}

impl Running {
    /// Starts the binary with `args` and a fresh data directory.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts the binary with `args`, `env` and a fresh data directory.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = saldos(args, env);
        let data_dir = tempfile::tempdir().unwrap();
        command.arg("--data-dir").arg(data_dir.path());
        Self::spawn(command, data_dir)
    }

    fn spawn(mut command: Command, data_dir: tempfile::TempDir) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Self {
            child,
            lines,
            data_dir,
        }
    }

    /// The next stdout line containing `needle`, within 10 s.
    pub fn line_with(&self, needle: &str) -> String {
        self.lines_until(needle).pop().expect("the matching line")
    }

    /// The next stdout lines up to the first containing `needle` (the last
    /// one), within 10 s.
    pub fn lines_until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("log line in time");
            let is_last = line.contains(needle);
            lines.push(line);
            if is_last {
                return lines;
            }
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn exit_code_within(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `host:port` a "listening" log line names.
pub fn listening_address(line: &str) -> String {
    let after = line.split("address").nth(1).expect("address field");
    after
        .trim_start_matches(['"', ':', '='])
        .split(|c: char| c == '"' || c.is_whitespace())
        .next()
        .unwrap()
        .to_owned()
}

fn healthcheck(url: &str) -> Option<i32> {
    saldos(&["healthcheck", "--url", url], &[])
        .status()
        .unwrap()
        .code()
}

// Runs the binary, probes it with `saldos healthcheck`, stops it by signal.
#[test]
fn serves_probes_and_stops_cleanly_on_signals() {
    for (format, signal) in [("json", "TERM"), ("text", "INT")] {
        let mut running =
            Running::start(&["--bind", "127.0.0.1", "--port", "0", "--log-format", format]);
        let line = running.line_with("listening");
        match format {
            "json" => assert!(line.starts_with('{') && line.ends_with('}'), "{line}"),
            _ => assert!(!line.starts_with('{'), "{line}"),
        }
        let address = listening_address(&line);
        assert_eq!(
            healthcheck(&format!("http://{address}/health")),
            Some(0),
            "{address}"
        );
        assert_eq!(healthcheck(&format!("http://{address}/nope")), Some(1));
        running.signal(signal);
        assert_eq!(
            running.exit_code_within(Duration::from_secs(10)),
            Some(0),
            "{format}"
        );
        assert!(running.line_with("stopped").contains("connections_cut"));
        running.line_with("journal closed");
    }
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    drop(listener);
    let status = saldos(&["healthcheck"], &[("PORT", &port)])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

// Workers and shards follow the CPUs the process may use (here: affinity to
// one CPU, as a 1-vCPU quota would give), unless set explicitly.
#[test]
fn workers_and_shards_follow_usable_cpus() {
    let has_taskset = Command::new("taskset").arg("--version").output().is_ok();
    assert!(has_taskset, "taskset (util-linux) is needed for this test");
    let command = saldos(
        &["--bind", "127.0.0.1", "--port", "0", "--storage", "memory"],
        &[],
    );
    let program = command.get_program().to_owned();
    let mut pinned = Command::new("taskset");
    pinned
        .arg("-c")
        .arg("0")
        .arg(program)
        .args(command.get_args());
    for var in ENV_VARS {
        pinned.env_remove(var);
    }
    let running = Running::spawn(pinned, tempfile::tempdir().unwrap());
    let line = running.line_with("listening");
    assert!(
        line.contains(r#""workers":1"#) && line.contains(r#""shards":4"#),
        "{line}"
    );
    let running = Running::start(&[
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "3",
        "--shards",
        "2",
    ]);
    let line = running.line_with("listening");
    assert!(
        line.contains(r#""workers":3"#) && line.contains(r#""shards":2"#),
        "{line}"
    );
}

// One process owns a data directory: a second one exits non-zero naming the
// holder's PID; a restart with another opening balance refuses, saying why.
#[test]
fn data_directory_has_one_owner_and_fixed_settings() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().to_str().unwrap();
    let mut first = Running::spawn(
        saldos(
            &["--bind", "127.0.0.1", "--port", "0", "--data-dir", dir],
            &[],
        ),
        tempfile::tempdir().unwrap(),
    );
    first.line_with("listening");
    let second = saldos(
        &["--bind", "127.0.0.1", "--port", "0", "--data-dir", dir],
        &[],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8(second.stdout).unwrap();
    assert_eq!(second.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("in use by process {}", first.child.id())),
        "{stdout}"
    );
    first.signal("TERM");
    assert_eq!(first.exit_code_within(Duration::from_secs(10)), Some(0));
    let other = saldos(
        &["--port", "0", "--data-dir", dir, "--opening-balance", "5"],
        &[],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8(other.stdout).unwrap();
    assert_eq!(other.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("opening_balance 100000") && stdout.contains("opening_balance 5"),
        "{stdout}"
    );
}
