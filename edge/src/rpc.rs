//! Requests from the edge to the router over the bus.

use std::time::Duration;

use bus::{Bus, BusError};
use protocol::ErrorCode;
use protocol::codec::{decode_envelope, encode_envelope};
use protocol::envelope::{ROUTER_REQUEST_SUBJECT, RouterOp, RouterReply, RouterRequest};

/// Sends `op` on behalf of `user` and waits for the router's reply. Bus failures and
/// undecodable replies become `unavailable` errors: the client may retry.
pub async fn call(bus: &dyn Bus, user: &str, op: RouterOp, timeout: Duration) -> RouterReply {
    let request = encode_envelope(&RouterRequest { user: user.to_owned(), op });
    match bus.request(ROUTER_REQUEST_SUBJECT, request, timeout).await {
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
pub async fn tell(bus: &dyn Bus, user: &str, op: RouterOp) {
    let request = encode_envelope(&RouterRequest { user: user.to_owned(), op });
    if let Err(err) = bus.publish(ROUTER_REQUEST_SUBJECT, request).await {
        metrics::counter!("edge_router_request_failures_total", "reason" => reason(&err)).increment(1);
    }
}

fn reason(err: &BusError) -> &'static str {
    match err {
        BusError::Timeout => "timeout",
        BusError::NoResponders => "no_responders",
        BusError::Unavailable(_) => "unavailable",
    }
}

/// Default timeout for hub-internal requests (chat ids at attach, gap repairs).
pub const INTERNAL_TIMEOUT: Duration = Duration::from_secs(10);
