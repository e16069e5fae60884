//! Command line and environment. Every flag has an environment fallback (`MESSENGER_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use edge::admission::{AdmissionConfig, Cidr};
use edge::{Authenticator, EdgeConfig};
use persistence::EmbeddedConfig;
use protocol::limits::MAX_CLIENT_FRAME_BYTES;
use protocol::ratelimit::FloodLimits;
use router::RouterConfig;

/// Smallest outbound queue accepted: two history pages at their worst-case JSON size.
pub const MIN_OUTBOUND_QUEUE_BYTES: usize = 2 * protocol::limits::MAX_HISTORY_PAGE_BYTES;

/// Exit code for a bad configuration (EX_USAGE from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(name = "messenger", version, about = "A WebSocket messaging server.")]
pub struct Cli {
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. `info` or `edge=debug,info`.
    #[arg(long, env = "MESSENGER_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format.
    #[arg(long, env = "MESSENGER_LOG_FORMAT", default_value = "text", global = true, value_parser = ["text", "compact"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a complete node (edge + router + embedded store) in one process.
    Standalone(Box<StandaloneArgs>),
    /// Run an edge of a cluster: WebSocket clients on one side, NATS on the other.
    Edge(Box<EdgeNodeArgs>),
    /// Run a router of a cluster: requests from NATS, history in ScyllaDB/Cassandra.
    Router(Box<RouterNodeArgs>),
    /// Mint a development token (HS256) for a user.
    Token(TokenArgs),
    /// Revoke a token (by its jti) or every token of a user issued before a time, through a
    /// router's or a standalone node's admin port; or list the revocations in force.
    Revoke(RevokeArgs),
}

/// Where revocations are taken, on the nodes that hold a store.
#[derive(Debug, Args)]
pub struct RevocationArgs {
    /// File holding the bearer token (≥ 32 bytes) that `POST`/`GET /v1/revocations` on the
    /// admin port require. Without it, those endpoints answer 404.
    #[arg(long, env = "MESSENGER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// How long a revocation is kept when the request gives no `until`: at least the edges'
    /// --jwt-max-lifetime plus --jwt-leeway, after which every token it could match has
    /// expired.
    #[arg(long, env = "MESSENGER_REVOCATION_RETENTION", default_value_t = Span(router::Revoker::DEFAULT_RETENTION))]
    pub revocation_retention: Span,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "user", "list"])))]
pub struct RevokeArgs {
    /// The node's admin address (`host:port`): a router's, or a standalone node's.
    #[arg(long, env = "MESSENGER_ADMIN_URL", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// File holding the node's admin token.
    #[arg(long, env = "MESSENGER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: PathBuf,
    /// Revoke the token with this `jti`.
    #[arg(long)]
    pub jti: Option<String>,
    /// Revoke every token of this user issued before --before (default: now).
    #[arg(long)]
    pub user: Option<String>,
    /// Seconds since the Unix epoch: with --user, the cut.
    #[arg(long, requires = "user")]
    pub before: Option<u64>,
    /// Seconds since the Unix epoch after which the entry may be forgotten (a token's `exp`).
    #[arg(long)]
    pub until: Option<u64>,
    /// List the revocations in force instead.
    #[arg(long)]
    pub list: bool,
}

/// Default `--listen-backlog`: room for a few thousand clients reconnecting at once (tokio's
/// own default is 1,024).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 8192;

