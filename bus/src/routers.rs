//! Following the routers' heartbeats: every edge and router keeps its own view of which
//! routers are alive, and so of which router owns which chat ([`protocol::ring`]).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::codec::decode_envelope;
use protocol::envelope::{ROUTER_HEARTBEAT_SUBJECT, RouterHeartbeat};
use protocol::ring::{HEARTBEAT_INTERVAL, Ring};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusMessage};

/// Heartbeats buffered before the watcher reads them.
const HEARTBEAT_QUEUE: usize = 256;

/// A shared, live view of the routers.
#[derive(Clone, Default)]
pub struct RouterView {
    ring: Arc<Mutex<Ring>>,
}

impl RouterView {
    /// The owner of `chat` in this view, if any router is known.
    pub fn owner(&self, chat: protocol::ChatId) -> Option<protocol::ring::RouterId> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).owner(chat)
    }

    /// Live routers in this view.
    pub fn len(&self) -> usize {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn update(&self, f: impl FnOnce(&mut Ring)) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let before: Vec<_> = ring.members().collect();
        f(&mut ring);
        if !ring.members().eq(before.iter().copied()) {
            tracing::info!(routers = ring.len(), "router set changed; chats moved");
            metrics::gauge!("routers_alive").set(ring.len() as f64);
        }
    }

    /// Follows heartbeats on `bus` until `shutdown`.
    pub async fn watch(self, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<BusMessage>(HEARTBEAT_QUEUE);
        let _sub = match bus.subscribe(ROUTER_HEARTBEAT_SUBJECT, None, tx).await {
            Ok(sub) => sub,
            Err(err) => {
                tracing::error!(error = %err, "cannot follow router heartbeats; chat requests go to the queue group");
                return;
            }
        };
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.update(|ring| { ring.expire(Instant::now()); }),
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    match decode_envelope::<RouterHeartbeat>(&msg.payload) {
                        Ok(hb) => self.update(|ring| ring.observe(hb.id, hb.stopping, Instant::now())),
                        Err(err) => tracing::warn!(error = %err, "undecodable router heartbeat"),
                    }
                }
            }
        }
    }
}
