//! NATS-only behaviour of the NATS bus against a real nats-server: surviving a server
//! restart, and TLS with a private CA. What every bus must do, the local one included, is in
//! `conformance.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusError, BusMessage, ClusterKeys, NatsBus, NatsConfig};
use bytes::Bytes;
use testkit::{NatsServer, poll_until};
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

/// A CA and a certificate for 127.0.0.1 that it signed, valid 2000-2100, made for this test
/// only (openssl, P-256).
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBXzCCAQWgAwIBAgIBATAKBggqhkjOPQQDAjAWMRQwEgYDVQQDDAtidXMgdGVz
dCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowFjEUMBIGA1UE
AwwLYnVzIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQ2cPdQIP8y
bHLMhhdMwdgXNtTQtOKrXaW4lfQ7CZHKZB1228YgcgXEzMRfOJfzuXbeCMa2Wxhf
ev8yJ3swzB3Ao0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAd
BgNVHQ4EFgQUYqDlFaFmha2s7vUMX3hNBPTILMUwCgYIKoZIzj0EAwIDSAAwRQIh
AIuv1VJjDezIHhPYABO2bINTFbrpCB3VPkgr8cz5MjwFAiAj8wTLIqtwIFiZp5kI
Miu3kIVIEMw2rgF5MsyFIpKrcw==
-----END CERTIFICATE-----
";
const TEST_SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBpDCCAUmgAwIBAgIBAjAKBggqhkjOPQQDAjAWMRQwEgYDVQQDDAtidXMgdGVz
dCBDQTAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowFDESMBAGA1UE
AwwJMTI3LjAuMC4xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEI+6Y2CLXVQ9O
0E6uV5BB5d1LgOuxCDGmmMpWbcymhCkpnxGJjk0XnuDj0Q5lA4NocJpM+j7BJK9Z
N1AhuqAOf6OBhzCBhDAPBgNVHREECDAGhwR/AAABMAwGA1UdEwEB/wQCMAAwDgYD
VR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMB0GA1UdDgQWBBS7pGBB
0lCmeJnn0XZfGHcasDC8azAfBgNVHSMEGDAWgBRioOUVoWaFrazu9QxfeE0E9Mgs
xTAKBggqhkjOPQQDAgNJADBGAiEAuYL+mXEaMZZRnh2dbBEjFA9mRmya1OsdyFVO
xfUZxxYCIQCKKnTUDlWi77Z5GFE3BXE0fcpwg1+tv7sFkrVvMKW3CQ==
-----END CERTIFICATE-----
";
const TEST_SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+CmUP5aGsLdmMQMI
EdIBIDaA+mngjbIMk1IqPJo0T6ihRANCAAQj7pjYItdVD07QTq5XkEHl3UuA67EI
MaaYylZtzKaEKSmfEYmOTRee4OPRDmUDg2hwmkz6PsEkr1k3UCG6oA5/
-----END PRIVATE KEY-----
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let Some(server) = NatsServer::builder().tls(TEST_SERVER_CERT, TEST_SERVER_KEY).start() else { return };
    // The client's files live beside the server's, and go with it.
    let file = |name: &str, content: &str| {
        let path = server.dir().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = file("ca.pem", TEST_CA);
    let config = |ca: &str| NatsConfig {
        tls_ca: Some(PathBuf::from(ca)),
        connect_timeout: Duration::from_secs(2),
        ..NatsConfig::new(vec![server.url()], test_keys())
    };
    let bus = NatsBus::connect(config(&ca)).await.unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let _s = bus.subscribe("s", None, tx).await.unwrap();
    bus.publish("s", Bytes::from_static(b"secret")).await.unwrap();
    assert_eq!(&recv(&mut rx, WAIT).await.unwrap().payload[..], b"secret");

    // A server certificate the CA did not sign is refused.
    let other = file("other.pem", TEST_SERVER_CERT);
    let res = NatsBus::connect(config(&other)).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "{res:?}");
    let res = NatsBus::connect(config(&server.dir().join("missing.pem").to_string_lossy())).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "{res:?}");
}
