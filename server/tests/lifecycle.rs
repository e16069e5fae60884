//! Process lifecycle: graceful drain on SIGTERM, durability across `kill -9`, health and
//! metrics endpoints, configuration errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use client::Client;
use fixture::*;
use protocol::{ChatKind, ClientFrame, EventBody, ServerFrame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_goaway_and_1001_then_exits_zero() {
    let mut server =
        TestServer::start(&["--drain-batch", "1", "--drain-interval", "700ms", "--shutdown-deadline", "20s"]);
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    let mut clients = Vec::new();
    for (i, enc) in [Json, Bincode, Json].into_iter().enumerate() {
        clients.push(server.connect(&format!("u{i}"), enc).await);
    }
    server.signal("TERM");
    // Draining: not ready for new clients (three batches, 700 ms apart, leave time to look).
    testkit::poll_until("the draining node reports not ready", Duration::from_secs(1), async || {
        server.admin_get("/readyz").await.0 == 503
    })
    .await;
    assert_eq!(server.admin_get("/healthz").await.0, 200);
    for c in &mut clients {
        match c.recv().await.unwrap() {
            ServerFrame::GoAway { reconnect_after_ms, .. } => assert!(reconnect_after_ms > 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.closed_code(Duration::from_secs(10)).await, Some(1001));
    }
    let status = server.wait_exit(Duration::from_secs(20)).expect("exited");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_bounds_shutdown() {
    // One batch per 10 s would take 30 s for three clients; the 2 s deadline cuts it short.
    let mut server = TestServer::start(&["--drain-batch", "1", "--drain-interval", "10s", "--shutdown-deadline", "2s"]);
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(server.connect(&format!("u{i}"), Json).await);
    }
    let started = std::time::Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15)).expect("exited");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    for c in &mut clients {
        assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(1001));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message() {
    let temp = tempfile::tempdir().unwrap();
    let mut server =
        TestServer::start_in(temp.path(), &["--rate-requests-per-second", "100000", "--rate-request-burst", "100000"]);
    let mut alice = server.connect("alice", Bincode).await;
    let mut chats = Vec::new();
    for _ in 0..3 {
        chats.push(created(&alice.create_chat(ChatKind::Group, "g", &["bob"]).await.unwrap()));
    }
    // Three writers, pipelined 16 deep each, so that the kill lands with a group commit in flight.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (w, &chat) in chats.iter().enumerate() {
        let (ws, token, tx) = (server.ws.clone(), server.token("alice"), tx.clone());
        tokio::spawn(async move {
            let mut c = Client::connect(&ws, &token, Bincode).await.unwrap();
            let mut next = 0u64;
            let mut inflight = BTreeMap::new();
            loop {
                while inflight.len() < 16 {
                    let req = c.req();
                    let frame = ClientFrame::Send {
                        req,
                        chat,
                        client_msg_id: format!("w{w}-{next}"),
                        body: format!("body w{w}-{next}"),
                    };
                    if c.send(&frame).await.is_err() {
                        return;
                    }
                    inflight.insert(req, next);
                    next += 1;
                }
                match c.recv().await {
                    Ok(ServerFrame::Ack { req, seq, .. }) => {
                        let n = inflight.remove(&req).unwrap();
                        let _ = tx.send((chat, seq, format!("w{w}-{n}")));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
    drop(tx);
    let mut acked = Vec::new();
    while acked.len() < 600 {
        acked.push(rx.recv().await.unwrap());
    }
    server.kill9();
    while let Some(a) = rx.recv().await {
        acked.push(a);
    }
    drop(alice);

    let server = TestServer::start_in(temp.path(), &[]);
    let mut alice = server.connect("alice", Json).await;
    for &chat in &chats {
        let events = alice.history_after(chat, 0).await.unwrap();
        // Gap-free from 1, every message whole.
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=events.len() as u64).collect::<Vec<_>>());
        let mut by_seq = BTreeMap::new();
        for e in &events[1..] {
            match &e.body {
                EventBody::Message { client_msg_id, text, .. } => {
                    assert_eq!(text, &format!("body {client_msg_id}"), "half-written message");
                    by_seq.insert(e.seq, client_msg_id.clone());
                }
                other => panic!("{other:?}"),
            }
        }
        for (c, seq, id) in acked.iter().filter(|(c, ..)| *c == chat) {
            assert_eq!(by_seq.get(seq), Some(id), "acked message lost in chat {c} at seq {seq}");
        }
    }
    assert!(acked.len() >= 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_endpoints() {
    let server = TestServer::start(&[]);
    assert_eq!(server.admin_get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(server.admin_get("/readyz").await.0, 200);
    assert_eq!(server.admin_get("/nope").await.0, 404);
    let mut alice = server.connect("alice", Json).await;
    let mut bob = server.connect("bob", Bincode).await;
    let chat = created(&alice.create_chat(ChatKind::Direct, "", &["bob"]).await.unwrap());
    acked(&alice.send_message(chat, "1", "hi").await.unwrap());
    let _ = bob.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if event.seq == 2)).await.unwrap();
    let _ = alice.send_message(chat, "", "").await.unwrap();
    let (code, body) = server.admin_get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "edge_connections 2",
        "edge_frames_in_total{type=\"send\"}",
        "edge_frames_out_total{type=\"event\"}",
        "edge_errors_total{code=\"invalid\"}",
        "edge_auth_total{result=\"ok\"}",
        "router_appends_total",
        "edge_delivery_seconds_bucket",
        "router_write_seconds_bucket",
        "store_group_commit_writes_bucket",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
}

#[test]
fn bad_configuration_exits_64() {
    for args in [
        vec!["standalone", "--dev", "--max-frame-bytes", "5"],
        vec!["standalone", "--dev", "--no-such-flag"],
        vec!["standalone", "--dev", "--idle-timeout", "forever"],
        vec!["standalone", "--dev", "--jwt-secret", "short"],
        vec!["standalone", "--dev", "--listen-backlog", "0"],
        vec!["edge", "--dev", "--listen-backlog", "70000"],
        // An edge without the cluster's token key never falls back to a development secret.
        vec!["edge", "--dev", "--nats", "nats://127.0.0.1:1"],
        vec!["router", "--cql-keyspace", "Bad-Name"],
        vec!["standalone", "--dev", "--jwt-max-lifetime", "10s"],
        vec!["standalone", "--dev", "--jwt-leeway", "1h"],
        vec!["standalone", "--dev", "--write-timeout", "0s"],
        vec!["standalone", "--dev", "--max-connections-per-ip", "0"],
        vec!["standalone", "--dev", "--trusted-proxies", "10.0.0.0/99"],
        // Outside --dev: no development secret, and an issuer and an audience are required.
        vec!["standalone"],
        vec!["standalone", "--jwt-secret", "0123456789abcdef0123456789abcdef"],
        vec!["standalone", "--jwt-secret", "0123456789abcdef0123456789abcdef", "--jwt-issuer", "i"],
        vec!["standalone", "--dev", "--jwt-jwks-file", "/nonexistent/jwks.json"],
        vec!["standalone", "--dev", "--revocation-retention", "1h"],
        // Cluster nodes refuse to run without the cluster key, or with one they cannot read.
        vec!["router", "--nats", "nats://127.0.0.1:1"],
        vec!["edge", "--dev", "--jwt-secret", "lifecycle-secret-lifecycle-secret-0123", "--nats", "nats://127.0.0.1:1"],
        vec!["router", "--cluster-key-file", "/nonexistent/cluster.key"],
        vec!["frobnicate"],
    ] {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_messenger"))
            .args(&args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(64), "{args:?}");
    }
}

/// The data directory holds every message in plain text: a new one, and the parents the node
/// creates for it, are owner-only; the files in it too.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("fresh").join("data");
    let _server = TestServer::start_in(&data, &[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&temp.path().join("fresh")), 0o700);
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

/// Every audited act leaves one JSON line with who, what, when and from where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_acts_leave_audit_records() {
    let temp = tempfile::tempdir().unwrap();
    let log = temp.path().join("audit.log");
    let server = TestServer::start(&["--audit-log", log.to_str().unwrap(), "--max-connections-per-user", "1"]);
    let mut alice = server.connect("alice", Json).await;
    let chat = created(&alice.create_chat(ChatKind::Group, "team", &["bob"]).await.unwrap());
    acked(
        &alice
            .request(|req| ClientFrame::AddMembers {
                req,
                chat,
                users: vec!["carol".into()],
                role: protocol::Role::Member,
            })
            .await
            .unwrap(),
    );
    let (seq, _) = acked(&alice.send_message(chat, "m1", "to be deleted").await.unwrap());
    acked(&alice.request(|req| ClientFrame::Delete { req, chat, target: seq }).await.unwrap());
    acked(&alice.request(|req| ClientFrame::RemoveMembers { req, chat, users: vec!["bob".into()] }).await.unwrap());
    // A refused token, and a second device over the cap (4011).
    let mut bad = Client::open(&server.ws, Some("not-a-jwt"), client::TokenIn::Query, Json).await.unwrap();
    assert_eq!(bad.closed_code(Duration::from_secs(5)).await, Some(4001));
    let mut second =
        Client::open(&server.ws, Some(&server.token("alice")), client::TokenIn::Query, Json).await.unwrap();
    assert_eq!(second.closed_code(Duration::from_secs(5)).await, Some(4011));
    let records: Vec<serde_json::Value> =
        testkit::poll_until("the audit records", Duration::from_secs(5), async || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            (records.iter().filter(|r| r["event"] == "closed").count() >= 1).then_some(records)
        })
        .await;
    let find = |event: &str, outcome: Option<&str>| {
        records
            .iter()
            .find(|r| r["event"] == event && outcome.is_none_or(|o| r["outcome"] == o))
            .unwrap_or_else(|| panic!("no {event} {outcome:?} record in {records:#?}"))
    };
    let auth = find("auth", None);
    assert_eq!(
        (auth["sub"].as_str(), auth["result"].as_str(), auth["client"].as_str()),
        (Some("alice"), Some("ok"), Some("127.0.0.1"))
    );
    assert_eq!(auth["node"], "standalone");
    assert!(auth["ts_ms"].as_u64().unwrap() > 0);
    let refused = records.iter().find(|r| r["event"] == "auth" && r["result"] == "invalid").expect("refused token");
    assert!(refused.get("sub").is_none());
    let created = find("chat_created", Some("committed"));
    assert_eq!((created["actor"].as_str(), created["chat"].as_u64()), (Some("alice"), Some(chat)));
    assert_eq!(find("chat_created", Some("requested"))["members"], serde_json::json!(["alice", "bob"]));
    let added = find("members_added", Some("committed"));
    assert_eq!((added["users"].clone(), added["role"].as_str()), (serde_json::json!(["carol"]), Some("member")));
    let deleted = find("message_deleted", Some("committed"));
    assert_eq!((deleted["actor"].as_str(), deleted["target"].as_u64()), (Some("alice"), Some(seq)));
    assert_eq!(find("members_removed", Some("committed"))["users"], serde_json::json!(["bob"]));
    let closed = find("closed", None);
    assert_eq!(
        (closed["code"].as_u64(), closed["reason"].as_str(), closed["sub"].as_str()),
        (Some(4011), Some("too_many_connections"), Some("alice"))
    );
    // Requested comes before committed.
    let position = |event: &str, outcome: &str| {
        records.iter().position(|r| r["event"] == event && r["outcome"] == outcome).unwrap()
    };
    assert!(position("members_added", "requested") < position("members_added", "committed"));
}
