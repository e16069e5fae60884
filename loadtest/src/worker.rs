//! A worker process: opens its share of the plan's connections and drives them through the
//! phases the controller announces (see [`crate::wire`]).
//!
//! One task per connection. A task owns its WebSocket and does everything for it: connect,
//! create its chat, learn its baseline, send on its schedule, read and check every frame,
//! reconnect and resume when dropped. Sends are scheduled, not paced by replies (open model):
//! a send's latency counts from when it was due, so a slow server shows up in the numbers
//! instead of slowing the load down.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use client::Client;
use client::tungstenite::protocol::WebSocketConfig;
use protocol::{ChatKind, ClientFrame, Encoding, EventBody, Role as MemberRole, ServerFrame};
use tokio::io::BufReader;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::check::{Observed, RangeSet, Stream, StreamReport};
use crate::plan::{ConnSpec, Creation, Plan, Role};
use crate::stats::{Kind, Recorder};
use crate::wire::{self, ToController, ToWorker, WorkerResult};

/// Longest wait for one connection's TCP connect, upgrade and `hello`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect attempts after a dropped connection before the connection is given up.
pub const MAX_RECONNECT_ATTEMPTS: u32 = 20;
/// Backoff between reconnect attempts: doubles from the first to the last value.
pub const RECONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// WebSocket read buffer per connection (tungstenite's default is 128 KiB, too much for
/// 18,000 connections in one process).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;
/// How long a token minted for a connection stays valid beyond the run.
pub const TOKEN_SLACK: Duration = Duration::from_secs(3600);
/// Width of the zero-padded send timestamp at the start of every message body.
const STAMP_DIGITS: usize = 20;

/// The phase every connection task follows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Connect,
    Setup,
    Baseline,
    Go { at: Instant },
    Finish,
}

/// What connection tasks tell the worker while it waits on a phase.
enum Progress {
    Connected(bool),
    Created,
    Baselined,
}

/// Everything a connection task shares with the others.
struct Shared {
    plan: Plan,
    worker: u32,
    secret: String,
    encoding: Encoding,
    recorder: Recorder,
    /// Sends awaiting their ack.
    pending: AtomicU64,
    phase: watch::Receiver<Phase>,
    progress: mpsc::UnboundedSender<Progress>,
    /// The Unix time (µs) of `base`, so every process stamps sends on the same clock.
    base_unix_us: u64,
    base: Instant,
}

impl Shared {
    fn unix_us(&self, at: Instant) -> u64 {
        self.base_unix_us + at.saturating_duration_since(self.base).as_micros() as u64
    }

    fn now_us(&self) -> u64 {
        self.unix_us(Instant::now())
    }

    fn instant_of_unix_ms(&self, ms: u64) -> Instant {
        let us = ms * 1000;
        if us >= self.base_unix_us { self.base + Duration::from_micros(us - self.base_unix_us) } else { self.base }
    }
}

/// This process's user + system CPU time (Linux `/proc/self/stat`, in USER_HZ = 100 ticks
/// per second); `None` elsewhere.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs one worker: connects to the controller at `controller` and follows it until `finish`.
pub async fn run(controller: &str, secret: String) -> anyhow::Result<()> {
    let stream = TcpStream::connect(controller).await.with_context(|| format!("connect to controller {controller}"))?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    wire::write(&mut w, &ToController::Joined { version: env!("CARGO_PKG_VERSION").into() }).await?;
    let (index, workers, plan, epoch_unix_ms) = match wire::read(&mut r).await? {
        ToWorker::Start { index, workers, plan, epoch_unix_ms } => (index, workers, *plan, epoch_unix_ms),
        other => bail!("expected start, got {other:?}"),
    };
    plan.validate()?;
    let (out, mut out_rx) = mpsc::unbounded_channel::<ToController>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if wire::write(&mut w, &msg).await.is_err() {
                break;
            }
        }
    });
    let result = drive(&mut r, &out, index, workers, plan, epoch_unix_ms, secret).await;
    if let Err(e) = &result {
        let _ = out.send(ToController::Failed { error: format!("{e:#}") });
    }
    drop(out);
    let _ = writer.await;
    result
}

