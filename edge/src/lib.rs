//! The edge: WebSocket termination for clients.
//!
//! An edge accepts TCP connections, upgrades them (negotiating the JSON or bincode
//! subprotocol), authenticates a JWT, and then carries frames between the client and the
//! routers over the bus. It keeps no durable state: everything it knows is rebuilt when a
//! client reconnects and resumes.
//!
//! Layout:
//! - [`config`]: every limit and timeout ([`EdgeConfig`]), including the tungstenite settings.
//! - [`admission`]: connection caps (node, client address, user) and connect rates (pure).
//! - [`auth`]: JWT verification with an algorithm allow-list (pure).
//! - [`order`]: per-chat gap-free ordering decisions (pure).
//! - [`outbox`]: per-connection outbound queue, bounded in bytes.
//! - [`hub`]: the local subscription index and encode-once fan-out.
//! - [`tls`]: TLS on the listener (`wss://`), its certificate reloaded when the files change.
//! - `handshake`: the TLS handshake, upgrade and authentication of a new connection, under
//!   one deadline.
//! - `session`: a connection's state machine (what each frame does, what is written, what
//!   waits for the resume), pure.
//! - `connection`: one client's task, the socket glue around its session.
//! - [`rpc`]: requests to the routers, addressed to each chat's owner.
//! - [`revocation`]: the revocation list, kept current from the routers, and the closing of
//!   connections whose token it refuses.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`hangup`]: SIGHUP as "reread your files" for the reloaders.
//! - this file: [`Edge`], its accept loop and drain.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod config;
mod connection;
mod handshake;
pub mod hangup;
pub mod hub;
pub mod order;
pub mod outbox;
pub mod revocation;
pub mod rpc;
mod session;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bus::Bus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::Authenticator;
pub use config::EdgeConfig;

use crate::hub::Hub;

/// Readiness as `/readyz` reports it: false until serving, and again once draining.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed)
    }
}

/// What every connection of the edge works through.
pub(crate) struct Services {
    config: EdgeConfig,
    auth: Authenticator,
    router: rpc::RouterClient,
    hub: Arc<Hub>,
    /// Connection caps and connect rates; held briefly per connect and per disconnect.
    admission: std::sync::Mutex<admission::Admission>,
    /// Authentication results, refusals and closes for cause.
    audit: Arc<audit::AuditLog>,
    /// Revoked tokens; read at every connect and refresh, written per revocation.
    revocations: std::sync::RwLock<protocol::revocation::RevocationList>,
    /// TLS on the listener; `None` serves plain `ws://`.
    tls: Option<Arc<tls::ServerTls>>,
}

impl Services {
    /// The admission state; a poisoned lock still holds correct counts (every update is one
    /// step), so it is used as it is.
    fn admission(&self) -> std::sync::MutexGuard<'_, admission::Admission> {
        self.admission.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn revocations(&self) -> std::sync::RwLockReadGuard<'_, protocol::revocation::RevocationList> {
        self.revocations.read().unwrap_or_else(|p| p.into_inner())
    }

    fn revocations_mut(&self) -> std::sync::RwLockWriteGuard<'_, protocol::revocation::RevocationList> {
        self.revocations.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// An edge node.
pub struct Edge {
    shared: Arc<Services>,
    runner: hub::HubRunner,
    health: Health,
}

impl Edge {
    pub fn new(config: EdgeConfig, auth: Authenticator, bus: Arc<dyn Bus>) -> Self {
        let router = rpc::RouterClient::new(bus);
        let (hub, runner) = Hub::new(router.clone(), config.bus_inbox_capacity, config.outbound_queue_bytes);
        let admission =
            std::sync::Mutex::new(admission::Admission::new(config.admission.clone(), std::time::Instant::now()));
        let audit = Arc::new(audit::AuditLog::off());
        Edge {
            shared: Arc::new(Services {
                config,
                auth,
                router,
                hub,
                admission,
                audit,
                revocations: Default::default(),
                tls: None,
            }),
            runner,
            health: Health::default(),
        }
    }

    /// The readiness flag this edge maintains.
    /// Writes the audit trail to `audit` (by default there is none).
    pub fn with_audit(mut self, audit: Arc<audit::AuditLog>) -> Self {
        if let Some(services) = Arc::get_mut(&mut self.shared) {
            services.audit = audit;
        }
        self
    }

    /// Serves `wss://` only: every connection's TLS handshake runs in its own task, within
    /// the connection's handshake deadline ([`EdgeConfig::auth_timeout`]).
    pub fn with_tls(mut self, tls: Arc<tls::ServerTls>) -> Self {
        if let Some(services) = Arc::get_mut(&mut self.shared) {
            services.tls = Some(tls);
        }
        self
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Serves clients on `listener` until `shutdown` fires, then drains: readiness goes false,
    /// the listener closes, connected clients are sent `goaway` + close 1001 in batches, and
    /// whoever is still connected after `deadline` is closed at once. It cannot fail: a
    /// failed accept (out of descriptors) is counted and retried, never fatal.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken, deadline: Duration) {
        let Edge { shared, runner, health } = self;
        let hub_stop = CancellationToken::new();
        let hub_task = tokio::spawn(shared.hub.clone().run(runner, hub_stop.clone()));
        let watch_task = tokio::spawn(shared.router.clone().watch_routers(hub_stop.clone()));
        let revocation_task = tokio::spawn(revocation::watch(shared.clone(), hub_stop.clone()));
        let tracker = TaskTracker::new();
        let draining = CancellationToken::new();
        let force = CancellationToken::new();
        let next_id = AtomicU64::new(1);
        health.set_ready(true);
        tracing::info!(addr = ?listener.local_addr().ok(), "edge listening");
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of file descriptors or a transient network error: back off
                        // instead of spinning, and keep serving those already connected.
                        metrics::counter!("edge_accept_errors_total").increment(1);
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            tracker.spawn(connection::serve(stream, peer, id, shared.clone(), draining.clone(), force.clone()));
        }
        health.set_ready(false);
        drop(listener);
        draining.cancel();
        tracker.close();
        let started = tokio::time::Instant::now();
        tracing::info!(connections = shared.hub.connections(), "draining");
        let drain = async {
            for batch in shared.hub.outboxes().chunks(shared.config.drain_batch.max(1)) {
                for outbox in batch {
                    outbox.go_away();
                }
                tokio::time::sleep(shared.config.drain_interval).await;
            }
            tracker.wait().await;
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!(remaining = shared.hub.connections(), "drain deadline passed; closing the rest");
            force.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(3), tracker.wait()).await;
        }
        hub_stop.cancel();
        let _ = hub_task.await;
        let _ = watch_task.await;
        let _ = revocation_task.await;
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "edge stopped");
    }
}
