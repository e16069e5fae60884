//! Test support for the workspace: the real servers the integration tests talk to, on free
//! loopback ports, cleaned up when dropped. One copy of each fixture, so that every suite starts,
//! waits for and tears down a server the same way.
//!
//! Modelled on the harness of the nats.rs client: a real server per test, never a mock.
//!
//! Layout:
//! - [`ports`]: [`free_port`], a port nobody listens on, below the ephemeral range.
//! - [`wait`]: [`wait_for`] (blocking) and [`poll_until`] (async) poll a condition to a
//!   deadline; tests use them instead of sleeping until something is ready.
//! - [`nats`]: [`NatsServer`], a real `nats-server` (Debian's package), optionally with a
//!   monitoring port, TLS, client certificates, or the deployed role permissions
//!   (`deploy/nats/`, with test passwords); killed and its temporary directory removed on
//!   drop; restartable.
//! - [`cql`]: [`cql_node`] finds the test CQL database (`MESSENGER_TEST_CQL=host:port`),
//!   [`cql_tls`] its TLS files (`MESSENGER_TEST_CQL_TLS`),
//!   [`unique_keyspace`] names a keyspace no other test uses, [`KeyspaceGuard`] drops it.
//! - [`token`]: [`mint_token`] and friends, HS256 JWTs as the edges accept them.
//! - [`tls`]: [`TestCa`] makes a private CA and the server and client certificates it signs,
//!   at test time (no key is committed).
//!
//! Skipping: in CI (`CI=true`) a test that needs NATS or the CQL database must run, so a
//! missing server panics there; elsewhere the fixtures return `None` after saying loudly on
//! stderr that the test is skipped (see [`in_ci`]).
#![forbid(unsafe_code)]
// Test-only code: a fixture that cannot do its job ends the test at once with a message, so
// `expect` and `unwrap` are the point here rather than a hazard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cql;
pub mod nats;
pub mod ports;
pub mod tls;
pub mod token;
pub mod wait;

pub use cql::{KeyspaceGuard, cql_node, cql_tls, unique_keyspace};
pub use nats::{NatsBuilder, NatsServer, deployed_nats_conf, nats_server_bin};
pub use ports::free_port;
pub use tls::{TestCa, TestCert};
pub use token::{mint_claims, mint_expired_token, mint_token};
pub use wait::{Ready, poll_until, wait_for};

/// Whether this is a CI run (`CI=true`), where tests needing real servers must not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// What a fixture does when the server it needs is absent: panics in CI, otherwise says
/// loudly that the test is skipped and returns `None`.
pub fn skip<T>(why: &str) -> Option<T> {
    if in_ci() {
        panic!("CI=true but {why}: CI must run this test, never skip it");
    }
    eprintln!("SKIPPED: {why}");
    None
}
