//! Latency histograms and per-second counters, and how they travel and merge.
//!
//! Latencies are recorded in microseconds into HdrHistograms (3 significant digits, 1 µs to
//! one hour). A worker records into a few mutex-guarded shards (one per group of connections,
//! so 100,000 connection tasks do not contend on one lock), and every second swaps them out
//! into a [`Tick`]. Ticks carry histograms as sparse (value, count) pairs: the controller merges
//! them by second for the timeline and into run totals for the report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in microseconds; larger values are clamped to it.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant digits kept by every histogram (0.1% relative precision).
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Recording shards per worker.
pub const SHARDS: usize = 16;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, digits <= 5).
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        Latency(Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS).expect("constant, valid bounds"))
    }

    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn add(&mut self, other: &Latency) {
        // Both share bounds, so adding cannot fail; a failure would only lose samples.
        let _ = self.0.add(&other.0);
    }

    /// The value at `quantile` (0..=1) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.value_at_quantile(q) as f64 / 1000.0 }
    }

    pub fn max_ms(&self) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.max() as f64 / 1000.0 }
    }

    pub fn mean_ms(&self) -> f64 {
        if self.0.is_empty() { 0.0 } else { self.0.mean() / 1000.0 }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.count(),
            p50: self.quantile_ms(0.5),
            p90: self.quantile_ms(0.9),
            p99: self.quantile_ms(0.99),
            p999: self.quantile_ms(0.999),
            max: self.max_ms(),
            mean: self.mean_ms(),
        }
    }

    pub fn to_sparse(&self) -> Sparse {
        Sparse(self.0.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect())
    }

    pub fn from_sparse(s: &Sparse) -> Latency {
        let mut h = Latency::new();
        for &[value, count] in &s.0 {
            let _ = h.0.record_n(value.clamp(1, MAX_LATENCY_US), count);
        }
        h
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }
}

/// A histogram on the wire: (value µs, count) pairs of the recorded buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sparse(pub Vec<[u64; 2]>);

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// What kind of latency a sample is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Intended send time → ack at the sender.
    Ack,
    /// Intended send time → event at another member's connection.
    Deliver,
    /// Connection dropped → its resume completed.
    Reconnect,
}

/// One second of one worker (or, merged, of the run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tick {
    /// Seconds since the run's epoch.
    pub second: u64,
    /// Connections open at the end of the second.
    pub connections: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub connect_failures: u64,
    /// Error frames and failures by code.
    pub errors: BTreeMap<String, u64>,
    pub ack: Sparse,
    pub deliver: Sparse,
    pub reconnect: Sparse,
}

#[derive(Default)]
struct Shard {
    ack: Latency,
    deliver: Latency,
    reconnect: Latency,
    sent: u64,
    acked: u64,
    delivered: u64,
    connect_failures: u64,
    errors: BTreeMap<String, u64>,
}

/// A worker's recorder, shared by its connection tasks.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
    pub connections: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(), connections: AtomicU64::new(0) }
    }
}

impl Recorder {
    fn shard(&self, conn: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[conn % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn latency(&self, conn: usize, kind: Kind, us: u64) {
        let mut s = self.shard(conn);
        match kind {
            Kind::Ack => {
                s.ack.record(us);
                s.acked += 1;
            }
            Kind::Deliver => {
                s.deliver.record(us);
                s.delivered += 1;
            }
            Kind::Reconnect => s.reconnect.record(us),
        }
    }

    pub fn sent(&self, conn: usize) {
        self.shard(conn).sent += 1;
    }

    pub fn connect_failed(&self, conn: usize) {
        self.shard(conn).connect_failures += 1;
    }

    pub fn error(&self, conn: usize, code: &str) {
        *self.shard(conn).errors.entry(code.to_owned()).or_default() += 1;
    }

    /// Takes everything recorded since the last call.
    pub fn take(&self, second: u64) -> Tick {
        let (mut ack, mut deliver, mut reconnect) = (Latency::new(), Latency::new(), Latency::new());
        let mut tick = Tick { second, connections: self.connections.load(Ordering::Relaxed), ..Tick::default() };
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            ack.add(&s.ack);
            deliver.add(&s.deliver);
            reconnect.add(&s.reconnect);
            s.ack.reset();
            s.deliver.reset();
            s.reconnect.reset();
            tick.sent += std::mem::take(&mut s.sent);
            tick.acked += std::mem::take(&mut s.acked);
            tick.delivered += std::mem::take(&mut s.delivered);
            tick.connect_failures += std::mem::take(&mut s.connect_failures);
            for (code, n) in std::mem::take(&mut s.errors) {
                *tick.errors.entry(code).or_default() += n;
            }
        }
        tick.ack = ack.to_sparse();
        tick.deliver = deliver.to_sparse();
        tick.reconnect = reconnect.to_sparse();
        tick
    }
}

/// Ticks merged across workers and seconds.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub connect_failures: u64,
    pub errors: BTreeMap<String, u64>,
    pub ack: Latency,
    pub deliver: Latency,
    pub reconnect: Latency,
}

impl Totals {
    pub fn add(&mut self, t: &Tick) {
        self.sent += t.sent;
        self.acked += t.acked;
        self.delivered += t.delivered;
        self.connect_failures += t.connect_failures;
        for (code, n) in &t.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
        self.ack.add(&Latency::from_sparse(&t.ack));
        self.deliver.add(&Latency::from_sparse(&t.deliver));
        self.reconnect.add(&Latency::from_sparse(&t.reconnect));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_round_trip_keeps_percentiles() {
        let mut h = Latency::new();
        for us in 1..=10_000 {
            h.record(us);
        }
        let back = Latency::from_sparse(&h.to_sparse());
        assert_eq!(back.count(), 10_000);
        assert_eq!(back.quantile_ms(0.99), h.quantile_ms(0.99));
        assert!((back.quantile_ms(0.5) - 5.0).abs() < 0.01, "{}", back.quantile_ms(0.5));
    }

    #[test]
    fn recorder_ticks_reset_and_totals_merge_workers() {
        let a = Recorder::default();
        let b = Recorder::default();
        for conn in 0..100 {
            a.sent(conn);
            a.latency(conn, Kind::Ack, 1_000);
            b.latency(conn, Kind::Deliver, 2_000 + conn as u64);
        }
        a.error(3, "rate_limited");
        let mut totals = Totals::default();
        totals.add(&a.take(1));
        totals.add(&b.take(1));
        assert_eq!((totals.sent, totals.acked, totals.delivered), (100, 100, 100));
        assert_eq!(totals.errors.get("rate_limited"), Some(&1));
        assert_eq!(totals.deliver.count(), 100);
        assert!((totals.ack.quantile_ms(0.5) - 1.0).abs() < 0.01);
        // Taken: the next tick is empty.
        let next = a.take(2);
        assert_eq!((next.sent, next.acked, next.ack.0.len()), (0, 0, 0));
    }

    #[test]
    fn latencies_beyond_the_range_are_clamped_not_lost() {
        let mut h = Latency::new();
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.count(), 2);
        assert!(h.max_ms() >= MAX_LATENCY_US as f64 / 1000.0 * 0.99);
    }
}
