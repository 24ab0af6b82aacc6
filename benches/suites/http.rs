//! The HTTP side: path decoding, body parsing, rendering, and one whole
//! request through the hyper service in process (over an in-memory pipe).

use std::hint::black_box;
use std::sync::Arc;

use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use saldos::api::{ApiError, parse_debit};
use saldos::config::Cli;
use saldos::render::render;
use saldos::usuario::Usuario;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bench_parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    group.bench_function("path_decode", |b| {
        b.iter(|| black_box(Usuario::from_path_segment(black_box("usuario%C3%B1%20123")).ok()))
    });
    let body = br#"{"usuario":"usuario1","monto":5000}"#;
    group.bench_function("body_parse_debit", |b| {
        b.iter(|| black_box(parse_debit(black_box(body)).ok()))
    });
    group.bench_function("render_saldo", |b| {
        b.iter(|| {
            black_box(render(|w| {
                w.raw("{\"usuario\":");
                w.string(black_box("usuario1"));
                w.raw(",\"saldo\":");
                w.u64(black_box(10_000));
                w.raw("}");
            }))
        })
    });
    group.bench_function("render_error", |b| {
        b.iter(|| black_box(black_box(ApiError::MontoInvalido).body()))
    });
    group.finish();
}

/// One keep-alive connection to the real router over `tokio::io::duplex`.
fn bench_full_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let args = Cli::try_parse_from([
        "saldos",
        "--storage",
        "memory",
        "--opening-balance",
        "9007199254740991",
    ])
    .unwrap()
    .serve;
    let storage = Arc::new(runtime.block_on(saldos::open_storage(&args)).unwrap());
    let auth = runtime.block_on(saldos::open_auth(&args.auth)).unwrap();
    let app = Arc::new(saldos::app(&args, storage, auth, None));
    let (client, server) = tokio::io::duplex(64 * 1024);
    runtime.spawn(async move {
        let service = service_fn(move |request| {
            let app = app.clone();
            async move {
                Ok::<_, std::convert::Infallible>(saldos::router::handle(&app, request).await)
            }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(server), service)
            .await;
    });
    let client = Arc::new(tokio::sync::Mutex::new(client));
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    for (name, request) in [
        (
            "request_get_saldo",
            "GET /saldo/usuario1 HTTP/1.1\r\nHost: b\r\n\r\n".to_owned(),
        ),
        (
            "request_post_retiro",
            format!(
                "POST /retiro HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n{}",
                r#"{"usuario":"usuario1","monto":1}"#
            ),
        ),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let (client, request) = (client.clone(), request.clone());
                async move {
                    let mut client = client.lock().await;
                    client.write_all(request.as_bytes()).await.unwrap();
                    read_response(&mut client).await
                }
            })
        });
    }
    group.finish();
}

/// Reads one response with a Content-Length body; returns its status.
async fn read_response(stream: &mut tokio::io::DuplexStream) -> u16 {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        buffer.extend_from_slice(&chunk[..read]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..end]).unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if buffer.len() >= end + 4 + length {
            return head[9..12].parse().unwrap();
        }
    }
}

criterion_group!(benches, bench_parsing, bench_full_request);
