//! Keeping the edge's revocation list current, and acting on it.
//!
//! Routers broadcast each new revocation on [`REVOCATION_SUBJECT`]; the edge adds it to its
//! list and closes (4013) every connection here whose token it refuses. A broadcast can be
//! missed (the edge was starting, or cut off from the bus), so the edge also reads the whole
//! stored list from the routers when it starts (retrying every [`RETRY_INTERVAL`] until it
//! succeeds) and then every [`SYNC_INTERVAL`]; each read closes what it newly refuses.
//! Connections accepted before the first read succeeds are therefore checked when it does.

use std::sync::Arc;
use std::time::Duration;

use protocol::codec::decode_envelope;
use protocol::envelope::{RouterOp, RouterReply};
use protocol::revocation::{REVOCATION_SUBJECT, Revocation, TokenFacts};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Services;
use crate::rpc::INTERNAL_TIMEOUT;

/// How often the edge reads the whole stored list, to catch broadcasts it missed and to
/// forget expired entries.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// How soon a failed read is retried.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Broadcasts buffered before the watcher reads them.
const QUEUE: usize = 1024;

/// Whether the edge's list refuses a verified token.
pub(crate) fn revoked(shared: &Services, user: &str, jti: Option<&str>, iat: Option<u64>, exp: u64) -> bool {
    let facts = TokenFacts { user, jti, iat, exp };
    shared.revocations().revokes(&facts, shared.auth.max_lifetime())
}

/// When a token was issued, or the earliest it can have been: what the hub keeps of it.
pub(crate) fn issued(shared: &Services, iat: Option<u64>, exp: u64) -> u64 {
    iat.unwrap_or_else(|| exp.saturating_sub(shared.auth.max_lifetime()))
}

/// Follows revocations until `stop`.
pub(crate) async fn watch(shared: Arc<Services>, stop: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<bus::BusMessage>(QUEUE);
    let bus = shared.router.bus().clone();
    let mut subscription = None;
    let mut next_sync = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(msg) = rx.recv() => match decode_envelope::<Revocation>(&msg.payload) {
                Ok(r) => apply(&shared, std::slice::from_ref(&r)),
                Err(err) => tracing::warn!(error = %err, "undecodable revocation broadcast"),
            },
            _ = tokio::time::sleep_until(next_sync) => {
                // Subscribe before reading the list, so that nothing falls between the two.
                if subscription.is_none() {
                    match bus.subscribe(REVOCATION_SUBJECT, None, tx.clone()).await {
                        Ok(s) => subscription = Some(s),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot subscribe to revocations; retrying");
                            next_sync = Instant::now() + RETRY_INTERVAL;
                            continue;
                        }
                    }
                }
                next_sync = Instant::now() + match sync(&shared).await {
                    Ok(()) => SYNC_INTERVAL,
                    Err(err) => {
                        metrics::counter!("edge_revocation_sync_failures_total").increment(1);
                        tracing::warn!(error = %err, "reading the revocation list failed; retrying");
                        RETRY_INTERVAL
                    }
                };
            }
        }
    }
}

/// Adds `revocations` to the list (one write lock for all of them: a full read must not
/// hold up connects entry by entry) and closes the connections they newly refuse.
fn apply(shared: &Services, revocations: &[Revocation]) {
    let wider: Vec<&Revocation> = {
        let mut list = shared.revocations_mut();
        revocations.iter().filter(|r| list.insert(r)).collect()
    };
    let closed: usize = wider.into_iter().map(|r| shared.hub.revoke(r)).sum();
    metrics::counter!("edge_revoked_connections_total").increment(closed as u64);
    if closed > 0 {
        tracing::info!(closed, "closed connections whose token was revoked");
    }
}

/// Reads the whole stored list, page by page, and applies it; forgets expired entries.
async fn sync(shared: &Services) -> Result<(), String> {
    let mut after = None;
    let mut entries = Vec::new();
    loop {
        // Not on behalf of a user: the router ignores the name.
        match shared.router.call("", RouterOp::Revocations { after: after.take() }, INTERNAL_TIMEOUT).await {
            RouterReply::Revocations { entries: page, more } => {
                after = page.last().map(Revocation::key);
                entries.extend(page);
                if !more || after.is_none() {
                    break;
                }
            }
            other => return Err(format!("{other:?}")),
        }
    }
    apply(shared, &entries);
    let mut list = shared.revocations_mut();
    list.prune(crate::connection::now_secs());
    metrics::gauge!("edge_revocations").set(list.len() as f64);
    Ok(())
}
