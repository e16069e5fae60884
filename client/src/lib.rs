//! A client of protocol v1, as the integration tests, the load generator and the benchmarks
//! use it. It is also the reference for anyone writing a client: connect with a subprotocol,
//! authenticate, `resume`, then send requests with fresh `req` ids and match replies.
//!
//! Frames that arrive while the caller waits for something else are kept, in order, and
//! returned by later calls, so a test can wait for a reply without losing events.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::codec::{SUBPROTOCOL_BINCODE, SUBPROTOCOL_JSON, decode_server, encode_client};
use protocol::frame::ResumeCursor;
use protocol::{ChatId, ChatKind, ClientFrame, Encoding, ServerFrame};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use tokio_tungstenite::tungstenite;

/// How long `recv` waits by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    #[error("timed out waiting for a frame")]
    Timeout,
    #[error("connection closed (code {code:?}, reason {reason:?})")]
    Closed { code: Option<u16>, reason: String },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("unexpected frame: {0:?}")]
    Unexpected(Box<ServerFrame>),
}

/// How to present the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenIn {
    /// `?token=` query parameter (browsers).
    Query,
    /// `Authorization: Bearer` header.
    Header,
    /// An `auth` frame after the upgrade.
    Frame,
}

/// The bytes under a client's WebSocket: TCP, or TLS over TCP (`wss://`).
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

type Stream = WebSocketStream<Box<dyn Transport>>;

/// The URL of a WebSocket to `addr` (host:port) with the token in the query or not.
fn url(scheme: &str, addr: &str, token: Option<&str>, how: TokenIn) -> String {
    match (token, how) {
        (Some(t), TokenIn::Query) => format!("{scheme}://{addr}/?token={t}"),
        _ => format!("{scheme}://{addr}/"),
    }
}

/// Connects TCP to `addr` and, with `tls`, runs the TLS handshake, naming the server by the
/// host part of `addr` (an IP address or a DNS name).
async fn transport(addr: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Box<dyn Transport>, ClientError> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| ClientError::Ws(e.into()))?;
    let Some(config) = tls else { return Ok(Box::new(tcp)) };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Decode(format!("server name {host:?}: {e}")))?;
    let tls =
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| ClientError::Ws(e.into()))?;
    Ok(Box::new(tls))
}

/// A connected client.
pub struct Client {
    ws: Stream,
    pub encoding: Encoding,
    next_req: u64,
    stash: VecDeque<ServerFrame>,
    /// The close code and reason, once the server closed.
    pub closed: Option<(Option<u16>, String)>,
}

impl Client {
    /// Opens a WebSocket to `addr` (host:port) and upgrades with the encoding's subprotocol;
    /// does not wait for `hello`.
    pub async fn open(
        addr: &str,
        token: Option<&str>,
        how: TokenIn,
        encoding: Encoding,
    ) -> Result<Client, ClientError> {
        let stream = transport(addr, None).await?;
        Self::upgrade(stream, url("ws", addr, token, how), token, how, encoding).await
    }

    /// Like [`Client::open`] over TLS (`wss://`), trusting what `tls` trusts.
    pub async fn open_tls(
        addr: &str,
        token: Option<&str>,
        how: TokenIn,
        encoding: Encoding,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        let stream = transport(addr, Some(tls)).await?;
        Self::upgrade(stream, url("wss", addr, token, how), token, how, encoding).await
    }

