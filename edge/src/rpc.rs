//! Requests from the edge to the routers over the bus.
//!
//! A request about one chat goes to the router that owns the chat (`router.chat.<id>`), as
//! this edge's [`RouterView`] sees it from the routers' heartbeats; everything else, and any chat
//! request while no router is known yet, goes to the routers' queue group.

use std::sync::Arc;
use std::time::Duration;

use bus::routers::RouterView;
use bus::{Bus, BusError};
use protocol::ErrorCode;
use protocol::codec::{decode_envelope, encode_envelope};
use protocol::envelope::{ROUTER_REQUEST_SUBJECT, RouterOp, RouterReply, RouterRequest, router_subject};
use tokio_util::sync::CancellationToken;

/// Default timeout for hub-internal requests (chat ids at attach, gap repairs).
pub const INTERNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The edge's handle on the routers. Clones share the ring.
#[derive(Clone)]
pub struct RouterClient {
    bus: Arc<dyn Bus>,
    routers: RouterView,
}

impl RouterClient {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        RouterClient { bus, routers: RouterView::default() }
    }

    /// The bus the client talks over.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    fn subject(&self, op: &RouterOp) -> String {
        let owner = op.chat().and_then(|chat| self.routers.owner(chat));
        match owner {
            Some(router) => router_subject(router),
            None => ROUTER_REQUEST_SUBJECT.to_owned(),
        }
    }

    /// Sends `op` on behalf of `user` and waits for the reply. Bus failures and undecodable
    /// replies become `unavailable` errors: the client may retry.
    pub async fn call(&self, user: &str, op: RouterOp, timeout: Duration) -> RouterReply {
        let subject = self.subject(&op);
        let request = encode_envelope(&RouterRequest { user: user.to_owned(), op });
        match self.bus.request(&subject, request, timeout).await {
            Ok(bytes) => match decode_envelope::<RouterReply>(&bytes) {
                Ok(reply) => reply,
                Err(err) => {
                    tracing::warn!(error = %err, "undecodable router reply");
                    RouterReply::error(ErrorCode::Unavailable, "bad reply from router")
                }
            },
            Err(err) => {
                metrics::counter!("edge_router_request_failures_total", "reason" => reason(&err)).increment(1);
                RouterReply::error(ErrorCode::Unavailable, format!("router: {err}"))
            }
        }
    }

    /// Sends `op` without waiting for an answer (typing, presence).
    pub async fn tell(&self, user: &str, op: RouterOp) {
        let subject = self.subject(&op);
        let request = encode_envelope(&RouterRequest { user: user.to_owned(), op });
        if let Err(err) = self.bus.publish(&subject, request).await {
            metrics::counter!("edge_router_request_failures_total", "reason" => reason(&err)).increment(1);
        }
    }

    /// Follows the routers' heartbeats until `shutdown`, keeping the view current.
    pub async fn watch_routers(self, shutdown: CancellationToken) {
        self.routers.watch(self.bus.clone(), shutdown).await
    }
}

fn reason(err: &BusError) -> &'static str {
    match err {
        BusError::Timeout => "timeout",
        BusError::NoResponders => "no_responders",
        BusError::Unavailable(_) => "unavailable",
    }
}
