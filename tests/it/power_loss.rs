//! Power loss under the strict POSIX crash model (SPEC section 2): the
//! journal runs over `PowerCut`, a file layer that keeps only what was synced
//! (bytes and directory entries) when the power goes, and garbles the rest
//! sector by sector. Rounds of concurrent keyed and unkeyed debits are cut at
//! random operations (appends, writes over the room of zeros written ahead,
//! syncs, segment rotations, snapshot writes, recovery itself); each round
//! starts from what the previous cut left.
//!
//! After every cut, exactly: every acknowledged debit and key is back, and
//! nothing that was not requested. Each debit of an account in a round takes
//! a distinct power of two, so the balance lost by an account names exactly
//! which debits are durable. The seed is printed on failure; set
//! `POWER_LOSS_SEED` to run the same requests, cut points and crash choices
//! again (thread interleavings may still differ).

use std::collections::HashMap;
use std::sync::Arc;

use saldos::journal::PowerCut;
use saldos::ledger::Outcome;
use saldos::storage::Storage;

use crate::journal_support::{
    Debited, JUSTO, JUSTO_SALDO, OPENING, POBRE, SEGMENT_BYTES_MAX, debit, open_with_segments,
    remembered, usuario,
};

const ROUNDS: usize = 300;
const ACCOUNTS: usize = 5;
/// Debits per account per round: distinct powers of two up to 2^35.
const DEBITS_PER_ACCOUNT: u32 = 36;
/// Tasks issuing debits at once.
const TASKS: usize = 8;
/// The cut falls within this many file operations of a round's start.
const CUT_WINDOW_OPS: u64 = 160;
/// Every this many rounds, the cut falls within recovery's first operations
/// (metadata, truncation of a torn batch, a fresh segment).
const RECOVERY_CUT_EVERY_ROUNDS: usize = 10;
const RECOVERY_CUT_WINDOW_OPS: u64 = 4;
/// Every other round runs on segments this large: many batches written over
/// the room of one segment (the tiny ones rotate every few batches).
const ROOMY_SEGMENT_BYTES_MAX: u64 = 64 << 10;
/// The accounts whose every debit is a distinct power of two; the last is
/// `JUSTO`, seeded with less than the sum, so some debits are refused (with
/// debits of it pending: a refusal then waits for them).
fn account(n: usize) -> String {
    if n + 1 == ACCOUNTS {
        JUSTO.to_owned()
    } else {
        format!("cuenta-{n}")
    }
}

/// `JUSTO` gets the smaller powers of two only: their sum exceeds its balance.
const JUSTO_DEBITS: u32 = 10;

/// One debit request of a round.
#[derive(Debug, Clone)]
struct Request {
    account: String,
    monto: u64,
    key: Option<String>,
    fingerprint: u64,
    /// The answer it got, if any: `None` for 503 (or none at all).
    answer: Option<Outcome>,
}

/// What the durable state must agree with.
#[derive(Default)]
struct Model {
    /// Balance of each account as of the last verified recovery.
    saldos: HashMap<String, u64>,
    /// Every key ever acknowledged, with its answer.
    keys: HashMap<String, (u64, Outcome)>,
    /// Requests of rounds since the last successful recovery.
    unverified: Vec<Request>,
}

impl Model {
    /// Checks a recovered storage against the requests since the last check.
    fn verify(&mut self, storage: &Storage, seed: u64, round: usize) {
        let context = format!("seed {seed}, round {round}");
        let mut requested: HashMap<&str, u64> = HashMap::new();
        let mut acknowledged: HashMap<&str, u64> = HashMap::new();
        for request in self.unverified.iter().filter(|r| r.account != POBRE) {
            *requested.entry(&request.account).or_default() |= request.monto;
            if matches!(request.answer, Some(Outcome::Debited { .. })) {
                *acknowledged.entry(&request.account).or_default() |= request.monto;
            }
        }
        let mut durable_bits: HashMap<String, u64> = HashMap::new();
        for n in 0..ACCOUNTS {
            let name = account(n);
            let opening = if name == JUSTO { JUSTO_SALDO } else { OPENING };
            let before = *self.saldos.get(&name).unwrap_or(&opening);
            let now = storage.as_local().unwrap().saldo(&usuario(&name));
            let lost = before
                .checked_sub(now)
                .unwrap_or_else(|| panic!("{context}: {name} gained money: {before} -> {now}"));
            let asked = requested.get(name.as_str()).copied().unwrap_or(0);
            let acked = acknowledged.get(name.as_str()).copied().unwrap_or(0);
            assert_eq!(
                lost & !asked,
                0,
                "{context}: {name} lost debits never requested"
            );
            assert_eq!(
                lost & acked,
                acked,
                "{context}: {name} lost acknowledged debits"
            );
            durable_bits.insert(name.clone(), lost);
            self.saldos.insert(name, now);
        }
        assert_eq!(
            storage.as_local().unwrap().saldo(&usuario(POBRE)),
            0,
            "{context}: pobre"
        );
        for request in &self.unverified {
            let Some(key) = &request.key else { continue };
            let remembered =
                remembered(storage.as_local().unwrap().keys(), key, request.fingerprint);
            if let Some(answer) = request.answer {
                assert_eq!(
                    remembered,
                    Some(answer),
                    "{context}: acknowledged key {key}"
                );
                self.keys.insert(key.clone(), (request.fingerprint, answer));
            }
            // Remembered as debited exactly when its debit is durable.
            let durable = durable_bits
                .get(&request.account)
                .is_some_and(|bits| bits & request.monto != 0);
            let remembered_debit = matches!(remembered, Some(Outcome::Debited { .. }));
            assert_eq!(
                remembered_debit, durable,
                "{context}: key {key} vs its debit"
            );
        }
        for (key, (fingerprint, answer)) in &self.keys {
            assert_eq!(
                remembered(storage.as_local().unwrap().keys(), key, *fingerprint),
                Some(*answer),
                "{context}: key {key} of an earlier round"
            );
        }
        self.unverified.clear();
    }
}

