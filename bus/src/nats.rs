//! The bus over NATS core, for the cluster mode.
//!
//! One connection per process carries every subscription and request; async-nats multiplexes
//! them and, after a reconnect, restores the subscriptions on the new connection.
//!
//! Unlike the local bus, a full sink cannot make a remote publisher wait. Each subscription
//! has an async-nats buffer in front of its sink; when the sink stays full long enough for
//! that buffer to fill too, async-nats drops messages and reports a slow consumer, which is
//! counted in `bus_nats_slow_consumers_total`. Edges repair such gaps from history.
//!
//! Every message this bus publishes (requests, replies, events, heartbeats) carries a MAC
//! under the cluster key ([`crate::mac`]) in a header, and every message it delivers to a
//! sink, or returns as a reply, has passed the check: one with a missing or bad MAC or an
//! old signing time is dropped here, before any edge or router code sees it, and counted in
//! `bus_nats_rejected_total{reason}`. Edge and router code, and the in-process bus, know
//! nothing of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::client::RequestErrorKind;
use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use async_nats::rustls::{self, ClientConfig, RootCertStore};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, Request, ServerAddr, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::AbortHandle;

use crate::mac::{ClusterKeys, DEFAULT_MAX_AGE_MS, MAC_HEADER, Rejection};
use crate::{Bus, BusError, BusMessage, Sink, Subscription};

/// Messages async-nats buffers per subscription in front of its sink (the async-nats
/// default): large enough to ride out a sink that is briefly full without dropping.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Commands (publishes, subscribes, requests) queued towards the connection (the async-nats
/// default). While the server is unreachable they wait here; once it is full, publishing
/// waits until the connection is back.
pub const DEFAULT_CLIENT_CAPACITY: usize = 2_048;

/// Per attempt, initial connect and reconnects alike.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `subscribe` waits for the server to confirm the interest. Only reached while
/// the connection is down: failing then beats hanging until it is back.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// async-nats' own inbox prefix, for a connection that is not given one.
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// At most one warning per this interval for rejected messages: a forger or a node with the
/// wrong key must not be able to flood the log. The metric counts every one.
const REJECTION_WARN_INTERVAL_MS: u64 = 10_000;

/// How to reach NATS.
#[derive(Clone)]
pub struct NatsConfig {
    /// `nats://host:port`, several for a cluster.
    pub servers: Vec<String>,
    /// Shown by the server's monitoring, to tell processes apart.
    pub name: String,
    /// Set both or neither.
    pub user: Option<String>,
    pub password: Option<String>,
    pub nkey_seed: Option<String>,
    /// Requires TLS and trusts this CA (PEM) for the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate chain and its private key (PEM files, both or neither), for a
    /// server that verifies clients (`verify: true`). Needs `tls_ca`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Signs what this node publishes and checks what it receives.
    pub keys: Arc<ClusterKeys>,
    /// Largest accepted distance between a message's signing time and this node's clock.
    pub max_age: Duration,
    /// Prefix of this connection's reply subjects (`<prefix>.<random>`): NATS permissions
    /// can then let a role, or one node, subscribe to its own replies only.
    pub inbox_prefix: String,
    pub subscription_capacity: usize,
    pub client_capacity: usize,
    pub connect_timeout: Duration,
}