async fn drive(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    out: &mpsc::UnboundedSender<ToController>,
    index: u32,
    workers: u32,
    plan: Plan,
    epoch_unix_ms: u64,
    secret: String,
) -> anyhow::Result<()> {
    let encoding = if plan.encoding == "json" { Encoding::Json } else { Encoding::Bincode };
    let (phase_tx, phase) = watch::channel(Phase::Connect);
    let (progress, mut progress_rx) = mpsc::unbounded_channel();
    let base_unix_us =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).context("system clock")?;
    let shared = Arc::new(Shared {
        plan,
        worker: index,
        secret,
        encoding,
        recorder: Recorder::default(),
        pending: AtomicU64::new(0),
        phase,
        progress,
        base_unix_us,
        base: Instant::now(),
    });
    let specs = shared.plan.share(index, workers);

    // Progress every second, aligned to the run's epoch so the controller can merge by second.
    let ticker = {
        let (shared, out) = (shared.clone(), out.clone());
        let epoch = shared.instant_of_unix_ms(epoch_unix_ms);
        tokio::spawn(async move {
            let mut second = 1 + epoch.elapsed().as_secs();
            loop {
                tokio::time::sleep_until(epoch + Duration::from_secs(second)).await;
                let tick = shared.recorder.take(second);
                let pending = shared.pending.load(Ordering::Relaxed);
                if out.send(ToController::Progress { tick, pending }).is_err() {
                    break;
                }
                second += 1;
            }
        })
    };

    if index == 0
        && let Some(spec) =
            specs.iter().find(|s| matches!(&s.role, Role::Member { creates: Some(Creation::Broadcast { .. }), .. }))
    {
        prepare_broadcast(&shared, spec).await.context("create the broadcast channel")?;
    }
    let _ = out.send(ToController::Prepared);
    expect(r, "connect").await?;

    let rate = f64::from(shared.plan.connect_rate) / f64::from(workers.max(1));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(specs.len());
    let total = specs.len();
    for (n, spec) in specs.into_iter().enumerate() {
        let at = start + Duration::from_secs_f64(n as f64 / rate);
        tasks.push(tokio::spawn(Conn::new(shared.clone(), spec).run(at)));
    }
    let mut ok = 0u64;
    for _ in 0..total {
        match progress_rx.recv().await {
            Some(Progress::Connected(true)) => ok += 1,
            Some(Progress::Connected(false)) => {}
            _ => bail!("connection tasks ended early"),
        }
    }
    let _ = out.send(ToController::Connected { ok, failed: total as u64 - ok });
    expect(r, "setup").await?;

    // Every connected task reports `created` (after creating its chat, if it creates one) and
    // then `baselined` exactly once, even if it lost its connection on the way.
    let _ = phase_tx.send(Phase::Setup);
    let alive = ok as usize;
    let (mut created, mut baselined) = (0, 0);
    while created < alive {
        match progress_rx.recv().await {
            Some(Progress::Created) => created += 1,
            Some(Progress::Baselined) => baselined += 1,
            Some(Progress::Connected(_)) => {}
            None => bail!("connection tasks ended early"),
        }
    }
    let _ = phase_tx.send(Phase::Baseline);
    while baselined < alive {
        match progress_rx.recv().await {
            Some(Progress::Baselined) => baselined += 1,
            Some(_) => {}
            None => bail!("connection tasks ended early"),
        }
    }
    let _ = out.send(ToController::Ready);

    let at_unix_ms = match wire::read(r).await? {
        ToWorker::Go { at_unix_ms } => at_unix_ms,
        other => bail!("expected go, got {other:?}"),
    };
    let go = shared.instant_of_unix_ms(at_unix_ms);
    let _ = phase_tx.send(Phase::Go { at: go });
    tokio::time::sleep_until(go).await;
    let cpu_at_go = cpu_seconds();
    expect(r, "finish").await?;
    let cpu = cpu_seconds().zip(cpu_at_go).map(|(end, start)| end - start);
    let _ = phase_tx.send(Phase::Finish);

    let mut result = WorkerResult { cpu_seconds: cpu, ..WorkerResult::default() };
    let mut acked_by_chat: std::collections::BTreeMap<u64, RangeSet> = Default::default();
    for t in tasks {
        let o = t.await.context("connection task")?;
        if let Some((chat, acked)) = o.acked {
            acked_by_chat.entry(chat).or_default().union(&acked);
        }
        result.streams.extend(o.stream);
        result.unsent += o.unsent;
        result.reconnects += o.reconnects;
        if let Some(resumed_ms) = o.storm {
            result.storm_dropped += 1;
            if let Some(ms) = resumed_ms {
                result.storm_resumed += 1;
                result.storm_all_resumed_ms = Some(result.storm_all_resumed_ms.unwrap_or(0).max(ms));
            }
        }
    }
    result.acked = acked_by_chat.into_iter().collect();
    // The last second's counts, then the result.
    let tick = shared.recorder.take(u64::MAX);
    let _ = out.send(ToController::Progress { tick, pending: 0 });
    ticker.abort();
    let _ = out.send(ToController::Done { result: Box::new(result) });
    Ok(())
}