/// The round's requests: every account gets each power of two once, some
/// with keys; pobre gets keyed refusals.
fn requests(round: usize, random: &mut fastrand::Rng) -> Vec<Request> {
    let mut requests = Vec::new();
    for n in 0..ACCOUNTS {
        let bits = if account(n) == JUSTO {
            JUSTO_DEBITS
        } else {
            DEBITS_PER_ACCOUNT
        };
        for bit in 0..bits {
            let keyed = random.bool();
            requests.push(Request {
                account: account(n),
                monto: 1 << bit,
                key: keyed.then(|| format!("r{round}-a{n}-b{bit}")),
                fingerprint: random.u64(..),
                answer: None,
            });
        }
    }
    for k in 0..4 {
        requests.push(Request {
            account: POBRE.into(),
            monto: 1 + k,
            key: Some(format!("r{round}-pobre-{k}")),
            fingerprint: random.u64(..),
            answer: None,
        });
    }
    random.shuffle(&mut requests);
    requests
}

async fn send(storage: &Storage, request: &Request) -> Option<Outcome> {
    match debit(
        storage,
        &request.account,
        request.monto,
        request.key.as_deref(),
        request.fingerprint,
    )
    .await
    {
        Debited::Answered(outcome) => Some(outcome),
        Debited::Unavailable => None,
        Debited::Key(other) => panic!("a fresh key answered {other:?}"),
    }
}

/// Sends the requests from `TASKS` concurrent tasks; fills in the answers.
fn run_round(storage: Arc<Storage>, requests: Vec<Request>) -> Vec<Request> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let requests = Arc::new(requests);
    let answers = runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (storage, requests) = (storage.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for index in (task..requests.len()).step_by(TASKS) {
                        answers.push((index, send(&storage, &requests[index]).await));
                    }
                    answers
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    let mut requests = Arc::try_unwrap(requests).unwrap();
    for (index, answer) in answers {
        requests[index].answer = answer;
    }
    requests
}

#[test]
fn every_acknowledged_debit_survives_power_cuts() {
    let seed = std::env::var("POWER_LOSS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("power-loss seed {seed} (POWER_LOSS_SEED={seed} replays it)");
    let mut random = fastrand::Rng::with_seed(seed);
    let mut medium = PowerCut::new();
    let mut model = Model::default();
    let (mut cuts_in_recovery, mut torn_tails, mut acknowledged, mut snapshots) = (0, 0, 0, 0);
    for round in 0..ROUNDS {
        let window = if round % RECOVERY_CUT_EVERY_ROUNDS == 0 {
            RECOVERY_CUT_WINDOW_OPS
        } else {
            CUT_WINDOW_OPS
        };
        medium.cut_after(random.u64(..window));
        let segment_bytes_max = if round % 2 == 0 {
            SEGMENT_BYTES_MAX
        } else {
            ROOMY_SEGMENT_BYTES_MAX
        };
        let opened = match open_with_segments(&medium, segment_bytes_max) {
            Ok(opened) => opened,
            Err(_) if medium.is_cut() => {
                // The power went during recovery itself.
                cuts_in_recovery += 1;
                medium = medium.survivor(random.u64(..));
                continue;
            }
            Err(error) => panic!("seed {seed}, round {round}: recovery refused: {error}"),
        };
        torn_tails += usize::from(opened.torn_bytes > 0);
        model.verify(&opened.storage, seed, round);
        let storage = Arc::new(opened.storage);
        let answered = run_round(storage.clone(), requests(round, &mut random));
        acknowledged += answered.iter().filter(|r| r.answer.is_some()).count();
        model.unverified.extend(answered);
        let stats = storage.journal_handle().expect("journal storage").stats();
        snapshots += stats.snapshots.load(std::sync::atomic::Ordering::Relaxed);
        drop(
            Arc::try_unwrap(storage)
                .ok()
                .expect("the round's tasks are done"),
        );
        medium = medium.survivor(random.u64(..));
    }
    let last = open_with_segments(&medium, SEGMENT_BYTES_MAX)
        .unwrap_or_else(|error| panic!("seed {seed}: final recovery: {error}"));
    model.verify(&last.storage, seed, ROUNDS);
    eprintln!(
        "{ROUNDS} cuts: {cuts_in_recovery} during recovery, {torn_tails} torn tails, \
         {acknowledged} answers checked, {snapshots} snapshots, {} keys",
        model.keys.len()
    );
    // The cuts really fell everywhere: some acknowledged work, some torn
    // batches, some crashes of recovery itself.
    assert!(
        acknowledged > ROUNDS,
        "seed {seed}: too few answers to check"
    );
    assert!(torn_tails > 0, "seed {seed}: no cut left a torn batch");
    assert!(cuts_in_recovery > 0, "seed {seed}: no cut fell in recovery");
    assert!(snapshots > 0, "seed {seed}: no snapshot was written");
}
