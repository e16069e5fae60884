//! The operator's write endpoints on a node that holds a store (a router, a standalone node),
//! and the client half the `messenger revoke` command uses.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use edge::admin::{Control, MIN_ADMIN_TOKEN_BYTES, Operator};
use router::{RevokeError, RevokeRequest, Revoker};

/// Revocations through a router's [`Revoker`], once the router is up (503 before).
#[derive(Default)]
pub struct Revocations {
    revoker: OnceLock<Revoker>,
}

impl Revocations {
    /// Starts answering through `revoker`.
    pub fn serve(&self, revoker: Revoker) {
        let _ = self.revoker.set(revoker);
    }
}

fn json_error(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[async_trait::async_trait]
impl Control for Revocations {
    async fn revoke(&self, body: &[u8], actor: &str) -> (u16, String) {
        let Some(revoker) = self.revoker.get() else { return (503, json_error("starting")) };
        let request: RevokeRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return (400, json_error(&e.to_string())),
        };
        match revoker.revoke(request, actor).await {
            Ok(r) => (200, serde_json::to_string(&r).unwrap_or_default()),
            Err(e @ RevokeError::Invalid(_)) => (400, json_error(&e.to_string())),
            Err(e) => {
                tracing::error!(error = %e, "revocation failed");
                (503, json_error(&e.to_string()))
            }
        }
    }

    async fn revocations(&self) -> (u16, String) {
        let Some(revoker) = self.revoker.get() else { return (503, json_error("starting")) };
        match revoker.list().await {
            Ok(list) => (200, serde_json::to_string(&list).unwrap_or_default()),
            Err(e) => (503, json_error(&e.to_string())),
        }
    }
}

/// Reads an admin token file (surrounding whitespace ignored).
pub fn read_token(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let token = text.trim().as_bytes().to_vec();
    if token.len() < MIN_ADMIN_TOKEN_BYTES {
        anyhow::bail!("the admin token in {} must be at least {MIN_ADMIN_TOKEN_BYTES} bytes", path.display());
    }
    Ok(token)
}

/// The write endpoints for a node given `--admin-token-file`, or none.
pub fn operator(token: Option<Vec<u8>>, control: Arc<Revocations>) -> Option<Arc<Operator>> {
    token.and_then(|t| Operator::new(t, control)).map(Arc::new)
}

/// How long the `revoke` command waits for the node.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request to a node's admin port (`host:port`, optionally `http://`-prefixed):
/// `POST` with `body` (a revocation), `GET` without (the list). Returns status and body.
pub fn call(admin: &str, token: &[u8], body: Option<&str>) -> anyhow::Result<(u16, String)> {
    let url = format!("http://{}/v1/revocations", admin.trim_start_matches("http://").trim_end_matches('/'));
    let token = std::str::from_utf8(token).context("the admin token is not UTF-8")?;
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(CLIENT_TIMEOUT)).http_status_as_error(false).build().into();
    let authorization = format!("Bearer {token}");
    let mut response = match body {
        Some(body) => agent
            .post(&url)
            .header("authorization", &authorization)
            .header("content-type", "application/json")
            .send(body),
        None => agent.get(&url).header("authorization", &authorization).call(),
    }
    .with_context(|| format!("request to {url}"))?;
    let status = response.status().as_u16();
    let answer = response.body_mut().read_to_string().context("read the answer")?;
    Ok((status, answer))
}
