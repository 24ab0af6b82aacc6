//! `saldos healthcheck`: probes the service for container health checks in
//! images without curl. The whole probe is bounded by [`PROBE_TIMEOUT`].

use std::time::Duration;

use crate::http_get;

/// The probe's whole budget (SPEC section 3).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request failed.
    #[error("{0}")]
    Request(#[from] http_get::Error),
    /// The service answered something other than 200.
    #[error("unhealthy: {0}")]
    Status(String),
}

/// Sends `GET` to `url` and succeeds on a 200 within [`PROBE_TIMEOUT`].
pub fn probe(url: &str) -> Result<(), Error> {
    let response = http_get::get(url, &[], PROBE_TIMEOUT)?;
    match response.status {
        200 => Ok(()),
        _ => Err(Error::Status(response.status_line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(probe(&format!("http://127.0.0.1:{port}/health")).is_err());
    }
}
