//! Keeping the token verification key set (JWKS) current while the node runs.
//!
//! From a file ([`watch`]): cert-manager, Vault agent or a sidecar rewrites it; the node
//! notices within [`POLL_INTERVAL`] (or at once on SIGHUP). From an OpenID provider's URL
//! ([`poll`]): fetched at start (the node does not start without it), then every refresh
//! interval with `If-None-Match`, and early (at most every [`MIN_REFETCH_INTERVAL`]) when a
//! token names a `kid` the set lacks, which is how a provider's new key is picked up before
//! the next poll. Either way new tokens are verified with the new set; open connections are
//! not touched (each was verified when it authenticated, and its token still ends it at
//! `exp`). A document that does not parse, or holds no usable key, is refused and the
//! previous set stays in force.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use edge::Authenticator;
use edge::hangup::Hangup;
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

/// Reloads `path` into `auth` whenever it changes or `hangup` fires, until `shutdown`.
pub async fn watch(path: PathBuf, auth: Authenticator, mut hangup: Hangup, shutdown: CancellationToken) {
    let mut seen = stamp(&path);
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => false,
            _ = hangup.recv() => true,
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

/// Time for one fetch of a JWKS URL, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document read (providers publish a few KiB).
pub const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// Shortest time between two fetches triggered by unknown `kid`s: a client inventing key ids
/// cannot make the node hammer the provider.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Retry delay after a failed fetch.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// What a fetch found: a new set (with its ETag), or "not modified".
enum Fetched {
    Keys(Vec<edge::auth::VerificationKey>, Option<String>),
    NotModified,
}

/// One blocking GET of `url`.
fn fetch_blocking(url: &str, etag: Option<&str>) -> anyhow::Result<Fetched> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(3)
        .build()
        .into();
    let mut request = agent.get(url).header("accept", "application/json");
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    let mut response = request.call().map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    match response.status().as_u16() {
        304 => Ok(Fetched::NotModified),
        200 => {
            let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_JWKS_BYTES)
                .read_to_vec()
                .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
            Ok(Fetched::Keys(Authenticator::key_set(&body)?, etag))
        }
        status => anyhow::bail!("GET {url}: HTTP {status}"),
    }
}

async fn fetch(url: &str, etag: Option<String>) -> anyhow::Result<Fetched> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || fetch_blocking(&url, etag.as_deref()))
        .await
        .map_err(|e| anyhow::anyhow!("fetch task: {e}"))?
}

/// The key set at `url`, fetched once (at start).
pub fn load_url(url: &str) -> anyhow::Result<(Vec<edge::auth::VerificationKey>, Option<String>)> {
    match fetch_blocking(url, None)? {
        Fetched::Keys(keys, etag) => Ok((keys, etag)),
        Fetched::NotModified => anyhow::bail!("GET {url}: 304 to a request without a validator"),
    }
}

/// Keeps `auth`'s key set current from `url` every `interval` (and early on unknown `kid`s),
/// until `shutdown`. `etag` is the validator of the set already loaded.
pub async fn poll(
    url: String,
    auth: Authenticator,
    interval: Duration,
    mut etag: Option<String>,
    shutdown: CancellationToken,
) {
    let mut next = tokio::time::Instant::now() + interval;
    let mut last_fetch = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
            _ = auth.key_missed() => {
                // Rate-limited: wait out the rest of the minimum interval.
                let earliest = last_fetch + MIN_REFETCH_INTERVAL;
                if earliest > tokio::time::Instant::now() {
                    next = next.min(earliest);
                    continue;
                }
            }
        }
        last_fetch = tokio::time::Instant::now();
        next = match fetch(&url, etag.clone()).await {
            Ok(Fetched::Keys(keys, tag)) => {
                auth.set_key_set(keys);
                etag = tag;
                metrics::counter!("auth_key_set_reloads_total", "result" => "ok").increment(1);
                tracing::info!(url, kids = ?auth.key_ids(), "token key set fetched");
                last_fetch + interval
            }
            Ok(Fetched::NotModified) => last_fetch + interval,
            Err(err) => {
                metrics::counter!("auth_key_set_reloads_total", "result" => "error").increment(1);
                tracing::warn!(url, error = %err, "token key set not fetched; the previous one stays");
                last_fetch + RETRY_INTERVAL.min(interval)
            }
        };
    }
}
