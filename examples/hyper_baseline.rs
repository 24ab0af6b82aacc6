//! The speed baseline: a bare hyper 1.x server on the same dependency versions
//! and runtime settings as `saldos`, doing no work beyond reading the request
//! body and answering a fixed small JSON. Benchmarks quote `saldos` as a ratio
//! of this.
//!
//! `cargo run --release --example hyper_baseline -- [PORT] [WORKERS]`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &[u8] = br#"{"usuario":"usuario1","saldo":10000}"#;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5001);
    let workers = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(saldos::config::usable_cpus);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve(SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn serve(address: SocketAddr) -> std::io::Result<()> {
    let listener = saldos::listen(address).map_err(std::io::Error::other)?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    // Read the body, as the real service must.
                    let _ = request.into_body().collect().await;
                    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(response)
                },
            );
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
