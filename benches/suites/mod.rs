pub mod auth;
pub mod http;
pub mod journal;
pub mod ledger;
