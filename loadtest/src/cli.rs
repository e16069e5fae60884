//! The command line: scenarios as subcommands, common options before or after them, every
//! option with an environment fallback where a CI job would want one.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::controller::ControllerConfig;
use crate::plan::{Plan, Storm, Workload};
use crate::report::Slo;

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = "A chat-aware load generator for the messenger")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ramp to N authenticated connections, hold them, report the server's memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
    },
    /// 1:1 chats; both members send; `rate` sends/s in total.
    Direct {
        #[arg(long, default_value_t = 500)]
        pairs: u64,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
    },
    /// Group chats of `size` members; every member sends; `rate` sends/s in total.
    Group {
        #[arg(long, default_value_t = 100)]
        groups: u64,
        #[arg(long, default_value_t = 10)]
        size: u32,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
    },
    /// One broadcast channel: one poster, `subscribers` connections, `rate` posts/s.
    Broadcast {
        #[arg(long, default_value_t = 10_000)]
        subscribers: u64,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// Direct chats under load; `percent` of all connections drop at once at `at` and resume.
    ReconnectStorm {
        #[arg(long, default_value_t = 1000)]
        pairs: u64,
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        #[arg(long, default_value_t = 30)]
        percent: u8,
        /// Offset into the load phase (default: half of --duration).
        #[arg(long, value_parser = parse_duration)]
        at: Option<Duration>,
    },
    /// A day in miniature: shares of the connections in direct chats, groups, one channel,
    /// and idle (the rest).
    Mix {
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        #[arg(long, default_value_t = 0.5)]
        direct_share: f64,
        #[arg(long, default_value_t = 0.2)]
        group_share: f64,
        #[arg(long, default_value_t = 0.1)]
        broadcast_share: f64,
        #[arg(long, default_value_t = 8)]
        group_size: u32,
        /// Sends/s over the direct and group chats (split by their number of senders).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Posts/s to the channel.
        #[arg(long, default_value_t = 2.0)]
        broadcast_rate: f64,
    },
    /// Run as a worker of a controller (started by the controller on this machine, or by hand
    /// on another machine for a distributed run).
    Worker {
        #[arg(long, env = "LOADTEST_CONTROLLER")]
        controller: String,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// Edge WebSocket addresses (host:port), comma-separated; connections are dealt round-robin.
    #[arg(long, global = true, env = "LOADTEST_EDGES", value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub edges: Vec<String>,
    /// HS256 secret the edges verify tokens with.
    #[arg(long, global = true, env = "MESSENGER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Read the secret from a standalone node's data directory instead (its dev-jwt-secret).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, global = true, default_value = "bincode", value_parser = ["json", "bincode"])]
    pub encoding: String,
    /// New connections per second, all workers together.
    #[arg(long, global = true, default_value_t = 2000)]
    pub connect_rate: u32,
    /// Further attempts (with backoff, to the next edge) when a connection's first connect
    /// fails; each is counted as `connect_retried`. 0: a failed connect stays failed.
    #[arg(long, global = true, default_value_t = 0)]
    pub connect_retries: u32,
    /// Length of the load phase (e.g. 30s, 5m).
    #[arg(long, global = true, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Longest wait after the load phase for in-flight acks and deliveries.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    #[arg(long, global = true, default_value_t = 100)]
    pub message_bytes: usize,
    /// Local worker processes (default: as many as the connection count needs, at least 1).
    #[arg(long, global = true)]
    pub workers: Option<u32>,
    /// Workers that will join from other machines.
    #[arg(long, global = true, default_value_t = 0)]
    pub remote_workers: u32,
    /// Controller address for workers (use a reachable one with --remote-workers).
    #[arg(long, global = true, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Admin addresses (host:port) of the nodes whose memory the report includes.
    #[arg(long, global = true, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Source addresses per worker for loopback edges (127.<w>.x.y); 0 lets the kernel pick.
    #[arg(long, global = true, default_value_t = 8)]
    pub source_ips: u32,
    /// Drop this share of connections at --storm-at and resume them (any scenario).
    #[arg(long, global = true)]
    pub storm_percent: Option<u8>,
    #[arg(long, global = true, value_parser = parse_duration)]
    pub storm_at: Option<Duration>,
    /// Directory for the JSON and HTML reports.
    #[arg(long, global = true, default_value = "results")]
    pub out: PathBuf,
    /// File name stem of the reports (default: <scenario>-<run id>).
    #[arg(long, global = true)]
    pub name: Option<String>,
    /// Prefix of user ids (default: derived from the time).
    #[arg(long, global = true)]
    pub run_id: Option<String>,
    /// No progress lines.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Permit edges that are not on this machine.
    #[arg(long, global = true)]
    pub allow_remote: bool,
    /// Fail (exit 1) if send→deliver p99 exceeds this many milliseconds.
    #[arg(long, global = true)]
    pub slo_p99_ms: Option<f64>,
    /// Fail if send→ack p99 exceeds this many milliseconds.
    #[arg(long, global = true)]
    pub slo_ack_p99_ms: Option<f64>,
    /// Acked messages allowed to go undelivered (gaps, duplicates and reordering always fail).
    #[arg(long, global = true, default_value_t = 0)]
    pub max_loss: u64,
    /// Fail if achieved/target send rate falls below this (0..1).
    #[arg(long, global = true)]
    pub min_rate_ratio: Option<f64>,
    #[arg(long, global = true, default_value_t = 0)]
    pub max_connect_failures: u64,
    /// Fail if more error frames or reconnects than this occur.
    #[arg(long, global = true)]
    pub max_errors: Option<u64>,
}

/// What `main` runs.
pub enum Run {
    Controller { config: Box<ControllerConfig>, out: PathBuf, name: String },
    Worker { controller: String, secret: String },
}

impl Cli {
    /// Validates the command line into a run; the error is the message for exit code 64.
    pub fn into_run(self) -> Result<Run, String> {
        let c = self.common;
        let secret = match (&c.secret, &c.data_dir) {
            (Some(s), _) if !s.is_empty() => s.clone(),
            (_, Some(dir)) => std::fs::read_to_string(dir.join("dev-jwt-secret"))
                .map(|s| s.trim().to_owned())
                .map_err(|e| format!("read the secret in {}: {e}", dir.display()))?,
            _ => return Err("give --secret (or MESSENGER_JWT_SECRET) or --data-dir".into()),
        };
        let (scenario, workload, mut storm) = match self.command {
            Command::Worker { controller } => return Ok(Run::Worker { controller, secret }),
            Command::Idle { connections } => ("idle", Workload { idle: connections, ..Workload::default() }, None),
            Command::Direct { pairs, rate } => {
                ("direct", Workload { direct_pairs: pairs, direct_rate: rate, ..Workload::default() }, None)
            }
            Command::Group { groups, size, rate } => {
                ("group", Workload { groups, group_size: size, group_rate: rate, ..Workload::default() }, None)
            }
            Command::Broadcast { subscribers, rate } => (
                "broadcast",
                Workload { broadcast_subscribers: subscribers, broadcast_rate: rate, ..Workload::default() },
                None,
            ),
            Command::ReconnectStorm { pairs, rate, percent, at } => {
                let at = at.unwrap_or(c.duration / 2);
                (
                    "reconnect-storm",
                    Workload { direct_pairs: pairs, direct_rate: rate, ..Workload::default() },
                    Some(Storm { percent, at_ms: at.as_millis() as u64 }),
                )
            }
            Command::Mix {
                connections,
                direct_share,
                group_share,
                broadcast_share,
                group_size,
                rate,
                broadcast_rate,
            } => (
                "mix",
                mix(connections, direct_share, group_share, broadcast_share, group_size, rate, broadcast_rate)?,
                None,
            ),
        };
        if let Some(percent) = c.storm_percent {
            let at = c.storm_at.unwrap_or(c.duration / 2);
            storm = Some(Storm { percent, at_ms: at.as_millis() as u64 });
        }
        let run_id = c.run_id.unwrap_or_else(|| format!("lt{}", crate::worker::unix_ms()));
        let plan = Plan {
            scenario: scenario.into(),
            run_id,
            edges: c.edges,
            encoding: c.encoding,
            connect_rate: c.connect_rate,
            connect_retries: c.connect_retries,
            duration_ms: c.duration.as_millis() as u64,
            drain_ms: c.drain.as_millis() as u64,
            message_bytes: c.message_bytes,
            source_ips: c.source_ips,
            workload,
            storm,
        };
        plan.validate().map_err(|e| e.to_string())?;
        if !c.allow_remote {
            for e in plan.edges.iter().chain(c.metrics.iter()) {
                let local = e.to_socket_addrs().map(|mut a| a.all(|a| a.ip().is_loopback())).unwrap_or(false);
                if !local {
                    return Err(format!("{e} is not a loopback address: pass --allow-remote to load another machine"));
                }
            }
        }
        if let Some(r) = c.min_rate_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err("--min-rate-ratio must be between 0 and 1".into());
        }
        let workers = c.workers.unwrap_or_else(|| plan.min_workers().saturating_sub(c.remote_workers).max(1));
        if workers + c.remote_workers == 0 {
            return Err("no workers: give --workers or --remote-workers".into());
        }
        if workers + c.remote_workers < plan.min_workers() {
            return Err(format!(
                "{} connections need at least {} workers (at most {} connections each)",
                plan.connections(),
                plan.min_workers(),
                crate::plan::MAX_CONNECTIONS_PER_WORKER
            ));
        }
        let name = c.name.unwrap_or_else(|| format!("{}-{}", plan.scenario, plan.run_id));
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err("--name must be a plain file name".into());
        }
        let slo = Slo {
            p99_ms: c.slo_p99_ms,
            ack_p99_ms: c.slo_ack_p99_ms,
            max_loss: c.max_loss,
            min_rate_ratio: c.min_rate_ratio,
            max_connect_failures: c.max_connect_failures,
            max_errors: c.max_errors,
        };
        let config = ControllerConfig {
            plan,
            local_workers: workers,
            remote_workers: c.remote_workers,
            listen: c.listen,
            secret,
            metrics: c.metrics,
            slo,
            progress: !c.quiet,
        };
        Ok(Run::Controller { config: Box::new(config), out: c.out, name })
    }
}

