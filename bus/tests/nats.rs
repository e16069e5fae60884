//! The NATS bus against a real nats-server, checking it behaves like the local bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bus::{Bus, BusError, BusMessage, NatsBus, NatsConfig};
use bytes::Bytes;
use tokio::sync::mpsc;

/// A nats-server on a free loopback port, killed on drop.
struct NatsServer {
    bin: PathBuf,
    port: u16,
    extra_args: Vec<String>,
    child: Option<Child>,
}

/// Ports already given to a server of this process: a released port can come back from
/// `bind(0)`, and two tests sharing a server would see each other's messages.
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        if TAKEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

impl NatsServer {
    /// `None` (after saying so loudly) when nats-server is missing outside CI; CI must run
    /// these tests, so there a missing server fails.
    fn start() -> Option<NatsServer> {
        NatsServer::start_with(Vec::new())
    }

    fn start_with(extra_args: Vec<String>) -> Option<NatsServer> {
        let Some(bin) = find_nats_server() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("nats-server not installed, and CI must run the NATS tests");
            }
            eprintln!("SKIPPED: nats-server not installed (apt-get install nats-server)");
            return None;
        };
        // Another process may take the port between our probe and the server's bind.
        for _ in 0..5 {
            let mut server =
                NatsServer { bin: bin.clone(), port: free_port(), extra_args: extra_args.clone(), child: None };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => eprintln!("{e}; trying another port"),
            }
        }
        panic!("nats-server did not start on any of 5 ports");
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Waits for this child to say it is ready rather than for the port to accept: if
    /// another process holds the port, it accepts while this server exits.
    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Reads to the end so that the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = ready_tx.send(());
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                Err(format!("nats-server on port {} not ready ({e}); exit: {status:?}", self.port))
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.spawn().unwrap();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| Path::is_file(p))
}

async fn connect(server: &NatsServer, name: &str) -> NatsBus {
    let config = NatsConfig { servers: vec![server.url()], name: name.to_owned(), ..NatsConfig::default() };
    NatsBus::connect(config).await.unwrap()
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
async fn publish_reaches_plain_subscribers_and_one_per_group() {
    let Some(server) = NatsServer::start() else { return };
    let bus = connect(&server, "a").await;
    let (tx1, mut rx1) = mpsc::channel(256);
    let (tx2, mut rx2) = mpsc::channel(256);
    let (tx3, mut rx3) = mpsc::channel(256);
    let _a = bus.subscribe("s", None, tx1).await.unwrap();
    let _b = bus.subscribe("s", Some("g"), tx2).await.unwrap();
    let _c = bus.subscribe("s", Some("g"), tx3).await.unwrap();
    for i in 0..100u8 {
        bus.publish("s", Bytes::from(vec![i])).await.unwrap();
    }
    for i in 0..100u8 {
        let m = recv(&mut rx1, WAIT).await.unwrap();
        assert_eq!((m.subject.as_str(), m.payload[0], m.reply), ("s", i, None));
    }
    let (mut b, mut c) = (0, 0);
    while b + c < 100 {
        tokio::select! {
            Some(_) = rx2.recv() => b += 1,
            Some(_) = rx3.recv() => c += 1,
            () = tokio::time::sleep(WAIT) => panic!("group got {} of 100", b + c),
        }
    }
    assert!(recv(&mut rx2, Duration::from_millis(200)).await.is_none());
    assert!(recv(&mut rx3, Duration::from_millis(10)).await.is_none());
    // NATS picks members at random: both idle for 100 messages is a 2^-99 chance.
    assert!(b > 0 && c > 0, "not distributed: {b} / {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_unsubscribes() {
    let Some(server) = NatsServer::start() else { return };
    let bus = connect(&server, "a").await;
    let (tx, mut rx) = mpsc::channel(8);
    let sub = bus.subscribe("s", None, tx).await.unwrap();
    drop(sub);
    bus.publish("s", Bytes::from_static(b"x")).await.unwrap();
    // The forwarding task held the only sender: the sink closes without a message.
    assert!(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().is_none());
    // And the server has forgotten the interest.
    let deadline = Instant::now() + WAIT;
    loop {
        match bus.request("s", Bytes::new(), Duration::from_millis(500)).await {
            Err(BusError::NoResponders) => break,
            other => assert!(Instant::now() < deadline, "still subscribed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply() {
    let Some(server) = NatsServer::start() else { return };
    let a = connect(&server, "a").await;
    let b = connect(&server, "b").await;

    let start = Instant::now();
    let res = a.request("svc", Bytes::new(), Duration::from_secs(5)).await;
    assert!(matches!(res, Err(BusError::NoResponders)), "{res:?}");
    assert!(start.elapsed() < Duration::from_secs(1), "no responders took {:?}", start.elapsed());

    let (tx, rx) = mpsc::channel(8);
    let _s = a.subscribe("svc", Some("g"), tx).await.unwrap();
    echo_responder(a.clone(), rx);
    let got = b.request("svc", Bytes::from_static(b"ping"), WAIT).await.unwrap();
    assert_eq!(&got[..], b"ping");
    let got = a.request("svc", Bytes::from_static(b"self"), WAIT).await.unwrap();
    assert_eq!(&got[..], b"self");

    let (tx, _never_answered) = mpsc::channel(8);
    let _silent = a.subscribe("silent", None, tx).await.unwrap();
    let start = Instant::now();
    let res = b.request("silent", Bytes::new(), Duration::from_millis(300)).await;
    assert!(matches!(res, Err(BusError::Timeout)), "{res:?}");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "timeout took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_returns_once_the_server_has_the_interest() {
    let Some(server) = NatsServer::start() else { return };
    let a = connect(&server, "a").await;
    let b = connect(&server, "b").await;
    let (tx, mut rx) = mpsc::channel(8);
    let mut subs = Vec::new();
    // Many rounds: a missing round trip shows up as an occasional lost message.
    for i in 0..200 {
        let subject = format!("race.{i}");
        subs.push(a.subscribe(&subject, None, tx.clone()).await.unwrap());
        b.publish(&subject, Bytes::new()).await.unwrap();
        let m = recv(&mut rx, WAIT).await.unwrap_or_else(|| panic!("round {i}: publish right after subscribe lost"));
        assert_eq!(m.subject, subject);
    }
}

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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        b.publish("events", Bytes::from_static(b"probe")).await.unwrap();
        if recv(&mut rx, Duration::from_millis(200)).await.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery within 10 s of the restart");
    }
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

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = TempDir(std::env::temp_dir().join(format!("bus-nats-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.0.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) =
        (file("ca.pem", TEST_CA), file("server.pem", TEST_SERVER_CERT), file("server.key", TEST_SERVER_KEY));
    let Some(server) = NatsServer::start_with(vec!["--tls".into(), "--tlscert".into(), cert, "--tlskey".into(), key])
    else {
        return;
    };
    let config = |ca: &str| NatsConfig {
        servers: vec![server.url()],
        tls_ca: Some(PathBuf::from(ca)),
        connect_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
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
    let res = NatsBus::connect(config(&dir.0.join("missing.pem").to_string_lossy())).await;
    assert!(matches!(res, Err(BusError::Unavailable(_))), "{res:?}");
}
