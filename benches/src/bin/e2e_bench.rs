//! End-to-end latency and throughput through real edges, measured from outside.
//!
//! Open model: every send has an *intended* time on a fixed schedule, carried in the message
//! body; latency is measured from that time to the receiver's arrival, so a server that falls
//! behind shows it in the percentiles instead of slowing the load (no coordinated omission).
//!
//! ```text
//! e2e-bench --edges 127.0.0.1:8080 --secret S direct --pairs 200 --rate 1000 --seconds 10
//! e2e-bench --edges 127.0.0.1:8081,127.0.0.1:8082 --secret S broadcast --subscribers 10000 --rate 10
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use client::Client;
use protocol::{ChatKind, ClientFrame, Encoding, EventBody, Role, ServerFrame};
use tokio::net::TcpSocket;

#[derive(Debug, Parser)]
struct Args {
    /// Edge WebSocket addresses; connections alternate between them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    edges: Vec<String>,
    /// HS256 secret the edges verify tokens with.
    #[arg(long, env = "MESSENGER_JWT_SECRET")]
    secret: String,
    /// A label for the report (e.g. standalone, cluster).
    #[arg(long, default_value = "run")]
    label: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// 1:1 chats: `pairs` senders each send to their own receiver; `rate` sends/s in total.
    Direct {
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// One broadcast channel: one admin posts `rate` messages/s to `subscribers` connections.
    Broadcast {
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        #[arg(long, default_value_t = 10)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

struct Bench {
    args: Args,
    started: Instant,
    latencies: Mutex<Vec<u64>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Bench {
    fn token(&self, user: &str) -> anyhow::Result<String> {
        server::token::mint(self.args.secret.as_bytes(), user, Duration::from_secs(3600))
    }

    /// Connects `user` to the next edge from the next 127.0.0.x source address.
    async fn connect(&self, user: &str) -> anyhow::Result<Client> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let edge = &self.args.edges[n % self.args.edges.len()];
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 1, 1 + (n % 200) as u8), 0)))?;
        let stream = socket.connect(edge.parse().context("edge address")?).await?;
        let mut c = Client::open_on(stream, edge, &self.token(user)?, Encoding::Bincode).await?;
        match c.recv().await? {
            ServerFrame::Hello { .. } => {}
            other => bail!("expected hello, got {other:?}"),
        }
        c.resume(Vec::new()).await?;
        Ok(c)
    }

    /// The scheduled time `at`, in the microseconds-since-start the receivers compare with:
    /// a send that leaves late is still measured from when it should have left.
    fn intended_us(&self, at: tokio::time::Instant) -> u64 {
        self.now_us().saturating_sub(tokio::time::Instant::now().saturating_duration_since(at).as_micros() as u64)
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Reads `c` until `deadline`, recording the latency of every message event.
    async fn receive(self: Arc<Self>, mut c: Client, deadline: tokio::time::Instant) -> u64 {
        let mut local = Vec::new();
        let mut count = 0;
        while let Ok(Ok(f)) = tokio::time::timeout_at(deadline, c.recv_within(Duration::from_secs(3600))).await {
            if let ServerFrame::Event { event, .. } = f
                && let EventBody::Message { text, .. } = event.body
                && let Ok(intended) = text.parse::<u64>()
            {
                local.push(self.now_us().saturating_sub(intended));
                count += 1;
            }
        }
        self.latencies.lock().unwrap_or_else(|p| p.into_inner()).extend(local);
        count
    }
}

fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bench = Arc::new(Bench { args, started: Instant::now(), latencies: Mutex::new(Vec::new()), next: 0.into() });
    let (sent, delivered, wall, target) = match bench.args.scenario {
        Scenario::Direct { pairs, rate, seconds } => direct(bench.clone(), pairs, rate, seconds).await?,
        Scenario::Broadcast { subscribers, rate, seconds } => {
            broadcast(bench.clone(), subscribers, rate, seconds).await?
        }
    };
    let mut lat = std::mem::take(&mut *bench.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    println!(
        "{{\"label\":\"{}\",\"scenario\":\"{}\",\"target_sends_per_second\":{target},\"sent\":{sent},\"achieved_sends_per_second\":{:.0},\"delivered\":{delivered},\"deliveries_per_second\":{:.0},\"latency_ms\":{{\"p50\":{:.2},\"p90\":{:.2},\"p99\":{:.2},\"p999\":{:.2},\"max\":{:.2}}}}}",
        bench.args.label,
        match bench.args.scenario {
            Scenario::Direct { .. } => "direct",
            Scenario::Broadcast { .. } => "broadcast",
        },
        sent as f64 / wall,
        delivered as f64 / wall,
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        pct(&lat, 1.0),
    );
    Ok(())
}

