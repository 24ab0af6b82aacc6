//! The ledger alone: debits and reads, contention, scaling, shard count.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use saldos::ledger::{Debit, DebitKind, Ledger, Limits, SALDO_MAX, Stamp};
use saldos::usuario::Usuario;

const ACCOUNTS: usize = 1024;

fn ledger(shard_count: usize) -> Ledger {
    Ledger::new(Limits {
        shard_count,
        opening_saldo: SALDO_MAX,
        accounts_max: 1 << 24,
        history_per_account: 0,
    })
}

/// A debit's movement when the ledger keeps no history.
fn unstamped(_: Debit) -> Stamp {
    Stamp::new(0, DebitKind::Retiro, 1, 0)
}

fn names(prefix: &str) -> Vec<Usuario> {
    (0..ACCOUNTS)
        .map(|i| Usuario::new(&format!("{prefix}{i}")).unwrap())
        .collect()
}

/// Runs `iters` debits split over `threads` threads; `account_of(thread, i)`
/// picks each debit's account.
fn debit_in_threads(
    ledger: &Ledger,
    threads: usize,
    iters: u64,
    account_of: impl Fn(usize, u64) -> Usuario + Sync,
) -> Duration {
    let per_thread = iters / threads as u64 + 1;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let account_of = &account_of;
            scope.spawn(move || {
                for i in 0..per_thread {
                    black_box(ledger.debit(&account_of(thread, i), 1, unstamped).ok());
                }
            });
        }
    });
    started.elapsed()
}

fn bench_uncontended(c: &mut Criterion) {
    let ledger = ledger(16);
    let names = names("cuenta");
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("debit_uncontended", |b| {
        b.iter(|| {
            i = (i + 1) % ACCOUNTS;
            black_box(ledger.debit(&names[i], 1, unstamped).ok())
        })
    });
    group.bench_function("saldo_read", |b| {
        b.iter(|| {
            i = (i + 1) % ACCOUNTS;
            black_box(ledger.saldo(&names[i]))
        })
    });
    group.finish();
}

/// `ACCOUNTS` accounts for each of `threads` threads, no account given to two
/// threads. With `Shards::Disjoint` thread `t` gets only accounts of shards
/// `s` with `s % threads == t`, so the threads share no lock nor table; with
/// `Shards::Shared` accounts fall in every shard, as requests' accounts do.
fn accounts_of_threads(
    ledger: &Ledger,
    threads: usize,
    prefix: &str,
    shards: Shards,
) -> Vec<Vec<Usuario>> {
    let mut candidates = (0..).map(|i| Usuario::new(&format!("{prefix}{i}")).unwrap());
    let mut per_thread = vec![Vec::with_capacity(ACCOUNTS); threads];
    for (thread, accounts) in per_thread.iter_mut().enumerate() {
        while accounts.len() < ACCOUNTS {
            let usuario = candidates.next().unwrap();
            if shards == Shards::Shared || ledger.shard_of(&usuario) % threads == thread {
                accounts.push(usuario);
            }
        }
    }
    per_thread
}

/// Whether the threads of a bench debit accounts of the same shards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shards {
    Disjoint,
    Shared,
}

fn bench_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(1));
    for threads in [1, 2, 4] {
        let ledger = ledger(16);
        let hot = Usuario::new("caliente").unwrap();
        group.bench_with_input(
            BenchmarkId::new("hot_account_threads", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| debit_in_threads(&ledger, threads, iters, |_, _| hot))
            },
        );
        for (id, prefix, shards) in [
            ("distinct_accounts_threads", "d", Shards::Disjoint),
            (
                "distinct_accounts_shared_shards_threads",
                "s",
                Shards::Shared,
            ),
        ] {
            let per_thread = accounts_of_threads(&ledger, threads, prefix, shards);
            group.bench_with_input(BenchmarkId::new(id, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| {
                    debit_in_threads(&ledger, threads, iters, |t, i| {
                        per_thread[t][i as usize % ACCOUNTS]
                    })
                })
            });
        }
    }
    group.finish();
}

fn bench_shards(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(1));
    let per_thread: Vec<Vec<Usuario>> = (0..2).map(|t| names(&format!("s{t}-"))).collect();
    for shards in [1, 4, 16, 64] {
        let ledger = ledger(shards);
        group.bench_with_input(
            BenchmarkId::new("shards_2_threads", shards),
            &shards,
            |b, _| {
                b.iter_custom(|iters| {
                    debit_in_threads(&ledger, 2, iters, |t, i| {
                        per_thread[t][i as usize % ACCOUNTS]
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_uncontended, bench_threads, bench_shards);
