//! The journal: record encoding, batch building, and group commit with a
//! real `fdatasync` in a temporary directory.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use saldos::config::Cli;
use saldos::journal::Record;
use saldos::ledger::{DebitKind, Outcome};
use saldos::seam::Order;
use saldos::usuario::Usuario;

fn record(i: u64) -> Record {
    Record {
        kind: DebitKind::Retiro,
        usuario: Usuario::new("usuario1").unwrap(),
        monto: 1,
        outcome: Outcome::Debited { nuevo_saldo: i },
        time_ms: 1_700_000_000_000,
        principal: None,
        key: None,
    }
}

fn bench_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal");
    let one = record(99_999);
    let mut bytes = Vec::with_capacity(1 << 20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("record_encode", |b| {
        b.iter(|| {
            bytes.clear();
            black_box(&one).encode(&mut bytes);
            black_box(bytes.len())
        })
    });
    let batch: Vec<Record> = (0..1024).map(record).collect();
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("batch_build_1024", |b| {
        b.iter(|| {
            bytes.clear();
            for record in &batch {
                record.encode(&mut bytes);
            }
            black_box(bytes.len())
        })
    });
    group.finish();
}

/// Debits from `concurrency` tasks at once through journal storage: each
/// batch costs one write and one `fdatasync`.
fn bench_group_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = Cli::try_parse_from([
        "saldos",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--opening-balance",
        "9007199254740991",
        "--seed",
        "",
    ])
    .unwrap()
    .serve;
    let storage = Arc::new(runtime.block_on(saldos::open_storage(&args)).unwrap());
    let mut group = c.benchmark_group("journal");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for concurrency in [1u64, 64] {
        group.bench_with_input(
            BenchmarkId::new("group_commit_debits", concurrency),
            &concurrency,
            |b, &concurrency| {
                b.iter_custom(|iters| {
                    let storage = storage.clone();
                    runtime.block_on(async move {
                        let started = Instant::now();
                        let tasks: Vec<_> = (0..concurrency)
                            .map(|task| {
                                let storage = storage.clone();
                                tokio::spawn(async move {
                                    let usuario = Usuario::new(&format!("cuenta{task}")).unwrap();
                                    for _ in 0..iters.div_ceil(concurrency) {
                                        let order = Order {
                                            kind: DebitKind::Retiro,
                                            usuario,
                                            monto: 1,
                                            principal: None,
                                            key: None,
                                        };
                                        storage.debit(order).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                        started.elapsed()
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_encoding, bench_group_commit);
