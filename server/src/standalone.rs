//! The standalone node: edge + router + in-process bus + embedded store, one process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bus::LocalBus;
use edge::admin::Render;
use edge::{Authenticator, Edge, EdgeConfig};
use persistence::{EmbeddedConfig, EmbeddedStore, Store};
use router::{Router, RouterConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything the standalone node needs, validated.
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub edge: EdgeConfig,
    pub router: RouterConfig,
    pub store_max_batch: usize,
    /// `Some` to keep history in a CQL database instead of the embedded file.
    pub cql: Option<persistence::CqlConfig>,
    pub auth: Authenticator,
    pub shutdown_deadline: Duration,
    /// The audit trail (edge and router records alike).
    pub audit: Arc<audit::AuditLog>,
    /// The bearer token of the admin port's revocation endpoints; `None`: they are off.
    pub admin_token: Option<Vec<u8>>,
    /// Default lifetime of a revocation entry.
    pub revocation_retention: Duration,
    /// `Some` serves `wss://` only.
    pub tls: Option<crate::ListenerTls>,
}

/// File name of the embedded store inside the data directory.
pub const STORE_FILE: &str = "messenger.redb";

/// Runs the node until `shutdown`, then drains clients, stops the router, and closes the
/// store (every acknowledged write is already on disk; closing joins the writer thread).
pub async fn run(
    config: StandaloneConfig,
    listener: TcpListener,
    admin: TcpListener,
    render: Render,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = match &config.cql {
        Some(cql) => Arc::new(persistence::CqlStore::connect(cql).await.context("connect to the CQL database")?),
        None => {
            let mut store_config = EmbeddedConfig::new(config.data_dir.join(STORE_FILE));
            store_config.max_batch = config.store_max_batch;
            Arc::new(EmbeddedStore::open(store_config).context("open the embedded store")?)
        }
    };
    let bus = Arc::new(LocalBus::new());

    let router_stop = CancellationToken::new();
    let router = Router::new(store.clone(), bus.clone(), config.router).with_audit(config.audit.clone());
    let control = Arc::new(crate::control::Revocations::default());
    control.serve(router.revoker(config.revocation_retention));
    let operator = crate::control::operator(config.admin_token, control);
    let router = router.bind().await.context("router")?;
    let router_task = tokio::spawn(router.run(router_stop.clone()));

    let mut edge = Edge::new(config.edge, config.auth, bus).with_audit(config.audit);
    let tls_stop = CancellationToken::new();
    if let Some(tls) = config.tls {
        edge = tls.serve_on(edge, tls_stop.clone());
    }
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(edge::admin::serve(admin, edge.health(), render, operator, admin_stop.clone()));

    edge.run(listener, shutdown, config.shutdown_deadline).await;
    tls_stop.cancel();
    router_stop.cancel();
    router_task.await.context("router task")?.context("router")?;
    store.flush().await.context("flush the store")?;
    drop(store);
    admin_stop.cancel();
    let _ = admin_task.await;
    Ok(())
}
