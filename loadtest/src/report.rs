//! The run's report (JSON, and the input of the HTML page) and the SLO verdict that sets the
//! exit code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::check::Verdict;
use crate::plan::Plan;
use crate::stats::{Latency, Summary, Tick, Totals};

/// Exit code when the run completed but missed an SLO or found a correctness violation.
pub const EXIT_FAILED_SLO: i32 = 1;
/// Exit code when the run could not be carried out (workers, connections, server).
pub const EXIT_RUN_ERROR: i32 = 2;
/// Exit code for a bad command line or plan.
pub const EXIT_USAGE: i32 = 64;

/// Thresholds that fail the run (exit 1) when missed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slo {
    /// Highest acceptable send→deliver p99, milliseconds.
    pub p99_ms: Option<f64>,
    /// Highest acceptable send→ack p99, milliseconds.
    pub ack_p99_ms: Option<f64>,
    /// Most acked-but-undelivered messages tolerated (correctness violations of other kinds
    /// always fail).
    pub max_loss: u64,
    /// Lowest acceptable achieved/target send rate (0..=1).
    pub min_rate_ratio: Option<f64>,
    /// Most connections that may fail to open.
    pub max_connect_failures: u64,
    /// Most error frames and reconnects tolerated.
    pub max_errors: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub limit: f64,
    pub actual: f64,
    pub passed: bool,
}

