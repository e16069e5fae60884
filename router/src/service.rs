//! The router's tokio glue.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bus::{Bus, BusError, BusMessage};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use persistence::{Append, Appended, Created, Mutation, NewChat, Page, Store, StoreError};
use protocol::codec::{decode_envelope, encode_envelope};
use protocol::envelope::{
    BusEvent, ROUTER_HEARTBEAT_SUBJECT, ROUTER_QUEUE_GROUP, ROUTER_REQUEST_SUBJECT, RouterHeartbeat, RouterOp,
    RouterReply, RouterRequest, chat_subject, router_subject, user_subject,
};
use protocol::limits::{DEFAULT_HISTORY_PAGE, MAX_CHAT_ID, MAX_HISTORY_PAGE, MAX_HISTORY_PAGE_BYTES};
use protocol::ring::{HEARTBEAT_INTERVAL, RouterId};
use protocol::{ChatId, ChatKind, ChatSummary, ErrorCode, EventBody, Role, UserId};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authz::{Action, Denied, authorize};
use crate::validate;

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Sequencing shards (tasks); chats are spread over them by id.
    pub shards: usize,
    /// Requests queued per shard before the request reader waits.
    pub shard_queue: usize,
    /// Requests queued from the bus before the bus applies backpressure.
    pub inbox_capacity: usize,
    /// Chats whose kind a shard caches; the cache is emptied past this.
    pub cache_chats: usize,
    /// Most chats a presence change is published to.
    pub max_presence_chats: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            shards: 8,
            shard_queue: 1024,
            inbox_capacity: 4096,
            cache_chats: 100_000,
            max_presence_chats: 1000,
        }
    }
}

/// Why the router stopped.
#[derive(Debug, Error)]
pub enum RouterError {
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// The router service.
pub struct Router {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    config: RouterConfig,
    id: RouterId,
}

type Ctx = (Arc<dyn Store>, Arc<dyn Bus>);

impl Router {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, config: RouterConfig) -> Self {
        // Random: a restarted router is a new ring member, and ids never collide in practice.
        let id = rand::random::<u64>();
        Router { store, bus, config, id }
    }

    /// Subscribes to the shared request subject (queue group) and to this router's own chat
    /// subject. When this returns, requests are queued for the router even before
    /// [`BoundRouter::run`] starts taking them.
    pub async fn bind(self) -> Result<BoundRouter, RouterError> {
        let (tx, inbox) = mpsc::channel::<BusMessage>(self.config.inbox_capacity.max(1));
        let shared = self.bus.subscribe(ROUTER_REQUEST_SUBJECT, Some(ROUTER_QUEUE_GROUP), tx.clone()).await?;
        let own = self.bus.subscribe(&router_subject(self.id), None, tx).await?;
        Ok(BoundRouter { router: self, inbox, subscriptions: [shared, own] })
    }

    /// This router's id on the bus.
    pub fn id(&self) -> RouterId {
        self.id
    }
}

/// A router subscribed to its requests, ready to run.
pub struct BoundRouter {
    router: Router,
    inbox: mpsc::Receiver<BusMessage>,
    subscriptions: [bus::Subscription; 2],
}

/// Announces the router every [`HEARTBEAT_INTERVAL`] until `stop`, then once as stopping,
/// so that edges move its chats at once instead of after [`protocol::ring::HEARTBEAT_TIMEOUT`].
async fn heartbeat(bus: Arc<dyn Bus>, id: RouterId, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let beat = encode_envelope(&RouterHeartbeat { id, stopping: false });
                if let Err(err) = bus.publish(ROUTER_HEARTBEAT_SUBJECT, beat).await {
                    tracing::warn!(error = %err, "heartbeat not sent");
                }
            }
        }
    }
    let _ = bus.publish(ROUTER_HEARTBEAT_SUBJECT, encode_envelope(&RouterHeartbeat { id, stopping: true })).await;
}