#[derive(Debug, Args)]
pub struct EdgeNodeArgs {
    #[command(flatten)]
    pub node: ClientFacingArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// What every process that accepts clients takes: addresses, data directory, drain deadline,
/// token verification and the edge's limits.
#[derive(Debug, Args)]
pub struct ClientFacingArgs {
    /// WebSocket listen address.
    #[arg(long, env = "MESSENGER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz, /readyz).
    #[arg(long, env = "MESSENGER_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Pending-connection queue of the WebSocket listener: a reconnect storm larger than it
    /// has SYNs dropped and retried a second later. The kernel caps it at net.core.somaxconn.
    #[arg(long, env = "MESSENGER_LISTEN_BACKLOG", default_value_t = DEFAULT_LISTEN_BACKLOG,
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub listen_backlog: u32,
    /// Data directory: the embedded store (standalone) and the development secret.
    #[arg(long, env = "MESSENGER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Time allowed for a graceful shutdown after SIGTERM before remaining clients are cut.
    #[arg(long, env = "MESSENGER_SHUTDOWN_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_deadline: Duration,
    /// The audit trail: `stdout` (one JSON line per record, after the startup lines), a file
    /// path (appended, created 0600), or `off`.
    #[arg(long, env = "MESSENGER_AUDIT_LOG", default_value = "stdout")]
    pub audit_log: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
}

#[derive(Debug, Args)]
pub struct RouterNodeArgs {
    /// Admin HTTP listen address (/metrics, /healthz, /readyz).
    #[arg(long, env = "MESSENGER_ADMIN_LISTEN", default_value = "127.0.0.1:9091")]
    pub admin_listen: SocketAddr,
    /// Time allowed to finish requests in flight after SIGTERM.
    #[arg(long, env = "MESSENGER_SHUTDOWN_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_deadline: Duration,
    /// Router sequencing shards.
    #[arg(long, env = "MESSENGER_ROUTER_SHARDS", default_value_t = RouterConfig::DEFAULT_SHARDS)]
    pub router_shards: usize,
    /// The audit trail: `stdout`, a file path, or `off` (see the client-facing nodes).
    #[arg(long, env = "MESSENGER_AUDIT_LOG", default_value = "stdout")]
    pub audit_log: String,
    #[command(flatten)]
    pub revocation: RevocationArgs,
    #[command(flatten)]
    pub cql: CqlArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
}

#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS servers, comma separated `nats://host:port`.
    #[arg(long, env = "MESSENGER_NATS", value_delimiter = ',', default_value = "nats://127.0.0.1:4222")]
    pub nats: Vec<String>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "MESSENGER_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "MESSENGER_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS nkey seed (`SU...`).
    #[arg(long, env = "MESSENGER_NATS_NKEY_SEED", hide_env_values = true)]
    pub nats_nkey_seed: Option<String>,
    /// PEM CA file: require TLS to NATS and verify the server against it.
    #[arg(long, env = "MESSENGER_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to NATS (mTLS, `verify: true`); with
    /// --nats-tls-key and --nats-tls-ca.
    #[arg(long, env = "MESSENGER_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM private key of --nats-tls-cert.
    #[arg(long, env = "MESSENGER_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// Prefix of this process's reply subjects; NATS permissions let each role (or node)
    /// read only its own. Default `_INBOX.edge` on edges, `_INBOX.router` on routers.
    #[arg(long, env = "MESSENGER_NATS_INBOX_PREFIX")]
    pub nats_inbox_prefix: Option<String>,
    /// File of cluster keys (hex, one per line, ≥ 32 bytes each): the first signs every
    /// message this process publishes on NATS; every one verifies. Required.
    #[arg(long, env = "MESSENGER_CLUSTER_KEY_FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Largest accepted difference between a bus message's signing time and this clock.
    #[arg(long, env = "MESSENGER_CLUSTER_MAC_WINDOW", default_value_t = Span(Duration::from_millis(bus::mac::DEFAULT_MAX_AGE_MS)))]
    pub cluster_mac_window: Span,
}

/// Which cluster process a NATS connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsRole {
    Edge,
    Router,
}

impl NatsRole {
    /// The default reply-subject prefix; deploy/nats/permissions.conf grants each role its own.
    pub fn default_inbox_prefix(self) -> &'static str {
        match self {
            NatsRole::Edge => "_INBOX.edge",
            NatsRole::Router => "_INBOX.router",
        }
    }
}

/// Bounds of `--cluster-mac-window`: below a second, ordinary clock skew drops messages;
/// above ten minutes, a captured message can be replayed for too long.
pub const CLUSTER_MAC_WINDOW_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);

/// Longest `--nats-inbox-prefix`: every reply subject carries it, so it stays short.
pub const MAX_INBOX_PREFIX_BYTES: usize = 128;

/// A NATS subject prefix without wildcards: dot-separated non-empty tokens.
fn valid_inbox_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_INBOX_PREFIX_BYTES
        && prefix
            .split('.')
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
}