impl NatsConfig {
    /// The defaults, on `servers`, with `keys`: there is no NATS bus without a cluster key.
    pub fn new(servers: Vec<String>, keys: Arc<ClusterKeys>) -> Self {
        NatsConfig {
            servers,
            name: "messenger".to_owned(),
            user: None,
            password: None,
            nkey_seed: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            keys,
            max_age: Duration::from_millis(DEFAULT_MAX_AGE_MS),
            inbox_prefix: DEFAULT_INBOX_PREFIX.to_owned(),
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            client_capacity: DEFAULT_CLIENT_CAPACITY,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Written by hand so that logging the configuration never logs a secret.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &redact(&self.password))
            .field("nkey_seed", &redact(&self.nkey_seed))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("keys", &self.keys)
            .field("max_age", &self.max_age)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("client_capacity", &self.client_capacity)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The NATS bus. Clones share one connection.
#[derive(Clone, Debug)]
pub struct NatsBus {
    client: Client,
    auth: Arc<Auth>,
}

/// Signing and checking, with the rate limit of the rejection warning.
#[derive(Debug)]
struct Auth {
    keys: Arc<ClusterKeys>,
    max_age_ms: u64,
    last_warn_ms: AtomicU64,
    unwarned: AtomicU64,
}

impl Auth {
    fn headers(&self, subject: &str, payload: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(MAC_HEADER, self.keys.sign(subject, payload, now_ms()));
        headers
    }

    /// Whether a received message may go on; counts and (rate-limited) logs the ones that
    /// may not.
    fn accept(&self, subject: &str, payload: &[u8], headers: Option<&HeaderMap>) -> bool {
        let header = headers.and_then(|h| h.get(MAC_HEADER)).map(|v| v.as_str());
        let now = now_ms();
        match self.keys.verify(subject, payload, header, now, self.max_age_ms) {
            Ok(()) => true,
            Err(rejection) => {
                self.reject(subject, rejection, now);
                false
            }
        }
    }

    fn reject(&self, subject: &str, rejection: Rejection, now: u64) {
        metrics::counter!("bus_nats_rejected_total", "reason" => rejection.reason()).increment(1);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= REJECTION_WARN_INTERVAL_MS;
        if due && self.last_warn_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let also = self.unwarned.swap(0, Ordering::Relaxed);
            tracing::warn!(
                subject,
                reason = rejection.reason(),
                also_rejected_since_last_warning = also,
                "NATS message dropped: {rejection} (not signed with this cluster's key, or too old)"
            );
        } else {
            self.unwarned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The wall clock, for signing times: nodes compare them with each other's, so it cannot be
/// a monotonic clock. A clock before 1970 signs as 0 and is refused by every other node.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl NatsBus {
    /// Connects once, failing fast if no server is reachable now; after that, reconnects
    /// without limit and restores every subscription on the new connection.
    pub async fn connect(config: NatsConfig) -> Result<NatsBus, BusError> {
        let servers = config
            .servers
            .iter()
            .map(|s| s.parse::<ServerAddr>().map_err(|e| BusError::Unavailable(format!("NATS server {s:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(BusError::Unavailable("no NATS server configured".to_owned()));
        }
        let mut options = ConnectOptions::new()
            .name(&config.name)
            .subscription_capacity(config.subscription_capacity)
            .client_capacity(config.client_capacity)
            .connection_timeout(config.connect_timeout)
            .custom_inbox_prefix(&config.inbox_prefix)
            .max_reconnects(None)
            .event_callback(|event| async move { on_event(event) });
        match (config.user, config.password) {
            (Some(user), Some(password)) => options = options.user_and_password(user, password),
            (None, None) => {}
            _ => return Err(BusError::Unavailable("NATS user and password must be set together".to_owned())),
        }
        if let Some(seed) = config.nkey_seed {
            options = options.nkey(seed);
        }
        let identity = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(BusError::Unavailable("a NATS client certificate needs its key, and the reverse".into())),
        };
        match (&config.tls_ca, identity) {
            (Some(ca), identity) => options = options.require_tls(true).tls_client_config(tls_config(ca, identity)?),
            (None, Some(_)) => {
                return Err(BusError::Unavailable("a NATS client certificate needs the CA of the servers".into()));
            }
            (None, None) => {}
        }
        let client = options
            .connect(servers)
            .await
            .map_err(|e| BusError::Unavailable(format!("connecting to NATS {:?}: {e}", config.servers)))?;
        let auth = Arc::new(Auth {
            keys: config.keys,
            max_age_ms: u64::try_from(config.max_age.as_millis()).unwrap_or(u64::MAX),
            last_warn_ms: AtomicU64::new(0),
            unwarned: AtomicU64::new(0),
        });
        Ok(NatsBus { client, auth })
    }

    /// Returns once the server has processed everything this connection sent before.
    ///
    /// `Client::flush` is not enough: it only empties the socket buffer, so a publish from
    /// another connection could still overtake a subscribe. Our own message coming back
    /// proves the round trip; unlike a request that expects "no responders", it does not
    /// depend on nobody else listening (a `nats sub '>'` while debugging).
    async fn confirm(&self) -> Result<(), BusError> {
        let probe = self.client.new_inbox();
        let mut sub = self.client.subscribe(probe.clone()).await.map_err(unavailable)?;
        self.client.publish(probe, Bytes::new()).await.map_err(unavailable)?;
        match sub.next().await {
            Some(_) => Ok(()),
            None => Err(BusError::Unavailable("NATS connection closed".to_owned())),
        }
    }

    async fn subscribe_confirmed(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        sink: Sink,
    ) -> Result<Subscription, BusError> {
        let sub = match queue_group {
            None => self.client.subscribe(subject.to_owned()).await,
            Some(group) => self.client.queue_subscribe(subject.to_owned(), group.to_owned()).await,
        }
        .map_err(unavailable)?;
        let dropped = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(forward(sub, sink, dropped.clone(), self.auth.clone()));
        // Unsubscribes if confirming fails or times out.
        let guard = Unsubscribe { task: task.abort_handle(), dropped };
        self.confirm().await?;
        Ok(Subscription::new(guard))
    }
}

/// Built here because async-nats would build it with rustls' process-wide default crypto
/// provider; ring, explicitly, is the one provider of every TLS config of the binary.
/// `identity` (certificate chain and key files) is presented to servers that verify clients.
fn tls_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, BusError> {
    let bad = |path: &Path, e: &dyn std::fmt::Display| BusError::Unavailable(format!("NATS TLS file {path:?}: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, &e))? {
        roots.add(cert.map_err(|e| bad(ca, &e))?).map_err(|e| bad(ca, &e))?;
    }
    if roots.is_empty() {
        return Err(bad(ca, &"no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unavailable)?
        .with_root_certificates(roots);
    let Some((cert, key)) = identity else { return Ok(builder.with_no_client_auth()) };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    if chain.is_empty() {
        return Err(bad(cert, &"no certificate"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    builder.with_client_auth_cert(chain, key_der).map_err(|e| bad(cert, &e))
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn on_event(event: Event) {
    let kind = match &event {
        Event::SlowConsumer(sid) => {
            metrics::counter!("bus_nats_slow_consumers_total").increment(1);
            tracing::warn!(sid, "NATS subscription buffer full, message dropped (slow consumer)");
            return;
        }
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    };
    metrics::counter!("bus_nats_connection_events_total", "event" => kind).increment(1);
    if matches!(event, Event::Connected) {
        tracing::info!("NATS connected");
    } else {
        tracing::warn!(%event, "NATS connection event");
    }
}

/// Ends the forwarding task, which drops the async-nats subscriber, which unsubscribes.
///
/// Aborting alone is not enough: it takes effect when the task next yields, and a task that
/// is mid-poll (descheduled by the OS, say) could still forward a message published after
/// the drop, which the local bus never does. The flag is checked before every send.
struct Unsubscribe {
    task: AbortHandle,
    dropped: Arc<AtomicBool>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Release);
        self.task.abort();
    }
}

async fn forward(mut sub: Subscriber, sink: Sink, dropped: Arc<AtomicBool>, auth: Arc<Auth>) {
    loop {
        // Watching `closed` too ends the subscription when its consumer goes away, even on a
        // quiet subject.
        let msg = tokio::select! {
            msg = sub.next() => msg,
            () = sink.closed() => return,
        };
        let Some(msg) = msg else { return };
        if dropped.load(Ordering::Acquire) {
            return;
        }
        if !auth.accept(&msg.subject, &msg.payload, msg.headers.as_ref()) {
            continue;
        }
        let msg = BusMessage {
            subject: msg.subject.to_string(),
            payload: msg.payload,
            reply: msg.reply.map(|r| r.to_string()),
        };
        if sink.send(msg).await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        let headers = self.auth.headers(subject, &payload);
        self.client.publish_with_headers(subject.to_owned(), headers, payload).await.map_err(unavailable)
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.confirm().await
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        // The reply subject is not covered: async-nats picks it after this. Only routers may
        // read requests (NATS permissions), so only they could redirect one.
        let headers = self.auth.headers(subject, &payload);
        let request = Request::new().payload(payload).headers(headers).timeout(Some(timeout));
        // async-nats times only the wait for the answer; the outer timeout also bounds
        // queueing the request while the connection is down.
        match tokio::time::timeout(timeout, self.client.send_request(subject.to_owned(), request)).await {
            Err(_) => Err(BusError::Timeout),
            Ok(Ok(reply)) if self.auth.accept(&reply.subject, &reply.payload, reply.headers.as_ref()) => {
                Ok(reply.payload)
            }
            // A forged or stale reply is not the router's answer; the real one, if it comes,
            // finds the request gone, so the caller sees what it would see on a lost reply.
            Ok(Ok(_)) => Err(BusError::Unavailable("reply rejected (bad or missing cluster MAC)".to_owned())),
            Ok(Err(e)) => Err(match e.kind() {
                RequestErrorKind::TimedOut => BusError::Timeout,
                RequestErrorKind::NoResponders => BusError::NoResponders,
                _ => BusError::Unavailable(e.to_string()),
            }),
        }
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>, sink: Sink) -> Result<Subscription, BusError> {
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.subscribe_confirmed(subject, queue_group, sink))
            .await
            .map_err(|_| BusError::Unavailable("NATS did not confirm the subscription in time".to_owned()))?
    }
}