impl BoundRouter {
    /// Serves requests until `shutdown` fires, then finishes what is in flight and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RouterError> {
        let BoundRouter { router: this, mut inbox, subscriptions } = self;
        let this = &this;
        let tracker = TaskTracker::new();
        let beat_stop = CancellationToken::new();
        tracker.spawn(heartbeat(this.bus.clone(), this.id, beat_stop.clone()));
        let shards: Vec<mpsc::Sender<Job>> = (0..this.config.shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(this.config.shard_queue.max(1));
                let shard = Shard::new(this.store.clone(), this.bus.clone(), this.config.cache_chats);
                tracker.spawn(shard.run(rx));
                tx
            })
            .collect();
        tracing::info!(shards = shards.len(), id = this.id, "router serving");
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = inbox.recv() => match msg { Some(m) => m, None => break },
            };
            let request = match decode_envelope::<RouterRequest>(&msg.payload) {
                Ok(r) => r,
                Err(err) => {
                    metrics::counter!("router_bad_envelopes_total").increment(1);
                    tracing::warn!(error = %err, "undecodable router request");
                    if let Some(reply) = msg.reply {
                        send_reply(&*this.bus, &reply, RouterReply::error(ErrorCode::BadFrame, "bad envelope")).await;
                    }
                    continue;
                }
            };
            metrics::counter!("router_requests_total", "op" => op_name(&request.op)).increment(1);
            let job = Job { request, reply: msg.reply, received: Instant::now() };
            match job.request.op.chat().filter(|_| job.request.op.sequenced()) {
                Some(chat) => {
                    let idx = (chat % shards.len() as u64) as usize;
                    if shards[idx].send(job).await.is_err() {
                        break;
                    }
                }
                None => {
                    let ctx = (this.store.clone(), this.bus.clone());
                    let max_presence = this.config.max_presence_chats;
                    tracker.spawn(async move { unsequenced(ctx, job, max_presence).await });
                }
            }
        }
        beat_stop.cancel();
        drop(subscriptions);
        drop(shards);
        tracker.close();
        tracker.wait().await;
        tracing::info!("router stopped");
        Ok(())
    }
}

struct Job {
    request: RouterRequest,
    reply: Option<String>,
    received: Instant,
}

trait OpExt {
    fn sequenced(&self) -> bool;
}

impl OpExt for RouterOp {
    /// Ops that go through the chat's shard: writes and what must see them in order.
    fn sequenced(&self) -> bool {
        matches!(
            self,
            RouterOp::AddMembers { .. }
                | RouterOp::RemoveMembers { .. }
                | RouterOp::Send { .. }
                | RouterOp::Edit { .. }
                | RouterOp::Delete { .. }
                | RouterOp::Read { .. }
                | RouterOp::Typing { .. }
        )
    }
}

fn op_name(op: &RouterOp) -> &'static str {
    match op {
        RouterOp::CreateChat { .. } => "create_chat",
        RouterOp::AddMembers { .. } => "add_members",
        RouterOp::RemoveMembers { .. } => "remove_members",
        RouterOp::ListChats => "list_chats",
        RouterOp::ChatIds => "chat_ids",
        RouterOp::Send { .. } => "send",
        RouterOp::Edit { .. } => "edit",
        RouterOp::Delete { .. } => "delete",
        RouterOp::History { .. } => "history",
        RouterOp::Read { .. } => "read",
        RouterOp::Typing { .. } => "typing",
        RouterOp::Presence { .. } => "presence",
    }
}

/// Milliseconds since the Unix epoch: the server timestamp of events.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn send_reply(bus: &dyn Bus, subject: &str, reply: RouterReply) {
    if let Err(err) = bus.publish(subject, encode_envelope(&reply)).await {
        tracing::warn!(error = %err, "reply not delivered");
    }
}

async fn publish(bus: &dyn Bus, subject: &str, event: &BusEvent) {
    if let Err(err) = bus.publish(subject, encode_envelope(event)).await {
        metrics::counter!("router_publish_failures_total").increment(1);
        tracing::warn!(error = %err, subject, "publish failed");
    }
}

fn store_error(err: StoreError) -> RouterReply {
    match err {
        StoreError::ChatNotFound => RouterReply::error(ErrorCode::NotFound, "no such chat"),
        StoreError::TargetNotFound => RouterReply::error(ErrorCode::NotFound, "no such message"),
        StoreError::NoChange(why) => RouterReply::error(ErrorCode::Invalid, why),
        StoreError::Conflict => {
            RouterReply::error(ErrorCode::Conflict, "client_msg_id already used for another message")
        }
        StoreError::Unavailable(why) => {
            // Per request, so debug: an outage would otherwise log once per message. The
            // counter is what to alert on.
            metrics::counter!("router_store_unavailable_total").increment(1);
            tracing::debug!(error = %why, "store unavailable");
            RouterReply::error(ErrorCode::Unavailable, "store unavailable; retry")
        }
        StoreError::Corrupt(why) => {
            tracing::error!(error = %why, "corrupt record");
            RouterReply::error(ErrorCode::Unavailable, "internal error")
        }
    }
}

