//! The controller: starts or accepts workers, walks them through the phases, prints progress,
//! merges their histograms and streams, and writes the report.
//!
//! Every wait has a deadline derived from the plan, so a run always ends: a worker that goes
//! silent or a server that stops answering turns into a run error (exit 2), not a hang.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use crate::check::{RangeSet, StreamReport, Verdict};
use crate::plan::Plan;
use crate::report::{self, Connections, Generator, Latencies, Report, ServerUsage, Slo, StormResult, Throughput};
use crate::stats::{Tick, Totals};
use crate::wire::{self, ToController, ToWorker, WorkerResult};
use crate::worker::unix_ms;

/// How long workers have to join (local processes start in well under a second).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Slack added to every phase deadline computed from the plan.
pub const PHASE_SLACK: Duration = Duration::from_secs(60);
/// Setup time allowed per member added or connection set up, on top of [`PHASE_SLACK`]: a
/// cluster on a small Cassandra adds a few hundred members per second.
pub const PER_MEMBER_SETUP: Duration = Duration::from_millis(20);
/// Delay between `go` and the start of the load phase, so every worker hears `go` in time.
pub const GO_LEAD: Duration = Duration::from_millis(1000);
/// Longest admin `/metrics` response read.
const MAX_METRICS_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub plan: Plan,
    /// Worker processes to start on this machine.
    pub local_workers: u32,
    /// Workers expected to join from elsewhere (`loadtest worker --controller ...`).
    pub remote_workers: u32,
    /// Where workers connect; remote workers need a reachable address.
    pub listen: SocketAddr,
    /// Passed to local workers in their environment (never over the wire).
    pub secret: String,
    /// Admin addresses (host:port) whose `/metrics` give the server's memory.
    pub metrics: Vec<String>,
    pub slo: Slo,
    /// Print a progress line every second.
    pub progress: bool,
}

struct Workers {
    writers: Vec<OwnedWriteHalf>,
    events: mpsc::UnboundedReceiver<(usize, Result<ToController, wire::WireError>)>,
    _children: Vec<tokio::process::Child>,
}

impl Workers {
    async fn broadcast(&mut self, msg: &ToWorker) -> anyhow::Result<()> {
        for w in &mut self.writers {
            wire::write(w, msg).await.context("write to a worker")?;
        }
        Ok(())
    }
}

/// Merged state of the run as progress arrives.
#[derive(Default)]
struct Board {
    ticks: BTreeMap<u64, Tick>,
    reported: BTreeMap<u64, usize>,
    pending: Vec<u64>,
    totals: Totals,
    peak_connections: u64,
    printed: u64,
}

impl Board {
    fn add(&mut self, worker: usize, tick: Tick, pending: u64) {
        if self.pending.len() <= worker {
            self.pending.resize(worker + 1, 0);
        }
        self.pending[worker] = pending;
        self.totals.add(&tick);
        let merged = self.ticks.entry(tick.second).or_insert_with(|| Tick { second: tick.second, ..Tick::default() });
        merged.connections += tick.connections;
        merged.sent += tick.sent;
        merged.acked += tick.acked;
        merged.delivered += tick.delivered;
        merged.connect_failures += tick.connect_failures;
        for (code, n) in &tick.errors {
            *merged.errors.entry(code.clone()).or_default() += n;
        }
        for (into, from) in [(&mut merged.ack, &tick.ack), (&mut merged.deliver, &tick.deliver)] {
            let mut h = crate::stats::Latency::from_sparse(into);
            h.add(&crate::stats::Latency::from_sparse(from));
            *into = h.to_sparse();
        }
        if tick.second != u64::MAX {
            self.peak_connections = self.peak_connections.max(merged.connections);
        }
        *self.reported.entry(tick.second).or_default() += 1;
    }

    /// The newest second every worker has reported.
    fn complete(&self, workers: usize) -> Option<&Tick> {
        self.reported.iter().rev().find(|(s, n)| **s != u64::MAX && **n >= workers).and_then(|(s, _)| self.ticks.get(s))
    }

