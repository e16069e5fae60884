//! A real `messenger standalone` process on free ports, in a temporary data directory,
//! killed when dropped. Each test binary uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use client::Client;
use protocol::{ChatId, Encoding, ServerFrame};

pub use protocol::Encoding::{Bincode, Json};

pub const ENCODINGS: [Encoding; 2] = [Json, Bincode];

pub struct TestServer {
    child: Option<Child>,
    pub ws: String,
    pub admin: String,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    secret: String,
}

impl TestServer {
    /// Starts a server in a fresh data directory with extra flags.
    pub fn start(args: &[&str]) -> TestServer {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut s = TestServer::start_in(temp.path(), args);
        s._temp = Some(temp);
        s
    }

    /// Starts a server on an existing data directory (restarts).
    pub fn start_in(dir: &Path, args: &[&str]) -> TestServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_messenger"));
        cmd.args(["standalone", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(["--log", &std::env::var("MESSENGER_TEST_LOG").unwrap_or_else(|_| "warn".into())])
            .args(args)
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
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("server did not print its addresses");
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
        assert!(!ws.is_empty() && !admin.is_empty(), "unexpected first line {line:?}");
        let secret = std::fs::read_to_string(dir.join("dev-jwt-secret")).expect("dev secret").trim().to_owned();
        wait_ready(&admin);
        TestServer { child: Some(child), ws, admin, dir: dir.to_owned(), _temp: None, secret }
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        server::token::mint(self.secret.as_bytes(), user, Duration::from_secs(3600)).expect("mint")
    }

    /// Connects `user`, waits for hello, sends an empty resume.
    pub async fn connect(&self, user: &str, encoding: Encoding) -> Client {
        Client::connect(&self.ws, &self.token(user), encoding).await.expect("connect")
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
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// Polls `/readyz` until it answers 200: the node prints its addresses when bound, and is
/// ready a moment later.
fn wait_ready(admin: &str) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(admin) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server at {admin} never became ready");
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
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