fn denied(d: Denied) -> RouterReply {
    RouterReply::error(d.code, d.reason)
}

/// Requests that need no ordering with a chat's writes.
async fn unsequenced((store, bus): Ctx, job: Job, max_presence: usize) {
    let user = job.request.user.clone();
    let reply = match job.request.op {
        RouterOp::CreateChat { kind, title, members } => create_chat(&store, &bus, &user, kind, title, members).await,
        RouterOp::ListChats => match store.user_chats(&user).await {
            Ok(chats) => RouterReply::Chats(chats),
            Err(e) => store_error(e),
        },
        RouterOp::ChatIds => match store.chat_ids(&user).await {
            Ok(ids) => RouterReply::ChatIds(ids),
            Err(e) => store_error(e),
        },
        RouterOp::History { chat, before, after, limit } => history(&store, &user, chat, before, after, limit).await,
        // Presence goes to direct chats and groups, never to broadcast channels: a channel's
        // subscribers do not see each other, and announcing each of a million subscribers to
        // all the others would cost a trillion deliveries.
        RouterOp::Presence { status } => match store.user_chats(&user).await {
            Ok(chats) => {
                let shared = chats.into_iter().filter(|c| c.kind != ChatKind::Broadcast).take(max_presence);
                for chat in shared.map(|c| c.chat) {
                    let event = BusEvent::Presence { chat, user: user.clone(), status };
                    publish(&*bus, &chat_subject(chat), &event).await;
                }
                RouterReply::Ok
            }
            Err(e) => store_error(e),
        },
        // Sequenced ops never reach here.
        _ => RouterReply::error(ErrorCode::UnknownOp, "misrouted request"),
    };
    if let Some(subject) = job.reply {
        send_reply(&*bus, &subject, reply).await;
    }
}

async fn create_chat(
    store: &Arc<dyn Store>,
    bus: &Arc<dyn Bus>,
    user: &str,
    kind: ChatKind,
    title: String,
    members: Vec<UserId>,
) -> RouterReply {
    let others = match validate::create(kind, &title, user, &members) {
        Ok(o) => o,
        Err(why) => return RouterReply::error(ErrorCode::Invalid, why),
    };
    let creator_role = if kind == ChatKind::Direct { Role::Member } else { Role::Admin };
    let mut all = vec![(user.to_owned(), creator_role)];
    all.extend(others.into_iter().map(|u| (u, Role::Member)));
    let ts = now_ms();
    // A random id in 1..2^53; the store reports the (astronomically rare) collision as
    // retryable, and we retry a few times here.
    for _ in 0..4 {
        let id = (rand::random::<u64>() & MAX_CHAT_ID).max(1);
        let new = NewChat { id, kind, title: title.clone(), creator: user.to_owned(), members: all.clone(), ts };
        match store.create_chat(new).await {
            Ok(Created::New { chat, event }) => {
                for (member, _) in &all {
                    let joined = BusEvent::Joined { chat, user: member.clone(), event: event.clone() };
                    publish(&**bus, &user_subject(member), &joined).await;
                }
                let summary = ChatSummary { chat, kind, title, role: creator_role, last_seq: 1, read_seq: 0 };
                return RouterReply::ChatCreated { chat: summary, created: true };
            }
            Ok(Created::Existing { chat }) => {
                return match store.user_chats(user).await {
                    Ok(chats) => match chats.into_iter().find(|c| c.chat == chat) {
                        Some(summary) => RouterReply::ChatCreated { chat: summary, created: false },
                        None => RouterReply::error(ErrorCode::Unavailable, "direct chat vanished; retry"),
                    },
                    Err(e) => store_error(e),
                };
            }
            Err(StoreError::Unavailable(why)) if why.contains("collision") => continue,
            Err(e) => return store_error(e),
        }
    }
    RouterReply::error(ErrorCode::Unavailable, "could not allocate a chat id; retry")
}

