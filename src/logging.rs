//! Logs: one line per event on stdout, JSON by default (CloudWatch reads each
//! line as one event), filtered by `RUST_LOG` (default `info`). The trace
//! pipeline, when on, is a second layer of the same subscriber; the spans it
//! exports never reach the log output.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::traces::{self, Pipeline};

/// Installs the process-wide subscriber, with `traces`' layer when tracing
/// is on. Call once, before anything logs.
pub fn init(format: LogFormat, traces: Option<&Pipeline>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A target filter (not a closure) so callsites keep their cached interest.
    let not_traces = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target(traces::TARGET, LevelFilter::OFF);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stdout)
        .with_target(false);
    let output = match format {
        LogFormat::Json => output.json().flatten_event(true).boxed(),
        LogFormat::Text => output.with_ansi(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(output.with_filter(filter).with_filter(not_traces))
        .with(traces.map(Pipeline::layer))
        .init();
}
