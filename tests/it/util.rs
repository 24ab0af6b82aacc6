//! Shared test helpers: a real server on an ephemeral loopback port, and a raw
//! HTTP/1.1 client that can send anything (garbage, chunked, pipelined).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use saldos::config::Cli;
use saldos::router::App;
use saldos::server::{self, Drained, Settings};
use saldos::storage::Storage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bound on every read a test waits for, so a broken server fails fast.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A server running in this process on 127.0.0.1 and an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The metrics listener, unless the test turned metrics off.
    pub metrics_addr: Option<SocketAddr>,
    pub storage: Arc<Storage>,
    /// What requests are served with (its authentication's test hooks).
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Drained>,
}

/// A storage the contract tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    /// A fresh database of the shared test cluster.
    Postgres,
}

/// Starts a server on `backend` with the default configuration plus `extra`.
pub async fn start_server_on(backend: Backend, extra: &[&str]) -> TestServer {
    match backend {
        Backend::Memory => start_server(extra).await,
        Backend::Postgres => {
            let url = crate::pg_cluster::shared().create_database().await;
            let mut args = postgres_args(&url);
            args.extend(extra.iter().map(|arg| (*arg).to_owned()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            start_server(&args).await
        }
    }
}

/// The flags of a server on the PostgreSQL database at `url`.
pub fn postgres_args(url: &str) -> Vec<String> {
    [
        "--storage",
        "postgres",
        "--database-url",
        url,
        "--db-connections",
        "4",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Defines each named `async fn(Backend)` test once per storage, in modules
/// `memory` and `postgres`.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::util::Backend::Memory).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::util::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use contract_tests;

/// Starts the real binary on 127.0.0.1 and a free port with `extra` flags;
/// returns it and the address it logged.
pub fn spawn_binary(extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_saldos"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--log-format", "json"])
        // Metrics on a free port: several binaries may run at once.
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let address = loop {
        assert!(Instant::now() < deadline, "no listening line");
        let line = lines.next().expect("server output").unwrap();
        if let Some(rest) = line.split("\"address\":\"").nth(1) {
            break rest.split('"').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, address)
}

/// Starts a server with the default configuration plus `extra` flags.
pub async fn start_server(extra: &[&str]) -> TestServer {
    start_server_with(extra, |settings| settings).await
}

/// Starts a server, letting the test adjust its connection settings.
pub async fn start_server_with(
    extra: &[&str],
    adjust: impl FnOnce(Settings) -> Settings,
) -> TestServer {
    let mut argv = vec!["saldos", "--bind", "127.0.0.1", "--port", "0"];
    if !extra.contains(&"--storage") {
        argv.extend_from_slice(&["--storage", "memory"]);
    }
    if !extra.contains(&"--metrics-addr") {
        argv.extend_from_slice(&["--metrics-addr", "127.0.0.1:0"]);
    }
    argv.extend_from_slice(extra);
    let args = Cli::try_parse_from(argv)
        .expect("test arguments parse")
        .serve;
    let storage = Arc::new(saldos::open_storage(&args).await.expect("storage opens"));
    let auth = saldos::open_auth(&args.auth).await.expect("auth starts");
    let app = Arc::new(saldos::app(&args, storage.clone(), auth, None));
    let metrics_addr = saldos::spawn_metrics(&args, &app)
        .await
        .expect("metrics listen");
    let listener = saldos::listen(SocketAddr::new(args.bind, args.port)).expect("listens");
    let addr = listener.local_addr().unwrap();
    let settings = adjust(Settings::new(
        args.max_connections as usize,
        args.shutdown_grace,
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, app.clone(), settings, async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        metrics_addr,
        storage,
        app,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Asks the server to drain and waits for it.
    pub async fn shutdown(mut self) -> Drained {
        let _ = self.stop.take().map(|stop| stop.send(()));
        (&mut self.task).await.expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

/// A raw HTTP/1.1 client on one connection. The `try_` calls return `None`
/// when the connection fails (for crash tests); the others panic.
pub struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr).await.expect("connects")
    }

    pub async fn try_connect(addr: SocketAddr) -> Option<Self> {
        let stream = TcpStream::connect(addr).await.ok()?;
        Some(Self {
            stream,
            buffer: Vec::new(),
        })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("writes");
    }

    /// Sends one request with the usual headers and reads its reply.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        self.try_request(method, path, headers, body)
            .await
            .expect("a reply")
    }

    pub async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Option<Reply> {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        raw.push_str(body.unwrap_or_default());
        self.stream.write_all(raw.as_bytes()).await.ok()?;
        self.try_read_reply(method == "HEAD").await
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, &[], None).await
    }

    /// Asserts the account's balance through `GET /saldo/{usuario}`.
    pub async fn assert_saldo(&mut self, usuario: &str, saldo: u64) {
        let reply = self.get(&format!("/saldo/{usuario}")).await;
        let expected = format!(r#"{{"usuario":"{usuario}","saldo":{saldo}}}"#);
        assert_eq!((reply.status, reply.text()), (200, expected.as_str()));
    }

    /// A JSON `POST`.
    pub async fn post(&mut self, path: &str, body: &str) -> Reply {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body),
        )
        .await
    }

    /// Reads one response (`head`: the request was HEAD, so no body follows).
    pub async fn read_reply(&mut self, head: bool) -> Reply {
        self.try_read_reply(head).await.expect("a reply")
    }

    pub async fn try_read_reply(&mut self, head: bool) -> Option<Reply> {
        let end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at;
            }
            if self.fill().await? == 0 {
                return None;
            }
        };
        let head_text = String::from_utf8(self.buffer[..end].to_vec()).ok()?;
        self.buffer.drain(..end + 4);
        let mut lines = head_text.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_owned(), value.trim().to_owned()))
            })
            .collect();
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        let length: usize = reply
            .header("content-length")
            .map_or(Some(0), |v| v.parse().ok())?;
        if !head {
            while self.buffer.len() < length {
                if self.fill().await? == 0 {
                    return None;
                }
            }
            reply.body = self.buffer.drain(..length).collect();
        }
        Some(reply)
    }

    /// True when the server closed the connection (reads end-of-stream)
    /// within `within`.
    pub async fn is_closed_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(within, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    /// Reads more bytes; `None` on an error or after [`READ_TIMEOUT`].
    async fn fill(&mut self) -> Option<usize> {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        self.buffer.extend_from_slice(&chunk[..read]);
        Some(read)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The SPEC's error body.
pub fn error_body(error: &str, codigo: &str) -> String {
    format!(r#"{{"error":"{error}","codigo":"{codigo}"}}"#)
}