async fn history(
    store: &Arc<dyn Store>,
    user: &str,
    chat: ChatId,
    before: Option<u64>,
    after: Option<u64>,
    limit: u32,
) -> RouterReply {
    let head = match check(store, chat, user, Action::Read).await {
        Ok(record) => record.last_seq,
        Err(d) => return d,
    };
    let limit = if limit == 0 { DEFAULT_HISTORY_PAGE } else { limit.min(MAX_HISTORY_PAGE) };
    let page = match (before, after) {
        (Some(_), Some(_)) => return RouterReply::error(ErrorCode::Invalid, "give before or after, not both"),
        (Some(seq), None) => Page::Before { seq, limit },
        (None, Some(seq)) => Page::After { seq, limit },
        (None, None) => Page::Latest { limit },
    };
    match store.history(chat, page).await {
        Ok(p) => {
            let newest_first = !matches!(page, Page::After { .. });
            let (events, trimmed) = trim_page(p.events, newest_first);
            let last_seq = head.max(events.last().map(|e| e.seq).unwrap_or(0));
            RouterReply::History { events, more: p.more || trimmed, last_seq }
        }
        Err(e) => store_error(e),
    }
}

/// Bounds a page by [`MAX_HISTORY_PAGE_BYTES`] of text, keeping at least one event. For pages
/// that read backwards (latest, before) the newest events are kept; for `after`, the oldest.
fn trim_page(mut events: Vec<protocol::Event>, newest_first: bool) -> (Vec<protocol::Event>, bool) {
    // Bytes of text once JSON-escaped: control characters grow sixfold (\u0001), so the
    // budget must count them as they will be sent.
    let size = |e: &protocol::Event| match &e.body {
        EventBody::Message { text, .. } | EventBody::Edited { text, .. } => text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' => 2,
                0..=0x1f => 6,
                _ => 1,
            })
            .sum::<usize>(),
        _ => 0,
    };
    let mut total = 0;
    let keep = if newest_first {
        events
            .iter()
            .rev()
            .take_while(|e| {
                total += size(e);
                total <= MAX_HISTORY_PAGE_BYTES
            })
            .count()
    } else {
        events
            .iter()
            .take_while(|e| {
                total += size(e);
                total <= MAX_HISTORY_PAGE_BYTES
            })
            .count()
    }
    .max(1)
    .min(events.len());
    let trimmed = keep < events.len();
    if newest_first {
        events.drain(..events.len() - keep);
    } else {
        events.truncate(keep);
    }
    (events, trimmed)
}

/// Looks up the facts and authorizes, uncached (for unsequenced ops).
async fn check(
    store: &Arc<dyn Store>,
    chat: ChatId,
    user: &str,
    action: Action<'_>,
) -> Result<persistence::ChatRecord, RouterReply> {
    let record = store.chat(chat).await.map_err(store_error)?;
    let Some(record) = record else { return Err(RouterReply::error(ErrorCode::NotFound, "no such chat")) };
    let role = store.role(chat, user).await.map_err(store_error)?;
    authorize(record.kind, role, user, action).map_err(denied)?;
    Ok(record)
}

async fn reply_to(bus: &Arc<dyn Bus>, job: &Job, reply: RouterReply) {
    if let Some(subject) = &job.reply {
        send_reply(&**bus, subject, reply).await;
    }
}

type Completion = Pin<Box<dyn Future<Output = Done> + Send>>;

enum Done {
    Appended { job: Job, chat: ChatId, result: Result<Appended, StoreError> },
    Read { job: Job, chat: ChatId, result: Result<u64, StoreError> },
}

struct Shard {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    /// Chat kinds, which never change, so caching them is always right. Roles are read from
    /// the store on every request: during a router failover two routers may serve one chat,
    /// and a cached role could outlive a membership change made by the other.
    kinds: HashMap<ChatId, ChatKind>,
    cache_limit: usize,
    inflight: FuturesOrdered<Completion>,
}

