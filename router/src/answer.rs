//! What the router sends back: replies to requesters, events for the edges, and the mapping
//! from store errors to the errors a client sees.

use bus::Bus;
use persistence::StoreError;
use protocol::ErrorCode;
use protocol::codec::encode_envelope;
use protocol::envelope::{BusEvent, RouterReply};
use rules::request::Refusal;

/// Answers a request on its reply subject. A lost reply is logged; the edge times out.
pub async fn send_reply(bus: &dyn Bus, subject: &str, reply: RouterReply) {
    if let Err(err) = bus.publish(subject, encode_envelope(&reply)).await {
        tracing::warn!(error = %err, "reply not delivered");
    }
}

/// Publishes an event for the edges to fan out.
pub async fn publish(bus: &dyn Bus, subject: &str, event: &BusEvent) {
    if let Err(err) = bus.publish(subject, encode_envelope(event)).await {
        metrics::counter!("router_publish_failures_total").increment(1);
        tracing::warn!(error = %err, subject, "publish failed");
    }
}

/// The error a client sees for a store error.
pub fn store_error(err: StoreError) -> RouterReply {
    match err {
        StoreError::ChatNotFound => RouterReply::error(ErrorCode::NotFound, "no such chat"),
        StoreError::TargetNotFound => RouterReply::error(ErrorCode::NotFound, "no such message"),
        StoreError::NoChange(why) => RouterReply::error(ErrorCode::Invalid, why),
        StoreError::Invalid(why) => RouterReply::error(ErrorCode::Invalid, why),
        StoreError::Conflict => {
            RouterReply::error(ErrorCode::Conflict, "client_msg_id already used for another message")
        }
        StoreError::IdCollision => RouterReply::error(ErrorCode::Unavailable, "could not allocate a chat id; retry"),
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

/// The error a client sees for a refusal of the rules.
pub fn refused(r: Refusal) -> RouterReply {
    RouterReply::Error { code: r.code, message: r.message }
}
