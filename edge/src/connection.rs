//! One client connection's task: after the handshake ([`crate::handshake`]), a loop that
//! reads frames, runs requests, and writes what the hub queued. What to do with each frame
//! and what to write is decided by the connection's [`Session`]; this file is the socket
//! glue around it.
//!
//! A connection is one task. While idle it holds its WebSocket (with a small read buffer),
//! an outbox handle and a few words of state; everything bigger is allocated on use and
//! freed after.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use protocol::codec::{CodecError, decode_client, encode_server, encode_server_json};
use protocol::envelope::{RouterOp, RouterReply};
use protocol::limits::MAX_HISTORY_PAGE;
use protocol::ratelimit::Verdict;
use protocol::{ClientFrame, CloseCode, Encoding, ErrorCode, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::Services;
use crate::handshake::{AuthFailure, Upgrade, UserTicket, Ws, authenticate, upgrade};
use crate::hub::{ConnHandle, ConnId, TokenHeld};
use crate::outbox::{Outbox, Outgoing, Status};
use crate::revocation;
use crate::session::{Action, Holding, Session, TokenClock, TokenStep, action, reply_frame};
use audit::Event;

type Pending = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Frames moved from the outbox per write; the rest wait for the next turn of the loop so
/// reads are not starved.
const WRITE_BATCH: usize = 256;

/// Recorded once per delivered event per connection: the hottest metric of the edge, so the
/// handle is looked up in the recorder once per process rather than on every record. (The
/// recorder is installed before any connection exists.)
static DELIVERY_SECONDS: std::sync::LazyLock<metrics::Histogram> =
    std::sync::LazyLock::new(|| metrics::histogram!("edge_delivery_seconds"));

/// How long a draining connection waits for replies to requests already in flight.
const DRAIN_REPLY_GRACE: Duration = Duration::from_secs(3);

/// How long a closing handshake may take before the socket is dropped. Generous, because a
/// slow consumer's close frame waits behind everything already in its socket buffer, and
/// the client should see 4009 to know it must resume. The memory held meanwhile is bounded.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn close_frame(code: CloseCode) -> CloseFrame {
    CloseFrame { code: WsCloseCode::from(code.code()), reason: code.reason().into() }
}

pub(crate) fn encode(encoding: Encoding, frame: &ServerFrame) -> Message {
    metrics::counter!("edge_frames_out_total", "type" => frame.kind()).increment(1);
    if let ServerFrame::Error { code, .. } = frame {
        metrics::counter!("edge_errors_total", "code" => code.as_str()).increment(1);
    }
    match encoding {
        Encoding::Json => Message::Text(encode_server_json(frame).into()),
        Encoding::Bincode => Message::Binary(encode_server(Encoding::Bincode, frame)),
    }
}

