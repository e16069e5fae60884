//! The operator's HTTP port: `/metrics` (Prometheus text), `/healthz` (the process is up),
//! `/readyz` (ready for new clients; false while starting and draining).
//!
//! A deliberately tiny HTTP/1.1 responder: one request per connection, head bounded in size
//! and time, no body. Keep this port off the public network.

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
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves admin requests until `shutdown`.
pub async fn serve(listener: TcpListener, health: Health, render: Render, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (health, render) = (health.clone(), render.clone());
        tracker.spawn(async move {
            let _ = tokio::time::timeout(HEAD_TIMEOUT, answer(stream, health, render)).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn answer(mut stream: TcpStream, health: Health, render: Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD_BYTES {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "too large\n").await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &render()).await,
        ("GET", "/healthz") => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        ("GET", "/readyz") if health.is_ready() => respond(&mut stream, "200 OK", "text/plain", "ready\n").await,
        ("GET", "/readyz") => respond(&mut stream, "503 Service Unavailable", "text/plain", "not ready\n").await,
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await,
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
