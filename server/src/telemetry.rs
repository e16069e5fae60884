//! Tracing and metrics set-up.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Starts the tracing subscriber with `filter` (EnvFilter syntax).
pub fn init_tracing(filter: &str, compact: bool) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if compact { builder.compact().try_init() } else { builder.try_init() };
    result.map_err(|e| anyhow::anyhow!("tracing: {e}"))
}

/// Latency buckets, seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Group-commit sizes.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the Prometheus recorder and returns the handle that renders `/metrics`.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("store_group_commit_writes".into()), BATCH_BUCKETS)?
        .install_recorder()?;
    Ok(handle)
}

/// Clock ticks per second of the CPU times in /proc (USER_HZ, fixed at 100 by the Linux ABI).
const USER_HZ: f64 = 100.0;

/// Samples process gauges (resident memory, CPU, open files) for the next render; Linux
/// only, elsewhere they are left unset.
pub fn sample_process() {
    if let Some(bytes) = resident_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(bytes);
    }
    if let Some(seconds) = cpu_seconds() {
        metrics::gauge!("process_cpu_seconds_total").set(seconds);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(dir.count() as f64);
    }
}

/// This process's resident memory, from /proc/self/smaps_rollup (Linux).
pub fn resident_bytes() -> Option<f64> {
    // smaps_rollup reports kB whatever the page size (4 KiB, 16 KiB, 64 KiB kernels alike).
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let kb = rollup.lines().find_map(|l| l.strip_prefix("Rss:"))?.trim().trim_end_matches("kB").trim();
    Some(kb.parse::<f64>().ok()? * 1024.0)
}

/// This process's user + system CPU time, from /proc/self/stat (Linux).
pub fn cpu_seconds() -> Option<f64> {
    // utime and stime (fields 14 and 15) are in USER_HZ ticks, 100 per second on Linux
    // whatever the kernel's internal HZ; the comm field may contain spaces, so count from ')'.
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// The soft limit on open files, from /proc/self/limits (Linux), for the start-up log: one
/// connection costs one file.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