/// One second of the run, as plotted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Second {
    /// Seconds from the start of the load phase (negative during setup).
    pub t: i64,
    pub connections: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub errors: u64,
    pub deliver_p50_ms: f64,
    pub deliver_p99_ms: f64,
    pub deliver_max_ms: f64,
    pub ack_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub scenario: String,
    pub started_unix_ms: u64,
    pub workers: u32,
    pub plan: Plan,
    pub connections: Connections,
    pub throughput: Throughput,
    pub latency_ms: Latencies,
    pub correctness: Verdict,
    pub errors: BTreeMap<String, u64>,
    pub storm: Option<StormResult>,
    pub server: Option<ServerUsage>,
    /// The load generator's own CPU over the load phase and drain (all workers).
    pub generator: Generator,
    /// (percentile, deliver ms, ack ms) for the distribution plot.
    pub percentiles: Vec<[f64; 3]>,
    pub timeline: Vec<Second>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connections {
    pub target: u64,
    pub opened: u64,
    pub failed: u64,
    pub peak: u64,
    pub reconnects: u64,
    /// Seconds from the first to the last connection opening.
    pub ramp_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub duration_seconds: f64,
    pub target_sends_per_second: f64,
    pub sent: u64,
    pub achieved_sends_per_second: f64,
    /// 1 - achieved/target, as a percentage (0 when the target was met).
    pub shortfall_percent: f64,
    /// Scheduled sends never made.
    pub unsent: u64,
    pub acked: u64,
    /// Deliveries to members other than the sender.
    pub delivered: u64,
    /// From the start of the load phase to the last second with a delivery (at least the
    /// duration): the window `deliveries_per_second` is counted over.
    pub delivery_seconds: f64,
    pub deliveries_per_second: f64,
    pub peak_deliveries_per_second: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latencies {
    /// Intended send time → ack.
    pub ack: Summary,
    /// Intended send time → event at another member's connection.
    pub deliver: Summary,
    /// Storm drop → resume complete.
    pub reconnect: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormResult {
    pub percent: u8,
    pub dropped: u64,
    pub resumed: u64,
    /// From the drop to the last dropped connection resuming.
    pub all_resumed_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerUsage {
    /// Sum over the scraped nodes of `process_resident_memory_bytes`.
    pub rss_before_bytes: u64,
    pub rss_loaded_bytes: u64,
    /// (loaded - before) / connections opened.
    pub bytes_per_connection: f64,
    /// CPU the nodes used from the start of the load phase to the end of the drain (`None` if
    /// they do not export `process_cpu_seconds_total`).
    pub cpu_seconds: Option<f64>,
    /// The same over the wall time: cores busy on average.
    pub cpu_cores: Option<f64>,
    /// Deliveries (to members other than the sender) per second of server CPU: what one core
    /// would sustain at this load shape.
    pub deliveries_per_cpu_second: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Generator {
    pub cpu_seconds: Option<f64>,
    /// Cores busy on average; near the machine's core count, the generator may be what
    /// limits the run rather than the server.
    pub cpu_cores: Option<f64>,
    /// Cores of the controller's machine.
    pub machine_cores: u64,
}

/// Percentiles plotted in the distribution chart.
pub const PLOTTED_PERCENTILES: [f64; 12] = [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0];

/// Per-second rows of the timeline from merged ticks; `go_second` is the epoch second the load
/// phase began in.
pub fn timeline(ticks: &BTreeMap<u64, Tick>, go_second: u64) -> Vec<Second> {
    ticks
        .values()
        .filter(|t| t.second != u64::MAX)
        .map(|t| {
            let deliver = Latency::from_sparse(&t.deliver);
            let ack = Latency::from_sparse(&t.ack);
            Second {
                t: t.second as i64 - go_second as i64,
                connections: t.connections,
                sent: t.sent,
                acked: t.acked,
                delivered: t.delivered,
                errors: t.errors.values().sum::<u64>() + t.connect_failures,
                deliver_p50_ms: deliver.quantile_ms(0.5),
                deliver_p99_ms: deliver.quantile_ms(0.99),
                deliver_max_ms: deliver.max_ms(),
                ack_p99_ms: ack.quantile_ms(0.99),
            }
        })
        .collect()
}

pub fn percentiles(totals: &Totals) -> Vec<[f64; 3]> {
    PLOTTED_PERCENTILES
        .iter()
        .map(|&p| [p, totals.deliver.quantile_ms(p / 100.0), totals.ack.quantile_ms(p / 100.0)])
        .collect()
}

impl Report {
    /// Applies `slo` (and the correctness verdict) and sets `checks` and `passed`.
    pub fn judge(&mut self, slo: &Slo) {
        let mut checks = vec![Check {
            name: "correctness violations (gaps, duplicates, out of order)".into(),
            limit: 0.0,
            actual: (self.correctness.gaps + self.correctness.duplicates + self.correctness.out_of_order) as f64,
            passed: self.correctness.gaps + self.correctness.duplicates + self.correctness.out_of_order == 0,
        }];
        let mut add = |name: &str, limit: f64, actual: f64, passed: bool| {
            checks.push(Check { name: name.into(), limit, actual, passed });
        };
        add(
            "acked messages lost",
            slo.max_loss as f64,
            self.correctness.missing as f64,
            self.correctness.missing <= slo.max_loss,
        );
        add(
            "connections that failed to open",
            slo.max_connect_failures as f64,
            self.connections.failed as f64,
            self.connections.failed <= slo.max_connect_failures,
        );
        if let Some(limit) = slo.p99_ms {
            let d = &self.latency_ms.deliver;
            add("send→deliver p99 (ms)", limit, d.p99, d.count > 0 && d.p99 <= limit);
        }
        if let Some(limit) = slo.ack_p99_ms {
            let a = &self.latency_ms.ack;
            add("send→ack p99 (ms)", limit, a.p99, a.count > 0 && a.p99 <= limit);
        }
        if let Some(limit) = slo.min_rate_ratio {
            let t = &self.throughput;
            let ratio = if t.target_sends_per_second > 0.0 {
                t.achieved_sends_per_second / t.target_sends_per_second
            } else {
                1.0
            };
            add("achieved / target send rate", limit, ratio, ratio >= limit);
        }
        if let Some(limit) = slo.max_errors {
            let n: u64 = self.errors.values().sum();
            add("errors", limit as f64, n as f64, n <= limit);
        }
        self.passed = checks.iter().all(|c| c.passed);
        self.checks = checks;
    }
}
