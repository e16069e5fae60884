//! The two processes of a cluster: edges (WebSocket termination) and routers (sequencing,
//! persistence), connected by NATS, sharing a ScyllaDB/Cassandra keyspace.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bus::Bus;
use edge::admin::Render;
use edge::{Authenticator, Edge, EdgeConfig, Health};
use persistence::{CqlConfig, CqlStore, Store};
use router::{Router, RouterConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An edge's settings, validated.
pub struct EdgeNodeConfig {
    pub edge: EdgeConfig,
    pub auth: Authenticator,
    pub nats: bus::nats::NatsConfig,
    pub shutdown_deadline: Duration,
    pub audit: Arc<audit::AuditLog>,
    /// `Some` serves `wss://` only.
    pub tls: Option<crate::ListenerTls>,
}

/// Runs an edge until `shutdown`, then drains it.
pub async fn run_edge(
    config: EdgeNodeConfig,
    listener: TcpListener,
    admin: TcpListener,
    render: Render,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bus: Arc<dyn Bus> = Arc::new(bus::nats::NatsBus::connect(config.nats).await.context("connect to NATS")?);
    let mut edge = Edge::new(config.edge, config.auth, bus.clone()).with_audit(config.audit);
    let tls_stop = CancellationToken::new();
    if let Some(tls) = config.tls {
        edge = tls.serve_on(edge, tls_stop.clone());
    }
    let admin_stop = CancellationToken::new();
    // An edge holds no store: its admin port takes no revocations (a router's does).
    let admin_task = tokio::spawn(edge::admin::serve(admin, edge.health(), render, None, admin_stop.clone()));
    edge.run(listener, shutdown, config.shutdown_deadline).await;
    tls_stop.cancel();
    flush(&*bus).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    Ok(())
}

/// A router's settings, validated.
pub struct RouterNodeConfig {
    pub router: RouterConfig,
    pub cql: CqlConfig,
    pub nats: bus::nats::NatsConfig,
    pub shutdown_deadline: Duration,
    pub audit: Arc<audit::AuditLog>,
    /// The bearer token of the admin port's revocation endpoints; `None`: they are off.
    pub admin_token: Option<Vec<u8>>,
    /// Default lifetime of a revocation entry.
    pub revocation_retention: Duration,
}

/// Runs a router until `shutdown`, then finishes what is in flight (within the deadline).
pub async fn run_router(
    config: RouterNodeConfig,
    admin: TcpListener,
    render: Render,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let health = Health::default();
    let admin_stop = CancellationToken::new();
    let control = Arc::new(crate::control::Revocations::default());
    let operator = crate::control::operator(config.admin_token, control.clone());
    let admin_task = tokio::spawn(edge::admin::serve(admin, health.clone(), render, operator, admin_stop.clone()));
    let store: Arc<dyn Store> = Arc::new(CqlStore::connect(&config.cql).await.context("connect to the CQL database")?);
    let bus: Arc<dyn Bus> = Arc::new(bus::nats::NatsBus::connect(config.nats).await.context("connect to NATS")?);
    let router = Router::new(store, bus.clone(), config.router).with_audit(config.audit);
    control.serve(router.revoker(config.revocation_retention));
    let router = router.bind().await.context("subscribe")?;
    health.set_ready(true);
    let stop = CancellationToken::new();
    let task = tokio::spawn(router.run(stop.clone()));
    shutdown.cancelled().await;
    health.set_ready(false);
    stop.cancel();
    match tokio::time::timeout(config.shutdown_deadline, task).await {
        Ok(joined) => joined.context("router task")?.context("router")?,
        Err(_) => tracing::warn!("shutdown deadline passed with requests in flight"),
    }
    flush(&*bus).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    Ok(())
}

/// How long a stopping process waits for its last publishes to reach NATS.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends what is still queued for NATS (the last replies, events, the stopping heartbeat):
/// a publish only queues, and the connection drops what it has not written when it closes.
async fn flush(bus: &dyn Bus) {
    match tokio::time::timeout(FLUSH_TIMEOUT, bus.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "last publishes not confirmed by NATS"),
        Err(_) => tracing::warn!("last publishes not confirmed by NATS within {FLUSH_TIMEOUT:?}"),
    }
}
