//! The `messenger` binary's library half: configuration, the standalone node, token minting.
//!
//! `main.rs` only reads in order: parse and validate the configuration, start tracing and
//! metrics, run. Everything here takes bound listeners and a shutdown token, so tests can
//! run it on port 0.
//!
//! Layout:
//! - [`config`]: command line and environment (clap), validated into component configs.
//! - [`standalone`]: edge + router + in-process bus + embedded store in one process.
//! - [`cluster`]: the edge and router processes of a cluster (NATS, ScyllaDB).
//! - [`control`]: the admin port's revocation endpoints, and the `revoke` command's client.
//! - [`keys`]: the token key set (JWKS file), reloaded while the node runs.
//! - [`token`]: development tokens and the development secret.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - this file: [`ListenerTls`], the client listener's TLS as both kinds of edge take it.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod control;
pub mod keys;
pub mod standalone;
pub mod telemetry;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// TLS on the client listener: the certificate (loaded, reloadable) and how often its files
/// are read for a rotation.
pub struct ListenerTls {
    pub tls: Arc<edge::tls::ServerTls>,
    pub reload_interval: Duration,
}

impl ListenerTls {
    /// Gives `edge` the TLS and starts watching the files (and SIGHUP) until `stop`.
    pub fn serve_on(self, edge: edge::Edge, stop: CancellationToken) -> edge::Edge {
        tokio::spawn(self.tls.clone().watch(self.reload_interval, stop));
        edge.with_tls(self.tls)
    }
}