/// Splits `connections` into the mix's shares; the send rate is split by senders.
fn mix(
    connections: u64,
    direct: f64,
    group: f64,
    broadcast: f64,
    group_size: u32,
    rate: f64,
    broadcast_rate: f64,
) -> Result<Workload, String> {
    let shares = [direct, group, broadcast];
    if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || shares.iter().sum::<f64>() > 1.0 + 1e-9 {
        return Err("mix shares must be between 0 and 1 and add up to at most 1".into());
    }
    if group_size < 2 {
        return Err("--group-size must be at least 2".into());
    }
    let n = connections as f64;
    let direct_pairs = (n * direct / 2.0).floor() as u64;
    let groups = (n * group / f64::from(group_size)).floor() as u64;
    let subscribers = ((n * broadcast).floor() as u64).saturating_sub(1);
    let used = 2 * direct_pairs + groups * u64::from(group_size) + if subscribers > 0 { subscribers + 1 } else { 0 };
    let senders = (2 * direct_pairs + groups * u64::from(group_size)) as f64;
    let share = |k: u64| if senders > 0.0 { rate * k as f64 / senders } else { 0.0 };
    Ok(Workload {
        direct_pairs,
        direct_rate: share(2 * direct_pairs),
        groups,
        group_size,
        group_rate: share(groups * u64::from(group_size)),
        broadcast_subscribers: subscribers,
        broadcast_rate: if subscribers > 0 { broadcast_rate } else { 0.0 },
        idle: connections.saturating_sub(used),
    })
}