    fn print(&mut self, workers: usize, phase: &str, target_rate: f64) {
        let Some(t) = self.complete(workers) else { return };
        if t.second <= self.printed {
            return;
        }
        let deliver = crate::stats::Latency::from_sparse(&t.deliver);
        let ack = crate::stats::Latency::from_sparse(&t.ack);
        let errors: u64 = self.totals.errors.values().sum::<u64>() + self.totals.connect_failures;
        eprintln!(
            "[{:>5}s] {phase:<8} conns {:>7}  sent/s {:>7} (target {:>7.0})  deliver/s {:>8}  p99 deliver {:>8.2} ms  ack {:>8.2} ms  errors {errors}",
            t.second,
            t.connections,
            t.sent,
            target_rate,
            t.delivered,
            deliver.quantile_ms(0.99),
            ack.quantile_ms(0.99),
        );
        self.printed = t.second;
    }
}

/// Runs the plan; returns the judged report.
pub async fn run(config: ControllerConfig) -> anyhow::Result<Report> {
    let plan = &config.plan;
    plan.validate()?;
    let workers = (config.local_workers + config.remote_workers).max(1);
    if workers < plan.min_workers() {
        bail!(
            "{} connections need at least {} workers ({} per worker at most)",
            plan.connections(),
            plan.min_workers(),
            crate::plan::MAX_CONNECTIONS_PER_WORKER
        );
    }
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("bind {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut children = Vec::new();
    for _ in 0..config.local_workers {
        let exe = std::env::current_exe().context("locate the loadtest binary")?;
        let child = tokio::process::Command::new(exe)
            .args(["worker", "--controller", &addr.to_string()])
            .env("MESSENGER_JWT_SECRET", &config.secret)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start a worker process")?;
        children.push(child);
    }
    if config.remote_workers > 0 {
        eprintln!("loadtest: waiting for {} remote workers on {addr}", config.remote_workers);
    }
    let (tx, events) = mpsc::unbounded_channel();
    let mut writers = Vec::new();
    let join_deadline =
        Instant::now() + if config.remote_workers > 0 { Duration::from_secs(600) } else { JOIN_TIMEOUT };
    while writers.len() < workers as usize {
        let (stream, _) =
            timeout_at(join_deadline, listener.accept()).await.context("workers did not join in time")??;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut r = BufReader::new(r);
        match timeout_at(join_deadline, wire::read::<_, ToController>(&mut r))
            .await
            .context("worker joined silently")??
        {
            ToController::Joined { version } if version == env!("CARGO_PKG_VERSION") => {}
            other => bail!("a worker sent {other:?} (versions must match: {})", env!("CARGO_PKG_VERSION")),
        }
        let index = writers.len();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let msg = wire::read::<_, ToController>(&mut r).await;
                // `done` is a worker's last word: its hang-up after it is no news.
                let end = matches!(msg, Err(_) | Ok(ToController::Done { .. }));
                if tx.send((index, msg)).is_err() || end {
                    break;
                }
            }
        });
        writers.push(w);
    }
    drop(tx);
    let mut ws = Workers { writers, events, _children: children };
    let n = workers as usize;
    let epoch_unix_ms = unix_ms();
    for (index, w) in ws.writers.iter_mut().enumerate() {
        let start = ToWorker::Start { index: index as u32, workers, plan: Box::new(plan.clone()), epoch_unix_ms };
        wire::write(w, &start).await?;
    }
    let before = sample(&config.metrics).await;
    let mut board = Board::default();
    let ctx = Ctx { n, progress: config.progress, target: plan.target_rate() };

    let prepare = Instant::now() + PHASE_SLACK + PER_MEMBER_SETUP * plan.workload.broadcast_subscribers as u32;
    ctx.wait(&mut ws, &mut board, prepare, "prepare", |m| matches!(m, ToController::Prepared)).await?;

    ws.broadcast(&ToWorker::Connect).await?;
    let ramp_started = Instant::now();
    let ramp = Duration::from_secs_f64(plan.connections() as f64 / f64::from(plan.connect_rate));
    let (mut opened, mut failed) = (0, 0);
    // A connection may retry its first connect: each attempt can take the connect timeout
    // and the longest backoff.
    let retries = (crate::worker::CONNECT_TIMEOUT + crate::worker::RECONNECT_BACKOFF.1) * plan.connect_retries;
    ctx.wait(&mut ws, &mut board, Instant::now() + ramp + PHASE_SLACK + retries, "connect", |m| match m {
        ToController::Connected { ok, failed: f } => {
            opened += *ok;
            failed += *f;
            true
        }
        _ => false,
    })
    .await?;
    let ramp_seconds = ramp_started.elapsed().as_secs_f64();
    if opened == 0 {
        bail!("no connection opened ({failed} failed): is the server at {:?} running?", plan.edges);
    }

    ws.broadcast(&ToWorker::Setup).await?;
    let setup = Instant::now() + PHASE_SLACK + PER_MEMBER_SETUP * plan.connections() as u32;
    ctx.wait(&mut ws, &mut board, setup, "setup", |m| matches!(m, ToController::Ready)).await?;

    let go_unix_ms = unix_ms() + GO_LEAD.as_millis() as u64;
    ws.broadcast(&ToWorker::Go { at_unix_ms: go_unix_ms }).await?;
    let go = Instant::now() + GO_LEAD;
    tokio::time::sleep_until(go).await;
    let at_go = sample(&config.metrics).await;
    let end = go + Duration::from_millis(plan.duration_ms);
    ctx.run_until(&mut ws, &mut board, end, "load").await?;
    let loaded = sample(&config.metrics).await;
    let drain_end = end + Duration::from_millis(plan.drain_ms);
    let end_second = (end - go).as_secs() + (go_unix_ms.saturating_sub(epoch_unix_ms)) / 1000;
    loop {
        let quiet = board.ticks.range(end_second + 1..u64::MAX).rev().find(|(s, _)| board.reported.get(s) >= Some(&n));
        let done =
            matches!(quiet, Some((_, t)) if t.acked == 0 && t.delivered == 0) && board.pending.iter().all(|p| *p == 0);
        if done || Instant::now() >= drain_end {
            break;
        }
        ctx.run_until(&mut ws, &mut board, (Instant::now() + Duration::from_millis(250)).min(drain_end), "drain")
            .await?;
    }
    let drained = (sample(&config.metrics).await, go.elapsed());
    ws.broadcast(&ToWorker::Finish).await?;
    let mut results: Vec<WorkerResult> = Vec::new();
    ctx.wait(&mut ws, &mut board, Instant::now() + PHASE_SLACK, "finish", |m| match m {
        ToController::Done { result } => {
            results.push(std::mem::take(result.as_mut()));
            true
        }
        _ => false,
    })
    .await?;

    let go_second = go_unix_ms.saturating_sub(epoch_unix_ms) / 1000;
    let mut report = build(
        plan,
        workers,
        epoch_unix_ms,
        &board,
        results,
        go_second,
        opened,
        failed,
        ramp_seconds,
        drained.1.as_secs_f64(),
    );
    if let Some(cores) = report.generator.cpu_cores
        && cores > 0.8 * report.generator.machine_cores as f64
    {
        eprintln!(
            "loadtest: the generator kept {cores:.1} of {} cores busy: it may be what limits this run",
            report.generator.machine_cores
        );
    }
    if let (Some(before), Some(loaded)) = (before, loaded) {
        let cpu = match (at_go, drained.0) {
            (Some(a), Some(b)) if (b.cpu_seconds - a.cpu_seconds).is_finite() => Some(b.cpu_seconds - a.cpu_seconds),
            _ => None,
        };
        let wall = drained.1.as_secs_f64();
        report.server = Some(ServerUsage {
            rss_before_bytes: before.rss_bytes,
            rss_loaded_bytes: loaded.rss_bytes,
            bytes_per_connection: loaded.rss_bytes.saturating_sub(before.rss_bytes) as f64 / opened.max(1) as f64,
            cpu_seconds: cpu,
            cpu_cores: cpu.map(|c| c / wall),
            deliveries_per_cpu_second: cpu.filter(|c| *c > 0.0).map(|c| report.throughput.delivered as f64 / c),
        });
    }
    report.judge(&config.slo);
    Ok(report)
}

