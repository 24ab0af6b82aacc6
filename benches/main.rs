//! Criterion benches, one suite per concept (`cargo bench`; one suite:
//! `cargo bench --bench saldos -- ledger/`).

mod suites;

criterion::criterion_main!(
    suites::auth::benches,
    suites::ledger::benches,
    suites::http::benches,
    suites::journal::benches
);
