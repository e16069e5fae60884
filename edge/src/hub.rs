//! The edge's local subscription index and fan-out.
//!
//! The hub knows which local connections belong to which user and which users (with a local
//! connection) are members of which chat. It subscribes the edge's single bus inbox to a
//! chat's subject while at least one member is connected here, and to a user's subject while
//! that user is. Every event is decoded once, encoded once per encoding in use
//! ([`EncodedFrame`]), and the same bytes are queued on every target connection's [`Outbox`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bus::{Bus, BusMessage, Subscription};
use protocol::codec::{decode_envelope, encode_server, encode_server_json};
use protocol::envelope::{BusEvent, RouterOp, RouterReply, chat_subject, user_subject};
use protocol::limits::MAX_HISTORY_PAGE;
use protocol::revocation::{Revocation, TokenFacts};
use protocol::{ChatId, Encoding, Event, EventBody, PresenceStatus, ServerFrame};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::order::{Admit, ChatOrder};
use crate::outbox::{Outbox, Outgoing, Pushed};
use crate::rpc;

/// A connection's id on this edge.
pub type ConnId = u64;

/// A connection could not be fully registered (the router or the bus is unavailable).
#[derive(Debug, thiserror::Error)]
#[error("attach failed: {0}")]
pub struct AttachError(String);

/// What the hub needs of a connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub user: Arc<str>,
    pub encoding: Encoding,
    pub outbox: Arc<Outbox>,
    /// The token the connection holds, for revocation.
    pub token: TokenHeld,
}

/// What revocation needs to know of a connection's token.
#[derive(Debug, Clone, Default)]
pub struct TokenHeld {
    pub jti: Option<Arc<str>>,
    /// `iat`, or the earliest the token can have been issued (see
    /// [`protocol::revocation::TokenFacts`]).
    pub issued: u64,
}

struct UserEntry {
    conns: Vec<ConnId>,
    chats: HashSet<ChatId>,
    sub: Option<Subscription>,
}

struct ChatEntry {
    users: HashSet<Arc<str>>,
    sub: Option<Subscription>,
    order: ChatOrder,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, ConnHandle>,
    users: HashMap<Arc<str>, UserEntry>,
    chats: HashMap<ChatId, ChatEntry>,
    /// Connections by the id of the token they hold (tokens with a `jti` only).
    by_jti: HashMap<Arc<str>, Vec<ConnId>>,
}

impl State {
    fn index_token(&mut self, id: ConnId, token: &TokenHeld) {
        if let Some(jti) = &token.jti {
            self.by_jti.entry(jti.clone()).or_default().push(id);
        }
    }

    fn unindex_token(&mut self, id: ConnId, token: &TokenHeld) {
        if let Some(jti) = &token.jti
            && let Some(ids) = self.by_jti.get_mut(jti)
        {
            ids.retain(|c| *c != id);
            if ids.is_empty() {
                self.by_jti.remove(jti);
            }
        }
    }
}

/// The result of a repair fetch, fed back into the dispatcher.
struct Repaired {
    chat: ChatId,
    reply: RouterReply,
}

/// The hub. One per edge.
pub struct Hub {
    state: Mutex<State>,
    bus: Arc<dyn Bus>,
    router: rpc::RouterClient,
    inbox: bus::Sink,
    repairs: mpsc::Sender<Repaired>,
    queue_limit: usize,
}

/// A server frame encoded at most once per encoding, for fan-out.
///
/// It exists so that an event going to many local connections costs one encode per encoding in
/// use (JSON, bincode), not one per connection: the first [`get`](Self::get) of an encoding
/// encodes, and every later one returns a clone of the same [`Message`], whose payload is
/// reference-counted, so every connection's [`Outbox`] shares the one buffer.
pub struct EncodedFrame<'a> {
    frame: &'a ServerFrame,
    json: Option<Message>,
    bincode: Option<Message>,
}