impl NatsArgs {
    /// Validates and builds the NATS configuration, reading the cluster key file; `name`
    /// tells processes apart in NATS.
    pub fn to_config(&self, name: &str, role: NatsRole) -> Result<bus::nats::NatsConfig, String> {
        let servers: Vec<String> = self.nats.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        if servers.is_empty() {
            return Err("--nats needs at least one server".into());
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            return Err("--nats-user and --nats-password go together".into());
        }
        client_identity("--nats", self.nats_tls_ca.is_some(), &self.nats_tls_cert, &self.nats_tls_key)?;
        let inbox_prefix = self.nats_inbox_prefix.clone().unwrap_or_else(|| role.default_inbox_prefix().to_owned());
        if !valid_inbox_prefix(&inbox_prefix) {
            return Err(format!(
                "--nats-inbox-prefix {inbox_prefix:?} must be dot-separated tokens of [A-Za-z0-9_-], at most {MAX_INBOX_PREFIX_BYTES} bytes"
            ));
        }
        if !CLUSTER_MAC_WINDOW_RANGE.contains(&self.cluster_mac_window.0) {
            return Err("--cluster-mac-window must be between 1s and 10m".into());
        }
        let Some(key_file) = &self.cluster_key_file else {
            return Err("a cluster node needs the cluster key: give --cluster-key-file \
                 (generate one with `openssl rand -hex 32`; docs/operations.md §10)"
                .into());
        };
        let text =
            std::fs::read_to_string(key_file).map_err(|e| format!("--cluster-key-file {}: {e}", key_file.display()))?;
        let keys =
            bus::ClusterKeys::parse(&text).map_err(|e| format!("--cluster-key-file {}: {e}", key_file.display()))?;
        Ok(bus::nats::NatsConfig {
            name: name.to_owned(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            nkey_seed: self.nats_nkey_seed.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            max_age: self.cluster_mac_window.0,
            inbox_prefix,
            ..bus::nats::NatsConfig::new(servers, std::sync::Arc::new(keys))
        })
    }
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub node: ClientFacingArgs,
    /// Router sequencing shards.
    #[arg(long, env = "MESSENGER_ROUTER_SHARDS", default_value_t = RouterConfig::DEFAULT_SHARDS)]
    pub router_shards: usize,
    /// Most writes per group commit (one fsync) of the embedded store.
    #[arg(long, env = "MESSENGER_STORE_MAX_BATCH", default_value_t = EmbeddedConfig::DEFAULT_MAX_BATCH)]
    pub store_max_batch: usize,
    /// Where history lives: `embedded` (a file in the data directory) or `cql`
    /// (ScyllaDB/Cassandra, see the --cql-* flags).
    #[arg(long, env = "MESSENGER_STORE", default_value = "embedded", value_parser = ["embedded", "cql"])]
    pub store: String,
    #[command(flatten)]
    pub revocation: RevocationArgs,
    #[command(flatten)]
    pub cql: CqlArgs,
}

#[derive(Debug, Args)]
pub struct CqlArgs {
    /// Contact points, comma separated `host:port`.
    #[arg(long, env = "MESSENGER_CQL_NODES", value_delimiter = ',', default_value = "127.0.0.1:9042")]
    pub cql_nodes: Vec<String>,
    /// Keyspace (created with --cql-replication if missing).
    #[arg(long, env = "MESSENGER_CQL_KEYSPACE", default_value = "messenger")]
    pub cql_keyspace: String,
    /// Replication map for a new keyspace.
    #[arg(
        long,
        env = "MESSENGER_CQL_REPLICATION",
        default_value = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )]
    pub cql_replication: String,
    /// Consistency of reads and writes.
    #[arg(long, env = "MESSENGER_CQL_CONSISTENCY", default_value = "local_quorum")]
    pub cql_consistency: String,
    /// Consistency of seq claims (Paxos): local_serial or serial.
    #[arg(long, env = "MESSENGER_CQL_SERIAL_CONSISTENCY", default_value = "local_serial")]
    pub cql_serial_consistency: String,
    /// Username for password authentication.
    #[arg(long, env = "MESSENGER_CQL_USERNAME")]
    pub cql_username: Option<String>,
    /// Password for password authentication.
    #[arg(long, env = "MESSENGER_CQL_PASSWORD", hide_env_values = true)]
    pub cql_password: Option<String>,
    /// PEM file of CA certificates: connect with TLS and verify the nodes against it.
    #[arg(long, env = "MESSENGER_CQL_TLS_CA")]
    pub cql_tls_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to the nodes (`require_client_auth`); with
    /// --cql-tls-key and --cql-tls-ca.
    #[arg(long, env = "MESSENGER_CQL_TLS_CERT")]
    pub cql_tls_cert: Option<PathBuf>,
    /// PEM private key of --cql-tls-cert.
    #[arg(long, env = "MESSENGER_CQL_TLS_KEY")]
    pub cql_tls_key: Option<PathBuf>,
}