struct Ctx {
    n: usize,
    progress: bool,
    target: f64,
}

impl Ctx {
    /// Handles worker messages until each worker sent one accepted by `accept`.
    async fn wait(
        &self,
        ws: &mut Workers,
        board: &mut Board,
        deadline: Instant,
        phase: &str,
        mut accept: impl FnMut(&mut ToController) -> bool,
    ) -> anyhow::Result<()> {
        let mut got = vec![false; self.n];
        while got.iter().any(|g| !g) {
            let (i, mut msg) = self.next(ws, deadline, phase).await?;
            if matches!(msg, ToController::Progress { .. }) {
                self.progress(board, i, msg, phase);
            } else if accept(&mut msg) {
                got[i] = true;
            } else {
                bail!("worker {i} sent {msg:?} during {phase}");
            }
        }
        Ok(())
    }

    /// Handles progress until `until`.
    async fn run_until(&self, ws: &mut Workers, board: &mut Board, until: Instant, phase: &str) -> anyhow::Result<()> {
        loop {
            match tokio::time::timeout_at(until, self.next(ws, until + PHASE_SLACK, phase)).await {
                Err(_) => return Ok(()),
                Ok(r) => {
                    let (i, msg) = r?;
                    match msg {
                        ToController::Progress { .. } => self.progress(board, i, msg, phase),
                        other => bail!("worker {i} sent {other:?} during {phase}"),
                    }
                }
            }
        }
    }