async fn expect(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, what: &str) -> anyhow::Result<()> {
    let msg: ToWorker = wire::read(r).await?;
    let ok = matches!(
        (&msg, what),
        (ToWorker::Connect, "connect") | (ToWorker::Setup, "setup") | (ToWorker::Finish, "finish")
    );
    if !ok {
        bail!("expected {what}, got {msg:?}");
    }
    Ok(())
}

/// Worker 0 creates the broadcast channel and adds every subscriber before anyone connects,
/// so each subscriber's first `list_chats` already shows it.
async fn prepare_broadcast(shared: &Arc<Shared>, spec: &ConnSpec) -> anyhow::Result<()> {
    let Role::Member { creates: Some(Creation::Broadcast { subscribers }), .. } = &spec.role else {
        return Ok(());
    };
    let (mut c, _, _) = connect(shared, spec.index, 0, Vec::new()).await?;
    let chat = match c.create_chat(ChatKind::Broadcast, "loadtest", &[]).await? {
        ServerFrame::ChatCreated { chat, .. } => chat.chat,
        other => bail!("create_chat: {other:?}"),
    };
    let users: Vec<u64> = subscribers.clone().collect();
    for batch in users.chunks(protocol::limits::MAX_USERS_PER_REQUEST) {
        let users = batch.iter().map(|&i| shared.plan.user(i)).collect();
        match c.request(|req| ClientFrame::AddMembers { req, chat, users, role: MemberRole::Member }).await? {
            ServerFrame::Ack { .. } => {}
            other => bail!("add_members: {other:?}"),
        }
    }
    c.close().await;
    Ok(())
}

fn token(shared: &Shared, user: &str) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
    }
    let iat = unix_ms() / 1000;
    let exp = iat + (shared.plan.duration_ms + shared.plan.drain_ms) / 1000 + TOKEN_SLACK.as_secs();
    let key = jsonwebtoken::EncodingKey::from_secret(shared.secret.as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, iat, exp },
        &key,
    )?)
}

/// The source address for connection `index` when the edge is on loopback: spreading
/// connections over 127.<worker>.x.y gives each address its own ephemeral port range.
fn source_addr(shared: &Shared, index: u64, edge: &SocketAddr) -> Option<SocketAddr> {
    if shared.plan.source_ips == 0 || !edge.ip().is_loopback() || !edge.is_ipv4() {
        return None;
    }
    // Hashed, not `index % n`: a worker's connection indices share a residue modulo the
    // worker count, which would put them all on one address (and exhaust its bind ports).
    let k = scatter(index) % u64::from(shared.plan.source_ips);
    let ip = Ipv4Addr::new(127, 1 + (shared.worker % 250) as u8, (k / 250) as u8, 1 + (k % 250) as u8);
    Some(SocketAddr::new(IpAddr::V4(ip), 0))
}

/// Connects connection `index` (attempt `attempt` picks the edge), waits for `hello` and
/// resumes `cursors`; returns the client, its heartbeat, and the frames the resume brought.
async fn connect(
    shared: &Shared,
    index: u64,
    attempt: u64,
    cursors: Vec<protocol::frame::ResumeCursor>,
) -> anyhow::Result<(Client, Vec<ServerFrame>, Duration)> {
    let edges = &shared.plan.edges;
    let edge = &edges[((index + attempt) % edges.len() as u64) as usize];
    let user = shared.plan.user(index);
    let go = async {
        let addr = tokio::net::lookup_host(edge.as_str()).await?.next().context("edge address")?;
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(src) = source_addr(shared, index, &addr) {
            socket.bind(src).with_context(|| format!("bind {src}"))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES).write_buffer_size(0);
        let mut c = Client::open_on_with(stream, edge, &token(shared, &user)?, shared.encoding, Some(config)).await?;
        let heartbeat = match c.recv().await? {
            ServerFrame::Hello { heartbeat_ms, .. } => Duration::from_millis(heartbeat_ms.max(1000)),
            other => bail!("expected hello, got {other:?}"),
        };
        let frames = c.resume(cursors).await?;
        anyhow::Ok((c, frames, heartbeat))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, go).await.context("connect timed out")?
}