/// Returns (sent, delivered, seconds, target rate).
async fn direct(bench: Arc<Bench>, pairs: usize, rate: u64, seconds: u64) -> anyhow::Result<(u64, u64, f64, u64)> {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let tag = std::process::id();
    for i in 0..pairs {
        let (a, b) = (format!("s{tag}-{i}"), format!("r{tag}-{i}"));
        let mut sender = bench.connect(&a).await?;
        let chat = match sender.create_chat(ChatKind::Direct, "", &[&b]).await? {
            ServerFrame::ChatCreated { chat, .. } => chat.chat,
            other => bail!("create: {other:?}"),
        };
        receivers.push(bench.connect(&b).await?);
        senders.push((sender, chat));
    }
    let period = Duration::from_secs_f64(pairs as f64 / rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let end = start + Duration::from_secs(seconds);
    let deadline = end + Duration::from_secs(5);
    let recv_tasks: Vec<_> = receivers.into_iter().map(|c| tokio::spawn(bench.clone().receive(c, deadline))).collect();
    let mut send_tasks = Vec::new();
    for (i, (mut c, chat)) in senders.into_iter().enumerate() {
        let bench = bench.clone();
        send_tasks.push(tokio::spawn(async move {
            let mut next = start + period.mul_f64(i as f64 / pairs as f64);
            let mut sent = 0u64;
            while next < end {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {
                        let intended = bench.intended_us(next);
                        let req = c.req();
                        let frame = ClientFrame::Send { req, chat, client_msg_id: format!("{req}"), body: intended.to_string() };
                        if c.send(&frame).await.is_err() { break; }
                        sent += 1;
                        next += period;
                    }
                    r = c.recv_within(Duration::from_secs(3600)) => if r.is_err() { break },
                }
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in send_tasks {
        sent += t.await?;
    }
    let mut delivered = 0;
    for t in recv_tasks {
        delivered += t.await?;
    }
    Ok((sent, delivered, seconds as f64, rate))
}

async fn broadcast(
    bench: Arc<Bench>,
    subscribers: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<(u64, u64, f64, u64)> {
    let tag = std::process::id();
    let mut admin = bench.connect(&format!("admin{tag}")).await?;
    let chat = match admin.create_chat(ChatKind::Broadcast, "bench", &[]).await? {
        ServerFrame::ChatCreated { chat, .. } => chat.chat,
        other => bail!("create: {other:?}"),
    };
    let users: Vec<String> = (0..subscribers).map(|i| format!("b{tag}-{i}")).collect();
    for batch in users.chunks(protocol::limits::MAX_USERS_PER_REQUEST) {
        let users = batch.to_vec();
        match admin.request(|req| ClientFrame::AddMembers { req, chat, users, role: Role::Member }).await? {
            ServerFrame::Ack { .. } => {}
            other => bail!("add members: {other:?}"),
        }
    }
    let mut subs = Vec::with_capacity(subscribers);
    for u in &users {
        subs.push(bench.connect(u).await?);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let end = start + Duration::from_secs(seconds);
    let deadline = end + Duration::from_secs(10);
    let recv: Vec<_> = subs.into_iter().map(|c| tokio::spawn(bench.clone().receive(c, deadline))).collect();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = start;
    let mut sent = 0u64;
    while next < end {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                let intended = bench.intended_us(next);
                let req = admin.req();
                admin.send(&ClientFrame::Send { req, chat, client_msg_id: format!("{req}"), body: intended.to_string() }).await?;
                sent += 1;
                next += period;
            }
            r = admin.recv_within(Duration::from_secs(3600)) => { r?; }
        }
    }
    let mut delivered = 0;
    for t in recv {
        delivered += t.await?;
    }
    Ok((sent, delivered, seconds as f64, rate))
}