/// Sends a close frame and gives the peer a moment to answer, then drops the socket.
async fn close(ws: &mut Ws, code: CloseCode) {
    metrics::counter!("edge_closes_total", "reason" => code.reason()).increment(1);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.close(Some(close_frame(code))).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Serves one accepted TCP connection to its end.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    shared: Arc<Services>,
    draining: CancellationToken,
    force: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + shared.config.auth_timeout;
    // The handshake and the authentication run boxed: a task's allocation is as large as the
    // largest state of its future, for the whole life of the connection, and the handshake's
    // state machine is the largest. Boxed, it is freed once the connection is up.
    let Some((mut ws, upgrade)) = Box::pin(upgrade(stream, peer, &shared, deadline)).await else { return };
    let client = upgrade.client(peer);
    // Only the admission ticket lives on with the connection; the token's bytes do not.
    let Upgrade { encoding, token, admitted: _admitted } = upgrade;
    let encoding = encoding.unwrap_or(Encoding::Json);
    if draining.is_cancelled() {
        close(&mut ws, CloseCode::GoingAway).await;
        return;
    }
    let audit = &shared.audit;
    let (user, token_exp, held) =
        match Box::pin(authenticate(&mut ws, &shared, encoding, token, deadline, now_secs)).await {
            Ok(verified) => {
                // No session without its audit record.
                if let Err(err) = audit_auth(audit, peer.ip(), client, Ok(&verified)) {
                    tracing::error!(error = %err, "refusing a connection that could not be audited");
                    close(&mut ws, CloseCode::InternalError).await;
                    return;
                }
                let held = TokenHeld {
                    jti: verified.jti.as_deref().map(Arc::from),
                    issued: revocation::issued(&shared, verified.iat, verified.exp),
                };
                (verified.user, verified.exp, held)
            }
            Err(failure) => {
                let _ = audit_auth(audit, peer.ip(), client, Err(failure));
                close(&mut ws, failure.code).await;
                return;
            }
        };
    let user_id: Arc<str> = Arc::from(user.as_str());
    let _device = match UserTicket::take(&shared, &user_id) {
        Ok(ticket) => ticket,
        Err(code) => {
            audit_close(audit, client, Some(&user), code);
            close(&mut ws, code).await;
            return;
        }
    };
    let outbox = Arc::new(Outbox::new());
    let (jti, issued) = (held.jti.clone(), held.issued);
    let handle = ConnHandle { user: user_id.clone(), encoding, outbox: outbox.clone(), token: held };
    let attached = shared.hub.attach(id, handle).await;
    // A revocation that arrived between the check at authentication and the attach did not
    // see this connection: check again now that it is registered.
    if revocation::revoked(&shared, &user, jti.as_deref(), Some(issued), token_exp) {
        shared.hub.detach(id).await;
        audit_close(audit, client, Some(&user), CloseCode::TokenRevoked);
        close(&mut ws, CloseCode::TokenRevoked).await;
        return;
    }
    if let Err(err) = attached {
        // Without its subscriptions the connection would silently miss live events: close it
        // (1011) so the client reconnects and resumes.
        tracing::warn!(error = %err, "closing a connection that could not be registered");
        shared.hub.detach(id).await;
        close(&mut ws, CloseCode::InternalError).await;
        return;
    }
    if draining.is_cancelled() {
        // Authenticated while the drain was already handing out goaways: leave now.
        shared.hub.detach(id).await;
        let frame = ServerFrame::GoAway {
            reconnect_after_ms: shared.config.reconnect_after.as_millis() as u64,
            reason: "draining".into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, ws.send(encode(encoding, &frame))).await;
        close(&mut ws, CloseCode::GoingAway).await;
        return;
    }
    metrics::gauge!("edge_connections").increment(1.0);
    tracing::debug!(user = %user, conn = id, encoding = encoding.as_str(), "connection authenticated");
    let mut conn = Connection {
        id,
        ws,
        shared: shared.clone(),
        user,
        encoding,
        outbox,
        session: Session::new(shared.config.flood, shared.config.outbound_queue_bytes, Instant::now()),
        token: TokenClock::new(token_exp, shared.config.token_warning.as_secs(), shared.auth.leeway()),
        token_changed: false,
        peer: peer.ip(),
        client,
        pending: FuturesUnordered::new(),
    };
    let code = conn.run(force).await;
    shared.hub.detach(id).await;
    conn.outbox.close();
    metrics::gauge!("edge_connections").decrement(1.0);
    tracing::debug!(conn = id, reason = code.reason(), "connection closed");
    if for_cause(code) {
        audit_close(audit, client, Some(&conn.user), code);
    }
    if code != CloseCode::Normal {
        close(&mut conn.ws, code).await;
    }
}

struct Connection {
    id: ConnId,
    ws: Ws,
    shared: Arc<Services>,
    user: String,
    encoding: Encoding,
    outbox: Arc<Outbox>,
    session: Session,
    /// When the token runs out; a fresh `auth` moves it.
    token: TokenClock,
    /// A refresh moved the token's clock: the loop re-arms its timer.
    token_changed: bool,
    /// Where the connection comes from, for the audit trail.
    peer: std::net::IpAddr,
    client: std::net::IpAddr,
    pending: FuturesUnordered<Pending>,
}

enum Step {
    Continue,
    Close(CloseCode),
}

