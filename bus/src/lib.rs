//! The message bus between edges and routers.
//!
//! The [`Bus`] trait has the shape of NATS core (subjects, queue groups, request/reply through
//! reply subjects) so that a NATS implementation maps onto it one to one, and the in-process
//! implementation ([`LocalBus`]) behaves the same way for the standalone node and tests.
//!
//! Subscribers hand in a bounded [`Sink`]; one sink may serve many subscriptions, which is how
//! an edge reads every chat it is interested in from a single queue.
//!
//! Layout: this file holds the trait and its types; [`local`] the in-process bus; [`nats`] the
//! bus over NATS for the cluster mode, which signs every message it publishes and checks every
//! one it receives with [`mac`], the pure MAC under the cluster key; [`routers`] the live view
//! of routers (from their heartbeats) that tells which router owns a chat.
#![forbid(unsafe_code)]

pub mod local;
pub mod mac;
pub mod nats;
pub mod routers;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;

pub use local::LocalBus;
pub use mac::ClusterKeys;
pub use nats::{NatsBus, NatsConfig};

/// One message as delivered to a subscriber.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
    /// Where to publish the answer, for requests.
    pub reply: Option<String>,
}

/// Where a subscription delivers. Bounded: a full sink applies backpressure (local bus) or
/// counts as a slow consumer (NATS).
pub type Sink = mpsc::Sender<BusMessage>;

/// Why a bus call failed.
#[derive(Debug, Error)]
pub enum BusError {
    /// No answer within the deadline.
    #[error("request timed out")]
    Timeout,
    /// Nobody subscribes to the request subject.
    #[error("no responders")]
    NoResponders,
    /// The bus is closed or the connection to it is lost.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// An active subscription; dropping it unsubscribes.
pub struct Subscription {
    _guard: Box<dyn Send + Sync>,
}

impl Subscription {
    /// Wraps whatever unsubscribes on drop.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Subscription { _guard: Box::new(guard) }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

/// A subject-based message bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes to every plain subscriber of `subject` and to one member of each queue group.
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;

    /// Publishes with a fresh reply subject and waits for the first answer.
    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError>;

    /// Subscribes `sink` to `subject` (exact match), optionally in a queue group. When this
    /// returns, messages published afterwards reach the sink.
    async fn subscribe(&self, subject: &str, queue_group: Option<&str>, sink: Sink) -> Result<Subscription, BusError>;

    /// Returns once everything published so far has left this process (NATS: the server
    /// has processed it). A publish only queues: call this before the last handle drops at
    /// shutdown, or the last replies and events may never be sent.
    async fn flush(&self) -> Result<(), BusError>;
}
