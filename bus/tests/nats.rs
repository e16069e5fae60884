//! NATS-only behaviour of the NATS bus against a real nats-server: surviving a server
//! restart, TLS with a private CA, and client certificates (mutual TLS). What every bus must do, the local one included, is in
//! `conformance.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusError, BusMessage, ClusterKeys, NatsBus, NatsConfig};
use bytes::Bytes;
use testkit::{NatsServer, TestCa, poll_until};
use tokio::sync::mpsc;

async fn connect(server: &NatsServer, name: &str) -> NatsBus {
    let config = NatsConfig { name: name.to_owned(), ..NatsConfig::new(vec![server.url()], test_keys()) };
    NatsBus::connect(config).await.unwrap()
}

fn test_keys() -> Arc<ClusterKeys> {
    Arc::new(ClusterKeys::new(&[[7u8; 32]]).unwrap())
}

async fn recv(rx: &mut mpsc::Receiver<BusMessage>, within: Duration) -> Option<BusMessage> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Answers every request with its own payload, the way routers answer: by publishing to
/// the reply subject.
fn echo_responder(bus: NatsBus, mut rx: mpsc::Receiver<BusMessage>) {
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            bus.publish(&m.reply.unwrap(), m.payload).await.unwrap();
        }
    });
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_server_restart_without_resubscribing() {
    let Some(mut server) = NatsServer::start() else { return };
    let a = connect(&server, "a").await;
    let b = connect(&server, "b").await;
    let (tx, mut rx) = mpsc::channel(1024);
    let _sub = a.subscribe("events", None, tx).await.unwrap();
    let (req_tx, req_rx) = mpsc::channel(8);
    let _svc = a.subscribe("svc", Some("routers"), req_tx).await.unwrap();
    echo_responder(a.clone(), req_rx);

    server.restart();

    // Publishes made while `b` is still reconnecting may be lost; poll until one arrives.
    poll_until("a delivery after the restart", Duration::from_secs(10), async || {
        b.publish("events", Bytes::from_static(b"probe")).await.unwrap();
        recv(&mut rx, Duration::from_millis(200)).await.is_some()
    })
    .await;
    while recv(&mut rx, Duration::from_millis(200)).await.is_some() {}

    b.publish("events", Bytes::from_static(b"after")).await.unwrap();
    assert_eq!(&recv(&mut rx, WAIT).await.unwrap().payload[..], b"after");
    let got = b.request("svc", Bytes::from_static(b"ping"), WAIT).await.unwrap();
    assert_eq!(&got[..], b"ping");
    let got = a.request("svc", Bytes::from_static(b"self"), WAIT).await.unwrap();
    assert_eq!(&got[..], b"self");

    let (tx, mut rx) = mpsc::channel(8);
    let _new = a.subscribe("fresh", None, tx).await.unwrap();
    b.publish("fresh", Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(&recv(&mut rx, WAIT).await.unwrap().payload[..], b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let ca = TestCa::new("bus test CA");
    let cert = ca.server("nats");
    let Some(server) = NatsServer::builder().tls(&cert.cert_pem, &cert.key_pem).start() else { return };
    // The client's files live beside the server's, and go with it.
    let ca_file = ca.write(server.dir(), "ca.pem");
    let config = |ca: PathBuf| NatsConfig {
        tls_ca: Some(ca),
        connect_timeout: Duration::from_secs(2),
        ..NatsConfig::new(vec![server.url()], test_keys())
    };
    let bus = NatsBus::connect(config(ca_file)).await.unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let _s = bus.subscribe("s", None, tx).await.unwrap();
    bus.publish("s", Bytes::from_static(b"secret")).await.unwrap();
    assert_eq!(&recv(&mut rx, WAIT).await.unwrap().payload[..], b"secret");

    // A server certificate the CA did not sign is refused.
    let other = TestCa::new("another CA").write(server.dir(), "other.pem");
    let res = NatsBus::connect(config(other)).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "{res:?}");
    let res = NatsBus::connect(config(server.dir().join("missing.pem"))).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "{res:?}");
}

/// A server that verifies clients (`verify: true`) lets in the bus with a client certificate
/// its CA signed, and nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate() {
    let ca = TestCa::new("bus test CA");
    let cert = ca.server("nats");
    let Some(server) = NatsServer::builder().tls(&cert.cert_pem, &cert.key_pem).verify_clients(&ca.cert_pem).start()
    else {
        return;
    };
    let ca_file = ca.write(server.dir(), "ca.pem");
    let config = |identity: Option<(PathBuf, PathBuf)>| NatsConfig {
        tls_ca: Some(ca_file.clone()),
        tls_cert: identity.as_ref().map(|i| i.0.clone()),
        tls_key: identity.map(|i| i.1),
        connect_timeout: Duration::from_secs(2),
        ..NatsConfig::new(vec![server.url()], test_keys())
    };
    let edge = ca.client("edge-1").write(server.dir(), "edge");
    let bus = NatsBus::connect(config(Some(edge.clone()))).await.unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let _s = bus.subscribe("s", None, tx).await.unwrap();
    bus.publish("s", Bytes::from_static(b"authenticated")).await.unwrap();
    assert_eq!(&recv(&mut rx, WAIT).await.unwrap().payload[..], b"authenticated");

    // Without a certificate, or with one from another CA: refused.
    let res = NatsBus::connect(config(None)).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "no client certificate: {res:?}");
    let stranger = TestCa::new("another CA").client("edge-x").write(server.dir(), "stranger");
    let res = NatsBus::connect(config(Some(stranger))).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "foreign client certificate: {res:?}");
    // A certificate without its key is a configuration error, not a silent plain connection.
    let res = NatsBus::connect(NatsConfig { tls_key: None, ..config(Some(edge)) }).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "{res:?}");
}
