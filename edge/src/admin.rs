//! The operator's HTTP port: `/metrics` (Prometheus text), `/healthz` (the process is up),
//! `/readyz` (ready for new clients; false while starting and draining), and, on nodes that
//! hold a store and with an admin token configured, `/v1/revocations` ([`Control`]).
//!
//! A deliberately tiny HTTP/1.1 responder: one request per connection, head and body bounded
//! in size and time. Keep this port off the public network: the token guards the writes, but
//! metrics are open.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Health;

/// Renders the metrics exposition.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Largest request head read.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request (head and body), and for a control call to answer.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body read (a revocation is a few hundred bytes).
const MAX_BODY_BYTES: usize = 4 * 1024;
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// What the operator's write endpoints do. A node that holds a store (a router, a standalone
/// node) provides it; answers are `(HTTP status, JSON body)`.
#[async_trait::async_trait]
pub trait Control: Send + Sync + 'static {
    /// `POST /v1/revocations` with its JSON body; `actor` names the caller for the audit
    /// trail.
    async fn revoke(&self, body: &[u8], actor: &str) -> (u16, String);
    /// `GET /v1/revocations`: every revocation in force.
    async fn revocations(&self) -> (u16, String);
}

/// The write endpoints and the bearer token that guards them.
pub struct Operator {
    token: Vec<u8>,
    control: Arc<dyn Control>,
}

impl Operator {
    /// `None` if `token` is shorter than [`MIN_ADMIN_TOKEN_BYTES`].
    pub fn new(token: Vec<u8>, control: Arc<dyn Control>) -> Option<Self> {
        (token.len() >= MIN_ADMIN_TOKEN_BYTES).then_some(Operator { token, control })
    }

    /// Compares in time independent of where the first difference is (as the bus MAC does).
    fn admits(&self, presented: &[u8]) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(presented, self.token.as_slice()))
    }
}

/// Serves admin requests until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    render: Render,
    operator: Option<Arc<Operator>>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (health, render, operator) = (health.clone(), render.clone(), operator.clone());
        tracker.spawn(async move {
            let request = Request { health, render, operator, peer };
            let _ = tokio::time::timeout(HEAD_TIMEOUT, answer(stream, request)).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

struct Request {
    health: Health,
    render: Render,
    operator: Option<Arc<Operator>>,
    peer: std::net::SocketAddr,
}

async fn answer(mut stream: TcpStream, request: Request) -> std::io::Result<()> {
    let Request { health, render, operator, peer } = request;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD_BYTES {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "too large\n").await;
        }
    };
    let mut body = head.split_off(end);
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &render()).await,
        ("GET", "/healthz") => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        ("GET", "/readyz") if health.is_ready() => respond(&mut stream, "200 OK", "text/plain", "ready\n").await,
        ("GET", "/readyz") => respond(&mut stream, "503 Service Unavailable", "text/plain", "not ready\n").await,
        (_, "/v1/revocations") => {
            let Some(operator) = operator else {
                return respond(&mut stream, "404 Not Found", "text/plain", "no admin token configured here\n").await;
            };
            let authorization = header("authorization");
            let presented = authorization.as_deref().and_then(crate::handshake::bearer_token);
            if !presented.is_some_and(|t| operator.admits(t.as_bytes())) {
                metrics::counter!("admin_requests_total", "result" => "unauthorized").increment(1);
                tracing::warn!(%peer, "admin request with a missing or wrong token");
                return respond(&mut stream, "401 Unauthorized", "application/json", "{\"error\":\"unauthorized\"}\n")
                    .await;
            }
            let (status, json) = match method {
                "GET" => operator.control.revocations().await,
                "POST" => {
                    let length = match header("content-length").map(|v| v.parse::<usize>()) {
                        Some(Ok(n)) if n <= MAX_BODY_BYTES => n,
                        _ => {
                            let why = "a content-length of at most 4 KiB is required\n";
                            return respond(&mut stream, "413 Content Too Large", "text/plain", why).await;
                        }
                    };
                    while body.len() < length {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 {
                            return Ok(());
                        }
                        body.extend_from_slice(&buf[..n]);
                    }
                    body.truncate(length);
                    operator.control.revoke(&body, &format!("admin@{}", peer.ip())).await
                }
                _ => return respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET or POST\n").await,
            };
            metrics::counter!("admin_requests_total", "result" => status.to_string()).increment(1);
            respond(&mut stream, status_line(status), "application/json", &json).await
        }
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await,
    }
}

fn status_line(status: u16) -> &'static str {
    match status {
        200 => "200 OK",
        400 => "400 Bad Request",
        503 => "503 Service Unavailable",
        _ => "500 Internal Server Error",
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
