//! The bus conformance suite: the same behavioural checks for every [`Bus`] implementation,
//! the in-process [`LocalBus`] and the [`NatsBus`] against a real nats-server. Nothing above
//! the bus knows which one it has, so both must behave alike. A backend joins by adding one
//! `conformance!` line with a constructor.
//!
//! NATS-only behaviour (a server restart, TLS) is in `nats.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Bus, BusError, BusMessage, ClusterKeys, LocalBus, NatsBus, NatsConfig};
use bytes::Bytes;
use testkit::{NatsServer, poll_until};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

/// One bus under test. Each [`connect`](Fixture::connect) is another participant: a
/// connection of its own on NATS, a clone of the one bus in process.
enum Fixture {
    Local(LocalBus),
    Nats(NatsServer),
}

impl Fixture {
    fn local() -> Option<Fixture> {
        Some(Fixture::Local(LocalBus::new()))
    }

    fn nats() -> Option<Fixture> {
        NatsServer::start().map(Fixture::Nats)
    }

    async fn connect(&self, name: &str) -> Arc<dyn Bus> {
        match self {
            Fixture::Local(bus) => Arc::new(bus.clone()),
            Fixture::Nats(server) => {
                let keys = Arc::new(ClusterKeys::new(&[[7u8; 32]]).unwrap());
                let config = NatsConfig { name: name.to_owned(), ..NatsConfig::new(vec![server.url()], keys) };
                Arc::new(NatsBus::connect(config).await.unwrap())
            }
        }
    }
}

async fn recv(rx: &mut mpsc::Receiver<BusMessage>, within: Duration) -> Option<BusMessage> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Answers every request with its own payload, the way routers answer: by publishing to the
/// reply subject.
fn echo_responder(bus: Arc<dyn Bus>, mut rx: mpsc::Receiver<BusMessage>) {
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            bus.publish(&m.reply.unwrap(), m.payload).await.unwrap();
        }
    });
}

async fn publish_reaches_plain_subscribers_and_one_per_group(fixture: &Fixture) {
    let bus = fixture.connect("a").await;
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
    // NATS picks members at random: both idle for 100 messages is a 2^-99 chance. The local
    // bus takes turns.
    assert!(b > 0 && c > 0, "not distributed: {b} / {c}");
}

async fn dropping_a_subscription_unsubscribes(fixture: &Fixture) {
    let bus = fixture.connect("a").await;
    let (tx, mut rx) = mpsc::channel(8);
    let sub = bus.subscribe("s", None, tx).await.unwrap();
    drop(sub);
    bus.publish("s", Bytes::from_static(b"x")).await.unwrap();
    // The subscription held the only sender: the sink closes without a message.
    assert!(tokio::time::timeout(WAIT, rx.recv()).await.unwrap().is_none());
    // And the bus has forgotten the interest.
    poll_until("the dropped subscription's interest is gone", WAIT, async || {
        let res = bus.request("s", Bytes::new(), Duration::from_millis(500)).await;
        if matches!(res, Err(BusError::NoResponders)) { Ok(()) } else { Err(res) }
    })
    .await;
}

async fn request_reply(fixture: &Fixture) {
    let a = fixture.connect("a").await;
    let b = fixture.connect("b").await;

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

async fn subscribe_returns_once_the_interest_is_registered(fixture: &Fixture) {
    let a = fixture.connect("a").await;
    let b = fixture.connect("b").await;
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

async fn one_publishers_messages_on_one_subject_arrive_in_order(fixture: &Fixture) {
    let publisher = fixture.connect("publisher").await;
    let subscriber = fixture.connect("subscriber").await;
    const N: u32 = 2000;
    // Small sinks: the order must hold while the subscriber applies backpressure too.
    let (plain_tx, mut plain_rx) = mpsc::channel(16);
    let (group_tx, mut group_rx) = mpsc::channel(16);
    let _plain = subscriber.subscribe("ordered", None, plain_tx).await.unwrap();
    let _group = subscriber.subscribe("ordered", Some("g"), group_tx).await.unwrap();
    // A clone publishes, so that the connection outlives the task: async-nats loses what it
    // has not yet written when the last handle drops.
    let sender = publisher.clone();
    let publishing = tokio::spawn(async move {
        for i in 0..N {
            sender.publish("ordered", Bytes::copy_from_slice(&i.to_be_bytes())).await.unwrap();
        }
    });
    let seq = |m: BusMessage| u32::from_be_bytes(m.payload[..].try_into().unwrap());
    for i in 0..N {
        let p = recv(&mut plain_rx, WAIT).await.unwrap_or_else(|| panic!("plain {i} lost"));
        assert_eq!(seq(p), i, "plain subscriber");
        let g = recv(&mut group_rx, WAIT).await.unwrap_or_else(|| panic!("group {i} lost"));
        assert_eq!(seq(g), i, "sole member of a queue group");
    }
    publishing.await.unwrap();
    assert!(recv(&mut plain_rx, Duration::from_millis(100)).await.is_none());
}

async fn flush_sends_everything_before_the_last_handle_drops(fixture: &Fixture) {
    let subscriber = fixture.connect("subscriber").await;
    const N: u32 = 2000;
    let (tx, mut rx) = mpsc::channel(usize::try_from(N).unwrap() + 1);
    let _sub = subscriber.subscribe("flushed", None, tx).await.unwrap();
    // The publisher's only handle: without the flush, async-nats drops what it has not yet
    // written when this handle goes (the last few hundred of 2,000, measured).
    let publisher = fixture.connect("publisher").await;
    for i in 0..N {
        publisher.publish("flushed", Bytes::copy_from_slice(&i.to_be_bytes())).await.unwrap();
    }
    publisher.flush().await.unwrap();
    drop(publisher);
    for i in 0..N {
        let m = recv(&mut rx, WAIT).await.unwrap_or_else(|| panic!("message {i} lost after flush"));
        assert_eq!(u32::from_be_bytes(m.payload[..].try_into().unwrap()), i);
    }
}

macro_rules! conformance {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(fixture) = $open else { return };
                        super::$name(&fixture).await;
                    }
                };
            }

            case!(publish_reaches_plain_subscribers_and_one_per_group);
            case!(dropping_a_subscription_unsubscribes);
            case!(request_reply);
            case!(subscribe_returns_once_the_interest_is_registered);
            case!(one_publishers_messages_on_one_subject_arrive_in_order);
            case!(flush_sends_everything_before_the_last_handle_drops);
        }
    };
}

conformance!(local_bus, Fixture::local());
conformance!(nats_bus, Fixture::nats());
