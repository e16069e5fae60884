//! Token revocation, the router's side: an operator's request is validated, stored durably,
//! then broadcast on [`REVOCATION_SUBJECT`] to every edge, which closes the matching
//! connections. Edges that missed the broadcast (starting, or cut off from the bus) read the
//! stored list page by page ([`RouterOp::Revocations`](protocol::envelope::RouterOp)).

use std::sync::Arc;
use std::time::Duration;

use persistence::{Store, StoreError};
use protocol::codec::encode_envelope;
use protocol::ids::valid_user_id;
use protocol::revocation::{MAX_JTI_BYTES, REVOCATION_PAGE, REVOCATION_SUBJECT, Revocation, RevocationKey};
use serde::Deserialize;
use thiserror::Error;

use crate::dispatch::Services;

/// What an operator asks for (the JSON body of `POST /v1/revocations`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RevokeRequest {
    /// One token by its `jti`. `until`: when the entry may be forgotten (the token's `exp`,
    /// if known); by default now + the retention.
    Token { jti: String, until: Option<u64> },
    /// Every token of `user` issued before `before` (default: now).
    User { user: String, before: Option<u64>, until: Option<u64> },
}

/// Why a revocation was not recorded.
#[derive(Debug, Error)]
pub enum RevokeError {
    #[error("invalid revocation: {0}")]
    Invalid(&'static str),
    #[error("not recorded in the audit trail: {0}")]
    Audit(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Records and broadcasts revocations; cheap to clone.
#[derive(Clone)]
pub struct Revoker {
    services: Services,
    retention: Duration,
}

impl Revoker {
    /// Default time a revocation is kept: the edges' default longest token lifetime (24 h)
    /// plus the largest clock-skew leeway they accept (5 min). After it, every token the
    /// entry could match has expired anyway.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600 + 300);

    pub(crate) fn new(services: Services, retention: Duration) -> Self {
        Revoker { services, retention }
    }

    /// The revocation `request` asks for at `now` (seconds), validated.
    pub fn plan(&self, request: RevokeRequest, now: u64) -> Result<Revocation, RevokeError> {
        let retention = self.retention.as_secs();
        match request {
            RevokeRequest::Token { jti, until } => {
                if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
                    return Err(RevokeError::Invalid("jti must be 1-256 bytes"));
                }
                Ok(Revocation::Token { jti, until: until.unwrap_or(now.saturating_add(retention)) })
            }
            RevokeRequest::User { user, before, until } => {
                if !valid_user_id(&user) {
                    return Err(RevokeError::Invalid("not a valid user id"));
                }
                let before = before.unwrap_or(now);
                // Tokens issued up to `before` can live until `before` + the longest lifetime.
                let until = until.unwrap_or(before.saturating_add(retention)).max(before);
                Ok(Revocation::User { user, before, until })
            }
        }
    }

    /// Validates, audits, stores and broadcasts; returns what is now in force (merged with an
    /// earlier revocation of the same key). `actor` names the operator for the audit trail.
    pub async fn revoke(&self, request: RevokeRequest, actor: &str) -> Result<Revocation, RevokeError> {
        let now = self.services.clock.now_ms() / 1000;
        let planned = self.plan(request, now)?;
        // A merge keeps the key, so the planned and the stored revocation share it.
        let key = planned.key();
        let event = |outcome, r: &Revocation| {
            let (kind, before) = match r {
                Revocation::Token { .. } => ("token", None),
                Revocation::User { before, .. } => ("user", Some(*before)),
            };
            audit::Event::Revoked { actor, outcome, kind, id: &key.id, before, until: r.until() }
        };
        self.services
            .audit
            .record(&event(audit::Outcome::Requested, &planned))
            .map_err(|e| RevokeError::Audit(e.to_string()))?;
        let stored = self.services.store.revoke(planned, now).await?;
        self.services.audit.note(&event(audit::Outcome::Committed, &stored));
        metrics::counter!("router_revocations_total").increment(1);
        // Edges that miss this catch up from the store (see `RouterOp::Revocations`).
        if let Err(err) = self.services.bus.publish(REVOCATION_SUBJECT, encode_envelope(&stored)).await {
            tracing::warn!(error = %err, "revocation stored but not broadcast; edges catch up on their next sync");
        }
        Ok(stored)
    }

    /// Every revocation in force.
    pub async fn list(&self) -> Result<Vec<Revocation>, RevokeError> {
        let now = self.services.clock.now_ms() / 1000;
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (entries, more) = page(&self.services.store, after, now).await?;
            after = entries.last().map(Revocation::key);
            all.extend(entries);
            if !more {
                return Ok(all);
            }
        }
    }
}

/// A page for an edge.
pub(crate) async fn page(
    store: &Arc<dyn Store>,
    after: Option<RevocationKey>,
    now: u64,
) -> Result<(Vec<Revocation>, bool), StoreError> {
    let entries = store.revocations(after, REVOCATION_PAGE, now).await?;
    let more = entries.len() >= REVOCATION_PAGE;
    Ok((entries, more))
}
