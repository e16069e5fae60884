//! The standalone node on a real CQL database: protocol semantics, and a database restart
//! under load.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use std::collections::BTreeMap;
use std::time::Duration;

use client::{Client, cursor};
use fixture::*;
use protocol::{ChatKind, ClientFrame, EventBody, ServerFrame};

fn keyspace() -> String {
    unique_keyspace("s")
}

/// The guard comes first so that it drops last, after the server is gone.
fn start_on(node: &str, ks: &str, extra: &[&str]) -> (KeyspaceGuard, TestServer) {
    let mut args = vec!["--store", "cql", "--cql-nodes", node, "--cql-keyspace", ks];
    args.extend_from_slice(extra);
    (KeyspaceGuard::new(node, ks), TestServer::start(&args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_semantics_hold_on_cql() {
    let Some(node) = cql_node() else { return };
    let (_ks, server) = start_on(&node, &keyspace(), &[]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let mut bob = server.connect(&b, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Group, "g", &[&b]).await.unwrap());
        let direct = created(&alice.create_chat(ChatKind::Direct, "", &[&b]).await.unwrap());
        assert_eq!(created(&bob.create_chat(ChatKind::Direct, "", &[&a]).await.unwrap()), direct);
        let (seq, dup) = acked(&alice.send_message(chat, "m1", "hello").await.unwrap());
        assert_eq!((seq, dup), (2, false));
        assert_eq!(acked(&alice.send_message(chat, "m1", "hello").await.unwrap()), (2, true));
        assert_eq!(error_code(&alice.send_message(chat, "m1", "other").await.unwrap()), "conflict");
        let f = bob.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if event.seq == 2)).await.unwrap();
        assert!(
            matches!(f, ServerFrame::Event { event, .. } if matches!(&event.body, EventBody::Message { text, .. } if text == "hello"))
        );
        acked(&alice.request(|req| ClientFrame::Edit { req, chat, target: 2, body: "edited".into() }).await.unwrap());
        for i in 0..5 {
            acked(&alice.send_message(chat, &format!("x{i}"), "x").await.unwrap());
        }
        // Bob reconnects from seq 2 and gets exactly 3..=8.
        let (_bob2, frames) =
            Client::connect_resuming(&server.ws, &server.token(&b), enc, vec![cursor(chat, 2)]).await.unwrap();
        assert_eq!(events_of(&frames, chat).iter().map(|e| e.seq).collect::<Vec<_>>(), (3..=8).collect::<Vec<_>>());
        match bob.request(|req| ClientFrame::ListChats { req }).await.unwrap() {
            ServerFrame::Chats { chats, .. } => assert_eq!(chats.len(), 2),
            other => panic!("{other:?}"),
        }
        let r = bob.request(|req| ClientFrame::Edit { req, chat, target: 2, body: "no".into() }).await.unwrap();
        assert_eq!(error_code(&r), "forbidden");
    }
}

/// The database restarts while three writers keep sending: sends fail with `unavailable`
/// (retryable) or are acked; the node stays up and answers; once the database is back,
/// sends succeed again; every acked message is in history exactly once, gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_acked_message() {
    let Some(node) = cql_node() else { return };
    let port = node.rsplit(':').next().unwrap().to_owned();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cassandra/cassandra.sh");
    let (_ks, server) = start_on(
        &node,
        &keyspace(),
        &["--rate-requests-per-second", "100000", "--rate-request-burst", "100000", "--request-timeout", "5s"],
    );
    let mut alice = server.connect("alice", Bincode).await;
    let chat = created(&alice.create_chat(ChatKind::Group, "g", &["bob"]).await.unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (ws, token, stop) = (server.ws.clone(), server.token("alice"), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect(&ws, &token, Bincode).await.unwrap();
            let (mut acked, mut unavailable) = (Vec::new(), 0u32);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("w{w}-{i}");
                // Retry each message until it is acked, as a client would.
                loop {
                    match c.send_message(chat, &id, &format!("body {id}")).await.unwrap() {
                        ServerFrame::Ack { seq, .. } => {
                            acked.push((seq, id.clone()));
                            break;
                        }
                        ServerFrame::Error { code, .. } if code.retryable() => {
                            unavailable += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => panic!("{other:?}"),
                    }
                }
                i += 1;
            }
            (acked, unavailable)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status =
        tokio::process::Command::new("bash").args([script, "restart", "--port", &port]).status().await.unwrap();
    assert!(status.success(), "restarting the database failed");
    // The node answered throughout and keeps answering.
    assert!(matches!(alice.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = BTreeMap::new();
    let mut retries = 0;
    for w in writers {
        let (acked, unavailable) = w.await.unwrap();
        retries += unavailable;
        for (seq, id) in acked {
            assert!(all.insert(seq, id).is_none(), "two acks with one seq");
        }
    }
    eprintln!("acked {} messages, {retries} retryable errors during the restart", all.len());
    // Everything acked is stored once, at its seq, and the chat is gap-free.
    let mut stored = BTreeMap::new();
    let events = alice.history_after(chat, 0).await.unwrap();
    let after = events.last().map(|e| e.seq).unwrap_or(0);
    for e in &events {
        if let EventBody::Message { client_msg_id, text, .. } = &e.body {
            assert_eq!(text, &format!("body {client_msg_id}"));
            stored.insert(e.seq, client_msg_id.clone());
        }
    }
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), (2..=after).collect::<Vec<_>>(), "gap in the seq");
    for (seq, id) in &all {
        assert_eq!(stored.get(seq), Some(id), "acked message lost at seq {seq}");
    }
    let unique: std::collections::BTreeSet<_> = stored.values().collect();
    assert_eq!(unique.len(), stored.len(), "a message stored twice");
}
