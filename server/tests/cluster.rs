//! Cluster mode: edges and routers as separate processes over a real NATS server, sharing a
//! real CQL database. Clients see the standalone node's protocol and guarantees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use client::{Client, ClientError, cursor};
use fixture::*;
use protocol::{ChatKind, ClientFrame, Encoding, EventBody, Role, ServerFrame};
use testkit::poll_until;

const SECRET: &str = "cluster-test-secret-cluster-test-secret";

/// Fields drop in order: nodes first, NATS last, so that nodes do not log a lost server.
struct Cluster {
    edges: Vec<TestServer>,
    routers: Vec<TestServer>,
    nats: NatsServer,
    cql: String,
    keyspace: String,
    _drop_keyspace: KeyspaceGuard,
}

impl Cluster {
    fn start(routers: usize, edges: usize) -> Option<Cluster> {
        let cql = cql_node()?;
        // The monitoring port counts the bus messages a post costs.
        let nats = NatsServer::builder().cluster_auth().monitor().required();
        let keyspace = unique_keyspace("c");
        let routers = (0..routers).map(|_| TestServer::start_router(&nats, &cql, &keyspace)).collect();
        let edges = (0..edges).map(|_| TestServer::start_edge(&nats, SECRET, &[])).collect();
        let guard = KeyspaceGuard::new(&cql, &keyspace);
        Some(Cluster { edges, routers, nats, cql, keyspace, _drop_keyspace: guard })
    }

    fn add_router(&mut self) {
        self.routers.push(TestServer::start_router(&self.nats, &self.cql, &self.keyspace));
    }

    fn token(&self, user: &str) -> String {
        self.edges[0].token(user)
    }

    async fn connect(&self, edge: usize, user: &str, enc: Encoding) -> Client {
        Client::connect(&self.edges[edge].ws, &self.token(user), enc).await.expect("connect")
    }
}

fn is_event(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Event { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_different_edges_talk_with_every_guarantee() {
    let Some(cluster) = Cluster::start(2, 2) else { return };
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = cluster.connect(0, &a, enc).await;
        let mut bob = cluster.connect(1, &b, enc).await;
        let mut bob_phone = cluster.connect(0, &b, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Group, "g", &[&b]).await.unwrap());
        for c in [&mut bob, &mut bob_phone] {
            let f = c.wait_for(is_event).await.unwrap();
            assert!(matches!(f, ServerFrame::Event { event, .. } if event.seq == 1));
        }
        let mut last = 1;
        for i in 0..20 {
            let (seq, dup) = acked(&alice.send_message(chat, &format!("m{i}"), &format!("text {i}")).await.unwrap());
            assert_eq!((seq, dup), (last + 1, false));
            last = seq;
        }
        assert_eq!(acked(&alice.send_message(chat, "m0", "text 0").await.unwrap()), (2, true));
        for c in [&mut bob, &mut bob_phone] {
            let mut seqs = Vec::new();
            while seqs.len() < 20 {
                if let ServerFrame::Event { event, .. } = c.wait_for(is_event).await.unwrap() {
                    seqs.push(event.seq);
                }
            }
            assert_eq!(seqs, (2..=21).collect::<Vec<_>>());
        }
        // Bob's laptop reconnects to the other edge and resumes.
        let (_laptop, frames) =
            Client::connect_resuming(&cluster.edges[0].ws, &cluster.token(&b), enc, vec![cursor(chat, 10)])
                .await
                .unwrap();
        assert_eq!(events_of(&frames, chat).iter().map(|e| e.seq).collect::<Vec<_>>(), (11..=21).collect::<Vec<_>>());
        // Removal takes effect on every edge at once.
        let (seq, _) = acked(
            &alice.request(|req| ClientFrame::RemoveMembers { req, chat, users: vec![b.clone()] }).await.unwrap(),
        );
        for c in [&mut bob, &mut bob_phone] {
            let f = c.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if event.seq == seq)).await.unwrap();
            assert!(
                matches!(f, ServerFrame::Event { event, .. } if matches!(event.body, EventBody::MembersRemoved { .. }))
            );
        }
        acked(&alice.send_message(chat, "after", "not for bob").await.unwrap());
        for c in [&mut bob, &mut bob_phone] {
            assert!(
                c.drain(Duration::from_millis(300))
                    .await
                    .iter()
                    .all(|f| !matches!(f, ServerFrame::Event { chat: x, event } if *x == chat && event.seq > seq))
            );
        }
        assert_eq!(error_code(&bob.send_message(chat, "x", "x").await.unwrap()), "not_found");
    }
}