impl CqlArgs {
    /// Validates and builds the CQL store configuration.
    pub fn to_config(&self) -> Result<persistence::CqlConfig, String> {
        if !persistence::cql::valid_keyspace(&self.cql_keyspace) {
            return Err(format!("--cql-keyspace {:?} must be 1-48 characters of [a-z0-9_]", self.cql_keyspace));
        }
        let mut config = persistence::CqlConfig::local(String::new(), self.cql_keyspace.clone());
        config.nodes = self.cql_nodes.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
        if config.nodes.is_empty() {
            return Err("--cql-nodes needs at least one host:port".into());
        }
        config.replication = self.cql_replication.clone();
        config.consistency = persistence::cql::parse_consistency(&self.cql_consistency)?;
        config.serial_consistency = persistence::cql::parse_serial_consistency(&self.cql_serial_consistency)?;
        if self.cql_username.is_some() != self.cql_password.is_some() {
            return Err("--cql-username and --cql-password go together".into());
        }
        config.username = self.cql_username.clone();
        config.password = self.cql_password.clone();
        client_identity("--cql", self.cql_tls_ca.is_some(), &self.cql_tls_cert, &self.cql_tls_key)?;
        config.tls_ca = self.cql_tls_ca.clone();
        config.tls_cert = self.cql_tls_cert.clone();
        config.tls_key = self.cql_tls_key.clone();
        Ok(config)
    }
}

/// Checks a link's client certificate flags (`{prefix}-tls-cert`, `-tls-key`, `-tls-ca`):
/// certificate and key go together, and need the CA that verifies the server.
fn client_identity(prefix: &str, ca: bool, cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<(), String> {
    if cert.is_some() != key.is_some() {
        return Err(format!("{prefix}-tls-cert and {prefix}-tls-key go together"));
    }
    if cert.is_some() && !ca {
        return Err(format!("{prefix}-tls-cert needs {prefix}-tls-ca (the CA that signed the server's certificate)"));
    }
    Ok(())
}

/// The WebSocket listener's TLS: certificate chain and key files, reloaded when they change.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) of the WebSocket listener: with --tls-key, clients
    /// connect with `wss://` only. Reloaded when the file changes and on SIGHUP.
    #[arg(long, env = "MESSENGER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "MESSENGER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate and key files are read to see whether they changed.
    #[arg(long, env = "MESSENGER_TLS_RELOAD_INTERVAL", default_value_t = Span(edge::tls::DEFAULT_RELOAD_INTERVAL))]
    pub tls_reload_interval: Span,
}

