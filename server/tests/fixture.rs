//! A real `messenger standalone` process on free ports, in a temporary data directory,
//! killed when dropped. Each test binary uses part of it.
//!
//! The servers it needs (NATS, a CQL keyspace), free ports, tokens and polling come from the
//! `testkit` crate; this file holds only what is about the messenger binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use client::Client;
use protocol::{ChatId, Encoding, ServerFrame};
pub use testkit::nats::{EDGE_PASSWORD, EDGE_USER, ROUTER_PASSWORD, ROUTER_USER};
pub use testkit::{KeyspaceGuard, NatsServer, cql_node, unique_keyspace};

pub use protocol::Encoding::{Bincode, Json};

pub const ENCODINGS: [Encoding; 2] = [Json, Bincode];

pub struct TestServer {
    child: Option<Child>,
    pub ws: String,
    pub admin: String,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    secret: String,
    /// In cluster topology: the other edges' addresses (connections alternate between them),
    /// and the processes behind this one, dropped (killed) with it.
    edges: Vec<String>,
    next_edge: std::sync::atomic::AtomicUsize,
    behind: Vec<TestServer>,
    nats: Option<NatsServer>,
    keyspace: Option<KeyspaceGuard>,
    /// For a server started with `--tls-cert`/`--tls-key`: the client side, trusting the
    /// server's CA. [`TestServer::connect`] then connects with `wss://`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl TestServer {
    /// Starts a server in a fresh data directory with extra flags. With
    /// `MESSENGER_TEST_TOPOLOGY=cluster` it starts a cluster instead (NATS, 2 routers on the
    /// test CQL database, 2 edges given `args`), so the same tests run against both modes.
    pub fn start(args: &[&str]) -> TestServer {
        if std::env::var("MESSENGER_TEST_TOPOLOGY").is_ok_and(|t| t == "cluster") {
            return TestServer::start_cluster(args);
        }
        let temp = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer::start_in(temp.path(), args);
        s._temp = Some(temp);
        s
    }

    /// Starts a server on an existing data directory (restarts).
    pub fn start_in(dir: &Path, args: &[&str]) -> TestServer {
        let mut full =
            vec!["standalone", "--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"];
        let dir_str = dir.to_str().expect("utf-8 path").to_owned();
        full.push(&dir_str);
        full.extend_from_slice(args);
        let mut s = TestServer::spawn(&full, None);
        s.dir = dir.to_owned();
        s.secret = std::fs::read_to_string(dir.join("dev-jwt-secret")).expect("dev secret").trim().to_owned();
        s
    }

    /// NATS + 2 routers + 2 edges (with `edge_args`), fronted as one server.
    pub fn start_cluster(edge_args: &[&str]) -> TestServer {
        const SECRET: &str = "cluster-test-secret-cluster-test-secret";
        let cql = cql_node().expect("MESSENGER_TEST_TOPOLOGY=cluster needs MESSENGER_TEST_CQL");
        let nats = NatsServer::builder().cluster_auth().required();
        let keyspace = unique_keyspace("t");
        let mut behind: Vec<TestServer> = (0..2).map(|_| TestServer::start_router(&nats, &cql, &keyspace)).collect();
        let mut front = TestServer::start_edge(&nats, SECRET, edge_args);
        let second = TestServer::start_edge(&nats, SECRET, edge_args);
        front.edges = vec![front.ws.clone(), second.ws.clone()];
        behind.push(second);
        // Tests that read the development secret find the cluster's.
        let temp = tempfile::tempdir().expect("tempdir");
        std::fs::write(temp.path().join("dev-jwt-secret"), SECRET).expect("write secret");
        front.dir = temp.path().to_owned();
        front._temp = Some(temp);
        front.behind = behind;
        front.nats = Some(nats);
        front.keyspace = Some(KeyspaceGuard::new(&cql, &keyspace));
        front
    }