    async fn upgrade(
        stream: Box<dyn Transport>,
        url: String,
        token: Option<&str>,
        how: TokenIn,
        encoding: Encoding,
    ) -> Result<Client, ClientError> {
        let mut request = url.into_client_request()?;
        let proto = match encoding {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::Bincode => SUBPROTOCOL_BINCODE,
        };
        request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(proto));
        if let (Some(t), TokenIn::Header) = (token, how) {
            let value =
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|e| ClientError::Decode(e.to_string()))?;
            request.headers_mut().insert("authorization", value);
        }
        let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
        let mut client = Client { ws, encoding, next_req: 1, stash: VecDeque::new(), closed: None };
        if let (Some(t), TokenIn::Frame) = (token, how) {
            client.send(&ClientFrame::Auth { token: t.to_owned() }).await?;
        }
        Ok(client)
    }

    /// Upgrades an already connected TCP stream (tests use this to shrink socket buffers),
    /// presenting the token in the query.
    pub async fn open_on(
        stream: TcpStream,
        addr: &str,
        token: &str,
        encoding: Encoding,
    ) -> Result<Client, ClientError> {
        Self::open_on_with(stream, addr, token, encoding, None).await
    }

    /// Like [`Client::open_on`] with WebSocket buffer sizes of the caller's choosing (the load
    /// generator holds thousands of clients per process and shrinks tungstenite's 128 KiB
    /// default read buffer).
    pub async fn open_on_with(
        stream: TcpStream,
        addr: &str,
        token: &str,
        encoding: Encoding,
        config: Option<WebSocketConfig>,
    ) -> Result<Client, ClientError> {
        let mut request = format!("ws://{addr}/?token={token}").into_client_request()?;
        let proto = match encoding {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::Bincode => SUBPROTOCOL_BINCODE,
        };
        request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(proto));
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, Box::new(stream) as Box<dyn Transport>, config)
                .await?;
        Ok(Client { ws, encoding, next_req: 1, stash: VecDeque::new(), closed: None })
    }

    /// Opens, authenticates, waits for `hello`, and sends an empty `resume` so that live
    /// events start flowing: the usual start of a session without stored cursors.
    pub async fn connect(addr: &str, token: &str, encoding: Encoding) -> Result<Client, ClientError> {
        Self::connect_resuming(addr, token, encoding, Vec::new()).await.map(|(c, _)| c)
    }

    /// Like [`Client::connect`] but resumes the given cursors; returns the frames received
    /// up to and including every `resumed`.
    pub async fn connect_resuming(
        addr: &str,
        token: &str,
        encoding: Encoding,
        cursors: Vec<ResumeCursor>,
    ) -> Result<(Client, Vec<ServerFrame>), ClientError> {
        let c = Client::open(addr, Some(token), TokenIn::Query, encoding).await?;
        c.started(cursors).await
    }

    /// Like [`Client::connect`] over TLS (`wss://`), trusting what `tls` trusts.
    pub async fn connect_tls(
        addr: &str,
        token: &str,
        encoding: Encoding,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        let c = Client::open_tls(addr, Some(token), TokenIn::Query, encoding, tls).await?;
        c.started(Vec::new()).await.map(|(c, _)| c)
    }

    /// Waits for `hello` and resumes `cursors`.
    async fn started(mut self, cursors: Vec<ResumeCursor>) -> Result<(Client, Vec<ServerFrame>), ClientError> {
        match self.recv().await? {
            ServerFrame::Hello { .. } => {}
            other => return Err(ClientError::Unexpected(Box::new(other))),
        }
        let frames = self.resume(cursors).await?;
        Ok((self, frames))
    }

    /// Sends `resume` and collects frames until its closing `ok` (after a `resumed` or an
    /// `error` per chat). Returns every frame received meanwhile, the `ok` excluded.
    pub async fn resume(&mut self, cursors: Vec<ResumeCursor>) -> Result<Vec<ServerFrame>, ClientError> {
        let req = self.req();
        self.send(&ClientFrame::Resume { req, chats: cursors }).await?;
        let mut out = Vec::new();
        loop {
            let f = self.recv_raw(DEFAULT_WAIT).await?;
            if matches!(f, ServerFrame::Ok { req: r } if r == req) {
                return Ok(out);
            }
            out.push(f);
        }
    }

    /// A fresh request id.
    pub fn req(&mut self) -> u64 {
        let r = self.next_req;
        self.next_req += 1;
        r
    }

    /// Sends a frame in this connection's encoding.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = encode_client(self.encoding, frame);
        let msg = match self.encoding {
            Encoding::Json => {
                Message::Text(tungstenite::Utf8Bytes::try_from(bytes).map_err(|e| ClientError::Decode(e.to_string()))?)
            }
            Encoding::Bincode => Message::Binary(bytes),
        };
        self.ws.send(msg).await?;
        Ok(())
    }

    /// Sends a raw WebSocket message (for abuse tests).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.ws.send(msg).await?;
        Ok(())
    }

    async fn recv_raw(&mut self, wait: Duration) -> Result<ServerFrame, ClientError> {
        if let Some(f) = self.stash.pop_front() {
            return Ok(f);
        }
        loop {
            let msg = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(None) => return Err(self.closed_error()),
                Ok(Some(Err(e))) => {
                    if self.closed.is_some() {
                        return Err(self.closed_error());
                    }
                    return Err(e.into());
                }
                Ok(Some(Ok(m))) => m,
            };
            let frame = match &msg {
                Message::Text(t) => decode_server(Encoding::Json, t.as_bytes()),
                Message::Binary(b) => decode_server(Encoding::Bincode, b),
                Message::Close(c) => {
                    self.closed = Some((
                        c.as_ref().map(|c| u16::from(c.code)),
                        c.as_ref().map(|c| c.reason.to_string()).unwrap_or_default(),
                    ));
                    continue;
                }
                _ => continue,
            };
            return frame.map_err(|e| ClientError::Decode(e.to_string()));
        }
    }

    fn closed_error(&self) -> ClientError {
        match &self.closed {
            Some((code, reason)) => ClientError::Closed { code: *code, reason: reason.clone() },
            None => ClientError::Closed { code: None, reason: String::new() },
        }
    }

    /// The next frame (stashed ones first), waiting up to [`DEFAULT_WAIT`].
    pub async fn recv(&mut self) -> Result<ServerFrame, ClientError> {
        self.recv_raw(DEFAULT_WAIT).await
    }

    /// The next frame, waiting up to `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<ServerFrame, ClientError> {
        self.recv_raw(wait).await
    }

    /// Waits for the first frame matching `pred`; frames before it are kept for later.
    pub async fn wait_for(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> Result<ServerFrame, ClientError> {
        let mut skipped = VecDeque::new();
        // Look through the stash first.
        while let Some(f) = self.stash.pop_front() {
            if pred(&f) {
                self.stash = skipped.into_iter().chain(self.stash.drain(..)).collect();
                return Ok(f);
            }
            skipped.push_back(f);
        }
        loop {
            let f = match self.recv_raw(DEFAULT_WAIT).await {
                Ok(f) => f,
                Err(e) => {
                    self.stash = skipped;
                    return Err(e);
                }
            };
            if pred(&f) {
                self.stash = skipped;
                return Ok(f);
            }
            skipped.push_back(f);
        }
    }

    /// Sends a request built from a fresh req id and waits for the frame answering it.
    pub async fn request(&mut self, build: impl FnOnce(u64) -> ClientFrame) -> Result<ServerFrame, ClientError> {
        let req = self.req();
        self.send(&build(req)).await?;
        self.wait_for(|f| reply_req(f) == Some(req)).await
    }

    /// Takes every frame already received or arriving within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<ServerFrame> {
        let mut out: Vec<ServerFrame> = self.stash.drain(..).collect();
        while let Ok(f) = self.recv_raw(wait).await {
            out.push(f);
        }
        out
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed_code(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((code, _)) = &self.closed {
                return *code;
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return self.closed.as_ref().and_then(|c| c.0),
                Ok(Some(Ok(Message::Close(c)))) => {
                    self.closed = Some((c.as_ref().map(|c| u16::from(c.code)), String::new()));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Closes normally.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    // Convenience requests.

    pub async fn create_chat(
        &mut self,
        kind: ChatKind,
        title: &str,
        members: &[&str],
    ) -> Result<ServerFrame, ClientError> {
        let members = members.iter().map(|s| s.to_string()).collect();
        let title = title.to_owned();
        self.request(|req| ClientFrame::CreateChat { req, kind, title, members }).await
    }

    /// Every event of `chat` after seq `after`, reading history page by page (200 a page).
    pub async fn history_after(&mut self, chat: ChatId, mut after: u64) -> Result<Vec<protocol::Event>, ClientError> {
        let mut events = Vec::new();
        loop {
            let reply = self.request(|req| ClientFrame::History {
                req,
                chat,
                before: None,
                after: Some(after),
                limit: Some(200),
            });
            match reply.await? {
                ServerFrame::History { events: page, more, .. } => {
                    after = page.last().map(|e| e.seq).unwrap_or(after);
                    events.extend(page);
                    if !more {
                        return Ok(events);
                    }
                }
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
        }
    }

    pub async fn send_message(
        &mut self,
        chat: ChatId,
        client_msg_id: &str,
        body: &str,
    ) -> Result<ServerFrame, ClientError> {
        let (client_msg_id, body) = (client_msg_id.to_owned(), body.to_owned());
        self.request(|req| ClientFrame::Send { req, chat, client_msg_id, body }).await
    }
}

/// The `req` a reply frame answers, if it is a reply.
pub fn reply_req(f: &ServerFrame) -> Option<u64> {
    match f {
        ServerFrame::Pong { req }
        | ServerFrame::Ack { req, .. }
        | ServerFrame::ChatCreated { req, .. }
        | ServerFrame::Chats { req, .. }
        | ServerFrame::History { req, .. }
        | ServerFrame::Resumed { req, .. }
        | ServerFrame::Ok { req } => Some(*req),
        ServerFrame::Error { req, .. } => *req,
        _ => None,
    }
}

/// Cursor helper.
pub fn cursor(chat: ChatId, last_seq: u64) -> ResumeCursor {
    ResumeCursor { chat, last_seq }
}