impl TlsArgs {
    /// The files, when TLS is on; both or neither.
    pub fn files(&self) -> Result<Option<edge::tls::TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                if self.tls_reload_interval.0 < Duration::from_secs(1) {
                    return Err("--tls-reload-interval must be at least 1s".into());
                }
                Ok(Some(edge::tls::TlsFiles { cert: cert.clone(), key: key.clone() }))
            }
            (None, None) => Ok(None),
            _ => Err("--tls-cert and --tls-key go together".into()),
        }
    }
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    /// Development mode: a standalone node without a key uses (and creates) a development
    /// secret in the data directory, and `iss`/`aud` may be left unchecked. Never in
    /// production: without it, a node refuses to start without a key, an issuer and an
    /// audience.
    #[arg(long, env = "MESSENGER_DEV")]
    pub dev: bool,
    /// HS256 secret (≥ 32 bytes).
    #[arg(long, env = "MESSENGER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// JWKS file (an OpenID provider's signing keys, e.g. Keycloak's `/certs`): tokens name
    /// their key by `kid`. Reloaded when the file changes and on SIGHUP.
    #[arg(long, env = "MESSENGER_JWT_JWKS_FILE", conflicts_with = "jwt_jwks_url")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// JWKS URL of an OpenID provider (`https://…/certs`): fetched at start (the node does not
    /// start without it), then every --jwt-jwks-refresh, and early when a token names an
    /// unknown `kid`.
    #[arg(long, env = "MESSENGER_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// How often --jwt-jwks-url is fetched again (with If-None-Match).
    #[arg(long, env = "MESSENGER_JWT_JWKS_REFRESH", default_value = "5m")]
    pub jwt_jwks_refresh: Span,
    /// PEM public key file (Ed25519 → EdDSA, RSA → RS256) for production tokens.
    #[arg(long, env = "MESSENGER_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss` claim (required outside --dev).
    #[arg(long, env = "MESSENGER_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim (required outside --dev).
    #[arg(long, env = "MESSENGER_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`; an open connection is closed (4012)
    /// this long after its token's `exp`.
    #[arg(long, env = "MESSENGER_JWT_LEEWAY", default_value_t = Span(Duration::from_secs(Authenticator::DEFAULT_LEEWAY)))]
    pub jwt_leeway: Span,
    /// Longest lifetime a token may claim (`exp - iat`); longer ones are refused.
    #[arg(long, env = "MESSENGER_JWT_MAX_LIFETIME", default_value_t = Span(Duration::from_secs(Authenticator::DEFAULT_MAX_LIFETIME)))]
    pub jwt_max_lifetime: Span,
}

