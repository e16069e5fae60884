//! Memory per idle authenticated connection, measured from outside the server.
//!
//! Opens N connections to a running node (spread over 127.0.0.x source addresses), each a
//! distinct user that authenticates, receives `hello` and sends an empty `resume` (so the
//! edge holds it fully: subscriptions, outbox, order state), then stays idle. Reads the
//! server's `process_resident_memory_bytes` from its admin port before and after, and
//! prints the growth per connection as one JSON line.
//!
//! ```text
//! messenger standalone --data-dir /tmp/idle &        # the server under test
//! idle-conns --connections 19000 --data-dir /tmp/idle
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use client::Client;
use protocol::{Encoding, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Parser)]
struct Args {
    /// WebSocket address of the node.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Admin address of the node (for its RSS).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// Connections to open (this process and the server each need one file per connection).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Connections opened per second.
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+N) to spread the client ports over.
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// Encoding the connections negotiate.
    #[arg(long, default_value = "json", value_parser = ["json", "bincode"])]
    encoding: String,
    /// The node's data directory (for its development secret), unless --secret is given.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// HS256 secret of the node.
    #[arg(long, env = "MESSENGER_JWT_SECRET")]
    secret: Option<String>,
    /// Seconds to wait after the last connection before measuring.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Seconds to hold the connections after measuring.
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

async fn rss(admin: SocketAddr) -> anyhow::Result<u64> {
    let mut s = TcpStream::connect(admin).await.context("connect to the admin port")?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    body.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .context("no process_resident_memory_bytes in /metrics")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let secret = match &args.secret {
        Some(s) => s.clone(),
        None => server::token::dev_secret(&args.data_dir, false)?,
    };
    let encoding = if args.encoding == "json" { Encoding::Json } else { Encoding::Bincode };
    let before = rss(args.admin).await?;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(args.connections);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut next = tokio::time::Instant::now();
    for i in 0..args.connections {
        tokio::time::sleep_until(next).await;
        next += interval;
        let ip = Ipv4Addr::new(127, 0, 0, 2 + (i % args.source_ips.max(1) as usize) as u8);
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
        let stream = socket.connect(args.addr).await.with_context(|| format!("connection {i}"))?;
        let token = server::token::mint(secret.as_bytes(), &format!("idle-{i}"), Duration::from_secs(3600))?;
        let mut c = Client::open_on(stream, &args.addr.to_string(), &token, encoding).await?;
        match c.recv().await? {
            ServerFrame::Hello { .. } => {}
            other => bail!("expected hello, got {other:?}"),
        }
        c.resume(Vec::new()).await?;
        conns.push(c);
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = rss(args.admin).await?;
    let per_conn = after.saturating_sub(before) as f64 / args.connections as f64;
    println!(
        "{{\"connections\":{},\"encoding\":\"{}\",\"rss_before_bytes\":{before},\"rss_after_bytes\":{after},\"bytes_per_connection\":{per_conn:.0},\"connect_seconds\":{connect_secs:.1}}}",
        args.connections, args.encoding
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    drop(conns);
    Ok(())
}
