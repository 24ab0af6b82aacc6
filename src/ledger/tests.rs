use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

fn ledger(shard_count: usize, accounts_max: usize) -> Ledger {
    Ledger::new(Limits {
        shard_count,
        opening_saldo: 100_000,
        accounts_max,
        history_per_account: 0,
    })
}

/// A memory-storage debit, its movement stamped with id 0 (no history is
/// kept by these ledgers).
fn debit_now(ledger: &Ledger, usuario: &Usuario, monto: u64) -> Result<Debit, Error> {
    ledger.debit(usuario, monto, |_| Stamp::new(0, DebitKind::Pago, monto, 0))
}

fn stamp(id: u64, monto: u64) -> Stamp {
    Stamp::new(id, DebitKind::Retiro, monto, id * 10)
}

fn usuario(name: &str) -> Usuario {
    Usuario::new(name).unwrap()
}

/// xorshift64*: a tiny deterministic generator, so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

// Reads of unknown accounts answer the opening balance and store nothing.
#[test]
fn reading_never_inserts() {
    let ledger = ledger(4, 10);
    for i in 0..1000 {
        assert_eq!(ledger.saldo(&usuario(&format!("nobody{i}"))), 100_000);
    }
    assert_eq!(ledger.accounts_stored(), 0);
}

#[test]
fn debit_checks_then_subtracts() {
    let ledger = ledger(1, 10);
    let ana = usuario("ana");
    ledger.seed(&ana, 15_000).unwrap();
    assert_eq!(
        debit_now(&ledger, &ana, 5_000),
        Ok(Debit {
            saldo_anterior: 15_000,
            nuevo_saldo: 10_000
        })
    );
    assert_eq!(
        debit_now(&ledger, &ana, 10_001),
        Err(Error::SaldoInsuficiente {
            saldo_disponible: 10_000,
            pendiente: 0
        })
    );
    assert_eq!(ledger.saldo(&ana), 10_000);
    assert_eq!(debit_now(&ledger, &ana, 10_000).unwrap().nuevo_saldo, 0);
    assert_eq!(
        debit_now(&ledger, &ana, 1),
        Err(Error::SaldoInsuficiente {
            saldo_disponible: 0,
            pendiente: 0
        })
    );
}

// A refused debit of an unknown account stores nothing; a successful one stores it.
#[test]
fn only_successful_debits_insert() {
    let ledger = ledger(2, 10);
    let nuevo = usuario("nuevo");
    assert!(debit_now(&ledger, &nuevo, 100_001).is_err());
    assert_eq!(ledger.accounts_stored(), 0);
    assert_eq!(debit_now(&ledger, &nuevo, 1).unwrap().nuevo_saldo, 99_999);
    assert_eq!(ledger.accounts_stored(), 1);
    assert_eq!(ledger.saldo(&nuevo), 99_999);
}

#[test]
fn account_limit_refuses_new_accounts_only() {
    let ledger = ledger(4, 3);
    for name in ["a", "b", "c"] {
        debit_now(&ledger, &usuario(name), 1).unwrap();
    }
    assert_eq!(debit_now(&ledger, &usuario("d"), 1), Err(Error::LedgerFull));
    assert_eq!(ledger.saldo(&usuario("d")), 100_000);
    assert_eq!(
        debit_now(&ledger, &usuario("a"), 1).unwrap().nuevo_saldo,
        99_998
    );
    assert_eq!(ledger.accounts_stored(), 3);
}

// The model test: many threads debit random accounts by random amounts; every
// account must end at its opening balance minus the sum of its successful
// debits, no balance below zero, and every refusal must have been justified.
#[test]
fn concurrent_random_debits_match_the_model() {
    const THREADS: u64 = 8;
    const DEBITS_PER_THREAD: usize = 20_000;
    const ACCOUNTS: u64 = 64;
    let ledger = ledger(8, 1_000);
    let names: Vec<Usuario> = (0..ACCOUNTS)
        .map(|i| usuario(&format!("cuenta{i}")))
        .collect();
    let debited: Vec<AtomicU64> = (0..ACCOUNTS).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (ledger, names, debited) = (&ledger, &names, &debited);
            scope.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (thread + 1));
                for _ in 0..DEBITS_PER_THREAD {
                    let account = rng.below(ACCOUNTS) as usize;
                    let monto = 1 + rng.below(3_000);
                    match debit_now(ledger, &names[account], monto) {
                        Ok(debit) => {
                            assert_eq!(debit.saldo_anterior - debit.nuevo_saldo, monto);
                            debited[account].fetch_add(monto, Ordering::Relaxed);
                        }
                        Err(Error::SaldoInsuficiente {
                            saldo_disponible, ..
                        }) => {
                            assert!(saldo_disponible < monto)
                        }
                        Err(Error::LedgerFull) => panic!("room for every account"),
                    }
                }
            });
        }
    });
    let mut seen = HashMap::new();
    for (name, debited) in names.iter().zip(&debited) {
        let debited = debited.load(Ordering::Relaxed);
        assert!(debited <= 100_000, "{name} overdrawn");
        assert_eq!(ledger.saldo(name), 100_000 - debited, "{name}");
        seen.insert(name.as_str().to_owned(), debited);
    }
    // Enough load that most accounts ran dry: refusals were exercised too.
    assert!(seen.values().filter(|d| **d > 97_000).count() > (ACCOUNTS as usize) / 2);
}