#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// tungstenite read buffer per connection, bytes.
    #[arg(long, env = "MESSENGER_WS_READ_BUFFER_BYTES", default_value_t = EdgeConfig::default().read_buffer_bytes)]
    pub ws_read_buffer_bytes: usize,
    /// tungstenite write gathering size, bytes.
    #[arg(long, env = "MESSENGER_WS_WRITE_BUFFER_BYTES", default_value_t = EdgeConfig::default().write_buffer_bytes)]
    pub ws_write_buffer_bytes: usize,
    /// Largest client message, bytes (at most the protocol's 65536).
    #[arg(long, env = "MESSENGER_MAX_FRAME_BYTES", default_value_t = EdgeConfig::default().max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// Outbound queue bound per connection, bytes; past it the client is closed with 4009.
    #[arg(long, env = "MESSENGER_OUTBOUND_QUEUE_BYTES", default_value_t = EdgeConfig::default().outbound_queue_bytes)]
    pub outbound_queue_bytes: usize,
    /// Time to authenticate after connecting.
    #[arg(long, env = "MESSENGER_AUTH_TIMEOUT", default_value_t = Span(EdgeConfig::default().auth_timeout))]
    pub auth_timeout: Span,
    /// Close a connection that sends nothing for this long.
    #[arg(long, env = "MESSENGER_IDLE_TIMEOUT", default_value_t = Span(EdgeConfig::default().idle_timeout))]
    pub idle_timeout: Span,
    /// Longest wait of one write to a client that does not read; past it the connection
    /// is closed as a slow consumer (4009).
    #[arg(long, env = "MESSENGER_WRITE_TIMEOUT", default_value_t = Span(EdgeConfig::default().write_timeout))]
    pub write_timeout: Span,
    /// Requests per second per connection (sustained).
    #[arg(long, env = "MESSENGER_RATE_REQUESTS_PER_SECOND", default_value_t = EdgeConfig::default().flood.requests_per_second)]
    pub rate_requests_per_second: u32,
    /// Request burst per connection.
    #[arg(long, env = "MESSENGER_RATE_REQUEST_BURST", default_value_t = EdgeConfig::default().flood.request_burst)]
    pub rate_request_burst: u32,
    /// Typing/presence frames per second per connection.
    #[arg(long, env = "MESSENGER_RATE_EPHEMERAL_PER_SECOND", default_value_t = EdgeConfig::default().flood.ephemeral_per_second)]
    pub rate_ephemeral_per_second: u32,
    /// Typing/presence burst per connection.
    #[arg(long, env = "MESSENGER_RATE_EPHEMERAL_BURST", default_value_t = EdgeConfig::default().flood.ephemeral_burst)]
    pub rate_ephemeral_burst: u32,
    /// Rate-limited frames in a row before the connection is closed (4008).
    #[arg(long, env = "MESSENGER_RATE_MAX_STRIKES", default_value_t = EdgeConfig::default().flood.max_strikes)]
    pub rate_max_strikes: u16,
    /// Requests per connection awaiting the router at once.
    #[arg(long, env = "MESSENGER_MAX_INFLIGHT_REQUESTS", default_value_t = EdgeConfig::default().max_inflight_requests)]
    pub max_inflight_requests: usize,
    /// Time a request may wait for the router.
    #[arg(long, env = "MESSENGER_REQUEST_TIMEOUT", default_value_t = Span(EdgeConfig::default().request_timeout))]
    pub request_timeout: Span,
    /// How long before its token expires a connection is told (`token_expiring`).
    #[arg(long, env = "MESSENGER_TOKEN_EXPIRY_WARNING", default_value_t = Span(EdgeConfig::default().token_warning))]
    pub token_expiry_warning: Span,
    /// Connections this node holds at most; more are refused at the upgrade with HTTP 503.
    #[arg(long, env = "MESSENGER_MAX_CONNECTIONS", default_value_t = AdmissionConfig::default().max_connections)]
    pub max_connections: usize,
    /// Connections from one client address at most (HTTP 503 past it). Generous: a
    /// carrier-grade NAT puts many phones behind one address.
    #[arg(long, env = "MESSENGER_MAX_CONNECTIONS_PER_IP", default_value_t = AdmissionConfig::default().max_connections_per_ip)]
    pub max_connections_per_ip: usize,
    /// Connections (devices) of one user on this node at most; past it, close 4011.
    #[arg(long, env = "MESSENGER_MAX_CONNECTIONS_PER_USER", default_value_t = AdmissionConfig::default().max_connections_per_user)]
    pub max_connections_per_user: usize,
    /// New connections per second the node accepts (sustained); HTTP 429 past it.
    #[arg(long, env = "MESSENGER_CONNECT_RATE", default_value_t = AdmissionConfig::default().node_connect_rate)]
    pub connect_rate: u32,
    /// Burst of new connections above the node's rate.
    #[arg(long, env = "MESSENGER_CONNECT_BURST", default_value_t = AdmissionConfig::default().node_connect_burst)]
    pub connect_burst: u32,
    /// New connections per second from one client address (sustained); HTTP 429 past it.
    #[arg(long, env = "MESSENGER_CONNECT_RATE_PER_IP", default_value_t = AdmissionConfig::default().ip_connect_rate)]
    pub connect_rate_per_ip: u32,
    /// Burst of new connections from one client address.
    #[arg(long, env = "MESSENGER_CONNECT_BURST_PER_IP", default_value_t = AdmissionConfig::default().ip_connect_burst)]
    pub connect_burst_per_ip: u32,
    /// Proxies and load balancers (CIDRs, comma-separated) whose X-Forwarded-For names the
    /// client address. Nobody else's is believed.
    #[arg(long, env = "MESSENGER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,
    /// Web origins whose pages may connect (exact, comma-separated, e.g.
    /// `https://chat.example.com`); unset: any. Clients that send no Origin are not checked.
    #[arg(long, env = "MESSENGER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Connections sent away per drain batch.
    #[arg(long, env = "MESSENGER_DRAIN_BATCH", default_value_t = EdgeConfig::default().drain_batch)]
    pub drain_batch: usize,
    /// Pause between drain batches.
    #[arg(long, env = "MESSENGER_DRAIN_INTERVAL", default_value_t = Span(EdgeConfig::default().drain_interval))]
    pub drain_interval: Span,
}

