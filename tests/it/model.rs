//! Model-based test of the journal: random sequences of debits (keyed and
//! not, paid and refused), clean restarts and power cuts at random file
//! operations, against a plain model of balances and remembered keys. Any
//! divergence fails with a case proptest shrinks to the fewest operations.

use std::collections::HashMap;

use proptest::prelude::*;
use saldos::idempotency::{Begin, Remembered};
use saldos::journal::PowerCut;
use saldos::ledger::Outcome;
use saldos::storage::Storage;

use crate::journal_support::{
    Debited, JUSTO, JUSTO_SALDO, OPENING, POBRE, debit, open, remembered,
};

const ACCOUNTS: [&str; 4] = ["cuenta-0", "cuenta-1", POBRE, JUSTO];

#[derive(Debug, Clone)]
struct Request {
    account: usize,
    monto: u64,
    key: Option<u8>,
}

impl Request {
    fn key(&self) -> Option<String> {
        self.key.map(|key| format!("clave-{key}"))
    }

    /// The same request always has the same fingerprint.
    fn fingerprint(&self) -> u64 {
        (self.account as u64) << 40 | self.monto
    }
}

#[derive(Debug, Clone)]
enum Op {
    Debit(Request),
    /// A clean stop, then a power cut: nothing acknowledged may go.
    Restart {
        seed: u64,
    },
    /// The power goes during the request, at one of its first file operations.
    Crash {
        request: Request,
        ops: u64,
        seed: u64,
    },
}

fn request() -> impl Strategy<Value = Request> {
    (0..ACCOUNTS.len(), 1..400u64, proptest::option::of(0..6u8)).prop_map(
        |(account, monto, key)| Request {
            account,
            monto,
            key,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => request().prop_map(Op::Debit),
        1 => any::<u64>().prop_map(|seed| Op::Restart { seed }),
        2 => (request(), 0..8u64, any::<u64>()).prop_map(|(request, ops, seed)| Op::Crash { request, ops, seed }),
    ]
}

#[derive(Default)]
struct Model {
    saldos: HashMap<usize, u64>,
    keys: HashMap<String, (u64, Outcome)>,
}

impl Model {
    fn saldo(&self, account: usize) -> u64 {
        self.saldos
            .get(&account)
            .copied()
            .unwrap_or(match ACCOUNTS[account] {
                POBRE => 0,
                JUSTO => JUSTO_SALDO,
                _ => OPENING,
            })
    }

    /// What the service must answer, and the model's state after it.
    fn apply(&mut self, request: &Request) -> Debited {
        let key = request.key();
        if let Some((fingerprint, outcome)) = key.as_ref().and_then(|key| self.keys.get(key)) {
            return if *fingerprint == request.fingerprint() {
                Debited::Key(Begin::Replay(Remembered {
                    fingerprint: *fingerprint,
                    kind: saldos::ledger::DebitKind::Retiro,
                    usuario: saldos::usuario::Usuario::new(ACCOUNTS[request.account]).unwrap(),
                    monto: request.monto,
                    outcome: *outcome,
                    time_ms: 0,
                }))
            } else {
                Debited::Key(Begin::Conflict)
            };
        }
        let saldo = self.saldo(request.account);
        let outcome = match saldo.checked_sub(request.monto) {
            Some(nuevo_saldo) => Outcome::Debited { nuevo_saldo },
            None => Outcome::Refused {
                saldo_disponible: saldo,
            },
        };
        if let Outcome::Debited { nuevo_saldo } = outcome {
            self.saldos.insert(request.account, nuevo_saldo);
        }
        if let Some(key) = key {
            self.keys.insert(key, (request.fingerprint(), outcome));
        }
        Debited::Answered(outcome)
    }

    /// Everything the model holds is what the storage shows.
    fn check(&self, storage: &Storage) -> Result<(), TestCaseError> {
        for (account, name) in ACCOUNTS.iter().enumerate() {
            let usuario = saldos::usuario::Usuario::new(name).unwrap();
            prop_assert_eq!(
                storage.as_local().unwrap().saldo(&usuario),
                self.saldo(account),
                "{}",
                name
            );
        }
        for (key, (fingerprint, outcome)) in &self.keys {
            prop_assert_eq!(
                remembered(storage.as_local().unwrap().keys(), key, *fingerprint),
                Some(*outcome),
                "{}",
                key
            );
        }
        Ok(())
    }
}

/// Sends a request; a replay is compared by outcome only (its time is the
/// first request's).
fn send(runtime: &tokio::runtime::Runtime, storage: &Storage, request: &Request) -> Debited {
    let key = request.key();
    let answer = runtime.block_on(debit(
        storage,
        ACCOUNTS[request.account],
        request.monto,
        key.as_deref(),
        request.fingerprint(),
    ));
    match answer {
        Debited::Key(Begin::Replay(remembered)) => Debited::Key(Begin::Replay(Remembered {
            time_ms: 0,
            ..remembered
        })),
        other => other,
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut medium = PowerCut::new();
    let mut model = Model::default();
    let mut storage = open(&medium).unwrap().storage;
    for op in ops {
        match op {
            Op::Debit(request) => {
                let expected = model.apply(&request);
                prop_assert_eq!(
                    send(&runtime, &storage, &request),
                    expected,
                    "{:?}",
                    request
                );
            }
            Op::Restart { seed } => {
                drop(storage);
                medium = medium.survivor(seed);
                storage = open(&medium).unwrap().storage;
                model.check(&storage)?;
            }
            Op::Crash { request, ops, seed } => {
                medium.cut_after(ops);
                let answer = send(&runtime, &storage, &request);
                drop(storage);
                medium = medium.survivor(seed);
                storage = open(&medium).unwrap().storage;
                let mut applied = Model {
                    saldos: model.saldos.clone(),
                    keys: model.keys.clone(),
                };
                let expected = applied.apply(&request);
                if answer == Debited::Unavailable {
                    // Not acknowledged: durable or not, but wholly one or the other.
                    let account = saldos::usuario::Usuario::new(ACCOUNTS[request.account]).unwrap();
                    if storage.as_local().unwrap().saldo(&account) != model.saldo(request.account)
                        || request.key().is_some_and(|key| {
                            remembered(
                                storage.as_local().unwrap().keys(),
                                &key,
                                request.fingerprint(),
                            )
                            .is_some()
                        })
                    {
                        model = applied;
                    }
                } else {
                    prop_assert_eq!(answer, expected, "{:?}", request);
                    model = applied;
                }
                model.check(&storage)?;
            }
        }
    }
    drop(storage);
    let storage = open(&medium.survivor(0)).unwrap().storage;
    model.check(&storage)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_journal_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