/// A send awaiting its ack: its client message id is `n`, and its body follows from the
/// intended time (see [`send_frame`]), so a resend after a reconnect is byte-identical.
struct Pending {
    n: u64,
    intended_us: u64,
}

/// What a connection task hands back at the end.
#[derive(Default)]
struct Outcome {
    acked: Option<(u64, RangeSet)>,
    stream: Option<StreamReport>,
    unsent: u64,
    reconnects: u64,
    /// `Some` if the storm dropped this connection: `Some(ms)` once it resumed.
    storm: Option<Option<u64>>,
}

struct Conn {
    shared: Arc<Shared>,
    spec: ConnSpec,
    user: String,
    slot: usize,
    client: Option<Client>,
    heartbeat: Duration,
    chat: Option<u64>,
    stream: Option<Stream>,
    acked: RangeSet,
    pending: HashMap<u64, Pending>,
    sent: u64,
    attempts: u64,
    outcome: Outcome,
    /// Set by `go_away`: reconnect after this long.
    go_away: Option<Duration>,
}

impl Conn {
    fn new(shared: Arc<Shared>, spec: ConnSpec) -> Conn {
        let user = shared.plan.user(spec.index);
        let slot = spec.index as usize;
        Conn {
            shared,
            spec,
            user,
            slot,
            client: None,
            heartbeat: Duration::from_secs(30),
            chat: None,
            stream: None,
            acked: RangeSet::new(),
            pending: HashMap::new(),
            sent: 0,
            attempts: 0,
            outcome: Outcome::default(),
            go_away: None,
        }
    }