/// "250ms", "30s", "5m", "1h", or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn mix_splits_connections_and_rate() {
        let w = mix(1000, 0.5, 0.2, 0.1, 8, 1000.0, 2.0).unwrap();
        assert_eq!((w.direct_pairs, w.groups, w.broadcast_subscribers, w.idle), (250, 25, 99, 200));
        assert!((w.direct_rate + w.group_rate - 1000.0).abs() < 1e-6);
        assert!((w.direct_rate / w.group_rate - 500.0 / 200.0).abs() < 1e-6);
        assert!(mix(10, 0.8, 0.3, 0.0, 8, 1.0, 0.0).is_err());
    }

    #[test]
    fn remote_edges_need_consent() {
        let cli = Cli::try_parse_from(["loadtest", "direct", "--secret", "s", "--edges", "192.0.2.1:80"]).unwrap();
        assert!(cli.into_run().err().unwrap().contains("--allow-remote"));
        let cli = Cli::try_parse_from(["loadtest", "--secret", "s", "idle", "--connections", "5"]).unwrap();
        assert!(matches!(cli.into_run(), Ok(Run::Controller { .. })));
        let cli = Cli::try_parse_from(["loadtest", "--secret", "s", "--workers", "0", "idle"]).unwrap();
        assert!(cli.into_run().err().unwrap().contains("no workers"));
    }
}
