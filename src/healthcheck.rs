//! `saldos healthcheck`: a tiny HTTP/1.1 client for container health checks in
//! images without curl. Blocking std I/O; the whole probe is bounded by
//! [`PROBE_TIMEOUT`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The probe's whole budget (SPEC section 3).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most response bytes read: the status line is all that matters.
const RESPONSE_BYTES_MAX: usize = 1024;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not `http://host[:port][/path]`.
    #[error("unsupported URL '{0}': expected http://host[:port][/path]")]
    Url(String),
    /// Connecting, sending or receiving failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The service answered something other than 200.
    #[error("unhealthy: {0}")]
    Status(String),
}

/// Sends `GET` to `url` and succeeds on a 200 within [`PROBE_TIMEOUT`].
pub fn probe(url: &str) -> Result<(), Error> {
    let started = Instant::now();
    let (authority, path) = split_url(url).ok_or_else(|| Error::Url(url.to_owned()))?;
    let address: SocketAddr = authority
        .to_socket_addrs()
        .or_else(|_| format!("{authority}:80").to_socket_addrs())?
        .next()
        .ok_or_else(|| Error::Url(url.to_owned()))?;
    let remaining = || {
        PROBE_TIMEOUT
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1))
    };
    let mut stream = TcpStream::connect_timeout(&address, remaining())?;
    stream.set_write_timeout(Some(remaining()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::with_capacity(RESPONSE_BYTES_MAX);
    let mut chunk = [0u8; 256];
    while !response.contains(&b'\n') && response.len() < RESPONSE_BYTES_MAX {
        stream.set_read_timeout(Some(remaining()))?;
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
    }
    let status_line = String::from_utf8_lossy(&response);
    let status_line = status_line.lines().next().unwrap_or_default();
    match status_line.split(' ').nth(1) {
        Some("200") => Ok(()),
        _ => Err(Error::Status(status_line.to_owned())),
    }
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
    (!authority.is_empty()).then_some((authority, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:5000/health"),
            Some(("127.0.0.1:5000", "/health"))
        );
        assert_eq!(split_url("http://localhost"), Some(("localhost", "/")));
        assert_eq!(split_url("https://x/health"), None);
        assert_eq!(split_url("http:///health"), None);
    }

    #[test]
    fn a_closed_port_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(probe(&format!("http://127.0.0.1:{port}/health")).is_err());
    }
}
