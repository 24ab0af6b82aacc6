//! What a scrape reads: the registry `GET /metrics` encodes, with the
//! collectors that read the storage and the trace pipeline at scrape time.
//! It sits above the storages (they register their own families into the
//! registry through [`Storage::register_metrics`]); [`crate::metrics`], with
//! every family's name and the request path's counts, sits below them.

use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::metrics::{
    self, ACCOUNTS_STORED, BUILD_INFO, IDEMPOTENCY_KEYS_STORED, Recorder, STORAGE_HEALTHY,
    TRACE_SPANS_DROPPED, counter_base,
};
use crate::storage::Storage;
use crate::traces;

/// The registry a scrape encodes: the request path's counts, the storage's
/// state and own families, the build and the process.
pub fn registry(recorder: Arc<Recorder>, storage: &Arc<Storage>) -> Registry {
    let mut registry = Registry::default();
    storage.register_metrics(&mut registry);
    registry.register_collector(Box::new(metrics::Requests(recorder)));
    registry.register_collector(Box::new(StorageState(Arc::downgrade(storage))));
    registry.register_collector(Box::new(Build));
    registry.register_collector(Box::new(metrics::Process));
    registry
}

/// The storage's state at the scrape. Held weakly: the last strong
/// reference dropping is what closes the journal at shutdown, and a
/// scraper's connection must not delay it.
struct StorageState(Weak<Storage>);

impl std::fmt::Debug for StorageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageState")
    }
}

impl Collector for StorageState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(storage) = self.0.upgrade() else {
            return Ok(());
        };
        let gauges = [
            (
                STORAGE_HEALTHY,
                "1 while debits can be applied (the readiness probe), else 0.",
                Some(i64::from(storage.was_ready())),
            ),
            (
                ACCOUNTS_STORED,
                "Accounts stored (seeded or debited).",
                storage
                    .accounts_stored()
                    .map(|count| i64::try_from(count).unwrap_or(i64::MAX)),
            ),
            (
                IDEMPOTENCY_KEYS_STORED,
                "Idempotency keys remembered.",
                storage
                    .keys_stored()
                    .map(|count| i64::try_from(count).unwrap_or(i64::MAX)),
            ),
        ];
        // Counts a storage keeps elsewhere (rows of a database) are not
        // counted at every scrape.
        for (name, help, value) in gauges {
            let Some(value) = value else {
                continue;
            };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// What is process-wide: `saldos_build_info{version}` and the trace
/// pipeline's dropped spans.
#[derive(Debug)]
struct Build;

impl Collector for Build {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let gauge = ConstGauge::new(1);
        let mut family = encoder.encode_descriptor(
            BUILD_INFO,
            "Always 1; the running version is a label.",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        let dropped = ConstCounter::new(traces::spans_dropped());
        dropped.encode(encoder.encode_descriptor(
            counter_base(TRACE_SPANS_DROPPED),
            "Finished spans dropped because the trace export queue was full.",
            None,
            dropped.metric_type(),
        )?)
    }
}