impl EdgeArgs {
    /// Validates and builds the edge configuration.
    pub fn to_config(&self) -> Result<EdgeConfig, String> {
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > MAX_CLIENT_FRAME_BYTES {
            return Err(format!("--max-frame-bytes must be between 1024 and {MAX_CLIENT_FRAME_BYTES}"));
        }
        if self.ws_read_buffer_bytes < 64 || self.ws_read_buffer_bytes > 1 << 20 {
            return Err("--ws-read-buffer-bytes must be between 64 and 1048576".into());
        }
        if self.outbound_queue_bytes < MIN_OUTBOUND_QUEUE_BYTES {
            return Err(format!(
                "--outbound-queue-bytes must be at least {MIN_OUTBOUND_QUEUE_BYTES} (a history page, JSON-escaped, must fit)"
            ));
        }
        if self.auth_timeout.0 < Duration::from_secs(1) || self.request_timeout.0 < Duration::from_millis(100) {
            return Err("--auth-timeout must be at least 1s and --request-timeout at least 100ms".into());
        }
        if self.rate_ephemeral_per_second == 0 || self.rate_ephemeral_burst == 0 {
            return Err("ephemeral rate limits must be positive".into());
        }
        if self.write_timeout.0 < Duration::from_secs(1) || self.write_timeout.0 > Duration::from_secs(300) {
            return Err("--write-timeout must be between 1s and 5m".into());
        }
        if [self.max_connections, self.max_connections_per_ip, self.max_connections_per_user].contains(&0)
            || [self.connect_rate, self.connect_burst, self.connect_rate_per_ip, self.connect_burst_per_ip].contains(&0)
        {
            return Err("connection caps and connect rates must be positive".into());
        }
        if self.idle_timeout.0 < Duration::from_secs(2) {
            return Err("--idle-timeout must be at least 2s".into());
        }
        if self.rate_requests_per_second == 0 || self.rate_request_burst == 0 || self.rate_max_strikes == 0 {
            return Err("rate limits must be positive".into());
        }
        if self.max_inflight_requests == 0 || self.drain_batch == 0 {
            return Err("--max-inflight-requests and --drain-batch must be positive".into());
        }
        let defaults = EdgeConfig::default();
        Ok(EdgeConfig {
            read_buffer_bytes: self.ws_read_buffer_bytes,
            write_buffer_bytes: self.ws_write_buffer_bytes,
            max_frame_bytes: self.max_frame_bytes,
            outbound_queue_bytes: self.outbound_queue_bytes,
            auth_timeout: self.auth_timeout.0,
            idle_timeout: self.idle_timeout.0,
            write_timeout: self.write_timeout.0,
            token_warning: self.token_expiry_warning.0,
            admission: AdmissionConfig {
                max_connections: self.max_connections,
                max_connections_per_ip: self.max_connections_per_ip,
                max_connections_per_user: self.max_connections_per_user,
                node_connect_rate: self.connect_rate,
                node_connect_burst: self.connect_burst,
                ip_connect_rate: self.connect_rate_per_ip,
                ip_connect_burst: self.connect_burst_per_ip,
                trusted_proxies: self.trusted_proxies.clone(),
                allowed_origins: self
                    .allowed_origins
                    .iter()
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            },
            flood: FloodLimits {
                requests_per_second: self.rate_requests_per_second,
                request_burst: self.rate_request_burst,
                ephemeral_per_second: self.rate_ephemeral_per_second,
                ephemeral_burst: self.rate_ephemeral_burst,
                max_strikes: self.rate_max_strikes,
            },
            max_inflight_requests: self.max_inflight_requests,
            request_timeout: self.request_timeout.0,
            drain_batch: self.drain_batch,
            drain_interval: self.drain_interval.0,
            ..defaults
        })
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (token subject).
    #[arg(long)]
    pub user: String,
    /// Lifetime of the token.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// HS256 secret; defaults to the development secret in the data directory.
    #[arg(long, env = "MESSENGER_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Data directory holding the development secret.
    #[arg(long, env = "MESSENGER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// `iss` claim (for a node started with --jwt-issuer).
    #[arg(long, env = "MESSENGER_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud` claim (for a node started with --jwt-audience).
    #[arg(long, env = "MESSENGER_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// A duration on the command line and in the environment: `250ms`, `30s`, `5m`, `24h` (a
/// bare number is seconds). Displayed the same way, so `--help` shows defaults taken from the
/// component that owns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Span)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        match (ms % 1000, ms / 1000) {
            (0, s) if s > 0 && s % 3600 == 0 => write!(f, "{}h", s / 3600),
            (0, s) if s > 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
            (0, s) => write!(f, "{s}s"),
            _ => write!(f, "{ms}ms"),
        }
    }
}

