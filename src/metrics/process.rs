//! The usual `process_*` metrics, read from `/proc/self` at each scrape (the
//! names and meanings of the Prometheus client libraries' process
//! collectors). Off Linux, or when `/proc` cannot be read, a scrape simply
//! lacks the figures it could not read.

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{
    PROCESS_CPU_SECONDS, PROCESS_MAX_FDS, PROCESS_OPEN_FDS, PROCESS_RESIDENT_MEMORY,
    PROCESS_START_TIME, PROCESS_THREADS, PROCESS_VIRTUAL_MEMORY, counter_base,
};

/// Encodes the process' CPU time, memory, file descriptors, threads and
/// start time.
#[derive(Debug)]
pub struct Process;

/// The fields of `/proc/self/stat` this collector reads.
struct Stat {
    cpu_ticks: u64,
    threads: u64,
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

fn read_stat() -> Option<Stat> {
    let text = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: fields are counted after
    // its closing parenthesis, from field 3 (`state`) on.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// Seconds since the epoch when the machine booted.
fn boot_time_seconds() -> Option<u64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|line| line.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

fn open_fds() -> Option<u64> {
    Some(fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes the limit into the valid struct passed.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (result == 0).then_some(limit.rlim_cur)
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: `sysconf` only reads a configuration value.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|value| *value > 0)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let ticks_per_second = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
        if let Some(stat) = read_stat() {
            let cpu = ConstCounter::new(stat.cpu_ticks as f64 / ticks_per_second);
            cpu.encode(encoder.encode_descriptor(
                counter_base(PROCESS_CPU_SECONDS),
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?)?;
            let page_bytes = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
            let resident = (stat.resident_pages * page_bytes) as f64;
            gauge(
                &mut encoder,
                PROCESS_RESIDENT_MEMORY,
                "Resident memory size in bytes.",
                resident,
            )?;
            gauge(
                &mut encoder,
                PROCESS_VIRTUAL_MEMORY,
                "Virtual memory size in bytes.",
                stat.virtual_bytes as f64,
            )?;
            gauge(
                &mut encoder,
                PROCESS_THREADS,
                "Number of OS threads in the process.",
                stat.threads as f64,
            )?;
            if let Some(boot) = boot_time_seconds() {
                let start = boot as f64 + stat.start_ticks as f64 / ticks_per_second;
                gauge(
                    &mut encoder,
                    PROCESS_START_TIME,
                    "Start time of the process since unix epoch in seconds.",
                    start,
                )?;
            }
        }
        if let Some(open) = open_fds() {
            // Less the descriptor `read_dir` itself holds open.
            let open = open.saturating_sub(1) as f64;
            gauge(
                &mut encoder,
                PROCESS_OPEN_FDS,
                "Number of open file descriptors.",
                open,
            )?;
        }
        if let Some(max) = max_fds() {
            gauge(
                &mut encoder,
                PROCESS_MAX_FDS,
                "Maximum number of open file descriptors.",
                max as f64,
            )?;
        }
        Ok(())
    }
}