/// A post to a 1,000-member chat whose members sit on 3 edges costs a handful of NATS
/// messages (one per edge holding members), not one per member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_costs_bus_messages_per_edge_not_per_member() {
    let Some(cluster) = Cluster::start(1, 3) else { return };
    const MEMBERS: usize = 1000;
    const POSTS: u64 = 10;
    let mut admin = cluster.connect(0, "owner", Encoding::Bincode).await;
    let chat = created(&admin.create_chat(ChatKind::Broadcast, "news", &[]).await.unwrap());
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("m{i}")).collect();
    for batch in users.chunks(protocol::limits::MAX_USERS_PER_REQUEST) {
        let users = batch.to_vec();
        acked(&admin.request(|req| ClientFrame::AddMembers { req, chat, users, role: Role::Member }).await.unwrap());
    }
    let mut members = Vec::new();
    for (i, user) in users.iter().enumerate() {
        members.push(cluster.connect(i % 3, user, Encoding::Bincode).await);
    }
    // Let heartbeats and subscriptions settle, then count only the posts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (in0, out0) = cluster.nats.counts();
    let t0 = std::time::Instant::now();
    let mut last = 0;
    for i in 0..POSTS {
        last = acked(&admin.send_message(chat, &format!("p{i}"), "hello everyone").await.unwrap()).0;
    }
    for m in &mut members {
        m.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if event.seq == last)).await.unwrap();
    }
    let (in1, out1) = cluster.nats.counts();
    let secs = t0.elapsed().as_secs_f64();
    // Heartbeats (1/s per router, delivered to 3 edges + 1 router) run meanwhile: bound them.
    let heartbeat_in = (secs + 1.0).ceil() as u64;
    let per_post_in = (in1 - in0).saturating_sub(heartbeat_in) as f64 / POSTS as f64;
    let per_post_out = (out1 - out0).saturating_sub(heartbeat_in * 4) as f64 / POSTS as f64;
    eprintln!("per post to {MEMBERS} members on 3 edges: {per_post_in:.1} messages into NATS, {per_post_out:.1} out");
    // request + reply + one event publish in; request, reply and one copy per edge out.
    assert!(per_post_in <= 4.0, "{per_post_in} messages in per post");
    assert!(per_post_out <= 6.0, "{per_post_out} messages out per post");
}

