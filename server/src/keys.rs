//! Keeping the token verification key set (a JWKS file) current while the node runs.
//!
//! cert-manager, Vault agent or a sidecar that mirrors an OpenID provider's JWKS rewrites the
//! file; the node notices within [`POLL_INTERVAL`] (or at once on SIGHUP) and verifies new
//! tokens with the new set. Open connections are not touched: each was verified when it
//! authenticated, and its token still ends it at `exp`. A file that does not parse, or holds
//! no usable key, is refused and the previous set stays in force.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use edge::Authenticator;
use tokio_util::sync::CancellationToken;

/// How often the file's modification time and size are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Reads and parses a JWKS file.
pub fn load(path: &Path) -> anyhow::Result<Vec<edge::auth::VerificationKey>> {
    let json = std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    Ok(Authenticator::key_set(&json)?)
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads `path` into `auth` whenever it changes or SIGHUP arrives, until `shutdown`.
pub async fn watch(path: PathBuf, auth: Authenticator, shutdown: CancellationToken) {
    let mut seen = stamp(&path);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => false,
            _ = hup => true,
        };
        let now = stamp(&path);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match load(&path) {
            Ok(keys) => {
                auth.set_key_set(keys);
                metrics::counter!("auth_key_set_reloads_total", "result" => "ok").increment(1);
                tracing::info!(file = %path.display(), kids = ?auth.key_ids(), "token key set reloaded");
            }
            Err(err) => {
                metrics::counter!("auth_key_set_reloads_total", "result" => "error").increment(1);
                tracing::error!(file = %path.display(), error = %err, "token key set not reloaded; the previous one stays");
            }
        }
    }
}