impl Shard {
    fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, cache_limit: usize) -> Self {
        Shard { store, bus, kinds: HashMap::new(), cache_limit, inflight: FuturesOrdered::new() }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        loop {
            tokio::select! {
                biased;
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => self.complete(done).await,
                job = rx.recv() => match job {
                    Some(job) => self.handle(job).await,
                    None => break,
                },
            }
        }
        self.drain().await;
    }

    async fn drain(&mut self) {
        while let Some(done) = self.inflight.next().await {
            self.complete(done).await;
        }
    }

    /// The chat's kind (cached) and the user's role (read now).
    async fn facts(&mut self, chat: ChatId, user: &str) -> Result<(ChatKind, Option<Role>), RouterReply> {
        let kind = match self.kinds.get(&chat) {
            Some(kind) => *kind,
            None => match self.store.chat(chat).await.map_err(store_error)? {
                Some(record) => {
                    if self.kinds.len() >= self.cache_limit {
                        self.kinds.clear();
                    }
                    self.kinds.insert(chat, record.kind);
                    record.kind
                }
                None => return Err(RouterReply::error(ErrorCode::NotFound, "no such chat")),
            },
        };
        let role = self.store.role(chat, user).await.map_err(store_error)?;
        Ok((kind, role))
    }

    async fn handle(&mut self, job: Job) {
        let user = job.request.user.clone();
        let Some(chat) = job.request.op.chat() else { return };
        let (kind, role) = match self.facts(chat, &user).await {
            Ok(f) => f,
            Err(reply) => return reply_to(&self.bus, &job, reply).await,
        };
        // Membership first: a non-member must get `not_found` whatever else is wrong with the
        // request, or validation errors would reveal which chats exist.
        if let Err(d) = authorize(kind, role, &user, Action::Read) {
            if !matches!(job.request.op, RouterOp::Typing { .. }) {
                reply_to(&self.bus, &job, denied(d)).await;
            }
            return;
        }
        let mutation = match &job.request.op {
            RouterOp::Send { client_msg_id, body, .. } => {
                if let Err(why) = validate::client_msg_id(client_msg_id).and_then(|_| validate::body(body)) {
                    return reply_to(&self.bus, &job, RouterReply::error(ErrorCode::Invalid, why)).await;
                }
                if let Err(d) = authorize(kind, role, &user, Action::Post) {
                    return reply_to(&self.bus, &job, denied(d)).await;
                }
                Mutation::Message { client_msg_id: client_msg_id.clone(), text: body.clone() }
            }
            RouterOp::Edit { target, .. } | RouterOp::Delete { target, .. } => {
                let edit_body = match &job.request.op {
                    RouterOp::Edit { body, .. } => Some(body.clone()),
                    _ => None,
                };
                if let Some(Err(why)) = edit_body.as_deref().map(validate::body) {
                    return reply_to(&self.bus, &job, RouterReply::error(ErrorCode::Invalid, why)).await;
                }
                // Non-members must not learn whether a target exists: check membership first.
                if let Err(d) = authorize(kind, role, &user, Action::Read) {
                    return reply_to(&self.bus, &job, denied(d)).await;
                }
                let target_event = match self.store.event(chat, *target).await {
                    Ok(Some(e)) if matches!(e.body, EventBody::Message { deleted: false, .. }) => e,
                    Ok(_) => {
                        return reply_to(&self.bus, &job, RouterReply::error(ErrorCode::NotFound, "no such message"))
                            .await;
                    }
                    Err(e) => return reply_to(&self.bus, &job, store_error(e)).await,
                };
                let action = match edit_body {
                    Some(_) => Action::Edit { author: &target_event.sender },
                    None => Action::Delete { author: &target_event.sender },
                };
                if let Err(d) = authorize(kind, role, &user, action) {
                    return reply_to(&self.bus, &job, denied(d)).await;
                }
                match edit_body {
                    Some(text) => Mutation::Edit { target: *target, text },
                    None => Mutation::Delete { target: *target },
                }
            }
            RouterOp::AddMembers { users, role: new_role, .. } => {
                if let Err(why) = validate::users(users) {
                    return reply_to(&self.bus, &job, RouterReply::error(ErrorCode::Invalid, why)).await;
                }
                if let Err(d) = authorize(kind, role, &user, Action::AddMembers) {
                    return reply_to(&self.bus, &job, denied(d)).await;
                }
                Mutation::AddMembers { users: users.clone(), role: *new_role }
            }
            RouterOp::RemoveMembers { users, .. } => {
                if let Err(why) = validate::users(users) {
                    return reply_to(&self.bus, &job, RouterReply::error(ErrorCode::Invalid, why)).await;
                }
                if let Err(d) = authorize(kind, role, &user, Action::RemoveMembers { users }) {
                    return reply_to(&self.bus, &job, denied(d)).await;
                }
                Mutation::RemoveMembers { users: users.clone() }
            }
            RouterOp::Read { seq, .. } => {
                if let Err(d) = authorize(kind, role, &user, Action::Read) {
                    return reply_to(&self.bus, &job, denied(d)).await;
                }
                let store = self.store.clone();
                let seq = *seq;
                self.inflight.push_back(Box::pin(async move {
                    let result = store.set_read(chat, &user, seq).await;
                    Done::Read { job, chat, result }
                }));
                return;
            }
            RouterOp::Typing { .. } => {
                if authorize(kind, role, &user, Action::Typing).is_ok() {
                    publish(&*self.bus, &chat_subject(chat), &BusEvent::Typing { chat, user }).await;
                }
                return;
            }
            _ => return,
        };
        let barrier = matches!(mutation, Mutation::AddMembers { .. } | Mutation::RemoveMembers { .. });
        if barrier {
            self.drain().await;
        }
        let store = self.store.clone();
        let append = Append { chat, sender: user, ts: now_ms(), mutation };
        self.inflight.push_back(Box::pin(async move {
            let result = store.append(append).await;
            Done::Appended { job, chat, result }
        }));
        if barrier {
            self.drain().await;
        }
    }

    async fn complete(&mut self, done: Done) {
        match done {
            Done::Appended { job, chat, result } => {
                let reply = match result {
                    Ok(Appended::New(event)) => {
                        metrics::counter!("router_appends_total").increment(1);
                        let (seq, ts) = (event.seq, event.ts);
                        if let EventBody::MembersAdded { users, .. } = &event.body {
                            for u in users {
                                let joined = BusEvent::Joined { chat, user: u.clone(), event: event.clone() };
                                publish(&*self.bus, &user_subject(u), &joined).await;
                            }
                        }
                        publish(&*self.bus, &chat_subject(chat), &BusEvent::Sequenced { chat, event }).await;
                        RouterReply::Ack { chat, seq, ts, duplicate: false }
                    }
                    Ok(Appended::Duplicate { seq, ts }) => {
                        metrics::counter!("router_duplicate_sends_total").increment(1);
                        RouterReply::Ack { chat, seq, ts, duplicate: true }
                    }
                    Err(e) => store_error(e),
                };
                metrics::histogram!("router_write_seconds").record(job.received.elapsed().as_secs_f64());
                reply_to(&self.bus, &job, reply).await;
            }
            Done::Read { job, chat, result } => {
                let reply = match result {
                    Ok(seq) => {
                        let event = BusEvent::Receipt { chat, user: job.request.user.clone(), seq };
                        publish(&*self.bus, &chat_subject(chat), &event).await;
                        RouterReply::Ok
                    }
                    Err(e) => store_error(e),
                };
                reply_to(&self.bus, &job, reply).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Event;

    fn msg(seq: u64, len: usize) -> Event {
        Event {
            seq,
            ts: 0,
            sender: "a".into(),
            body: EventBody::Message {
                client_msg_id: "m".into(),
                text: "x".repeat(len),
                edited: false,
                deleted: false,
            },
        }
    }

    #[test]
    fn pages_are_bounded_in_bytes() {
        let big = MAX_HISTORY_PAGE_BYTES / 3;
        let events: Vec<Event> = (1..=5).map(|s| msg(s, big)).collect();
        let (kept, trimmed) = trim_page(events.clone(), true);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(trimmed);
        let (kept, trimmed) = trim_page(events, false);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(trimmed);
        let (kept, trimmed) = trim_page(vec![msg(1, 10), msg(2, 10)], true);
        assert_eq!((kept.len(), trimmed), (2, false));
        let (kept, _) = trim_page(vec![msg(1, MAX_HISTORY_PAGE_BYTES * 2)], true);
        assert_eq!(kept.len(), 1, "one event always fits");
        // Control characters count at their escaped size.
        let mut ctl = msg(1, 0);
        if let EventBody::Message { text, .. } = &mut ctl.body {
            *text = "\u{1}".repeat(MAX_HISTORY_PAGE_BYTES / 4);
        }
        let (kept, trimmed) = trim_page(vec![ctl.clone(), ctl], false);
        assert_eq!((kept.len(), trimmed), (1, true));
    }
}