/// Whoever holds an edge's NATS credentials may publish on `router.req`, but without the
/// cluster key a request acts as nobody: the router drops it before decoding and counts it;
/// nothing is stored or delivered. The same request signed with the cluster key is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_forged_without_the_cluster_key_does_not_act() {
    use protocol::codec::{decode_envelope, encode_envelope};
    use protocol::envelope::{ROUTER_REQUEST_SUBJECT, RouterOp, RouterReply, RouterRequest};

    let Some(cluster) = Cluster::start(1, 1) else { return };
    let mut alice = cluster.connect(0, "alice", Json).await;
    let mut bob = cluster.connect(0, "bob", Json).await;
    let chat = created(&alice.create_chat(ChatKind::Group, "g", &["bob"]).await.unwrap());
    bob.wait_for(is_event).await.unwrap();

    let forger = async_nats::ConnectOptions::with_user_and_password(EDGE_USER.into(), EDGE_PASSWORD.into())
        .custom_inbox_prefix("_INBOX.edge")
        .connect(cluster.nats.url())
        .await
        .unwrap();
    let send = |id: &str| {
        let op = RouterOp::Send { chat, client_msg_id: id.to_owned(), body: format!("{id} as alice") };
        encode_envelope(&RouterRequest { user: "alice".to_owned(), op })
    };
    let request = |payload: bytes::Bytes, mac: Option<String>| {
        let mut request = async_nats::Request::new().payload(payload).timeout(Some(Duration::from_secs(1)));
        if let Some(mac) = mac {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(bus::mac::MAC_HEADER, mac);
            request = request.headers(headers);
        }
        forger.send_request(ROUTER_REQUEST_SUBJECT, request)
    };
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let cluster_keys =
        bus::ClusterKeys::parse(&std::fs::read_to_string(cluster_key_file(&cluster.nats)).unwrap()).unwrap();
    let other_keys = bus::ClusterKeys::parse(&random_key_hex()).unwrap();

    // Unsigned, and signed with a key that is not the cluster's: no answer ever comes.
    let unsigned = request(send("forged-1"), None).await;
    assert!(unsigned.is_err_and(|e| e.kind() == async_nats::RequestErrorKind::TimedOut));
    let payload = send("forged-2");
    let mac = other_keys.sign(ROUTER_REQUEST_SUBJECT, &payload, now());
    let other = request(payload, Some(mac)).await;
    assert!(other.is_err_and(|e| e.kind() == async_nats::RequestErrorKind::TimedOut));
    let router = &cluster.routers[0];
    for reason in ["missing", "unknown_key"] {
        let line = format!("bus_nats_rejected_total{{reason=\"{reason}\"}} ");
        poll_until(&format!("the router counts a {reason} MAC"), Duration::from_secs(10), async || {
            let (_, metrics) = router.admin_get("/metrics").await;
            metrics
                .lines()
                .any(|l| l.strip_prefix(&line).is_some_and(|n| n.trim().parse::<f64>().is_ok_and(|n| n >= 1.0)))
        })
        .await;
    }
    // Nothing was stored: the next real message takes seq 2, and it is the first Bob sees.
    assert_eq!(acked(&alice.send_message(chat, "real", "real").await.unwrap()), (2, false));
    let next = bob.wait_for(is_event).await.unwrap();
    assert!(matches!(&next, ServerFrame::Event { event, .. } if event.seq == 2), "{next:?}");

    // Signed with the cluster key, the same kind of request acts (the key is the secret).
    let payload = send("signed");
    let mac = cluster_keys.sign(ROUTER_REQUEST_SUBJECT, &payload, now());
    let reply = request(payload, Some(mac)).await.unwrap();
    let reply: RouterReply = decode_envelope(&reply.payload).unwrap();
    assert!(matches!(reply, RouterReply::Ack { seq: 3, duplicate: false, .. }), "{reply:?}");
    let next = bob.wait_for(is_event).await.unwrap();
    assert!(matches!(&next, ServerFrame::Event { event, .. } if event.seq == 3), "{next:?}");
}

/// `kill -9` of a router under steady load: its chats move to the survivor within the
/// heartbeat timeout; every acked message reaches the receiver once, in order, gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_router_under_load_loses_nothing() {
    let Some(mut cluster) = Cluster::start(2, 2) else { return };
    let mut alice = cluster.connect(0, "alice", Encoding::Bincode).await;
    let mut chats = Vec::new();
    for _ in 0..4 {
        chats.push(created(&alice.create_chat(ChatKind::Group, "g", &["bob"]).await.unwrap()));
    }
    let (receiver_ws, bob_token) = (cluster.edges[1].ws.clone(), cluster.token("bob"));
    let mut bob = Client::connect(&receiver_ws, &bob_token, Encoding::Bincode).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked_log = send_steadily(&cluster, &chats, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.routers[0].kill9();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = acked_log.await.unwrap();
    assert!(acked.len() > 20, "too few sends got through: {}", acked.len());
    check_delivery(&mut bob, &acked).await;
}

/// A router joins mid-load: chats move to it without a lost or duplicated message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_added_under_load_takes_chats_without_loss() {
    let Some(mut cluster) = Cluster::start(1, 1) else { return };
    let mut alice = cluster.connect(0, "alice", Encoding::Json).await;
    let mut chats = Vec::new();
    for _ in 0..6 {
        chats.push(created(&alice.create_chat(ChatKind::Group, "g", &["bob"]).await.unwrap()));
    }
    let mut bob = cluster.connect(0, "bob", Encoding::Json).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked_log = send_steadily(&cluster, &chats, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.add_router();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = acked_log.await.unwrap();
    check_delivery(&mut bob, &acked).await;
}

/// One writer per chat, each retrying its message until acked (as a client does), until
/// `stop`. Returns (chat, seq, client_msg_id) of every ack.
async fn send_steadily(
    cluster: &Cluster,
    chats: &[u64],
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u64, u64, String)>> {
    let mut writers = Vec::new();
    for (w, &chat) in chats.iter().enumerate() {
        let (ws, token, stop) = (cluster.edges[0].ws.clone(), cluster.token("alice"), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect(&ws, &token, Encoding::Bincode).await.unwrap();
            let mut out = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("w{w}-{i}");
                loop {
                    match c.send_message(chat, &id, &id).await {
                        Ok(ServerFrame::Ack { seq, .. }) => {
                            out.push((chat, seq, id.clone()));
                            break;
                        }
                        Ok(ServerFrame::Error { code, .. }) if code.retryable() => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        // The edge answers `unavailable` after its own 10 s request timeout,
                        // the same time this client waits: a client that gave up first
                        // retries with the same id, as real clients do (the send is idempotent).
                        Err(ClientError::Timeout) => {}
                        other => panic!("{other:?}"),
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            out
        }));
    }
    tokio::spawn(async move {
        let mut all = Vec::new();
        for w in writers {
            all.extend(w.await.unwrap());
        }
        all
    })
}