    /// Starts a cluster edge on free ports, with the edge role's NATS credentials (see
    /// `NatsBuilder::cluster_auth`; a server without authentication ignores them) and the
    /// cluster key of `nats` ([`cluster_key_file`]); `extra` may override both.
    pub fn start_edge(nats: &NatsServer, secret: &str, extra: &[&str]) -> TestServer {
        let (url, key) = (nats.url(), cluster_key_file(nats));
        let mut args = vec!["edge", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--nats", &url];
        args.extend_from_slice(&["--nats-user", EDGE_USER, "--nats-password", EDGE_PASSWORD]);
        // Test tokens carry no issuer or audience.
        args.extend_from_slice(&["--dev", "--cluster-key-file", &key, "--jwt-secret", secret]);
        args.extend_from_slice(extra);
        let mut s = TestServer::spawn(&args, None);
        s.secret = secret.to_owned();
        s
    }

    /// Starts a cluster router on a free admin port, with the router role's NATS credentials
    /// and the cluster key of `nats`.
    pub fn start_router(nats: &NatsServer, cql: &str, keyspace: &str) -> TestServer {
        TestServer::start_router_with(nats, cql, keyspace, &[])
    }

    /// [`start_router`](Self::start_router) with more flags (a later `--cluster-key-file`
    /// wins over the default one).
    pub fn start_router_with(nats: &NatsServer, cql: &str, keyspace: &str, extra: &[&str]) -> TestServer {
        let (url, key) = (nats.url(), cluster_key_file(nats));
        let mut args = vec!["router", "--admin-listen", "127.0.0.1:0", "--nats", &url, "--cql-nodes", cql];
        args.extend_from_slice(&["--cql-keyspace", keyspace, "--cluster-key-file", &key]);
        args.extend_from_slice(&["--nats-user", ROUTER_USER, "--nats-password", ROUTER_PASSWORD]);
        args.extend_from_slice(extra);
        TestServer::spawn(&args, None)
    }

    /// The HS256 secret tokens for this server are signed with.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Spawns `messenger ARGS`, reads the addresses it prints, waits until it is ready.
    pub fn spawn(args: &[&str], _env: Option<()>) -> TestServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger"));
        cmd.args(args)
            .args(["--log", &std::env::var("MESSENGER_TEST_LOG").unwrap_or_else(|_| "warn,scylla=off".into())])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn messenger");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("node did not print its addresses");
        let mut ws = String::new();
        let mut admin = String::new();
        for part in line.split_whitespace() {
            if let Some(v) = part.strip_prefix("ws=") {
                ws = v.to_owned();
            }
            if let Some(v) = part.strip_prefix("admin=") {
                admin = v.to_owned();
            }
        }
        assert!(!admin.is_empty(), "unexpected first line {line:?}");
        wait_ready(&admin);
        TestServer {
            child: Some(child),
            ws,
            admin,
            dir: PathBuf::new(),
            _temp: None,
            secret: String::new(),
            edges: Vec::new(),
            next_edge: std::sync::atomic::AtomicUsize::new(0),
            behind: Vec::new(),
            nats: None,
            keyspace: None,
            tls: None,
        }
    }

    /// Connects with `wss://` from now on, trusting what `tls` trusts.
    pub fn with_tls(mut self, tls: std::sync::Arc<rustls::ClientConfig>) -> TestServer {
        self.tls = Some(tls);
        self
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        testkit::mint_token(self.secret.as_bytes(), user, Duration::from_secs(3600))
    }

    /// Connects `user`, waits for hello, sends an empty resume.
    pub async fn connect(&self, user: &str, encoding: Encoding) -> Client {
        let ws = match self.edges.len() {
            0 => &self.ws,
            n => &self.edges[self.next_edge.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n],
        };
        match &self.tls {
            None => Client::connect(ws, &self.token(user), encoding).await.expect("connect"),
            Some(tls) => {
                Client::connect_tls(ws, &self.token(user), encoding, tls.clone()).await.expect("connect (wss)")
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = testkit::wait::try_wait_for(within, || child.try_wait().ok().flatten()).ok()?;
        self.child = None;
        Some(status)
    }

    /// GET on the admin port: (status code, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.admin).await.expect("admin connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (code, body)
    }
}

/// Runs `messenger ARGS` (a command, not a node) to its end: (exit code, stdout, stderr).
pub fn run_command(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_messenger")).args(args).output().expect("run messenger");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The cluster key of the nodes on `nats`: one random key, written beside the server's own
/// files on first use, so that it goes away with the server.
pub fn cluster_key_file(nats: &NatsServer) -> String {
    let path = nats.dir().join("cluster.key");
    if !path.exists() {
        std::fs::write(&path, format!("{}\n", random_key_hex())).expect("write the cluster key");
    }
    path.to_str().expect("utf-8 path").to_owned()
}

/// 32 random bytes in hex, as `openssl rand -hex 32` makes them.
pub fn random_key_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `/readyz` until it answers 200: the node prints its addresses when bound, and is
/// ready a moment later.
fn wait_ready(admin: &str) {
    use std::io::{Read, Write};
    testkit::wait_for(&format!("server at {admin} ready"), Duration::from_secs(30), || {
        let mut s = std::net::TcpStream::connect(admin).ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200").then_some(())
    });
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        // Edges and routers before NATS, so that none logs a lost server.
        self.behind.clear();
        self.nats = None;
        self.keyspace = None;
    }
}

/// The chat id from a `chat_created` reply.
pub fn created(f: &ServerFrame) -> ChatId {
    match f {
        ServerFrame::ChatCreated { chat, .. } => chat.chat,
        other => panic!("expected chat_created, got {other:?}"),
    }
}

/// (seq, duplicate) from an `ack`.
pub fn acked(f: &ServerFrame) -> (u64, bool) {
    match f {
        ServerFrame::Ack { seq, duplicate, .. } => (*seq, *duplicate),
        other => panic!("expected ack, got {other:?}"),
    }
}

/// The error code name of an `error` frame.
pub fn error_code(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Error { code, .. } => code.as_str(),
        other => panic!("expected error, got {other:?}"),
    }
}

/// Sequenced events of `chat` among `frames`, as (seq, frame).
pub fn events_of(frames: &[ServerFrame], chat: ChatId) -> Vec<protocol::Event> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Event { chat: c, event } if *c == chat => Some(event.clone()),
            _ => None,
        })
        .collect()
}
