//! A tiny blocking HTTP/1.0 `GET` for `http://` URLs, bounded in time and
//! size: the `healthcheck` probe and the container credentials endpoint,
//! in images without curl and without an HTTP client crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The most response bytes read (status line, headers and body).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not `http://host[:port][/path]`.
    #[error("unsupported URL '{0}': expected http://host[:port][/path]")]
    Url(String),
    /// Connecting, sending or receiving failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not an HTTP response of at most [`RESPONSE_BYTES_MAX`].
    #[error("malformed or oversized response")]
    Malformed,
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line, for messages.
    pub status_line: String,
    /// The body.
    pub body: Vec<u8>,
}

/// Sends `GET url` with `headers` and reads the whole response, all within
/// `timeout`.
pub fn get(url: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<Response, Error> {
    let started = Instant::now();
    let (authority, path) = split_url(url).ok_or_else(|| Error::Url(url.to_owned()))?;
    let address: SocketAddr = authority
        .to_socket_addrs()
        .or_else(|_| format!("{authority}:80").to_socket_addrs())?
        .next()
        .ok_or_else(|| Error::Url(url.to_owned()))?;
    let remaining = || {
        timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1))
    };
    let mut stream = TcpStream::connect_timeout(&address, remaining())?;
    stream.set_write_timeout(Some(remaining()))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(remaining()))?;
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
        if response.len() > RESPONSE_BYTES_MAX {
            return Err(Error::Malformed);
        }
    }
    parse(&response).ok_or(Error::Malformed)
}

fn parse(response: &[u8]) -> Option<Response> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&response[..end]).ok()?;
    let status_line = head.lines().next()?.to_owned();
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    Some(Response {
        status,
        status_line,
        body: response[end + 4..].to_vec(),
    })
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
    fn responses_parse() {
        let parsed = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((parsed.status, parsed.body.as_slice()), (200, &b"{}"[..]));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(parse(b"garbage\r\n\r\n").is_none());
    }
}
