//! Integration tests: each starts the real server (in process, or the binary)
//! on an ephemeral loopback port and speaks HTTP/1.1 to it.

mod api;
mod auth;
mod auth_support;
mod concurrency;
mod crash;
mod cut_points;
mod errors;
mod eventos;
mod http;
mod journal;
mod journal_support;
mod metrics;
mod model;
mod movimientos;
mod pg_cluster;
mod postgres;
mod postgres_faults;
mod postgres_feed;
mod power_loss;
pub mod process;
mod tcp_proxy;
mod traces;
mod util;