impl Connection {
    async fn run(&mut self, force: CancellationToken) -> CloseCode {
        let hello = ServerFrame::Hello {
            user: self.user.clone(),
            protocol: 1,
            heartbeat_ms: (self.shared.config.idle_timeout / 2).as_millis() as u64,
            max_frame_bytes: self.shared.config.max_frame_bytes as u64,
        };
        if let Err(code) = self.write(vec![encode(self.encoding, &hello)]).await {
            return code;
        }
        let idle = self.shared.config.idle_timeout;
        // One timer serves both the idle deadline and the token's clock (a timer costs memory
        // on every idle connection). The token is looked at once at the start: one that
        // expires within the warning period is warned about right after `hello`.
        let mut idle_at = tokio::time::Instant::now() + idle;
        let mut token_at = tokio::time::Instant::now();
        let timer = tokio::time::sleep_until(idle_at.min(token_at));
        tokio::pin!(timer);
        let mut batch = Vec::new();
        loop {
            if std::mem::take(&mut self.token_changed) {
                token_at = tokio::time::Instant::now();
                timer.as_mut().reset(idle_at.min(token_at));
            }
            let can_read = self.pending.len() < self.shared.config.max_inflight_requests;
            let step = tokio::select! {
                biased;
                _ = force.cancelled() => Step::Close(CloseCode::GoingAway),
                _ = self.outbox.ready() => self.flush_outbox(&mut batch).await,
                Some(frame) = self.pending.next(), if !self.pending.is_empty() => {
                    let msg = encode(self.encoding, &frame);
                    self.push_reply(msg)
                }
                msg = self.ws.next(), if can_read => match msg {
                    None => Step::Close(CloseCode::Normal),
                    Some(Err(err)) => Step::Close(read_error(&err)),
                    Some(Ok(msg)) => {
                        idle_at = tokio::time::Instant::now() + idle;
                        timer.as_mut().reset(idle_at.min(token_at));
                        self.on_message(msg).await
                    }
                },
                _ = &mut timer => {
                    if tokio::time::Instant::now() >= idle_at {
                        Step::Close(CloseCode::IdleTimeout)
                    } else {
                        let now = now_secs();
                        let at = |secs: u64| tokio::time::Instant::now() + Duration::from_secs(secs.saturating_sub(now).max(1));
                        let step = match self.token.step(now) {
                            TokenStep::Expire => Step::Close(CloseCode::TokenExpired),
                            TokenStep::WaitUntil(next) => {
                                token_at = at(next);
                                Step::Continue
                            }
                            TokenStep::Warn { exp, next } => {
                                token_at = at(next);
                                self.push_reply(encode(self.encoding, &ServerFrame::TokenExpiring { exp }))
                            }
                        };
                        timer.as_mut().reset(idle_at.min(token_at));
                        step
                    }
                }
            };
            if let Step::Close(code) = step {
                return code;
            }
        }
    }

    fn push_reply(&self, message: Message) -> Step {
        let out = Outgoing { chat: 0, seq: 0, message, queued: Instant::now() };
        match self.outbox.push(out, false, self.shared.config.outbound_queue_bytes) {
            crate::outbox::Pushed::Overflow => Step::Close(CloseCode::SlowConsumer),
            _ => Step::Continue,
        }
    }

    /// Writes what the hub queued. While the write waits on a slow socket, an overflow of the
    /// queue still ends the connection.
    async fn flush_outbox(&mut self, batch: &mut Vec<Outgoing>) -> Step {
        batch.clear();
        let max = if self.outbox.status() == Status::GoAway { usize::MAX } else { WRITE_BATCH };
        match self.outbox.drain_into(batch, max) {
            Status::Overflowed => return Step::Close(CloseCode::SlowConsumer),
            // Rare and large (boxed for the same reason as the handshake).
            Status::GoAway => return Box::pin(self.leave(batch)).await,
            Status::Revoked => return Step::Close(CloseCode::TokenRevoked),
            Status::Open => {}
        }
        let mut to_write = Vec::with_capacity(batch.len());
        for item in batch.drain(..) {
            match self.session.hold(item) {
                Holding::Held => {}
                Holding::Overflow => return Step::Close(CloseCode::SlowConsumer),
                Holding::Write(item) => to_write.extend(self.admit(item)),
            }
        }
        let outbox = self.outbox.clone();
        let deadline = tokio::time::sleep(self.shared.config.write_timeout);
        tokio::pin!(deadline);
        let write = write_all(&mut self.ws, to_write);
        tokio::pin!(write);
        let result = loop {
            tokio::select! {
                r = &mut write => break r,
                _ = outbox.ready() => match outbox.status() {
                    Status::Overflowed => return Step::Close(CloseCode::SlowConsumer),
                    Status::Revoked => return Step::Close(CloseCode::TokenRevoked),
                    _ => {}
                },
                _ = &mut deadline => return Step::Close(stalled()),
            }
        };
        if result.is_err() {
            return Step::Close(CloseCode::Normal);
        }
        if self.outbox.has_pending() || self.outbox.status() != Status::Open {
            // More than one batch was waiting, or frames arrived while we wrote: take another
            // turn through the loop (so reads interleave) rather than wait for a new push.
            self.outbox.wake();
        }
        Step::Continue
    }