    async fn run(mut self, at: Instant) -> Outcome {
        tokio::time::sleep_until(at).await;
        let mut attempt = 0;
        let mut backoff = RECONNECT_BACKOFF.0;
        let first = loop {
            match connect(&self.shared, self.spec.index, attempt, Vec::new()).await {
                Err(_) if attempt < u64::from(self.shared.plan.connect_retries) => {
                    self.shared.recorder.error(self.slot, "connect_retried");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                }
                result => break result,
            }
        };
        self.attempts = attempt;
        match first {
            Ok((c, frames, heartbeat)) => {
                self.client = Some(c);
                self.heartbeat = heartbeat;
                for f in frames {
                    self.on_frame(f);
                }
                self.shared.recorder.connections.fetch_add(1, Ordering::Relaxed);
                let _ = self.shared.progress.send(Progress::Connected(true));
            }
            Err(e) => {
                self.shared.recorder.connect_failed(self.slot);
                if self.spec.index < 3 {
                    eprintln!("loadtest: connection {} failed: {e:#}", self.spec.index);
                }
                let _ = self.shared.progress.send(Progress::Connected(false));
                return self.outcome;
            }
        }
        self.lifecycle().await;
        if self.client.take().is_some() {
            self.shared.recorder.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.finish()
    }

    async fn lifecycle(&mut self) {
        let mut phase = self.shared.phase.clone();
        let mut reported = 0;
        self.stages(&mut phase, &mut reported).await;
        // A task that lost its connection during setup still reports, so the worker never
        // waits for it.
        if reported < 1 {
            let _ = self.shared.progress.send(Progress::Created);
        }
        if reported < 2 {
            let _ = self.shared.progress.send(Progress::Baselined);
        }
    }

    async fn stages(&mut self, phase: &mut watch::Receiver<Phase>, reported: &mut u8) {
        if !self.hold_until(phase, |p| !matches!(p, Phase::Connect)).await {
            return;
        }
        if let Role::Member { creates: Some(c), .. } = &self.spec.role {
            let c = c.clone();
            if let Err(e) = self.create(c).await {
                self.shared.recorder.error(self.slot, "setup");
                eprintln!("loadtest: {} could not create its chat: {e:#}", self.user);
            }
        }
        let _ = self.shared.progress.send(Progress::Created);
        *reported = 1;
        if !self.hold_until(phase, |p| !matches!(p, Phase::Connect | Phase::Setup)).await {
            return;
        }
        if let Err(e) = self.baseline().await {
            self.shared.recorder.error(self.slot, "setup");
            eprintln!("loadtest: {} could not list its chats: {e:#}", self.user);
        }
        let _ = self.shared.progress.send(Progress::Baselined);
        *reported = 2;
        if !self.hold_until(phase, |p| matches!(p, Phase::Go { .. } | Phase::Finish)).await {
            return;
        }
        let go = match *phase.borrow() {
            Phase::Go { at } => at,
            _ => return,
        };
        self.load(phase, go).await;
    }

    /// Keeps the connection alive (reading, pinging, reconnecting) until the phase satisfies
    /// `done`; false if the connection is gone for good or the worker is finishing.
    async fn hold_until(&mut self, phase: &mut watch::Receiver<Phase>, done: impl Fn(&Phase) -> bool) -> bool {
        let mut ping = self.ping_timer();
        loop {
            if done(&phase.borrow_and_update()) {
                return true;
            }
            let Some(c) = self.client.as_mut() else { return false };
            tokio::select! {
                r = phase.changed() => if r.is_err() { return false },
                _ = ping.tick() => {
                    let req = c.req();
                    if c.send(&ClientFrame::Ping { req }).await.is_err() && !self.reconnect("ping_failed").await {
                        return false;
                    }
                }
                f = c.recv_within(Duration::from_secs(3600)) => match f {
                    Ok(f) => self.on_frame(f),
                    Err(_) => if !self.reconnect("disconnected").await { return false },
                },
            }
            if let Some(delay) = self.go_away.take() {
                tokio::time::sleep(delay).await;
                if !self.reconnect("go_away").await {
                    return false;
                }
            }
        }
    }

    fn ping_timer(&self) -> tokio::time::Interval {
        // Spread pings over the heartbeat so 100,000 idle connections do not ping together.
        let offset = self.heartbeat.mul_f64((self.spec.index % 1000) as f64 / 1000.0);
        let mut t = tokio::time::interval_at(Instant::now() + offset, self.heartbeat);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }

    async fn create(&mut self, creation: Creation) -> anyhow::Result<()> {
        let plan = &self.shared.plan;
        let (kind, members): (ChatKind, Vec<String>) = match creation {
            Creation::Direct { peer } => (ChatKind::Direct, vec![plan.user(peer)]),
            Creation::Group { members } => (ChatKind::Group, members.into_iter().map(|m| plan.user(m)).collect()),
            Creation::Broadcast { .. } => return Ok(()),
        };
        let c = self.client.as_mut().context("not connected")?;
        let title = if kind == ChatKind::Group { "loadtest".to_owned() } else { String::new() };
        match c.request(|req| ClientFrame::CreateChat { req, kind, title, members }).await? {
            ServerFrame::ChatCreated { .. } => Ok(()),
            other => bail!("create_chat: {other:?}"),
        }
    }

    async fn baseline(&mut self) -> anyhow::Result<()> {
        if matches!(self.spec.role, Role::Idle) {
            return Ok(());
        }
        let c = self.client.as_mut().context("not connected")?;
        let chats = match c.request(|req| ClientFrame::ListChats { req }).await? {
            ServerFrame::Chats { chats, .. } => chats,
            other => bail!("list_chats: {other:?}"),
        };
        let [chat] = chats.as_slice() else { bail!("expected one chat, the user is in {}", chats.len()) };
        self.chat = Some(chat.chat);
        self.stream = Some(Stream::new(chat.last_seq));
        Ok(())
    }

    /// The load phase: send on schedule, read everything, survive the storm, until `finish`.
    async fn load(&mut self, phase: &mut watch::Receiver<Phase>, go: Instant) {
        let plan = &self.shared.plan;
        let end = go + Duration::from_millis(plan.duration_ms);
        let (period, mut next) = match &self.spec.role {
            Role::Member { sends: Some((period, offset)), .. } if self.chat.is_some() => (*period, go + *offset),
            _ => (Duration::MAX, end),
        };
        let mut storm =
            plan.storm.filter(|s| stormed(self.spec.index, s.percent)).map(|s| go + Duration::from_millis(s.at_ms));
        let mut ping = self.ping_timer();
        loop {
            if matches!(*phase.borrow(), Phase::Finish) {
                break;
            }
            let Some(c) = self.client.as_mut() else { break };
            let sending = next < end;
            tokio::select! {
                biased;
                r = phase.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(next), if sending => {
                    let intended_us = self.shared.unix_us(next);
                    next += period;
                    if !self.send_message(intended_us).await && !self.reconnect("send_failed").await {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(storm.unwrap_or(end)), if storm.is_some() => {
                    storm = None;
                    self.storm().await;
                }
                _ = ping.tick() => {
                    let req = c.req();
                    if c.send(&ClientFrame::Ping { req }).await.is_err() && !self.reconnect("ping_failed").await {
                        break;
                    }
                }
                f = c.recv_within(Duration::from_secs(3600)) => match f {
                    Ok(f) => self.on_frame(f),
                    Err(_) => if !self.reconnect("disconnected").await { break },
                },
            }
            if let Some(delay) = self.go_away.take() {
                tokio::time::sleep(delay).await;
                if !self.reconnect("go_away").await {
                    break;
                }
            }
        }
        if next < end && period != Duration::MAX {
            let left = end.saturating_duration_since(next).as_secs_f64() / period.as_secs_f64();
            self.outcome.unsent += left.ceil() as u64;
        }
    }

    async fn send_message(&mut self, intended_us: u64) -> bool {
        let Some(chat) = self.chat else { return true };
        self.sent += 1;
        let pending = Pending { n: self.sent, intended_us };
        let Some(c) = self.client.as_mut() else { return false };
        let req = c.req();
        let frame = send_frame(req, chat, &pending, &self.user, self.shared.plan.message_bytes);
        self.pending.insert(req, pending);
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        self.shared.recorder.sent(self.slot);
        c.send(&frame).await.is_ok()
    }

    /// Drops the connection the way a lost network does (no close frame), then reconnects.
    async fn storm(&mut self) {
        let dropped = Instant::now();
        self.client = None;
        self.shared.recorder.connections.fetch_sub(1, Ordering::Relaxed);
        self.outcome.storm = Some(None);
        if self.reconnect_now().await {
            let ms = dropped.elapsed().as_millis() as u64;
            self.shared.recorder.latency(self.slot, Kind::Reconnect, dropped.elapsed().as_micros() as u64);
            self.outcome.storm = Some(Some(ms));
        }
    }

    /// Reconnects after an unexpected loss, counting it under `reason`.
    async fn reconnect(&mut self, reason: &str) -> bool {
        self.shared.recorder.error(self.slot, reason);
        if self.client.take().is_some() {
            self.shared.recorder.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.reconnect_now().await
    }

    /// Connects again (another edge first), resumes from the last seq seen, and re-sends what
    /// was not acked with the same client message ids (the server acks each once).
    async fn reconnect_now(&mut self) -> bool {
        let mut backoff = RECONNECT_BACKOFF.0;
        for _ in 0..MAX_RECONNECT_ATTEMPTS {
            self.attempts += 1;
            let cursors = match (self.chat, &self.stream) {
                (Some(chat), Some(s)) => vec![client::cursor(chat, s.last)],
                _ => Vec::new(),
            };
            match connect(&self.shared, self.spec.index, self.attempts, cursors).await {
                Ok((c, frames, heartbeat)) => {
                    self.client = Some(c);
                    self.heartbeat = heartbeat;
                    self.shared.recorder.connections.fetch_add(1, Ordering::Relaxed);
                    self.outcome.reconnects += 1;
                    for f in frames {
                        self.on_frame(f);
                    }
                    return self.resend().await;
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                }
            }
        }
        self.shared.recorder.error(self.slot, "reconnect_failed");
        false
    }

    async fn resend(&mut self) -> bool {
        let Some(chat) = self.chat else { return true };
        let Some(c) = self.client.as_mut() else { return false };
        let old: Vec<Pending> = std::mem::take(&mut self.pending).into_values().collect();
        for p in old {
            let req = c.req();
            let frame = send_frame(req, chat, &p, &self.user, self.shared.plan.message_bytes);
            self.pending.insert(req, p);
            if c.send(&frame).await.is_err() {
                return false;
            }
        }
        true
    }

    fn on_frame(&mut self, f: ServerFrame) {
        match f {
            ServerFrame::Event { chat, event } => {
                let (Some(mine), Some(stream)) = (self.chat, self.stream.as_mut()) else { return };
                if chat != mine {
                    self.shared.recorder.error(self.slot, "foreign_chat_event");
                    return;
                }
                let is_message = matches!(event.body, EventBody::Message { .. });
                let seen = stream.observe(event.seq, is_message);
                if matches!(seen, Observed::Duplicate | Observed::History) || event.sender == self.user {
                    return;
                }
                if let EventBody::Message { text, .. } = &event.body
                    && let Some(intended) = text.get(..STAMP_DIGITS).and_then(|s| s.parse::<u64>().ok())
                {
                    let now = self.shared.now_us();
                    self.shared.recorder.latency(self.slot, Kind::Deliver, now.saturating_sub(intended));
                }
            }
            ServerFrame::Ack { req, seq, .. } => {
                if let Some(p) = self.pending.remove(&req) {
                    self.shared.pending.fetch_sub(1, Ordering::Relaxed);
                    self.acked.insert(seq);
                    let now = self.shared.now_us();
                    self.shared.recorder.latency(self.slot, Kind::Ack, now.saturating_sub(p.intended_us));
                }
            }
            ServerFrame::Error { req, code, .. } => {
                if let Some(req) = req
                    && self.pending.remove(&req).is_some()
                {
                    self.shared.pending.fetch_sub(1, Ordering::Relaxed);
                }
                self.shared.recorder.error(self.slot, code.as_str());
            }
            ServerFrame::GoAway { reconnect_after_ms, .. } => {
                self.go_away = Some(Duration::from_millis(reconnect_after_ms.min(10_000)));
            }
            _ => {}
        }
    }

    fn finish(mut self) -> Outcome {
        let left = self.pending.len() as u64;
        self.shared.pending.fetch_sub(left, Ordering::Relaxed);
        if let Some(chat) = self.chat {
            if !self.acked.is_empty() {
                self.outcome.acked = Some((chat, std::mem::take(&mut self.acked)));
            }
            if let Some(stream) = self.stream.take() {
                self.outcome.stream = Some(StreamReport { chat, user: self.user.clone(), stream });
            }
        }
        self.outcome
    }
}

/// The `send` for `p`: the body is the zero-padded intended time (what receivers read), the
/// sender, and padding up to `size` bytes.
fn send_frame(req: u64, chat: u64, p: &Pending, user: &str, size: usize) -> ClientFrame {
    let mut body = String::with_capacity(size);
    let _ = write!(body, "{:0width$}|{user}", p.intended_us, width = STAMP_DIGITS);
    body.truncate(size);
    let pad = size - body.len();
    body.extend(std::iter::repeat_n('.', pad));
    ClientFrame::Send { req, chat, client_msg_id: p.n.to_string(), body }
}

/// A fixed pseudo-random spread of connection indices (Fibonacci hashing), so that choices
/// by `scatter(i) % n` do not follow the round-robin structure of the indices.
fn scatter(index: u64) -> u64 {
    index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
}

/// Whether the storm drops connection `index` (a fixed hash, so reruns drop the same ones).
fn stormed(index: u64, percent: u8) -> bool {
    scatter(index) % 100 < u64::from(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_carries_its_stamp_and_has_the_asked_size() {
        let p = Pending { n: 7, intended_us: 1_795_565_176_235_123 };
        let ClientFrame::Send { client_msg_id, body, .. } = send_frame(3, 9, &p, "lt1-42", 100) else { panic!() };
        assert_eq!(client_msg_id, "7");
        assert_eq!(body.len(), 100);
        assert_eq!(body[..STAMP_DIGITS].parse::<u64>().unwrap(), p.intended_us);
        assert!(body[STAMP_DIGITS..].starts_with("|lt1-42."));
        let ClientFrame::Send { body, .. } = send_frame(3, 9, &p, "lt1-42", 24) else { panic!() };
        assert_eq!(body.len(), 24);
    }

    #[test]
    fn source_addresses_spread_every_workers_connections() {
        // Worker 2 of 8 holds the connections whose index is 2 modulo 8.
        let mut per_ip = std::collections::HashMap::new();
        for index in (2..160_000u64).step_by(8) {
            *per_ip.entry(scatter(index) % 8).or_insert(0) += 1;
        }
        assert_eq!(per_ip.len(), 8);
        assert!(per_ip.values().all(|n| (2_000..3_000).contains(n)), "{per_ip:?}");
    }

    #[test]
    fn the_storm_drops_about_the_asked_share() {
        let dropped = (0..10_000).filter(|&i| stormed(i, 30)).count();
        assert!((2_700..3_300).contains(&dropped), "{dropped}");
        assert_eq!((0..1000).filter(|&i| stormed(i, 100)).count(), 1000);
    }
}
