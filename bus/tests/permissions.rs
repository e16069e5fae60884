//! The deployed NATS permission model (`deploy/nats/`) and the cluster MAC, against a real
//! nats-server started with that configuration.
//!
//! Raw async-nats clients stand for whoever holds NATS credentials: what NATS refuses is
//! seen as a permission violation from the server, and what NATS lets through but was not
//! signed with the cluster key must never reach a [`NatsBus`] sink.
//!
//! "Nothing was delivered" is never a wait that times out: the server reports a violation
//! after dropping the message, and afterwards a marker that may pass is sent on the same
//! subject; the first thing the subscriber sees must be the marker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::{ConnectOptions, Event, HeaderMap, Subscriber};
use bus::mac::{DEFAULT_MAX_AGE_MS, MAC_HEADER};
use bus::{Bus, BusError, BusMessage, ClusterKeys, NatsBus, NatsConfig};
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::envelope::{ROUTER_HEARTBEAT_SUBJECT, ROUTER_QUEUE_GROUP, ROUTER_REQUEST_SUBJECT};
use testkit::NatsServer;
use testkit::nats::{EDGE_PASSWORD, EDGE_USER, ROUTER_PASSWORD, ROUTER_USER};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

/// The inbox prefixes the binaries use by default (server/src/config.rs).
const EDGE_INBOX: &str = "_INBOX.edge";
const ROUTER_INBOX: &str = "_INBOX.router";

#[derive(Clone, Copy)]
enum Role {
    Edge,
    Router,
}

impl Role {
    fn credentials(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Role::Edge => (EDGE_USER, EDGE_PASSWORD, EDGE_INBOX),
            Role::Router => (ROUTER_USER, ROUTER_PASSWORD, ROUTER_INBOX),
        }
    }
}

/// A plain async-nats client with a role's credentials and the errors the server sent it.
struct Raw {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

async fn raw(server: &NatsServer, role: Role) -> Raw {
    let (user, password, inbox) = role.credentials();
    let (tx, errors) = mpsc::unbounded_channel();
    let client = ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(inbox)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    Raw { client, errors }
}

impl Raw {
    /// Waits for the server to report a permission violation naming `subject`.
    async fn violation(&mut self, subject: &str) {
        let wanted = format!("\"{subject}\"").to_lowercase();
        let found = tokio::time::timeout(WAIT, async {
            while let Some(e) = self.errors.recv().await {
                let e = e.to_lowercase();
                if e.contains("permissions violation") && e.contains(&wanted) {
                    return;
                }
            }
        })
        .await;
        assert!(found.is_ok(), "no permissions violation for {subject} within {WAIT:?}");
    }

    async fn publish(&self, subject: &str, payload: &'static [u8]) {
        self.client.publish(subject.to_owned(), Bytes::from_static(payload)).await.unwrap();
        self.client.flush().await.unwrap();
    }

    async fn subscribe(&self, subject: &str) -> Subscriber {
        let sub = self.client.subscribe(subject.to_owned()).await.unwrap();
        self.sync().await;
        sub
    }

    async fn queue_subscribe(&self, subject: &str, group: &str) -> Subscriber {
        let sub = self.client.queue_subscribe(subject.to_owned(), group.to_owned()).await.unwrap();
        self.sync().await;
        sub
    }

    /// Returns once the server has processed everything this client sent before: `flush`
    /// only empties the socket buffer. Our own message coming back proves the round trip.
    async fn sync(&self) {
        let probe = self.client.new_inbox();
        let mut sub = self.client.subscribe(probe.clone()).await.unwrap();
        self.client.publish(probe, Bytes::new()).await.unwrap();
        next(&mut sub).await;
    }