impl<'a> EncodedFrame<'a> {
    /// Wraps `frame`; nothing is encoded until the first [`get`](Self::get).
    pub fn new(frame: &'a ServerFrame) -> Self {
        EncodedFrame { frame, json: None, bincode: None }
    }

    /// The frame as a WebSocket message in `encoding` (text for JSON, binary for bincode),
    /// encoding it on the first call for that encoding and sharing the bytes afterwards.
    pub fn get(&mut self, encoding: Encoding) -> Message {
        match encoding {
            Encoding::Json => {
                self.json.get_or_insert_with(|| Message::Text(encode_server_json(self.frame).into())).clone()
            }
            Encoding::Bincode => self
                .bincode
                .get_or_insert_with(|| Message::Binary(encode_server(Encoding::Bincode, self.frame)))
                .clone(),
        }
    }
}

/// Handles for running the hub's dispatcher.
pub struct HubRunner {
    inbox: mpsc::Receiver<BusMessage>,
    repairs: mpsc::Receiver<Repaired>,
}

impl Hub {
    /// A hub and the receivers its dispatcher ([`Hub::run`]) consumes.
    pub fn new(router: rpc::RouterClient, inbox_capacity: usize, queue_limit: usize) -> (Arc<Hub>, HubRunner) {
        let (tx, rx) = mpsc::channel(inbox_capacity.max(1));
        let (rtx, rrx) = mpsc::channel(1024);
        let bus = router.bus().clone();
        let hub =
            Arc::new(Hub { state: Mutex::new(State::default()), bus, router, inbox: tx, repairs: rtx, queue_limit });
        (hub, HubRunner { inbox: rx, repairs: rrx })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of attached connections.
    pub fn connections(&self) -> usize {
        self.lock().conns.len()
    }

    /// Every connection's outbox, for drain.
    pub fn outboxes(&self) -> Vec<Arc<Outbox>> {
        self.lock().conns.values().map(|c| c.outbox.clone()).collect()
    }

    /// Registers an authenticated connection and, for a user's first connection here,
    /// subscribes to the user's subject and to every chat they are a member of. When this
    /// returns `Ok`, events published from now on reach the connection. On `Err` the
    /// connection is registered but incomplete: detach it and let the client retry.
    pub async fn attach(&self, id: ConnId, handle: ConnHandle) -> Result<(), AttachError> {
        let user = handle.user.clone();
        let first = {
            let mut s = self.lock();
            s.index_token(id, &handle.token);
            s.conns.insert(id, handle);
            match s.users.get_mut(&user) {
                Some(u) => {
                    u.conns.push(id);
                    false
                }
                None => {
                    s.users.insert(user.clone(), UserEntry { conns: vec![id], chats: HashSet::new(), sub: None });
                    true
                }
            }
        };
        if !first {
            return Ok(());
        }
        let sub = self.bus.subscribe(&user_subject(&user), None, self.inbox.clone()).await.map_err(|e| {
            metrics::counter!("edge_attach_failures_total", "reason" => "subscribe").increment(1);
            AttachError(format!("user subscription: {e}"))
        })?;
        if let Some(u) = self.lock().users.get_mut(&user) {
            u.sub = Some(sub);
        }
        match self.router.call(&user, RouterOp::ChatIds, rpc::INTERNAL_TIMEOUT).await {
            RouterReply::ChatIds(ids) => {
                for chat in ids {
                    self.join(&user, chat, ChatOrder::default()).await;
                }
            }
            other => {
                metrics::counter!("edge_attach_failures_total", "reason" => "chat_ids").increment(1);
                return Err(AttachError(format!("listing the user's chats: {other:?}")));
            }
        }
        self.announce(&user, PresenceStatus::Online).await;
        Ok(())
    }

    /// Unregisters a connection; the last one of a user drops their subscriptions.
    pub async fn detach(&self, id: ConnId) {
        let gone_user = {
            let mut s = self.lock();
            let Some(handle) = s.conns.remove(&id) else { return };
            s.unindex_token(id, &handle.token);
            let user = handle.user;
            let last = match s.users.get_mut(&user) {
                Some(u) => {
                    u.conns.retain(|c| *c != id);
                    u.conns.is_empty()
                }
                None => false,
            };
            if last {
                if let Some(entry) = s.users.remove(&user) {
                    for chat in entry.chats {
                        leave_chat(&mut s, chat, &user);
                    }
                }
                Some(user)
            } else {
                None
            }
        };
        if let Some(user) = gone_user {
            self.announce(&user, PresenceStatus::Offline).await;
        }
    }

    /// The connection now holds a fresh token (an in-band refresh).
    pub fn retoken(&self, id: ConnId, token: TokenHeld) {
        let mut s = self.lock();
        let Some(old) = s.conns.get(&id).map(|c| c.token.clone()) else { return };
        s.unindex_token(id, &old);
        s.index_token(id, &token);
        if let Some(c) = s.conns.get_mut(&id) {
            c.token = token;
        }
    }

    /// Closes (4013) every connection here whose token `revocation` refuses; returns how many.
    pub fn revoke(&self, revocation: &Revocation) -> usize {
        let s = self.lock();
        let hit = |id: &ConnId| {
            let c = s.conns.get(id)?;
            let facts = TokenFacts {
                user: &c.user,
                jti: c.token.jti.as_deref(),
                iat: Some(c.token.issued),
                exp: c.token.issued,
            };
            revocation.matches(&facts, 0).then(|| c.outbox.clone())
        };
        let outboxes: Vec<Arc<Outbox>> = match revocation {
            Revocation::Token { jti, .. } => s.by_jti.get(jti.as_str()).into_iter().flatten().filter_map(hit).collect(),
            Revocation::User { user, .. } => {
                s.users.get(user.as_str()).into_iter().flat_map(|u| u.conns.iter()).filter_map(hit).collect()
            }
        };
        drop(s);
        for outbox in &outboxes {
            outbox.revoke();
        }
        outboxes.len()
    }

    async fn announce(&self, user: &str, status: PresenceStatus) {
        self.router.tell(user, RouterOp::Presence { status }).await;
    }

    /// Adds `user` (attached here) to `chat`'s local members, subscribing to the chat if it is
    /// new here. Returns whether the chat was new here (then `order` was installed).
    async fn join(&self, user: &Arc<str>, chat: ChatId, order: ChatOrder) -> bool {
        let new = {
            let mut s = self.lock();
            if !s.users.contains_key(user) {
                return false;
            }
            let new = !s.chats.contains_key(&chat);
            let entry = s.chats.entry(chat).or_insert_with(|| ChatEntry { users: HashSet::new(), sub: None, order });
            entry.users.insert(user.clone());
            if let Some(u) = s.users.get_mut(user) {
                u.chats.insert(chat);
            }
            new
        };
        if new {
            match self.bus.subscribe(&chat_subject(chat), None, self.inbox.clone()).await {
                Ok(sub) => match self.lock().chats.get_mut(&chat) {
                    Some(entry) => entry.sub = Some(sub),
                    None => drop(sub),
                },
                Err(err) => tracing::warn!(error = %err, chat, "chat subscription failed"),
            }
        }
        new
    }

    /// Runs the dispatcher until `shutdown`.
    pub async fn run(self: Arc<Self>, mut runner: HubRunner, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = runner.inbox.recv() => match msg {
                    Some(msg) => self.on_bus(msg).await,
                    None => break,
                },
                Some(r) = runner.repairs.recv() => self.on_repaired(r),
            }
        }
    }

    async fn on_bus(self: &Arc<Self>, msg: BusMessage) {
        let event = match decode_envelope::<BusEvent>(&msg.payload) {
            Ok(e) => e,
            Err(err) => {
                metrics::counter!("edge_bad_bus_messages_total").increment(1);
                tracing::warn!(error = %err, subject = %msg.subject, "undecodable bus event");
                return;
            }
        };
        match event {
            BusEvent::Sequenced { chat, event } => {
                let admit = {
                    let mut s = self.lock();
                    match s.chats.get_mut(&chat) {
                        Some(entry) => entry.order.admit(event.seq),
                        None => Admit::Drop,
                    }
                };
                match admit {
                    Admit::Forward => self.forward(chat, &event),
                    Admit::Drop => {}
                    Admit::Repair { after } => {
                        metrics::counter!("edge_gap_repairs_total").increment(1);
                        self.spawn_repair(chat, after);
                    }
                }
            }
            BusEvent::Joined { chat, user, event } => {
                let Some(user) = self.lock().users.get_key_value(user.as_str()).map(|(k, _)| k.clone()) else {
                    return;
                };
                let new = self.join(&user, chat, ChatOrder::after(event.seq)).await;
                let frame = ServerFrame::Event { chat, event };
                let seq = frame_seq(&frame);
                self.deliver_to_user(&user, chat, seq, &frame, false);
                if new {
                    // Events published between the join and our subscription never reached
                    // us: fetch them.
                    let after = self.lock().chats.get_mut(&chat).and_then(|e| e.order.start_repair());
                    if let Some(after) = after {
                        self.spawn_repair(chat, after);
                    }
                }
            }
            BusEvent::Receipt { chat, user, seq } => {
                let frame = ServerFrame::Receipt { chat, user, seq };
                self.deliver_to_chat(chat, &frame, None, true);
            }
            BusEvent::Typing { chat, user } => {
                let frame = ServerFrame::Typing { chat, user: user.clone() };
                self.deliver_to_chat(chat, &frame, Some(&user), true);
            }
            BusEvent::Presence { chat, user, status } => {
                let frame = ServerFrame::Presence { user: user.clone(), status };
                self.deliver_to_chat(chat, &frame, Some(&user), true);
            }
        }
    }

    /// Hands a sequenced event to the chat's local members and applies membership effects.
    fn forward(&self, chat: ChatId, event: &Event) {
        let frame = ServerFrame::Event { chat, event: event.clone() };
        let mut s = self.lock();
        let skip: &[String] = match &event.body {
            // Added users get the event through `joined` on their own subject.
            EventBody::MembersAdded { users, .. } => users,
            _ => &[],
        };
        let Some(entry) = s.chats.get(&chat) else { return };
        let targets: Vec<Arc<str>> =
            entry.users.iter().filter(|u| !skip.iter().any(|s| s.as_str() == &***u)).cloned().collect();
        let mut frames = EncodedFrame::new(&frame);
        let mut overflowed = Vec::new();
        let mut queued = 0u64;
        let now = Instant::now();
        for user in &targets {
            let Some(u) = s.users.get(user) else { continue };
            for id in &u.conns {
                if let Some(c) = s.conns.get(id) {
                    let out = Outgoing { chat, seq: event.seq, message: frames.get(c.encoding), queued: now };
                    match c.outbox.push(out, false, self.queue_limit) {
                        Pushed::Queued => queued += 1,
                        Pushed::Overflow => overflowed.push(*id),
                        _ => {}
                    }
                }
            }
        }
        metrics::counter!("edge_events_forwarded_total").increment(1);
        count_out(&frame, queued);
        if !overflowed.is_empty() {
            metrics::counter!("edge_slow_consumers_total").increment(overflowed.len() as u64);
        }
        if let EventBody::MembersRemoved { users } = &event.body {
            for user in users {
                if let Some(key) = s.users.get_key_value(user.as_str()).map(|(k, _)| k.clone()) {
                    if let Some(u) = s.users.get_mut(&key) {
                        u.chats.remove(&chat);
                    }
                    leave_chat(&mut s, chat, &key);
                }
            }
        }
    }

    fn deliver_to_user(&self, user: &Arc<str>, chat: ChatId, seq: u64, frame: &ServerFrame, ephemeral: bool) {
        let s = self.lock();
        let Some(u) = s.users.get(user) else { return };
        let mut frames = EncodedFrame::new(frame);
        let mut queued = 0;
        for id in &u.conns {
            if let Some(c) = s.conns.get(id) {
                let out = Outgoing { chat, seq, message: frames.get(c.encoding), queued: Instant::now() };
                if c.outbox.push(out, ephemeral, self.queue_limit) == Pushed::Queued {
                    queued += 1;
                }
            }
        }
        count_out(frame, queued);
    }

    fn deliver_to_chat(&self, chat: ChatId, frame: &ServerFrame, except: Option<&str>, ephemeral: bool) {
        let s = self.lock();
        let Some(entry) = s.chats.get(&chat) else { return };
        let mut frames = EncodedFrame::new(frame);
        let mut dropped = 0u64;
        let mut queued = 0u64;
        let now = Instant::now();
        for user in entry.users.iter().filter(|u| Some(&***u) != except) {
            let Some(u) = s.users.get(user) else { continue };
            for id in &u.conns {
                if let Some(c) = s.conns.get(id) {
                    let out = Outgoing { chat, seq: 0, message: frames.get(c.encoding), queued: now };
                    match c.outbox.push(out, ephemeral, self.queue_limit) {
                        Pushed::Queued => queued += 1,
                        Pushed::Dropped => dropped += 1,
                        _ => {}
                    }
                }
            }
        }
        count_out(frame, queued);
        if dropped > 0 {
            metrics::counter!("edge_ephemeral_dropped_total").increment(dropped);
        }
    }

    fn spawn_repair(self: &Arc<Self>, chat: ChatId, after: u64) {
        let member = self.lock().chats.get(&chat).and_then(|e| e.users.iter().next().cloned());
        let Some(member) = member else { return };
        let hub = self.clone();
        tokio::spawn(async move {
            let op = RouterOp::History { chat, before: None, after: Some(after), limit: MAX_HISTORY_PAGE };
            let reply = hub.router.call(&member, op, rpc::INTERNAL_TIMEOUT).await;
            let _ = hub.repairs.send(Repaired { chat, reply }).await;
        });
    }

    fn on_repaired(self: &Arc<Self>, r: Repaired) {
        let (events, more) = match r.reply {
            RouterReply::History { events, more, .. } => (events, more),
            other => {
                metrics::counter!("edge_gap_repair_failures_total").increment(1);
                tracing::warn!(chat = r.chat, reply = ?other, "gap repair failed");
                if let Some(e) = self.lock().chats.get_mut(&r.chat) {
                    e.order.repair_failed();
                }
                return;
            }
        };
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let decision = self.lock().chats.get_mut(&r.chat).map(|e| e.order.repaired(&seqs, more));
        let Some((range, next)) = decision else { return };
        for event in &events[range] {
            self.forward(r.chat, event);
        }
        if let Some(after) = next {
            self.spawn_repair(r.chat, after);
        }
    }
}

/// Counts frames queued by the hub, once per fan-out rather than once per connection.
fn count_out(frame: &ServerFrame, n: u64) {
    if n > 0 {
        metrics::counter!("edge_frames_out_total", "type" => frame.kind()).increment(n);
    }
}

fn frame_seq(frame: &ServerFrame) -> u64 {
    match frame {
        ServerFrame::Event { event, .. } => event.seq,
        _ => 0,
    }
}

/// Removes `user` from `chat`'s local members, dropping the chat (and its subscription) when
/// no local member is left.
fn leave_chat(s: &mut State, chat: ChatId, user: &Arc<str>) {
    if let Some(entry) = s.chats.get_mut(&chat) {
        entry.users.remove(user);
        if entry.users.is_empty() {
            s.chats.remove(&chat);
        }
    }
}