/// Every acked message reached `receiver` exactly once after dedupe by seq, in seq order per
/// chat, with no gap (the receiver resumes once at the end to fill what live delivery missed).
async fn check_delivery(receiver: &mut Client, acked: &[(u64, u64, String)]) {
    check_delivery_after(receiver, acked, BTreeMap::new()).await
}

/// [`check_delivery`], counting `prior` (chat → seq → client message id) as delivered
/// before (on a connection that has since died).
async fn check_delivery_after(
    receiver: &mut Client,
    acked: &[(u64, u64, String)],
    mut prior: BTreeMap<u64, BTreeMap<u64, String>>,
) {
    let mut want: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
    for (chat, seq, id) in acked {
        assert!(want.entry(*chat).or_default().insert(*seq, id.clone()).is_none(), "one seq acked twice");
    }
    let mut got: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for f in receiver.drain(Duration::from_millis(1500)).await {
        if let ServerFrame::Event { chat, event } = f
            && let EventBody::Message { client_msg_id, .. } = event.body
        {
            got.entry(chat).or_default().push((event.seq, client_msg_id));
        }
    }
    for (chat, expected) in &want {
        let live = got.remove(chat).unwrap_or_default();
        // In order, no duplicates, no gaps in what arrived live.
        for pair in live.windows(2) {
            assert!(pair[1].0 > pair[0].0, "chat {chat}: out of order or duplicate {:?}", pair);
        }
        let mut seen: BTreeMap<u64, String> = prior.remove(chat).unwrap_or_default();
        if let (Some(before), Some(first)) = (seen.keys().next_back(), live.first()) {
            assert!(first.0 > *before, "chat {chat}: delivered again after the reconnect");
        }
        seen.extend(live);
        // Anything live delivery missed (a dead router's last publish) comes by resume.
        let last_seen = seen.keys().next_back().copied().unwrap_or(1);
        let first_missing = (2..=last_seen).find(|s| !seen.contains_key(s)).unwrap_or(last_seen);
        let frames = receiver.resume(vec![cursor(*chat, first_missing.saturating_sub(1))]).await.unwrap();
        for e in events_of(&frames, *chat) {
            if let EventBody::Message { client_msg_id, .. } = e.body {
                seen.entry(e.seq).or_insert(client_msg_id);
            }
        }
        for (seq, id) in expected {
            assert_eq!(seen.get(seq), Some(id), "chat {chat}: acked seq {seq} never delivered");
        }
        let max = seen.keys().next_back().copied().unwrap_or(1);
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (2..=max).collect::<Vec<_>>(), "chat {chat}: gap");
        let unique: std::collections::BTreeSet<_> = seen.values().collect();
        assert_eq!(unique.len(), seen.len(), "chat {chat}: a message stored twice");
    }
}