    async fn publish_signed(&self, subject: &str, payload: &'static [u8], mac: String) {
        let mut headers = HeaderMap::new();
        headers.insert(MAC_HEADER, mac);
        self.client.publish_with_headers(subject.to_owned(), headers, Bytes::from_static(payload)).await.unwrap();
        self.client.flush().await.unwrap();
    }
}

async fn next(sub: &mut Subscriber) -> Bytes {
    tokio::time::timeout(WAIT, sub.next()).await.expect("nothing delivered").expect("subscription ended").payload
}

async fn recv(rx: &mut mpsc::Receiver<BusMessage>) -> BusMessage {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("nothing delivered").expect("sink closed")
}

fn keys(seeds: &[u8]) -> Arc<ClusterKeys> {
    let raw: Vec<[u8; 32]> = seeds.iter().map(|s| [*s; 32]).collect();
    Arc::new(ClusterKeys::new(&raw).unwrap())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn bus(server: &NatsServer, role: Role, keys: Arc<ClusterKeys>) -> NatsBus {
    let (user, password, inbox) = role.credentials();
    let config = NatsConfig {
        user: Some(user.to_owned()),
        password: Some(password.to_owned()),
        inbox_prefix: inbox.to_owned(),
        connect_timeout: Duration::from_secs(2),
        ..NatsConfig::new(vec![server.url()], keys)
    };
    NatsBus::connect(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_two_roles_may_connect() {
    let Some(server) = NatsServer::builder().cluster_auth().start() else { return };
    let anonymous = ConnectOptions::new().connect(server.url()).await;
    assert!(anonymous.is_err(), "connected without credentials");
    let wrong = ConnectOptions::with_user_and_password(EDGE_USER.into(), "guess".into()).connect(server.url()).await;
    assert!(wrong.is_err(), "connected with a wrong password");
    let client = ConnectOptions::with_user_and_password("client".into(), EDGE_PASSWORD.into()).connect(server.url());
    assert!(client.await.is_err(), "an unknown user connected");
    // The fixture's own credentials do work (so the refusals above are about credentials).
    raw(&server, Role::Edge).await;
    raw(&server, Role::Router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_publishes_requests_and_reads_what_it_delivers_and_nothing_else() {
    let Some(server) = NatsServer::builder().cluster_auth().start() else { return };
    let mut edge = raw(&server, Role::Edge).await;
    let router = raw(&server, Role::Router).await;

    // What an edge reads, a router may publish.
    for subject in ["chat.42", "user.alice", ROUTER_HEARTBEAT_SUBJECT, "ctl.revoked"] {
        let mut sub = edge.subscribe(subject).await;
        // An edge cannot forge what it delivers: a chat event, a join, a heartbeat, a revocation.
        edge.publish(subject, b"forged by an edge").await;
        edge.violation(subject).await;
        router.publish(subject, b"marker").await;
        assert_eq!(&next(&mut sub).await[..], b"marker", "on {subject}");
    }

    // What an edge publishes, a router reads.
    let mut queue = router.queue_subscribe(ROUTER_REQUEST_SUBJECT, ROUTER_QUEUE_GROUP).await;
    let mut owned = router.subscribe("router.chat.7").await;
    edge.publish(ROUTER_REQUEST_SUBJECT, b"request").await;
    assert_eq!(&next(&mut queue).await[..], b"request");
    edge.publish("router.chat.7", b"chat request").await;
    assert_eq!(&next(&mut owned).await[..], b"chat request");

    // An edge cannot read requests, nor subjects outside the model.
    // (`chat.>` is no wider than the allowed `chat.*`: chat subjects have one token after `chat.`.)
    for subject in [ROUTER_REQUEST_SUBJECT, "router.chat.7", ">", "user", "_INBOX.router.x", "$SYS.>"] {
        let _sub = edge.client.subscribe(subject.to_owned()).await.unwrap();
        edge.client.flush().await.unwrap();
        edge.violation(subject).await;
    }
    let _q = edge.client.queue_subscribe(ROUTER_REQUEST_SUBJECT, ROUTER_QUEUE_GROUP.into()).await.unwrap();
    edge.client.flush().await.unwrap();
    edge.violation(ROUTER_REQUEST_SUBJECT).await;
    for subject in ["other", "router.chat.7.x", "_INBOX.router.x"] {
        edge.publish(subject, b"x").await;
        edge.violation(subject).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_reads_requests_and_publishes_events_and_replies_and_nothing_else() {
    let Some(server) = NatsServer::builder().cluster_auth().start() else { return };
    let edge = raw(&server, Role::Edge).await;
    let mut router = raw(&server, Role::Router).await;

    // A request and its reply: the router answers on the edge's inbox (allow_responses).
    let mut queue = router.queue_subscribe(ROUTER_REQUEST_SUBJECT, ROUTER_QUEUE_GROUP).await;
    let answer = {
        let client = router.client.clone();
        tokio::spawn(async move {
            let request = tokio::time::timeout(WAIT, queue.next()).await.unwrap().unwrap();
            let reply = request.reply.expect("a reply subject");
            assert!(reply.starts_with(&format!("{EDGE_INBOX}.")), "{reply}");
            client.publish(reply.clone(), Bytes::from_static(b"reply")).await.unwrap();
            client.flush().await.unwrap();
            reply
        })
    };
    let reply = edge.client.request(ROUTER_REQUEST_SUBJECT, Bytes::from_static(b"q")).await.unwrap();
    assert_eq!(&reply.payload[..], b"reply");
    // Once: a second answer to the same reply subject is refused.
    let reply_subject = answer.await.unwrap().to_string();
    router.publish(&reply_subject, b"second answer").await;
    router.violation(&reply_subject).await;

    // A router cannot forge requests, nor read what edges deliver, nor read requests outside
    // the queue group.
    for subject in [ROUTER_REQUEST_SUBJECT, "router.chat.7", "_INBOX.edge.x", "other"] {
        router.publish(subject, b"forged by a router").await;
        router.violation(subject).await;
    }
    for subject in ["chat.42", "user.alice", "ctl.revoked", "_INBOX.edge.>", ROUTER_REQUEST_SUBJECT, ">"] {
        let _sub = router.client.subscribe(subject.to_owned()).await.unwrap();
        router.client.flush().await.unwrap();
        router.violation(subject).await;
    }
    let _q = router.client.queue_subscribe(ROUTER_REQUEST_SUBJECT, "mine".into()).await.unwrap();
    router.client.flush().await.unwrap();
    router.violation(ROUTER_REQUEST_SUBJECT).await;
}

/// NATS lets an edge credential publish requests; without the cluster key they go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_cluster_key_never_reaches_the_router() {
    let Some(server) = NatsServer::builder().cluster_auth().start() else { return };
    let key = keys(&[1]);
    let router = bus(&server, Role::Router, key.clone()).await;
    let edge = bus(&server, Role::Edge, key.clone()).await;
    let forger = raw(&server, Role::Edge).await;
    let (tx, mut rx) = mpsc::channel(16);
    let _sub = router.subscribe(ROUTER_REQUEST_SUBJECT, Some(ROUTER_QUEUE_GROUP), tx).await.unwrap();

    let now = now_ms();
    let subject = ROUTER_REQUEST_SUBJECT;
    forger.publish(subject, b"unsigned").await;
    forger.publish_signed(subject, b"another key", keys(&[2]).sign(subject, b"another key", now)).await;
    forger.publish_signed(subject, b"garbage", "v1:00:1:00".to_owned()).await;
    // Signed for another subject, or for other bytes: moved or altered in transit.
    forger.publish_signed(subject, b"moved", key.sign("router.chat.1", b"moved", now)).await;
    forger.publish_signed(subject, b"altered", key.sign(subject, b"original", now)).await;
    let stale = now - 2 * DEFAULT_MAX_AGE_MS;
    forger.publish_signed(subject, b"replayed", key.sign(subject, b"replayed", stale)).await;
    // A correctly signed message from the same raw client passes: it is the MAC that counts.
    forger.publish_signed(subject, b"signed", key.sign(subject, b"signed", now)).await;
    assert_eq!(&recv(&mut rx).await.payload[..], b"signed");
    edge.publish(subject, Bytes::from_static(b"from an edge")).await.unwrap();
    assert_eq!(&recv(&mut rx).await.payload[..], b"from an edge");
}

/// Edges drop events and replies a router did not sign, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_replies_without_the_cluster_key_never_reach_the_edge() {
    let Some(server) = NatsServer::builder().cluster_auth().start() else { return };
    let key = keys(&[1]);
    let edge = bus(&server, Role::Edge, key.clone()).await;
    let router = bus(&server, Role::Router, key.clone()).await;
    let forger = raw(&server, Role::Router).await;

    let (tx, mut rx) = mpsc::channel(16);
    let _sub = edge.subscribe("chat.42", None, tx).await.unwrap();
    forger.publish("chat.42", b"forged event").await;
    router.publish("chat.42", Bytes::from_static(b"event")).await.unwrap();
    assert_eq!(&recv(&mut rx).await.payload[..], b"event");

    // A raw router answers the edge's request: unsigned, the answer is refused.
    let mut queue = forger.queue_subscribe(ROUTER_REQUEST_SUBJECT, ROUTER_QUEUE_GROUP).await;
    let answer = {
        let client = forger.client.clone();
        let key = key.clone();
        tokio::spawn(async move {
            for signed in [false, true] {
                let request = tokio::time::timeout(WAIT, queue.next()).await.unwrap().unwrap();
                let reply = request.reply.unwrap();
                if signed {
                    let mut headers = HeaderMap::new();
                    headers.insert(MAC_HEADER, key.sign(&reply, b"signed answer", now_ms()));
                    client.publish_with_headers(reply, headers, Bytes::from_static(b"signed answer")).await.unwrap();
                } else {
                    client.publish(reply, Bytes::from_static(b"forged answer")).await.unwrap();
                }
                client.flush().await.unwrap();
            }
        })
    };
    let res = edge.request(ROUTER_REQUEST_SUBJECT, Bytes::from_static(b"q"), WAIT).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "{res:?}");
    let res = edge.request(ROUTER_REQUEST_SUBJECT, Bytes::from_static(b"q"), WAIT).await;
    assert_eq!(&res.unwrap()[..], b"signed answer");
    answer.await.unwrap();
}

/// Rolling the key: a node holding [new, old] accepts both; once the old key is removed, a
/// message signed with it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_key_verifies_only_while_it_is_configured() {
    let Some(server) = NatsServer::builder().cluster_auth().start() else { return };
    let (old, new) = (keys(&[1]), keys(&[2]));
    let during = bus(&server, Role::Router, keys(&[2, 1])).await;
    let after = bus(&server, Role::Router, new.clone()).await;
    let (tx_during, mut rx_during) = mpsc::channel(16);
    let (tx_after, mut rx_after) = mpsc::channel(16);
    let _a = during.subscribe("router.chat.1", None, tx_during).await.unwrap();
    let _b = after.subscribe("router.chat.1", None, tx_after).await.unwrap();

    // One connection publishes both, so they arrive in this order.
    let sender = raw(&server, Role::Edge).await;
    let subject = "router.chat.1";
    sender.publish_signed(subject, b"old", old.sign(subject, b"old", now_ms())).await;
    sender.publish_signed(subject, b"new", new.sign(subject, b"new", now_ms())).await;

    assert_eq!(&recv(&mut rx_during).await.payload[..], b"old");
    assert_eq!(&recv(&mut rx_during).await.payload[..], b"new");
    assert_eq!(&recv(&mut rx_after).await.payload[..], b"new", "the removed key was accepted");
    // A node in the middle of a rotation signs with the new key, which the others accept.
    let rolled_edge = bus(&server, Role::Edge, keys(&[2, 1])).await;
    rolled_edge.publish(subject, Bytes::from_static(b"from the rolled node")).await.unwrap();
    assert_eq!(&recv(&mut rx_after).await.payload[..], b"from the rolled node");
}