#[test]
fn one_shard_and_many_shards_agree() {
    for shard_count in [1, 2, 64, SHARDS_MAX] {
        let ledger = ledger(shard_count, 100);
        for i in 0..50u64 {
            debit_now(&ledger, &usuario(&format!("u{i}")), i + 1).unwrap();
        }
        for i in 0..50u64 {
            assert_eq!(ledger.saldo(&usuario(&format!("u{i}"))), 100_000 - i - 1);
        }
    }
}

// Reservations count against the available balance but show only once settled.
#[test]
fn reservations_hold_funds_until_settled() {
    let ledger = ledger(2, 10);
    let ana = usuario("ana");
    ledger.seed(&ana, 100).unwrap();
    let (debit, first) = ledger
        .reserve(&ana, 60, |debit, account| (debit, account))
        .unwrap();
    assert_eq!(debit.nuevo_saldo, 40);
    assert_eq!(ledger.saldo(&ana), 100, "a pending debit is not shown");
    assert_eq!(
        ledger.reserve(&ana, 41, |_, _| ()).unwrap_err(),
        Error::SaldoInsuficiente {
            saldo_disponible: 40,
            pendiente: 60
        }
    );
    let (second, account) = ledger
        .reserve(&ana, 40, |debit, account| (debit, account))
        .unwrap();
    assert_eq!((second.nuevo_saldo, account), (0, first));
    ledger.settle(first, &ana, 60, Some(stamp(1, 60)));
    ledger.settle(account, &ana, 40, None);
    assert_eq!(ledger.saldo(&ana), 40);
    assert_eq!(debit_now(&ledger, &ana, 40).unwrap().nuevo_saldo, 0);
}

// Replay applies a record once: a snapshot that already holds it skips it,
// and a record that disagrees with the balance is refused.
#[test]
fn replay_applies_each_record_once_and_checks_it() {
    let ledger = ledger(2, 1);
    let ana = usuario("ana");
    ledger.restore(&ana, 100, 5, &[]).unwrap();
    ledger.replay(&ana, stamp(5, 10), 12345).unwrap();
    assert_eq!(ledger.saldo(&ana), 100, "record 5 is in the snapshot");
    ledger.replay(&ana, stamp(6, 10), 90).unwrap();
    assert_eq!(ledger.saldo(&ana), 90);
    assert!(matches!(
        ledger.replay(&ana, stamp(7, 10), 81),
        Err(ReplayError::Disagrees {
            found: 80,
            recorded: 81,
            ..
        })
    ));
    assert!(matches!(
        ledger.replay(&ana, stamp(8, 91), 0),
        Err(ReplayError::Exceeds { saldo: 90, .. })
    ));
    assert_eq!(
        ledger.replay(&usuario("bea"), stamp(9, 1), 99_999),
        Err(ReplayError::TooManyAccounts { accounts_max: 1 })
    );
}

// History keeps the newest movements, in order, through every path that
// applies a debit: memory debits, settled reservations, replay, restore.
#[test]
fn history_keeps_the_newest_movements_of_each_path() {
    let ledger = Ledger::new(Limits {
        shard_count: 2,
        opening_saldo: 1_000,
        accounts_max: 10,
        history_per_account: 3,
    });
    let ana = usuario("ana");
    let kept = |usuario: &Usuario| {
        ledger.history(usuario, |history| {
            let mut stamps: Vec<Stamp> = history.newest_first().collect();
            stamps.reverse();
            (history.saldo, stamps)
        })
    };
    assert_eq!(kept(&ana), (1_000, vec![]));
    ledger.debit(&ana, 1, |_| stamp(1, 1)).unwrap();
    let (_, account) = ledger
        .reserve(&ana, 2, |debit, account| (debit, account))
        .unwrap();
    ledger.settle(account, &ana, 2, Some(stamp(2, 2)));
    let (_, account) = ledger
        .reserve(&ana, 4, |debit, account| (debit, account))
        .unwrap();
    ledger.settle(account, &ana, 4, None);
    ledger.replay(&ana, stamp(3, 3), 994).unwrap();
    ledger.replay(&ana, stamp(4, 4), 990).unwrap();
    assert_eq!(
        kept(&ana),
        (990, vec![stamp(2, 2), stamp(3, 3), stamp(4, 4)])
    );
    let bea = usuario("bea");
    ledger
        .restore(
            &bea,
            50,
            9,
            &[stamp(5, 1), stamp(7, 2), stamp(8, 3), stamp(9, 4)],
        )
        .unwrap();
    assert_eq!(kept(&bea).1, [stamp(7, 2), stamp(8, 3), stamp(9, 4)]);
    let mut seen = Vec::new();
    for shard in 0..ledger.shard_count() {
        let chunk = ledger.visit_chunk(&mut ShardCursor::new(shard), usize::MAX, |stored| {
            let stamps: Vec<Stamp> = stored.history.into_iter().flatten().copied().collect();
            seen.push((stored.usuario.to_owned(), stamps));
            std::ops::ControlFlow::Continue(())
        });
        assert_eq!(chunk, Chunk::Done);
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen[1].1, [stamp(7, 2), stamp(8, 3), stamp(9, 4)]);
}

#[test]
fn stamps_pack_kind_and_amount() {
    for kind in [DebitKind::Pago, DebitKind::Retiro] {
        let stamp = Stamp::new(7, kind, MONTO_MAX, 123);
        assert_eq!(
            (stamp.id(), stamp.kind(), stamp.monto(), stamp.time_ms()),
            (7, kind, MONTO_MAX, 123)
        );
        assert_eq!(Stamp::from_words(stamp.words()), Some(stamp));
    }
    assert_eq!(Stamp::from_words([1, 2, 0]), None);
    assert_eq!(Stamp::from_words([1, 2, MONTO_MAX + 1]), None);
}
