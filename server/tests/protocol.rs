//! Every operation of protocol v1, in both encodings, against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use std::time::Duration;

use client::{Client, TokenIn, cursor};
use fixture::*;
use protocol::{ChatKind, ClientFrame, EventBody, PresenceStatus, Role, ServerFrame};

const QUIET: Duration = Duration::from_millis(300);

fn is_event(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Event { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_by_query_header_and_frame() {
    let server = TestServer::start(&[]);
    for enc in ENCODINGS {
        for how in [TokenIn::Query, TokenIn::Header, TokenIn::Frame] {
            let mut c = Client::open(&server.ws, Some(&server.token("alice")), how, enc).await.unwrap();
            match c.recv().await.unwrap() {
                ServerFrame::Hello { user, protocol, .. } => {
                    assert_eq!(user, "alice");
                    assert_eq!(protocol, 1);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_close_with_4001_and_silence_with_4002() {
    let server = TestServer::start(&["--auth-timeout", "1s"]);
    for enc in ENCODINGS {
        // Garbage token.
        let mut c = Client::open(&server.ws, Some("not-a-jwt"), TokenIn::Query, enc).await.unwrap();
        assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(4001));
        // Expired token (beyond the 30 s leeway).
        let secret = std::fs::read_to_string(server.dir.join("dev-jwt-secret")).unwrap();
        let expired = testkit::mint_expired_token(secret.trim().as_bytes(), "alice");
        let mut c = Client::open(&server.ws, Some(&expired), TokenIn::Header, enc).await.unwrap();
        assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(4001));
        // A request before auth: error frame, then 4001.
        let mut c = Client::open(&server.ws, None, TokenIn::Frame, enc).await.unwrap();
        c.send(&ClientFrame::ListChats { req: 1 }).await.unwrap();
        assert_eq!(error_code(&c.recv().await.unwrap()), "unauthenticated");
        assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(4001));
        // Nothing at all: closed at the deadline.
        let mut c = Client::open(&server.ws, None, TokenIn::Frame, enc).await.unwrap();
        assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(4002));
    }
    // An unknown subprotocol is refused at the upgrade.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/?token={}",
        server.ws,
        server.token("alice")
    ))
    .unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "mqtt".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_lists_chats() {
    let server = TestServer::start(&[]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let direct = alice.create_chat(ChatKind::Direct, "", &[&b]).await.unwrap();
        let direct_id = created(&direct);
        // Creating the same direct chat again returns it.
        match alice.create_chat(ChatKind::Direct, "", &[&b]).await.unwrap() {
            ServerFrame::ChatCreated { chat, created, .. } => {
                assert_eq!(chat.chat, direct_id);
                assert!(!created);
            }
            other => panic!("{other:?}"),
        }
        let group = created(&alice.create_chat(ChatKind::Group, "team", &[&b, "c"]).await.unwrap());
        let channel = created(&alice.create_chat(ChatKind::Broadcast, "news", &[]).await.unwrap());
        let mut bob = server.connect(&b, enc).await;
        match bob.request(|req| ClientFrame::ListChats { req }).await.unwrap() {
            ServerFrame::Chats { chats, .. } => {
                let mut ids: Vec<_> = chats.iter().map(|c| c.chat).collect();
                ids.sort();
                let mut want = vec![direct_id, group];
                want.sort();
                assert_eq!(ids, want, "bob is in the direct chat and the group, not the channel");
                let g = chats.iter().find(|c| c.chat == group).unwrap();
                assert_eq!(
                    (g.kind, g.title.as_str(), g.role, g.last_seq, g.read_seq),
                    (ChatKind::Group, "team", Role::Member, 1, 0)
                );
            }
            other => panic!("{other:?}"),
        }
        match alice.request(|req| ClientFrame::ListChats { req }).await.unwrap() {
            ServerFrame::Chats { chats, .. } => {
                let c = chats.iter().find(|c| c.chat == channel).unwrap();
                assert_eq!((c.kind, c.role), (ChatKind::Broadcast, Role::Admin));
            }
            other => panic!("{other:?}"),
        }
        // Invalid requests get `invalid`.
        let r = alice.create_chat(ChatKind::Direct, "", &[&b, "c"]).await.unwrap();
        assert_eq!(error_code(&r), "invalid");
        let r = alice.create_chat(ChatKind::Group, "", &["bad id"]).await.unwrap();
        assert_eq!(error_code(&r), "invalid");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_is_acked_idempotent_and_reaches_every_device() {
    let server = TestServer::start(&[]);
    for enc in ENCODINGS {
        let other = if enc == Json { Bincode } else { Json };
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let mut alice2 = server.connect(&a, other).await;
        let mut bob = server.connect(&b, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Group, "g", &[&b]).await.unwrap());
        // Everyone was told of the new chat.
        for c in [&mut alice2, &mut bob] {
            let f = c.wait_for(is_event).await.unwrap();
            assert!(
                matches!(&f, ServerFrame::Event { event, .. } if event.seq == 1 && matches!(event.body, EventBody::Created { .. }))
            );
        }
        let _ = alice.wait_for(is_event).await.unwrap();
        let (seq, dup) = acked(&alice.send_message(chat, "m-1", "hello").await.unwrap());
        assert_eq!((seq, dup), (2, false));
        for c in [&mut alice, &mut alice2, &mut bob] {
            match c.wait_for(is_event).await.unwrap() {
                ServerFrame::Event { chat: got, event } => {
                    assert_eq!((got, event.seq, event.sender.as_str()), (chat, 2, a.as_str()));
                    assert!(
                        matches!(event.body, EventBody::Message { ref text, ref client_msg_id, .. } if text == "hello" && client_msg_id == "m-1")
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        // The same id with another body is a client bug: conflict, not a silent duplicate.
        assert_eq!(error_code(&alice.send_message(chat, "m-1", "something else").await.unwrap()), "conflict");
        // The retry gets the same ack and delivers nothing.
        let (seq2, dup2) = acked(&alice.send_message(chat, "m-1", "hello").await.unwrap());
        assert_eq!((seq2, dup2), (2, true));
        assert!(bob.drain(QUIET).await.iter().all(|f| !is_event(f)), "a retried send is delivered once");
        match bob
            .request(|req| ClientFrame::History { req, chat, before: None, after: None, limit: None })
            .await
            .unwrap()
        {
            ServerFrame::History { events, more, .. } => {
                assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
                assert!(!more);
            }
            other => panic!("{other:?}"),
        }
        // Bad sends.
        assert_eq!(error_code(&alice.send_message(chat, "m-2", "").await.unwrap()), "invalid");
        assert_eq!(error_code(&alice.send_message(chat, "", "x").await.unwrap()), "invalid");
        let big = "x".repeat(protocol::limits::MAX_BODY_BYTES + 1);
        assert_eq!(error_code(&alice.send_message(chat, "m-3", &big).await.unwrap()), "invalid");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_are_events_and_history_pages() {
    let server = TestServer::start(&[]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let mut bob = server.connect(&b, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Group, "g", &[&b]).await.unwrap());
        for i in 0..10 {
            acked(&alice.send_message(chat, &format!("m{i}"), &format!("text {i}")).await.unwrap());
        }
        // seqs 2..=11 are messages. Bob may not edit alice's message; alice may.
        let r = bob.request(|req| ClientFrame::Edit { req, chat, target: 2, body: "hacked".into() }).await.unwrap();
        assert_eq!(error_code(&r), "forbidden");
        let (s, _) = acked(
            &alice.request(|req| ClientFrame::Edit { req, chat, target: 2, body: "edited".into() }).await.unwrap(),
        );
        assert_eq!(s, 12);
        let r = bob.request(|req| ClientFrame::Delete { req, chat, target: 3 }).await.unwrap();
        assert_eq!(error_code(&r), "forbidden");
        let (s, _) = acked(&alice.request(|req| ClientFrame::Delete { req, chat, target: 3 }).await.unwrap());
        assert_eq!(s, 13);
        // Deleted twice, or a target that is not a message: not found.
        let r = alice.request(|req| ClientFrame::Delete { req, chat, target: 3 }).await.unwrap();
        assert_eq!(error_code(&r), "not_found");
        let r = alice.request(|req| ClientFrame::Edit { req, chat, target: 1, body: "x".into() }).await.unwrap();
        assert_eq!(error_code(&r), "not_found");
        // Bob saw the edit and the delete live.
        let mut seen = Vec::new();
        while seen.len() < 13 {
            if let ServerFrame::Event { event, .. } = bob.wait_for(is_event).await.unwrap() {
                seen.push(event);
            }
        }
        assert!(matches!(&seen.last().unwrap().body, EventBody::Deleted { target: 3 }));
        assert!(matches!(&seen[seen.len() - 2].body, EventBody::Edited { target: 2, text } if text == "edited"));
        // History: latest page, before, after.
        let page = |f: ServerFrame| match f {
            ServerFrame::History { events, more, .. } => {
                (events.iter().map(|e| e.seq).collect::<Vec<_>>(), more, events)
            }
            other => panic!("{other:?}"),
        };
        let (seqs, more, _) = page(
            bob.request(|req| ClientFrame::History { req, chat, before: None, after: None, limit: Some(4) })
                .await
                .unwrap(),
        );
        assert_eq!((seqs, more), (vec![10, 11, 12, 13], true));
        let (seqs, more, events) = page(
            bob.request(|req| ClientFrame::History { req, chat, before: Some(5), after: None, limit: Some(10) })
                .await
                .unwrap(),
        );
        assert_eq!((seqs, more), (vec![1, 2, 3, 4], false));
        assert!(
            matches!(&events[1].body, EventBody::Message { text, edited: true, deleted: false, .. } if text == "edited")
        );
        assert!(matches!(&events[2].body, EventBody::Message { text, deleted: true, .. } if text.is_empty()));
        let (seqs, more, _) = page(
            bob.request(|req| ClientFrame::History { req, chat, before: None, after: Some(11), limit: Some(10) })
                .await
                .unwrap(),
        );
        assert_eq!((seqs, more), (vec![12, 13], false));
        let r = bob
            .request(|req| ClientFrame::History { req, chat, before: Some(3), after: Some(1), limit: None })
            .await
            .unwrap();
        assert_eq!(error_code(&r), "invalid");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_has_no_gap_and_no_duplicate_while_events_keep_arriving() {
    let server = TestServer::start(&["--rate-requests-per-second", "10000", "--rate-request-burst", "10000"]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Group, "g", &[&b]).await.unwrap());
        for i in 0..30 {
            acked(&alice.send_message(chat, &format!("pre{i}"), "x").await.unwrap());
        }
        // Bob was offline; he saw up to seq 5. Alice keeps sending while he resumes.
        let ws = server.ws.clone();
        let token = server.token(&a);
        let sender = tokio::spawn(async move {
            let mut alice = Client::connect(&ws, &token, enc).await.unwrap();
            let mut last = 0;
            for i in 0..200 {
                let (seq, _) = acked(&alice.send_message(chat, &format!("live{i}"), "y").await.unwrap());
                last = seq;
            }
            last
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (mut bob, frames) =
            Client::connect_resuming(&server.ws, &server.token(&b), enc, vec![cursor(chat, 5)]).await.unwrap();
        let last = sender.await.unwrap();
        let mut seqs: Vec<u64> = events_of(&frames, chat).iter().map(|e| e.seq).collect();
        while seqs.last().copied().unwrap_or(0) < last {
            match bob.wait_for(is_event).await.unwrap() {
                ServerFrame::Event { chat: c, event } if c == chat => seqs.push(event.seq),
                _ => {}
            }
        }
        let want: Vec<u64> = (6..=last).collect();
        assert_eq!(seqs, want, "{enc:?}: every event after the cursor, once, in order");
        assert!(frames.iter().any(|f| matches!(f, ServerFrame::Resumed { chat: c, .. } if *c == chat)));
        assert!(bob.drain(QUIET).await.iter().all(|f| !is_event(f)), "nothing repeated after the seam");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_are_shared_and_listed() {
    let server = TestServer::start(&[]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let mut bob = server.connect(&b, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Direct, "", &[&b]).await.unwrap());
        acked(&alice.send_message(chat, "1", "hi").await.unwrap());
        assert!(matches!(
            bob.request(|req| ClientFrame::Read { req, chat, seq: 2 }).await.unwrap(),
            ServerFrame::Ok { .. }
        ));
        let r = alice.wait_for(|f| matches!(f, ServerFrame::Receipt { .. })).await.unwrap();
        assert!(matches!(r, ServerFrame::Receipt { chat: c, ref user, seq: 2 } if c == chat && *user == b));
        // Cursors never move back, nor past the end.
        assert!(matches!(
            bob.request(|req| ClientFrame::Read { req, chat, seq: 1 }).await.unwrap(),
            ServerFrame::Ok { .. }
        ));
        assert!(matches!(
            bob.request(|req| ClientFrame::Read { req, chat, seq: 99 }).await.unwrap(),
            ServerFrame::Ok { .. }
        ));
        match bob.request(|req| ClientFrame::ListChats { req }).await.unwrap() {
            ServerFrame::Chats { chats, .. } => {
                let c = chats.iter().find(|c| c.chat == chat).unwrap();
                assert_eq!((c.last_seq, c.read_seq), (2, 2));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_presence_are_ephemeral_and_rate_limited() {
    let server = TestServer::start(&["--rate-ephemeral-per-second", "1", "--rate-ephemeral-burst", "3"]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Direct, "", &[&b]).await.unwrap());
        let mut bob = server.connect(&b, enc).await;
        // Alice sees bob come online.
        let p = alice.wait_for(|f| matches!(f, ServerFrame::Presence { .. })).await.unwrap();
        assert!(matches!(p, ServerFrame::Presence { ref user, status: PresenceStatus::Online } if *user == b));
        alice.send(&ClientFrame::Typing { chat }).await.unwrap();
        let t = bob.wait_for(|f| matches!(f, ServerFrame::Typing { .. })).await.unwrap();
        assert!(matches!(t, ServerFrame::Typing { chat: c, ref user } if c == chat && *user == a));
        bob.send(&ClientFrame::Presence { status: PresenceStatus::Away }).await.unwrap();
        let p =
            alice.wait_for(|f| matches!(f, ServerFrame::Presence { status: PresenceStatus::Away, .. })).await.unwrap();
        assert!(matches!(p, ServerFrame::Presence { ref user, .. } if *user == b));
        // Never stored: the chat holds only its creation.
        match alice
            .request(|req| ClientFrame::History { req, chat, before: None, after: None, limit: None })
            .await
            .unwrap()
        {
            ServerFrame::History { events, .. } => assert_eq!(events.len(), 1),
            other => panic!("{other:?}"),
        }
        // Past the burst, typing is refused with rate_limited.
        for _ in 0..5 {
            alice.send(&ClientFrame::Typing { chat }).await.unwrap();
        }
        let e = alice.wait_for(|f| matches!(f, ServerFrame::Error { .. })).await.unwrap();
        assert_eq!(error_code(&e), "rate_limited");
        // Bob leaves: alice sees him offline.
        bob.close().await;
        let p = alice
            .wait_for(|f| matches!(f, ServerFrame::Presence { status: PresenceStatus::Offline, .. }))
            .await
            .unwrap();
        assert!(matches!(p, ServerFrame::Presence { ref user, .. } if *user == b));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_connection_and_silence_ends_it() {
    let server = TestServer::start(&["--idle-timeout", "2s"]);
    for enc in ENCODINGS {
        let mut c = server.connect("alice", enc).await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            assert!(matches!(c.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
        }
        assert_eq!(c.closed_code(Duration::from_secs(6)).await, Some(4010));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_learn_nothing_and_removed_members_stop_receiving() {
    let server = TestServer::start(&[]);
    for enc in ENCODINGS {
        let (a, b, e) = (format!("a-{enc:?}"), format!("b-{enc:?}"), format!("e-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let mut bob = server.connect(&b, enc).await;
        let mut eve = server.connect(&e, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Group, "g", &[&b]).await.unwrap());
        acked(&alice.send_message(chat, "1", "secret").await.unwrap());
        // Eve gets exactly what a missing chat gets.
        let missing = 12345;
        for target in [chat, missing] {
            assert_eq!(error_code(&eve.send_message(target, "x", "x").await.unwrap()), "not_found");
            // Even a request that is invalid besides: validation must not reveal the chat.
            assert_eq!(error_code(&eve.send_message(target, "x", "").await.unwrap()), "not_found");
            let r = eve
                .request(|req| ClientFrame::AddMembers {
                    req,
                    chat: target,
                    users: vec!["bad id".into()],
                    role: Role::Member,
                })
                .await
                .unwrap();
            assert_eq!(error_code(&r), "not_found");
            let r = eve
                .request(|req| ClientFrame::History { req, chat: target, before: None, after: None, limit: None })
                .await
                .unwrap();
            assert_eq!(error_code(&r), "not_found");
            let r = eve.request(|req| ClientFrame::Read { req, chat: target, seq: 1 }).await.unwrap();
            assert_eq!(error_code(&r), "not_found");
            let r =
                eve.request(|req| ClientFrame::Edit { req, chat: target, target: 2, body: "x".into() }).await.unwrap();
            assert_eq!(error_code(&r), "not_found");
            let r = eve
                .request(|req| ClientFrame::AddMembers { req, chat: target, users: vec![e.clone()], role: Role::Admin })
                .await
                .unwrap();
            assert_eq!(error_code(&r), "not_found");
        }
        let frames = eve.resume(vec![cursor(chat, 0)]).await.unwrap();
        assert!(frames.iter().all(|f| !is_event(f) && !matches!(f, ServerFrame::Resumed { .. })));
        assert_eq!(error_code(frames.last().unwrap()), "not_found");
        eve.send(&ClientFrame::Typing { chat }).await.unwrap();
        // Bob (a member, not an admin) cannot add or remove others.
        let r = bob
            .request(|req| ClientFrame::AddMembers { req, chat, users: vec![e.clone()], role: Role::Member })
            .await
            .unwrap();
        assert_eq!(error_code(&r), "forbidden");
        // Alice removes bob: he sees his removal, then nothing more.
        let (seq, _) = acked(
            &alice.request(|req| ClientFrame::RemoveMembers { req, chat, users: vec![b.clone()] }).await.unwrap(),
        );
        let f = bob.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if event.seq == seq)).await.unwrap();
        assert!(
            matches!(f, ServerFrame::Event { event, .. } if matches!(&event.body, EventBody::MembersRemoved { users } if users == &vec![b.clone()]))
        );
        acked(&alice.send_message(chat, "2", "after removal").await.unwrap());
        assert!(
            bob.drain(QUIET)
                .await
                .iter()
                .all(|f| !matches!(f, ServerFrame::Event { chat: c, event } if *c == chat && event.seq > seq))
        );
        assert!(
            eve.drain(Duration::ZERO)
                .await
                .iter()
                .all(|f| !matches!(f, ServerFrame::Typing { .. } | ServerFrame::Event { .. }))
        );
        assert_eq!(error_code(&bob.send_message(chat, "3", "x").await.unwrap()), "not_found");
        // Added back (by an admin), eve joins and receives live from there.
        acked(
            &alice
                .request(|req| ClientFrame::AddMembers { req, chat, users: vec![e.clone()], role: Role::Member })
                .await
                .unwrap(),
        );
        let _ = eve.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if matches!(event.body, EventBody::MembersAdded { .. }))).await.unwrap();
        let (seq, _) = acked(&alice.send_message(chat, "4", "welcome").await.unwrap());
        let f = eve.wait_for(is_event).await.unwrap();
        assert!(matches!(f, ServerFrame::Event { event, .. } if event.seq == seq));
        // A member may leave on their own.
        acked(&eve.request(|req| ClientFrame::RemoveMembers { req, chat, users: vec![e.clone()] }).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_post_to_a_broadcast_channel() {
    let server = TestServer::start(&[]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut admin = server.connect(&a, enc).await;
        let mut reader = server.connect(&b, enc).await;
        let chat = created(&admin.create_chat(ChatKind::Broadcast, "news", &[&b]).await.unwrap());
        assert_eq!(error_code(&reader.send_message(chat, "1", "me too").await.unwrap()), "forbidden");
        let (seq, _) = acked(&admin.send_message(chat, "1", "headline").await.unwrap());
        let f = reader.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if event.seq == seq)).await.unwrap();
        assert!(
            matches!(f, ServerFrame::Event { event, .. } if matches!(&event.body, EventBody::Message { text, .. } if text == "headline"))
        );
        // Promote the reader: now they post.
        acked(
            &admin
                .request(|req| ClientFrame::AddMembers { req, chat, users: vec![b.clone()], role: Role::Admin })
                .await
                .unwrap(),
        );
        acked(&reader.send_message(chat, "2", "now I can").await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_end_does_not_silence_live_events() {
    let server = TestServer::start(&[]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Group, "g", &[&b]).await.unwrap());
        acked(&alice.send_message(chat, "1", "x").await.unwrap());
        let (mut bob, frames) =
            Client::connect_resuming(&server.ws, &server.token(&b), enc, vec![cursor(chat, 1000)]).await.unwrap();
        assert!(frames.iter().any(|f| matches!(f, ServerFrame::Resumed { last_seq: 2, .. })), "{frames:?}");
        let (seq, _) = acked(&alice.send_message(chat, "2", "y").await.unwrap());
        let f = bob.wait_for(is_event).await.unwrap();
        assert!(matches!(f, ServerFrame::Event { event, .. } if event.seq == seq));
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn dev_secret(server: &TestServer) -> String {
    std::fs::read_to_string(server.dir.join("dev-jwt-secret")).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_ends_when_its_token_does() {
    let server = TestServer::start(&["--jwt-leeway", "0s", "--token-expiry-warning", "1s"]);
    let secret = dev_secret(&server);
    for enc in ENCODINGS {
        let token = testkit::mint_token(secret.as_bytes(), "alice", Duration::from_secs(3));
        let mut c = Client::connect(&server.ws, &token, enc).await.unwrap();
        let warned = c.wait_for(|f| matches!(f, ServerFrame::TokenExpiring { .. })).await.unwrap();
        let ServerFrame::TokenExpiring { exp } = warned else { unreachable!() };
        assert_eq!(c.closed_code(Duration::from_secs(10)).await, Some(4012));
        assert!(unix_now() >= exp, "closed before the token's exp");
    }
    // A token that claims to live for ever is refused at the door.
    #[derive(serde::Serialize)]
    struct Forever<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
    }
    let forever = testkit::mint_claims(secret.as_bytes(), &Forever { sub: "alice", iat: unix_now(), exp: u64::MAX });
    let mut c = Client::open(&server.ws, Some(&forever), TokenIn::Query, Json).await.unwrap();
    assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_in_band_keeps_the_connection_without_losing_an_event() {
    let server = TestServer::start(&["--jwt-leeway", "0s", "--token-expiry-warning", "2s"]);
    let secret = dev_secret(&server);
    let short = testkit::mint_token(secret.as_bytes(), "alice", Duration::from_secs(3));
    let mut alice = Client::connect(&server.ws, &short, Json).await.unwrap();
    let mut bob = server.connect("bob", Json).await;
    let chat = created(&bob.create_chat(ChatKind::Direct, "", &["alice"]).await.unwrap());
    let mut sent = 0;
    for _ in 0..5 {
        sent += 1;
        acked(&bob.send_message(chat, &format!("b{sent}"), "before").await.unwrap());
    }
    let ServerFrame::TokenExpiring { exp: old_exp } =
        alice.wait_for(|f| matches!(f, ServerFrame::TokenExpiring { .. })).await.unwrap()
    else {
        unreachable!()
    };
    // Someone else's token is refused, and changes nothing.
    alice.send(&ClientFrame::Auth { token: server.token("mallory") }).await.unwrap();
    let refused = alice.wait_for(|f| matches!(f, ServerFrame::Error { req: None, .. })).await.unwrap();
    assert_eq!(error_code(&refused), "forbidden");
    alice.send(&ClientFrame::Auth { token: server.token("alice") }).await.unwrap();
    let ServerFrame::TokenRefreshed { exp } =
        alice.wait_for(|f| matches!(f, ServerFrame::TokenRefreshed { .. })).await.unwrap()
    else {
        unreachable!()
    };
    assert!(exp > old_exp + 60);
    for _ in 0..5 {
        sent += 1;
        acked(&bob.send_message(chat, &format!("b{sent}"), "after").await.unwrap());
    }
    // Past the old token's end the connection still serves.
    while unix_now() <= old_exp + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(alice.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
    // The chat's creation and every message arrived once, in order: the refresh dropped and
    // duplicated nothing.
    let frames = alice.drain(Duration::from_millis(500)).await;
    let seqs: Vec<u64> = events_of(&frames, chat).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=1 + sent).collect::<Vec<u64>>());
}
