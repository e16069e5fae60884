//! The router process: subscribing to requests, handing each to its chat's shard or to a task
//! of its own, and the heartbeat that tells edges the router is alive.

use std::sync::Arc;
use std::time::Instant;

use bus::{Bus, BusError, BusMessage};
use persistence::Store;
use protocol::ErrorCode;
use protocol::codec::{decode_envelope, encode_envelope};
use protocol::envelope::{
    ROUTER_HEARTBEAT_SUBJECT, ROUTER_QUEUE_GROUP, ROUTER_REQUEST_SUBJECT, RouterHeartbeat, RouterOp, RouterReply,
    RouterRequest, router_subject,
};
use protocol::ring::{HEARTBEAT_INTERVAL, RouterId};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::answer::send_reply;
use crate::clock::{SharedClock, SystemClock};
use crate::requests;
use crate::shard::Shard;

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

impl RouterConfig {
    /// Default number of sequencing shards.
    pub const DEFAULT_SHARDS: usize = 8;
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            shards: Self::DEFAULT_SHARDS,
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

/// What every part of the router works through: the store, the bus and the clock.
#[derive(Clone)]
pub(crate) struct Services {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub clock: SharedClock,
    /// Membership changes, deletes and chat creations, before they are acknowledged.
    pub audit: Arc<audit::AuditLog>,
}

/// One request as it waits for its turn.
pub(crate) struct Job {
    pub request: RouterRequest,
    /// Where to answer; `None` for requests that take no answer (typing).
    pub reply: Option<String>,
    pub received: Instant,
}

/// The router service.
pub struct Router {
    services: Services,
    config: RouterConfig,
    id: RouterId,
}

impl Router {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, config: RouterConfig) -> Self {
        // Random: a restarted router is a new ring member, and ids never collide in practice.
        let id = rand::random::<u64>();
        let audit = Arc::new(audit::AuditLog::off());
        Router { services: Services { store, bus, clock: Arc::new(SystemClock), audit }, config, id }
    }

    /// Reads event timestamps from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.services.clock = clock;
        self
    }

    /// Writes the audit trail to `audit` (by default there is none).
    pub fn with_audit(mut self, audit: Arc<audit::AuditLog>) -> Self {
        self.services.audit = audit;
        self
    }

    /// What the operator's revocation endpoint calls: it stores through this router's store
    /// and broadcasts on its bus. `retention` is how long an entry is kept by default.
    pub fn revoker(&self, retention: std::time::Duration) -> crate::Revoker {
        crate::Revoker::new(self.services.clone(), retention)
    }

    /// Subscribes to the shared request subject (queue group) and to this router's own chat
    /// subject. When this returns, requests are queued for the router even before
    /// [`BoundRouter::run`] starts taking them.
    pub async fn bind(self) -> Result<BoundRouter, RouterError> {
        let (tx, inbox) = mpsc::channel::<BusMessage>(self.config.inbox_capacity.max(1));
        let bus = &self.services.bus;
        let shared = bus.subscribe(ROUTER_REQUEST_SUBJECT, Some(ROUTER_QUEUE_GROUP), tx.clone()).await?;
        let own = bus.subscribe(&router_subject(self.id), None, tx).await?;
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
        let services = &this.services;
        let tracker = TaskTracker::new();
        let beat_stop = CancellationToken::new();
        tracker.spawn(heartbeat(services.bus.clone(), this.id, beat_stop.clone()));
        let shards: Vec<mpsc::Sender<Job>> = (0..this.config.shards.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(this.config.shard_queue.max(1));
                tracker.spawn(Shard::new(services.clone(), this.config.cache_chats).run(rx));
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
                        let bad = RouterReply::error(ErrorCode::BadFrame, "bad envelope");
                        send_reply(&*services.bus, &reply, bad).await;
                    }
                    continue;
                }
            };
            metrics::counter!("router_requests_total", "op" => op_name(&request.op)).increment(1);
            let job = Job { request, reply: msg.reply, received: Instant::now() };
            match job.request.op.chat().filter(|_| sequenced(&job.request.op)) {
                Some(chat) => {
                    let idx = (chat % shards.len() as u64) as usize;
                    if shards[idx].send(job).await.is_err() {
                        break;
                    }
                }
                None => {
                    let max_presence = this.config.max_presence_chats;
                    tracker.spawn(requests::serve(services.clone(), job, max_presence));
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

/// Ops that go through the chat's shard: writes and what must see them in order.
fn sequenced(op: &RouterOp) -> bool {
    matches!(
        op,
        RouterOp::AddMembers { .. }
            | RouterOp::RemoveMembers { .. }
            | RouterOp::Send { .. }
            | RouterOp::Edit { .. }
            | RouterOp::Delete { .. }
            | RouterOp::Read { .. }
            | RouterOp::Typing { .. }
    )
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
        RouterOp::Revocations { .. } => "revocations",
    }
}
