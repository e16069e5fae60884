//! TLS on the client listener, against the real binary: a chat over `wss://`, a plain client
//! refused, certificate rotation picked up (on SIGHUP and by the periodic check) without
//! dropping open connections, a bad new certificate leaving the old one in service.
//! Certificates are made by the test (testkit's `TestCa`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use client::{Client, TokenIn};
use fixture::*;
use protocol::{ChatKind, ClientFrame, ServerFrame};
use testkit::{TestCa, TestCert, poll_until};

/// A server with TLS from `cert`, its files in `dir` (rewritten by the tests).
struct TlsServer {
    server: TestServer,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(ca: &TestCa, cert: &TestCert, extra: &[&str]) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = cert.write(dir.path(), "server");
    let mut args = vec!["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let server = TestServer::start(&args).with_tls(ca.client_config(None));
    TlsServer { server, cert: cert_path, key: key_path, _dir: dir }
}

/// The certificate a fresh TLS connection to `addr` is served (DER).
async fn served_certificate(addr: &str, tls: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The counter `name{result="…"}` from `/metrics`, 0 when absent.
async fn metric(server: &TestServer, series: &str) -> u64 {
    let (_, body) = server.admin_get("/metrics").await;
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok())).map_or(0, |v| v as u64)
}

/// Alice and Bob chat over `wss://`; returns them, still connected, and their chat.
async fn chat(server: &TestServer, tag: &str) -> (Client, Client, protocol::ChatId) {
    let (a, b) = (format!("alice-{tag}"), format!("bob-{tag}"));
    let mut alice = server.connect(&a, Json).await;
    let mut bob = server.connect(&b, Bincode).await;
    let chat = created(&alice.create_chat(ChatKind::Direct, "", &[&b]).await.unwrap());
    let (seq, _) = acked(&alice.send_message(chat, "m-1", "over TLS").await.unwrap());
    let event = bob.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if event.seq == seq)).await.unwrap();
    match event {
        ServerFrame::Event { chat: c, event } => {
            assert_eq!(c, chat);
            assert!(format!("{event:?}").contains("over TLS"), "{event:?}");
        }
        other => panic!("{other:?}"),
    }
    (alice, bob, chat)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_over_wss_and_plain_clients_refused() {
    let ca = TestCa::new("messenger test CA");
    let s = start(&ca, &ca.server("edge-1"), &[]);
    let server = &s.server;
    chat(server, "wss").await;

    // Plain WebSocket on the TLS port: the upgrade never happens.
    let plain = Client::open(&server.ws, Some(&server.token("mallory")), TokenIn::Query, Json).await;
    assert!(plain.is_err(), "a ws:// client got through to a TLS listener");
    // A client that does not trust the server's CA refuses it.
    let stranger = TestCa::new("another CA");
    let res =
        Client::open_tls(&server.ws, Some(&server.token("eve")), TokenIn::Query, Json, stranger.client_config(None))
            .await;
    assert!(res.is_err(), "a certificate from an unknown CA was accepted");
    // Both were counted as failed TLS handshakes (the client side of the second fails first,
    // so the server sees at least the plain one).
    assert!(metric(server, "edge_tls_handshake_failures_total").await >= 1);
    // The listener serves on.
    chat(server, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_on_sighup_and_open_connections_stay() {
    let ca = TestCa::new("messenger test CA");
    let first = ca.server("edge-first");
    // The periodic check is far off: only SIGHUP can explain a reload within the test.
    let s = start(&ca, &first, &["--tls-reload-interval", "1h"]);
    let server = &s.server;
    let tls = ca.client_config(None);
    assert_eq!(served_certificate(&server.ws, tls.clone()).await, first.der);
    let (mut alice, mut bob, chat_id) = chat(server, "rot").await;

    let second = ca.server("edge-second");
    second.write(s.cert.parent().unwrap(), "server");
    server.signal("HUP");
    poll_until("the new certificate served", Duration::from_secs(10), async || {
        served_certificate(&server.ws, tls.clone()).await == second.der
    })
    .await;
    assert_eq!(metric(server, "edge_tls_reloads_total{result=\"ok\"}").await, 1);

    // The connections made under the old certificate carry on.
    let (seq, _) = acked(&alice.send_message(chat_id, "m-2", "still here").await.unwrap());
    let got = bob.wait_for(|f| matches!(f, ServerFrame::Event { event, .. } if event.seq == seq)).await.unwrap();
    assert!(matches!(got, ServerFrame::Event { .. }));
    assert!(matches!(bob.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
    // And new ones work with the new certificate.
    chat(server, "new").await;

    // A broken certificate file is refused and the current certificate stays in service.
    testkit::tls::write_replacing(&s.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
    server.signal("HUP");
    poll_until("the bad certificate reported", Duration::from_secs(10), async || {
        metric(server, "edge_tls_reloads_total{result=\"error\"}").await >= 1
    })
    .await;
    assert_eq!(served_certificate(&server.ws, tls.clone()).await, second.der);
    // So is a key that does not belong to the certificate.
    let third = ca.server("edge-third");
    testkit::tls::write_replacing(&s.cert, &third.cert_pem);
    server.signal("HUP");
    poll_until("the mismatched key reported", Duration::from_secs(10), async || {
        metric(server, "edge_tls_reloads_total{result=\"error\"}").await >= 2
    })
    .await;
    assert_eq!(served_certificate(&server.ws, tls.clone()).await, second.der);
    chat(server, "kept").await;
    // Once the key arrives too, the pair loads.
    testkit::tls::write_replacing(&s.key, &third.key_pem);
    server.signal("HUP");
    poll_until("the third certificate served", Duration::from_secs(10), async || {
        served_certificate(&server.ws, tls.clone()).await == third.der
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_noticed_without_a_signal() {
    let ca = TestCa::new("messenger test CA");
    let first = ca.server("edge-first");
    let s = start(&ca, &first, &["--tls-reload-interval", "1s"]);
    let server = &s.server;
    let tls = ca.client_config(None);
    let (mut alice, _bob, _) = chat(server, "periodic").await;
    let second = ca.server("edge-second");
    second.write(s.cert.parent().unwrap(), "server");
    poll_until("the new certificate served", Duration::from_secs(15), async || {
        served_certificate(&server.ws, tls.clone()).await == second.der
    })
    .await;
    assert!(matches!(alice.request(|req| ClientFrame::Ping { req }).await.unwrap(), ServerFrame::Pong { .. }));
}

/// A cluster edge (NATS, routers on the CQL database) serves `wss://` the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_edge_serves_wss() {
    if testkit::cql_node().is_none() {
        return;
    }
    let ca = TestCa::new("messenger test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server("edge").write(dir.path(), "server");
    let args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let server = TestServer::start_cluster(&args).with_tls(ca.client_config(None));
    // Alice and Bob land on different edges: the event crosses NATS between two TLS edges.
    chat(&server, "cluster").await;
    let plain = Client::open(&server.ws, Some(&server.token("mallory")), TokenIn::Query, Json).await;
    assert!(plain.is_err(), "a ws:// client got through to a TLS edge");
}

#[test]
fn tls_misconfiguration_exits_64() {
    let ca = TestCa::new("messenger test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server("edge").write(dir.path(), "server");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let other_key = ca.server("other").write(dir.path(), "other").1;
    let missing = dir.path().join("missing.pem");
    let data = dir.path().to_str().unwrap();
    for args in [
        vec!["standalone", "--data-dir", data, "--tls-cert", cert],
        vec!["standalone", "--data-dir", data, "--tls-key", key],
        vec!["standalone", "--data-dir", data, "--tls-cert", cert, "--tls-key", missing.to_str().unwrap()],
        vec!["standalone", "--data-dir", data, "--tls-cert", cert, "--tls-key", other_key.to_str().unwrap()],
        vec!["standalone", "--data-dir", data, "--tls-cert", key, "--tls-key", key],
        vec!["standalone", "--data-dir", data, "--tls-cert", cert, "--tls-key", key, "--tls-reload-interval", "0s"],
        vec!["edge", "--jwt-secret", "0123456789abcdef0123456789abcdef", "--tls-cert", cert],
        vec!["router", "--nats-tls-cert", cert, "--nats-tls-key", key],
        vec!["router", "--cql-tls-cert", cert, "--cql-tls-ca", cert],
    ] {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_messenger"))
            .args(&args)
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(64), "{args:?}");
    }
}