    /// Applies the per-chat high-water mark to a frame about to be written: sequenced events
    /// at or below what this connection already got are dropped.
    fn admit(&mut self, item: Outgoing) -> Option<Message> {
        if !self.session.admit(item.chat, item.seq) {
            return None;
        }
        if item.seq != 0 {
            DELIVERY_SECONDS.record(item.queued.elapsed().as_secs_f64());
        }
        Some(item.message)
    }

    /// Drain: write what is already queued and the replies to requests in flight (within
    /// [`DRAIN_REPLY_GRACE`]), so that no ack is lost, then `goaway` and close with 1001.
    async fn leave(&mut self, batch: &mut Vec<Outgoing>) -> Step {
        let encoding = self.encoding;
        // Events held for a client that never resumed stay unsent: it resumes elsewhere.
        let holding = self.session.holding();
        let items: Vec<Outgoing> = batch.drain(..).filter(|o| !holding || o.seq == 0).collect();
        let queued: Vec<Message> = items.into_iter().filter_map(|o| self.admit(o)).collect();
        let _ = tokio::time::timeout(CLOSE_GRACE, write_all(&mut self.ws, queued)).await;
        let replies = async {
            let mut out = Vec::new();
            while let Some(frame) = self.pending.next().await {
                out.push(encode(encoding, &frame));
            }
            out
        };
        if let Ok(replies) = tokio::time::timeout(DRAIN_REPLY_GRACE, replies).await {
            let _ = tokio::time::timeout(CLOSE_GRACE, write_all(&mut self.ws, replies)).await;
        }
        let frame = ServerFrame::GoAway {
            reconnect_after_ms: self.shared.config.reconnect_after.as_millis() as u64,
            reason: "draining".into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.send(encode(self.encoding, &frame))).await;
        Step::Close(CloseCode::GoingAway)
    }

    async fn send_now(&mut self, frame: &ServerFrame) -> Result<(), CloseCode> {
        let message = encode(self.encoding, frame);
        self.write(vec![message]).await
    }

    /// Writes `messages` within the write deadline. A peer that stops reading cannot hold
    /// the task, its buffers and its socket past [`crate::EdgeConfig::write_timeout`].
    async fn write(&mut self, messages: Vec<Message>) -> Result<(), CloseCode> {
        match tokio::time::timeout(self.shared.config.write_timeout, write_all(&mut self.ws, messages)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(CloseCode::Normal),
            Err(_) => Err(stalled()),
        }
    }