/// `kill -9` of the edge holding the receiver: it reconnects to the other edge, resumes from
/// what it saw, and ends with every acked message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_edge_under_load_loses_nothing() {
    let Some(mut cluster) = Cluster::start(2, 2) else { return };
    let mut alice = cluster.connect(1, "alice", Encoding::Json).await;
    let mut chats = Vec::new();
    for _ in 0..3 {
        chats.push(created(&alice.create_chat(ChatKind::Group, "g", &["bob"]).await.unwrap()));
    }
    let mut bob = cluster.connect(0, "bob", Encoding::Bincode).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Writers connect to edge 1 (edge 0 is about to die).
    let survivor = cluster.edges.remove(1);
    let doomed = std::mem::replace(&mut cluster.edges, vec![survivor]);
    let acked_log = send_steadily(&cluster, &chats, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // What bob saw before the crash.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    let mut prior: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
    for f in bob.drain(Duration::from_millis(200)).await {
        if let ServerFrame::Event { chat, event } = f {
            let l = last.entry(chat).or_insert(0);
            assert!(event.seq > *l, "out of order before the crash");
            *l = event.seq;
            if let EventBody::Message { client_msg_id, .. } = event.body {
                prior.entry(chat).or_default().insert(event.seq, client_msg_id);
            }
        }
    }
    drop(doomed); // kill -9
    let cursors = chats.iter().map(|c| cursor(*c, last.get(c).copied().unwrap_or(0))).collect();
    let (mut bob, frames) =
        Client::connect_resuming(&cluster.edges[0].ws, &cluster.token("bob"), Encoding::Bincode, cursors)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = acked_log.await.unwrap();
    // The resumed stream continues exactly after each cursor.
    for c in &chats {
        let events = events_of(&frames, *c);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        let from = last.get(c).copied().unwrap_or(0);
        assert_eq!(seqs, ((from + 1)..=(from + seqs.len() as u64)).collect::<Vec<_>>(), "resume of chat {c}");
        for e in events {
            if let EventBody::Message { client_msg_id, .. } = e.body {
                prior.entry(*c).or_default().insert(e.seq, client_msg_id);
            }
        }
    }
    check_delivery_after(&mut bob, &acked, prior).await;
}

/// The NATS server restarts under load: requests fail as `unavailable` while it is down,
/// everything reconnects by itself, and no acked message is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_under_load_loses_nothing() {
    let Some(mut cluster) = Cluster::start(2, 2) else { return };
    let mut alice = cluster.connect(0, "alice", Encoding::Bincode).await;
    let mut chats = Vec::new();
    for _ in 0..3 {
        chats.push(created(&alice.create_chat(ChatKind::Group, "g", &["bob"]).await.unwrap()));
    }
    let mut bob = cluster.connect(1, "bob", Encoding::Bincode).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked_log = send_steadily(&cluster, &chats, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nats.restart();
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = acked_log.await.unwrap();
    // Sends got through after the restart too.
    let last_ack = acked.iter().map(|(_, s, _)| *s).max().unwrap_or(0);
    assert!(last_ack > 10, "no progress: {last_ack}");
    check_delivery(&mut bob, &acked).await;
}

/// SIGTERM on an edge under load: readiness goes false first, its clients get `go_away` and
/// 1001, reconnect to the other edge and resume; nothing acked is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_an_edge_moves_its_clients_without_loss() {
    let Some(mut cluster) = Cluster::start(1, 2) else { return };
    let mut alice = cluster.connect(1, "alice", Encoding::Json).await;
    let mut chats = Vec::new();
    for _ in 0..2 {
        chats.push(created(&alice.create_chat(ChatKind::Group, "g", &["bob"]).await.unwrap()));
    }
    let mut bob = cluster.connect(0, "bob", Encoding::Json).await;
    let stop = Arc::new(AtomicBool::new(false));
    let draining = cluster.edges.remove(0);
    let acked_log = send_steadily(&cluster, &chats, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    draining.signal("TERM");
    testkit::poll_until("the draining edge reports not ready", Duration::from_secs(2), async || {
        draining.admin_get("/readyz").await.0 == 503
    })
    .await;
    // Bob reads to the go_away, noting what he saw, and the close.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    let mut prior: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
    loop {
        match bob.recv().await {
            Ok(ServerFrame::Event { chat, event }) => {
                last.insert(chat, event.seq);
                if let EventBody::Message { client_msg_id, .. } = event.body {
                    prior.entry(chat).or_default().insert(event.seq, client_msg_id);
                }
            }
            Ok(ServerFrame::GoAway { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("no go_away before {e}"),
        }
    }
    assert_eq!(bob.closed_code(Duration::from_secs(10)).await, Some(1001));
    let cursors = chats.iter().map(|c| cursor(*c, last.get(c).copied().unwrap_or(0))).collect();
    let (mut bob, frames) =
        Client::connect_resuming(&cluster.edges[0].ws, &cluster.token("bob"), Encoding::Json, cursors).await.unwrap();
    for e in chats.iter().flat_map(|c| events_of(&frames, *c).into_iter().map(move |e| (*c, e))) {
        if let (chat, protocol::Event { seq, body: EventBody::Message { client_msg_id, .. }, .. }) = e {
            prior.entry(chat).or_default().insert(seq, client_msg_id);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = acked_log.await.unwrap();
    check_delivery_after(&mut bob, &acked, prior).await;
    drop(draining);
}
