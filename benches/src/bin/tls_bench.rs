//! `tls-bench`: what native TLS costs the edge, against the real binary. Two standalone nodes
//! run side by side, one plain (`ws://`) and one with a certificate (`wss://`, ECDSA P-256
//! made at start); in one run, rounds alternate between them:
//!
//! - connections per second: clients connect (TCP, TLS, upgrade, token, `hello`, empty
//!   `resume`) and leave again, `--concurrency` at a time;
//! - bytes per idle connection: the node's RSS growth while `--idle` connections are held.
//!
//! Client and server share the machine's cores, so the rates are the pair's, and only their
//! ratio carries over. Build with `cargo build --release -p server -p benches`.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use client::Client;
use protocol::Encoding;
use testkit::TestCa;

#[derive(Debug, Parser)]
#[command(name = "tls-bench", about = "Connections per second and idle bytes, ws:// vs wss://")]
struct Args {
    /// The messenger binary.
    #[arg(long, default_value = "target/release/messenger")]
    messenger: PathBuf,
    /// Connections made (and closed) per mode per round.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Connections being made at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Rounds (each measures both modes, alternating which goes first).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections held per mode for the idle-memory measurement (0 skips it).
    #[arg(long, default_value_t = 5000)]
    idle: usize,
}

/// A `messenger standalone` on free ports, killed when dropped.
struct Node {
    child: Child,
    ws: String,
    admin: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Caps and rates out of the way: the bench measures the handshake, not admission.
const OPEN_LIMITS: [&str; 12] = [
    "--connect-rate",
    "1000000",
    "--connect-burst",
    "1000000",
    "--connect-rate-per-ip",
    "1000000",
    "--connect-burst-per-ip",
    "1000000",
    "--max-connections-per-user",
    "1000000",
    "--max-connections-per-ip",
    "1000000",
];

fn start(bin: &Path, tls: Option<(&Path, &Path)>) -> anyhow::Result<Node> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().context("utf-8 temporary path")?.to_owned();
    let mut cmd = Command::new(bin);
    cmd.args(["standalone", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir", &data])
        .args(["--audit-log", "off", "--log", "warn"])
        .args(OPEN_LIMITS);
    if let Some((cert, key)) = tls {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null()).spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().context("the node printed nothing")??;
    std::thread::spawn(move || for _ in lines {});
    let field = |name: &str| {
        line.split_whitespace().find_map(|p| p.strip_prefix(name)).map(str::to_owned).context("address line")
    };
    let (ws, admin) = (field("ws=")?, field("admin=")?);
    let out = Command::new(bin).args(["token", "--user", "bench", "--ttl", "2h", "--data-dir", &data]).output()?;
    if !out.status.success() {
        bail!("messenger token failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    Ok(Node { child, ws, admin, token, _dir: dir })
}

/// Connects as the bench user: upgrade, token, `hello`, empty `resume`.
async fn connect(ws: &str, token: &str, tls: &Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<Client> {
    Ok(match tls {
        None => Client::connect(ws, token, Encoding::Bincode).await?,
        Some(config) => Client::connect_tls(ws, token, Encoding::Bincode, config.clone()).await?,
    })
}

/// Connections per second: `n` connect-and-leave cycles, `concurrency` at a time.
async fn rate(
    node: &Node,
    tls: &Option<Arc<rustls::ClientConfig>>,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let left = Arc::new(AtomicUsize::new(n));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (left, ws, token, tls) = (left.clone(), node.ws.clone(), node.token.clone(), tls.clone());
        tasks.spawn(async move {
            while left.fetch_sub(1, Ordering::Relaxed) as isize > 0 {
                let c = connect(&ws, &token, &tls).await?;
                c.close().await;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The node's resident memory, from its admin port.
async fn rss(admin: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    body.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .context("no process_resident_memory_bytes in /metrics")
}

/// RSS growth per connection while `n` connections are held (then closed).
async fn idle_bytes(node: &Node, tls: &Option<Arc<rustls::ClientConfig>>, n: usize) -> anyhow::Result<f64> {
    let before = rss(&node.admin).await?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(connect(&node.ws, &node.token, tls).await?);
    }
    // Let the connections settle into their idle state (handshake buffers freed).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(&node.admin).await?;
    drop(held);
    Ok((after - before) / n as f64)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca = TestCa::new("tls-bench CA");
    let files = tempfile::tempdir()?;
    let (cert, key) = ca.server("tls-bench").write(files.path(), "server");
    let plain = start(&args.messenger, None)?;
    let secure = start(&args.messenger, Some((&cert, &key)))?;
    let client_tls = Some(ca.client_config(None));
    // Warm both up (first connections pay for lazily built state).
    rate(&plain, &None, 50, 4).await?;
    rate(&secure, &client_tls, 50, 4).await?;

    let (mut ws_rates, mut wss_rates) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for second in [round % 2 == 1, round % 2 == 0] {
            if second {
                wss_rates.push(rate(&secure, &client_tls, args.connections, args.concurrency).await?);
            } else {
                ws_rates.push(rate(&plain, &None, args.connections, args.concurrency).await?);
            }
        }
        println!(
            "round {}: ws:// {:.0}/s, wss:// {:.0}/s",
            round + 1,
            ws_rates.last().copied().unwrap_or(0.0),
            wss_rates.last().copied().unwrap_or(0.0)
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (ws, wss) = (median(&mut ws_rates), median(&mut wss_rates));
    println!(
        "connections per second (median of {} rounds, {} connections each, {} at a time): ws:// {ws:.0}, wss:// {wss:.0}, wss/ws {:.2}",
        args.rounds,
        args.connections,
        args.concurrency,
        wss / ws
    );
    if args.idle > 0 {
        let ws_idle = idle_bytes(&plain, &None, args.idle).await?;
        let wss_idle = idle_bytes(&secure, &client_tls, args.idle).await?;
        println!(
            "RSS per idle connection ({} held): ws:// {ws_idle:.0} B, wss:// {wss_idle:.0} B, TLS adds {:.0} B",
            args.idle,
            wss_idle - ws_idle
        );
    }
    Ok(())
}