    async fn on_message(&mut self, msg: Message) -> Step {
        let bytes = match (&msg, self.encoding) {
            (Message::Text(t), Encoding::Json) => t.as_bytes(),
            (Message::Binary(b), Encoding::Bincode) => &b[..],
            (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => return Step::Continue,
            (Message::Close(_), _) => return Step::Close(CloseCode::Normal),
            _ => return Step::Close(CloseCode::ProtocolError),
        };
        let frame = decode_client(self.encoding, bytes);
        let ephemeral = matches!(&frame, Ok(f) if f.is_ephemeral());
        match self.session.check_rate(ephemeral, Instant::now()) {
            Verdict::Allow => {}
            Verdict::Reject => {
                let req = frame.as_ref().ok().and_then(ClientFrame::req);
                let err = ServerFrame::error(req, ErrorCode::RateLimited, "slow down");
                return self.push_reply(encode(self.encoding, &err));
            }
            Verdict::Close => return Step::Close(CloseCode::RateLimited),
        }
        let frame = match frame {
            Ok(f) => f,
            Err(err) => {
                let (code, message) = match err {
                    CodecError::UnknownOp(op) => (ErrorCode::UnknownOp, format!("unknown operation {op}")),
                    other => (ErrorCode::BadFrame, other.to_string()),
                };
                metrics::counter!("edge_frames_in_total", "type" => "invalid").increment(1);
                return self.push_reply(encode(self.encoding, &ServerFrame::error(None, code, message)));
            }
        };
        metrics::counter!("edge_frames_in_total", "type" => frame.op()).increment(1);
        self.on_frame(frame).await
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Step {
        let router = self.shared.router.clone();
        match action(frame) {
            Action::Reply(frame) => self.push_reply(encode(self.encoding, &frame)),
            Action::Tell(op) => {
                router.tell(&self.user, op).await;
                Step::Continue
            }
            // Once per connection, and its state is large: boxed, like the handshake.
            Action::Resume { req, chats } => Box::pin(self.resume(req, chats)).await,
            Action::Refresh { token } => {
                let (peer, client) = (self.peer, self.client);
                let audited = |sub: Option<&str>, jti: Option<&str>, result: &str| {
                    self.shared.audit.record(&Event::Auth { peer, client, sub, jti, refresh: true, result })
                };
                let frame = match self.shared.auth.verify(&token, now_secs()) {
                    Ok(v) if revocation::revoked(&self.shared, &v.user, v.jti.as_deref(), v.iat, v.exp) => {
                        metrics::counter!("edge_auth_total", "result" => "revoked").increment(1);
                        let _ = audited(Some(&v.user), v.jti.as_deref(), "revoked");
                        ServerFrame::error(None, ErrorCode::Unauthenticated, "token refused: revoked")
                    }
                    Ok(v) if v.user == self.user => match audited(Some(&v.user), v.jti.as_deref(), "ok") {
                        Ok(()) => {
                            metrics::counter!("edge_auth_total", "result" => "refreshed").increment(1);
                            self.token_changed = true;
                            let held = TokenHeld {
                                jti: v.jti.as_deref().map(Arc::from),
                                issued: revocation::issued(&self.shared, v.iat, v.exp),
                            };
                            self.shared.hub.retoken(self.id, held);
                            ServerFrame::TokenRefreshed { exp: self.token.refresh(v.exp) }
                        }
                        Err(_) => ServerFrame::error(None, ErrorCode::Unavailable, "refresh not recorded; retry"),
                    },
                    Ok(v) => {
                        metrics::counter!("edge_auth_total", "result" => "other_user").increment(1);
                        let _ = audited(Some(&v.user), v.jti.as_deref(), "other_user");
                        ServerFrame::error(None, ErrorCode::Forbidden, "the token is for another user")
                    }
                    Err(err) => {
                        metrics::counter!("edge_auth_total", "result" => err.label()).increment(1);
                        let _ = audited(None, None, err.label());
                        ServerFrame::error(None, ErrorCode::Unauthenticated, format!("token refused: {err}"))
                    }
                };
                self.push_reply(encode(self.encoding, &frame))
            }
            Action::Call { req, op } => {
                let (user, timeout, chat) = (self.user.clone(), self.shared.config.request_timeout, op.chat());
                self.pending.push(Box::pin(async move {
                    let reply = router.call(&user, op, timeout).await;
                    reply_frame(req, chat, reply)
                }));
                Step::Continue
            }
        }
    }

    /// Sends every event after each cursor, then `resumed`, then releases live events, so
    /// that the client sees each chat gap-free and without duplicates across the seam.
    async fn resume(&mut self, req: u64, chats: Vec<protocol::frame::ResumeCursor>) -> Step {
        let timeout = self.shared.config.request_timeout;
        'chats: for cursor in chats {
            let chat = cursor.chat;
            let mut after = self.session.resume_from(chat, cursor.last_seq);
            loop {
                let op = RouterOp::History { chat, before: None, after: Some(after), limit: MAX_HISTORY_PAGE };
                match self.shared.router.call(&self.user, op, timeout).await {
                    RouterReply::History { events, more, last_seq } => {
                        // One page at a time: what the catch-up holds is one page
                        // (at most MAX_HISTORY_PAGE_BYTES of text), written within the deadline.
                        let mut page = Vec::with_capacity(events.len());
                        for event in events {
                            if event.seq <= after {
                                continue;
                            }
                            after = event.seq;
                            page.push(encode(self.encoding, &ServerFrame::Event { chat, event }));
                        }
                        if let Err(code) = self.write(page).await {
                            return Step::Close(code);
                        }
                        if !more {
                            // A cursor beyond the chat's end (a client bug, or a store restored
                            // from backup) must not suppress the live events that follow.
                            after = after.min(last_seq);
                            break;
                        }
                    }
                    other => {
                        // This chat is not resumed (not found, or the store is unavailable):
                        // an error instead of `resumed`; the client may retry it.
                        if let Err(code) = self.send_now(&reply_frame(req, Some(chat), other)).await {
                            return Step::Close(code);
                        }
                        continue 'chats;
                    }
                }
            }
            self.session.resumed(chat, after);
            if let Err(code) = self.send_now(&ServerFrame::Resumed { req, chat, last_seq: after }).await {
                return Step::Close(code);
            }
        }
        // Release what was held since `hello`: the next flush writes it through the
        // per-chat high-water marks set above.
        let held = self.session.release();
        let to_write: Vec<Message> = held.into_iter().filter_map(|item| self.admit(item)).collect();
        if let Err(code) = self.write(to_write).await {
            return Step::Close(code);
        }
        // The end of the resume, even of an empty one.
        if let Err(code) = self.send_now(&ServerFrame::Ok { req }).await {
            return Step::Close(code);
        }
        Step::Continue
    }
}

async fn write_all(ws: &mut Ws, messages: Vec<Message>) -> Result<(), WsError> {
    if messages.is_empty() {
        return Ok(());
    }
    for m in messages {
        ws.feed(m).await?;
    }
    ws.flush().await
}

/// Records the outcome of authentication at connect. Kept out of `serve` (a plain
/// function, not part of the connection's future), so the record's space is not carried in
/// every idle connection's task.
fn audit_auth(
    audit: &audit::AuditLog,
    peer: std::net::IpAddr,
    client: std::net::IpAddr,
    outcome: Result<&crate::auth::Verified, AuthFailure>,
) -> Result<(), audit::AuditError> {
    let event = match outcome {
        Ok(v) => Event::Auth { peer, client, sub: Some(&v.user), jti: v.jti.as_deref(), refresh: false, result: "ok" },
        Err(f) if f.code == CloseCode::AuthTimeout => {
            Event::Closed { client, sub: None, code: f.code.code(), reason: f.code.reason() }
        }
        // The client left before authenticating: nothing happened worth recording.
        Err(f) if f.result == "left" => return Ok(()),
        Err(f) => Event::Auth { peer, client, sub: None, jti: None, refresh: false, result: f.result },
    };
    audit.record(&event)
}

/// Records a close for cause (see [`for_cause`]), outside the connection's future.
fn audit_close(audit: &audit::AuditLog, client: std::net::IpAddr, sub: Option<&str>, code: CloseCode) {
    audit.note(&Event::Closed { client, sub, code: code.code(), reason: code.reason() });
}

/// Closes the audit trail records: abuse, limits and expiry, not ordinary goodbyes.
fn for_cause(code: CloseCode) -> bool {
    matches!(
        code,
        CloseCode::ProtocolError
            | CloseCode::TooBig
            | CloseCode::AuthTimeout
            | CloseCode::RateLimited
            | CloseCode::SlowConsumer
            | CloseCode::TooManyConnections
            | CloseCode::TokenRevoked
            | CloseCode::TokenExpired
    )
}

/// A write missed its deadline: the peer stopped reading. It is closed as a slow consumer
/// (4009) and resumes from its cursors.
fn stalled() -> CloseCode {
    metrics::counter!("edge_write_timeouts_total").increment(1);
    CloseCode::SlowConsumer
}

fn read_error(err: &WsError) -> CloseCode {
    match err {
        WsError::Capacity(_) => CloseCode::TooBig,
        WsError::Protocol(_) | WsError::Utf8(_) => CloseCode::ProtocolError,
        _ => CloseCode::Normal,
    }
}
