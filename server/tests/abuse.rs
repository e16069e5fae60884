//! Hostile and broken clients: each gets a documented error frame or close code, and the
//! server keeps serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use std::time::Duration;

use client::tungstenite::Message;
use client::{Client, cursor};
use fixture::*;
use protocol::{ChatKind, ClientFrame, ServerFrame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009() {
    let server = TestServer::start(&[]);
    let big = vec![b'x'; protocol::limits::MAX_CLIENT_FRAME_BYTES + 1];
    let mut c = server.connect("alice", Json).await;
    c.send_raw(Message::Text(String::from_utf8(big.clone()).unwrap().into())).await.unwrap();
    assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(1009));
    let mut c = server.connect("alice", Bincode).await;
    c.send_raw(Message::Binary(big.into())).await.unwrap();
    assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(1009));
    // The server is fine.
    let mut c = server.connect("alice", Json).await;
    assert!(matches!(c.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_frames_get_error_frames() {
    let server = TestServer::start(&[]);
    let mut c = server.connect("alice", Json).await;
    for (raw, code) in [
        (r#"{"type":"send","req":1"#, "bad_frame"),
        (r#"{"type":"send","req":1}"#, "bad_frame"),
        (r#"[1,2,3]"#, "bad_frame"),
        (r#"{"type":"frobnicate","req":1}"#, "unknown_op"),
        (r#"{"type":"send","req":1,"chat":-5,"client_msg_id":"a","body":"b"}"#, "bad_frame"),
    ] {
        c.send_raw(Message::Text(raw.into())).await.unwrap();
        assert_eq!(error_code(&c.recv().await.unwrap()), code, "{raw}");
    }
    assert!(matches!(c.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));

    let mut c = server.connect("alice", Bincode).await;
    let mut hostile = vec![0u8, 0xFF];
    hostile.extend_from_slice(&u64::MAX.to_le_bytes());
    for (raw, code) in
        [(vec![200u8], "unknown_op"), (hostile, "bad_frame"), (vec![], "bad_frame"), (vec![1, 2, 3, 4, 5], "bad_frame")]
    {
        c.send_raw(Message::Binary(raw.clone().into())).await.unwrap();
        assert_eq!(error_code(&c.recv().await.unwrap()), code, "{raw:?}");
    }
    assert!(matches!(c.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_the_wrong_type_close_with_1002() {
    let server = TestServer::start(&[]);
    let mut c = server.connect("alice", Json).await;
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(1002));
    let mut c = server.connect("alice", Bincode).await;
    c.send_raw(Message::Text("{}".into())).await.unwrap();
    assert_eq!(c.closed_code(Duration::from_secs(5)).await, Some(1002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_is_refused_then_closed_with_4008() {
    let server = TestServer::start(&[
        "--rate-requests-per-second",
        "2",
        "--rate-request-burst",
        "5",
        "--rate-max-strikes",
        "10",
    ]);
    for enc in ENCODINGS {
        let mut c = server.connect("flooder", enc).await;
        for i in 0..100 {
            if c.send(&ClientFrame::Ping { req: 1000 + i }).await.is_err() {
                break;
            }
        }
        let mut pongs = 0;
        let mut limited = 0;
        loop {
            match c.recv().await {
                Ok(ServerFrame::Pong { .. }) => pongs += 1,
                Ok(ServerFrame::Error { code, .. }) if code.as_str() == "rate_limited" => limited += 1,
                Ok(other) => panic!("{other:?}"),
                Err(client::ClientError::Closed { code, .. }) => {
                    assert_eq!(code, Some(4008));
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        // The burst (5, less the empty resume the client sent) passes, then errors, then the close.
        assert!((4..=6).contains(&pongs), "pongs {pongs}");
        assert!(limited >= 9, "limited {limited}");
    }
    // Others are unaffected.
    let mut c = server.connect("bystander", Json).await;
    assert!(matches!(c.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_with_4009_and_resumes_without_loss() {
    let server = TestServer::start(&[
        "--outbound-queue-bytes",
        "524288",
        "--rate-requests-per-second",
        "100000",
        "--rate-request-burst",
        "100000",
    ]);
    for enc in ENCODINGS {
        let (a, b) = (format!("a-{enc:?}"), format!("b-{enc:?}"));
        let mut alice = server.connect(&a, enc).await;
        let chat = created(&alice.create_chat(ChatKind::Group, "g", &[&b]).await.unwrap());
        // Bob's socket has a tiny receive buffer, and bob stops reading after the handshake.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(server.ws.parse().unwrap()).await.unwrap();
        let mut bob = Client::open_on(stream, &server.ws, &server.token(&b), enc).await.unwrap();
        assert!(matches!(bob.recv().await.unwrap(), ServerFrame::Hello { .. }));
        bob.resume(vec![]).await.unwrap();
        let body = "z".repeat(16 * 1024);
        let mut last = 0;
        for i in 0..400 {
            last = acked(&alice.send_message(chat, &format!("m{i}"), &body).await.unwrap()).0;
        }
        // Now bob reads: what was buffered, then 4009.
        let mut seen = 0;
        let code = loop {
            match bob.recv_within(Duration::from_secs(15)).await {
                Ok(ServerFrame::Event { event, .. }) => {
                    assert!(event.seq == seen + 1 || seen == 0, "gap before the close: {seen} → {}", event.seq);
                    seen = event.seq;
                }
                Ok(_) => {}
                Err(client::ClientError::Closed { code, .. }) => break code,
                // docs/protocol.md (4009): the close frame itself may not reach a client that
                // stopped reading; its socket is then dropped after the grace period. Slower
                // sends (a cluster under load) make that the likelier ending.
                Err(client::ClientError::Ws(client::tungstenite::Error::Protocol(
                    client::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ))) => break None,
                Err(e) => panic!("{e}"),
            }
        };
        match code {
            Some(code) => assert_eq!(code, 4009),
            None => {
                let (_, metrics) = server.admin_get("/metrics").await;
                assert!(
                    metrics.lines().any(|l| l.starts_with("edge_closes_total{reason=\"slow_consumer\"}")),
                    "dropped without a close frame, but not as a slow consumer:\n{metrics}"
                );
            }
        }
        assert!(seen < last, "the close came before everything was delivered");
        // Bob comes back with a normal socket and resumes from what he saw.
        let (mut bob, frames) =
            Client::connect_resuming(&server.ws, &server.token(&b), enc, vec![cursor(chat, seen)]).await.unwrap();
        let mut seqs: Vec<u64> = events_of(&frames, chat).iter().map(|e| e.seq).collect();
        while seqs.last().copied().unwrap_or(seen) < last {
            if let ServerFrame::Event { event, .. } =
                bob.wait_for(|f| matches!(f, ServerFrame::Event { .. })).await.unwrap()
            {
                seqs.push(event.seq);
            }
        }
        assert_eq!(seqs, ((seen + 1)..=last).collect::<Vec<_>>());
    }
}

/// A client that stops reading is closed as a slow consumer by the write deadline, even
/// when its outbound queue never fills: the queue here is 256 MiB and only 20 MiB are sent,
/// so without the deadline the server would hold the connection (and the 20 MiB) for as long
/// as the client stays silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_by_the_write_deadline() {
    let server = TestServer::start(&[
        "--write-timeout",
        "1s",
        "--outbound-queue-bytes",
        "268435456",
        "--rate-requests-per-second",
        "100000",
        "--rate-request-burst",
        "100000",
    ]);
    let mut sender = server.connect("alice", Json).await;
    let chat = created(&sender.create_chat(ChatKind::Group, "flood", &["victim"]).await.unwrap());
    // Resumed, subscribed, and from now on never read.
    let mut victim = server.connect("victim", Json).await;
    let body = "x".repeat(protocol::limits::MAX_BODY_BYTES);
    const SENDS: usize = 1280; // 20 MiB of text
    for i in 0..SENDS {
        let ack = sender.send_message(chat, &format!("m{i}"), &body).await.unwrap();
        acked(&ack);
        // The sender's own copies of the events: read them, so that only the victim lags.
        let _ = sender.drain(Duration::ZERO).await;
    }
    // The victim's socket buffers fill, one write waits past the 1 s deadline, and the close
    // (which cannot be written either) is given up after its 10 s grace. Generous: if the
    // victim starts reading before the server gave up, the test cannot tell the difference.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let mut events = 0;
    let end = loop {
        match victim.recv_within(Duration::from_secs(10)).await {
            Ok(ServerFrame::Event { .. }) => events += 1,
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(events < SENDS, "the connection was kept and every event delivered ({events} of {SENDS})");
    assert!(!matches!(end, client::ClientError::Timeout), "the connection stayed open after {events} events");
    // Everyone else is fine.
    let mut c = server.connect("carol", Json).await;
    assert!(matches!(c.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
}

type Upgraded = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The HTTP status of an upgrade to `addr` with these extra headers: 101 when admitted
/// (the socket is returned, to hold the connection), the refusal's status otherwise.
async fn upgrade_status(
    server: &TestServer,
    addr: &str,
    user: &str,
    headers: &[(&'static str, &str)],
) -> (u16, Option<Upgraded>) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut request = format!("ws://{addr}/?token={}", server.token(user)).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("msg.v1.json"));
    for (name, value) in headers {
        request.headers_mut().insert(*name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => (response.status().as_u16(), Some(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            if status == 429 || status == 503 {
                assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
            }
            (status, None)
        }
        Err(other) => panic!("upgrade failed: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_with_503_until_one_leaves() {
    let server = TestServer::start(&["--max-connections-per-ip", "2"]);
    let addr = server.ws.clone();
    let (s1, first) = upgrade_status(&server, &addr, "a", &[]).await;
    let (s2, _second) = upgrade_status(&server, &addr, "b", &[]).await;
    assert_eq!((s1, s2), (101, 101));
    assert_eq!(upgrade_status(&server, &addr, "c", &[]).await.0, 503);
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    assert_eq!(upgrade_status(&server, &addr, "c", &[("x-forwarded-for", "198.51.100.7")]).await.0, 503);
    drop(first);
    testkit::poll_until("a place frees when a connection ends", Duration::from_secs(10), async || {
        upgrade_status(&server, &addr, "c", &[]).await.0 == 101
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_address_is_capped() {
    let server = TestServer::start(&["--max-connections-per-ip", "1", "--trusted-proxies", "127.0.0.0/8"]);
    let addr = server.ws.clone();
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    let (a, _a) = upgrade_status(&server, &addr, "a", &xff("198.51.100.1")).await;
    let (b, _b) = upgrade_status(&server, &addr, "b", &xff("198.51.100.2")).await;
    assert_eq!((a, b), (101, 101), "two clients behind one proxy address");
    assert_eq!(upgrade_status(&server, &addr, "c", &xff("198.51.100.1")).await.0, 503);
    // What a client prepends is not believed: the proxy appended the real address last.
    assert_eq!(upgrade_status(&server, &addr, "c", &xff("203.0.113.5, 198.51.100.1")).await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_bursts_from_one_address_get_429() {
    let server = TestServer::start(&["--connect-rate-per-ip", "1", "--connect-burst-per-ip", "3"]);
    let addr = server.ws.clone();
    let mut held = Vec::new();
    for user in ["a", "b", "c"] {
        let (status, ws) = upgrade_status(&server, &addr, user, &[]).await;
        assert_eq!(status, 101);
        held.push(ws);
    }
    assert_eq!(upgrade_status(&server, &addr, "d", &[]).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_device_cap_is_closed_with_4011() {
    let server = TestServer::start(&["--max-connections-per-user", "2"]);
    let token = server.token("alice");
    let _one = Client::connect(&server.ws, &token, Json).await.unwrap();
    let _two = Client::connect(&server.ws, &token, Json).await.unwrap();
    match Client::connect(&server.ws, &token, Json).await {
        Err(client::ClientError::Closed { code, .. }) => assert_eq!(code, Some(4011)),
        Err(other) => panic!("expected close 4011, got {other}"),
        Ok(_) => panic!("a third device was admitted"),
    }
    // Other users are not affected.
    let mut bob = Client::connect(&server.ws, &server.token("bob"), Json).await.unwrap();
    assert!(matches!(bob.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_allowed_web_origins_may_connect_and_native_clients_are_not_asked() {
    let server = TestServer::start(&["--allowed-origins", "https://chat.example.com,https://admin.example.com"]);
    let addr = server.ws.clone();
    let (ok, _a) = upgrade_status(&server, &addr, "a", &[("origin", "https://chat.example.com")]).await;
    assert_eq!(ok, 101);
    assert_eq!(upgrade_status(&server, &addr, "b", &[("origin", "https://evil.example")]).await.0, 403);
    assert_eq!(
        upgrade_status(&server, &addr, "b", &[("origin", "https://chat.example.com.evil.example")]).await.0,
        403
    );
    let (native, _n) = upgrade_status(&server, &addr, "c", &[]).await;
    assert_eq!(native, 101, "no Origin header: a native client");
}