    async fn next(&self, ws: &mut Workers, deadline: Instant, phase: &str) -> anyhow::Result<(usize, ToController)> {
        let (i, msg) = timeout_at(deadline, ws.events.recv())
            .await
            .with_context(|| format!("workers did not finish {phase} in time"))?
            .context("every worker is gone")?;
        match msg {
            Ok(ToController::Failed { error }) => bail!("worker {i} failed: {error}"),
            Ok(m) => Ok((i, m)),
            Err(e) => bail!("worker {i} is gone during {phase}: {e}"),
        }
    }

    fn progress(&self, board: &mut Board, i: usize, msg: ToController, phase: &str) {
        if let ToController::Progress { tick, pending } = msg {
            board.add(i, tick, pending);
            if self.progress {
                board.print(self.n, phase, self.target);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    plan: &Plan,
    workers: u32,
    started_unix_ms: u64,
    board: &Board,
    results: Vec<WorkerResult>,
    go_second: u64,
    opened: u64,
    failed: u64,
    ramp_seconds: f64,
    load_seconds: f64,
) -> Report {
    let mut acked: BTreeMap<u64, RangeSet> = BTreeMap::new();
    let mut streams: Vec<StreamReport> = Vec::new();
    let (mut unsent, mut reconnects, mut dropped, mut resumed) = (0, 0, 0, 0);
    let mut generator_cpu: Option<f64> = Some(0.0);
    let mut all_resumed_ms: Option<u64> = None;
    for r in results {
        for (chat, set) in r.acked {
            acked.entry(chat).or_default().union(&set);
        }
        streams.extend(r.streams);
        unsent += r.unsent;
        reconnects += r.reconnects;
        generator_cpu = generator_cpu.zip(r.cpu_seconds).map(|(a, b)| a + b);
        dropped += r.storm_dropped;
        resumed += r.storm_resumed;
        if let Some(ms) = r.storm_all_resumed_ms {
            all_resumed_ms = Some(all_resumed_ms.unwrap_or(0).max(ms));
        }
    }
    let correctness = Verdict::judge(&acked, &streams);
    let t = &board.totals;
    let duration = plan.duration_ms as f64 / 1000.0;
    let target = plan.target_rate();
    let achieved = t.sent as f64 / duration;
    let mut errors = t.errors.clone();
    if t.connect_failures > 0 {
        errors.insert("connect_failed".into(), t.connect_failures);
    }
    let timeline = report::timeline(&board.ticks, go_second);
    // Deliveries that trail into the drain stretch the window they are counted over, so a
    // server that falls behind is not credited with the offered rate.
    let last_delivery = timeline.iter().filter(|s| s.delivered > 0).map(|s| s.t).max().unwrap_or(0);
    // Second t of the timeline ends t seconds after the start (the first one is partial),
    // so deliveries through second t took at most t - 1 whole seconds past the first.
    let delivery_seconds = duration.max(last_delivery as f64 - 1.0);
    Report {
        tool: format!("loadtest {}", env!("CARGO_PKG_VERSION")),
        scenario: plan.scenario.clone(),
        started_unix_ms,
        workers,
        plan: plan.clone(),
        connections: Connections {
            target: plan.connections(),
            opened,
            failed,
            peak: board.peak_connections,
            reconnects,
            ramp_seconds,
        },
        throughput: Throughput {
            duration_seconds: duration,
            target_sends_per_second: target,
            sent: t.sent,
            achieved_sends_per_second: achieved,
            shortfall_percent: if target > 0.0 { ((1.0 - achieved / target) * 100.0).max(0.0) } else { 0.0 },
            unsent,
            acked: t.acked,
            delivered: t.delivered,
            delivery_seconds,
            deliveries_per_second: t.delivered as f64 / delivery_seconds,
            peak_deliveries_per_second: timeline.iter().map(|s| s.delivered).max().unwrap_or(0),
        },
        latency_ms: Latencies { ack: t.ack.summary(), deliver: t.deliver.summary(), reconnect: t.reconnect.summary() },
        correctness,
        errors,
        storm: plan.storm.map(|s| StormResult {
            percent: s.percent,
            dropped,
            resumed,
            all_resumed_seconds: all_resumed_ms.map(|ms| ms as f64 / 1000.0),
        }),
        server: None,
        generator: Generator {
            cpu_seconds: generator_cpu,
            cpu_cores: generator_cpu.map(|c| c / load_seconds.max(0.001)),
            machine_cores: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
        },
        percentiles: report::percentiles(t),
        timeline,
        checks: Vec::new(),
        passed: false,
    }
}

/// What the nodes' `/metrics` say about their process.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss_bytes: u64,
    cpu_seconds: f64,
}

/// The sum over `admins` of their process gauges; `None` if any cannot be read.
async fn sample(admins: &[String]) -> Option<Sample> {
    if admins.is_empty() {
        return None;
    }
    let mut sum = Sample::default();
    for a in admins {
        match tokio::time::timeout(Duration::from_secs(5), scrape(a)).await {
            Ok(Ok(v)) => {
                sum.rss_bytes += v.rss_bytes;
                sum.cpu_seconds += v.cpu_seconds;
            }
            Ok(Err(e)) => {
                eprintln!("loadtest: cannot read the metrics of {a}: {e:#}");
                return None;
            }
            Err(_) => {
                eprintln!("loadtest: {a} did not answer /metrics in 5 s");
                return None;
            }
        }
    }
    Some(sum)
}

async fn scrape(admin: &str) -> anyhow::Result<Sample> {
    let mut s = TcpStream::connect(admin).await.context("connect to the admin port")?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nhost: {admin}\r\nconnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = Vec::new();
    s.take(MAX_METRICS_BYTES).read_to_end(&mut body).await?;
    let body = String::from_utf8_lossy(&body);
    let gauge = |name: &str| {
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).and_then(|v| v.trim().parse::<f64>().ok())
    };
    Ok(Sample {
        rss_bytes: gauge("process_resident_memory_bytes").context("no process_resident_memory_bytes in /metrics")?
            as u64,
        // Older nodes do not export it: CPU is then reported as unknown.
        cpu_seconds: gauge("process_cpu_seconds_total").unwrap_or(f64::NAN),
    })
}