/// Parses `250ms`, `30s`, `5m`, `24h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}: use e.g. 250ms, 30s, 5m, 24h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn spans_print_as_they_parse() {
        for text in ["250ms", "1500ms", "10s", "90s", "5m", "24h", "0s"] {
            let span: Span = text.parse().unwrap();
            assert_eq!(span.to_string(), text);
        }
        // Defaults shown by --help are the owning component's.
        assert_eq!(Span(EdgeConfig::default().idle_timeout).to_string(), "90s");
    }

    fn router_nats(extra: &[&str]) -> Result<bus::nats::NatsConfig, String> {
        let cli = Cli::try_parse_from(["messenger", "router"].iter().chain(extra)).unwrap();
        let Command::Router(args) = cli.command else { panic!() };
        args.nats.to_config("router", NatsRole::Router)
    }

    #[test]
    fn cluster_nodes_need_a_readable_strong_cluster_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let good = file("good", &format!("{}\n{}\n", "ab".repeat(32), "cd".repeat(32)));
        let config = router_nats(&["--cluster-key-file", &good]).unwrap();
        assert_eq!(config.keys.key_ids().len(), 2);
        assert_eq!(config.inbox_prefix, "_INBOX.router");
        assert_eq!(config.max_age, Duration::from_secs(60));
        let err = router_nats(&[]).unwrap_err();
        assert!(err.contains("--cluster-key-file"), "{err}");
        for bad in [
            file("short", &"ab".repeat(16)),
            file("empty", "# none\n"),
            dir.path().join("missing").to_str().unwrap().to_owned(),
        ] {
            assert!(router_nats(&["--cluster-key-file", &bad]).is_err(), "{bad}");
        }
        for window in ["0s", "999ms", "11m"] {
            assert!(router_nats(&["--cluster-key-file", &good, "--cluster-mac-window", window]).is_err(), "{window}");
        }
        let edge = Cli::try_parse_from(["messenger", "edge", "--cluster-key-file", &good]).unwrap();
        let Command::Edge(edge) = edge.command else { panic!() };
        assert_eq!(edge.nats.to_config("edge", NatsRole::Edge).unwrap().inbox_prefix, "_INBOX.edge");
    }

    #[test]
    fn inbox_prefixes_are_plain_subject_tokens() {
        for good in ["_INBOX.edge", "_INBOX.edge-3", "replies"] {
            assert!(valid_inbox_prefix(good), "{good}");
        }
        for bad in ["", "_INBOX.*", "_INBOX.>", "a..b", ".a", "a.", "a b", "é"] {
            assert!(!valid_inbox_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn edge_defaults_validate() {
        let cli = Cli::try_parse_from(["messenger", "standalone"]).unwrap();
        let Command::Standalone(args) = cli.command else { panic!() };
        assert!(args.node.edge.to_config().is_ok());
        let cli = Cli::try_parse_from(["messenger", "standalone", "--max-frame-bytes", "999999"]).unwrap();
        let Command::Standalone(args) = cli.command else { panic!() };
        assert!(args.node.edge.to_config().is_err());
    }

    #[test]
    fn tls_files_go_together() {
        let parse = |extra: &[&str]| {
            let cli = Cli::try_parse_from(["messenger", "standalone"].iter().chain(extra)).unwrap();
            let Command::Standalone(args) = cli.command else { panic!() };
            args
        };
        assert!(parse(&[]).node.tls.files().unwrap().is_none());
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).node.tls.files().unwrap().is_some());
        assert!(parse(&["--tls-cert", "c.pem"]).node.tls.files().is_err());
        assert!(parse(&["--tls-key", "k.pem"]).node.tls.files().is_err());
        let args = parse(&["--cql-tls-cert", "c.pem", "--cql-tls-key", "k.pem"]);
        assert!(args.cql.to_config().unwrap_err().contains("--cql-tls-ca"));
        let args = parse(&["--cql-tls-cert", "c.pem", "--cql-tls-ca", "ca.pem"]);
        assert!(args.cql.to_config().unwrap_err().contains("--cql-tls-key"));
        let args = parse(&["--cql-tls-cert", "c.pem", "--cql-tls-key", "k.pem", "--cql-tls-ca", "ca.pem"]);
        assert!(args.cql.to_config().is_ok());
    }
}
