//! Fan-out micro benchmark: one live event (`ServerFrame::Event` carrying a 100-byte message)
//! queued onto N local connections' [`Outbox`]es, N in {1, 100, 1000, 10000}.
//!
//! - `fanout/<enc>/encode_once/N` does what `Hub::forward` does: build the frame, wrap it in
//!   [`EncodedFrame`], and push `get(encoding)` (one encode, then clones of the same
//!   reference-counted bytes) onto every outbox.
//! - `fanout/<enc>/naive/N` is the baseline: the frame encoded again for every connection, the
//!   way `connection.rs` encodes a single reply.
//!
//! Every connection uses the same encoding (`<enc>` is `json` or `bincode`), so each variant
//! pays one encode per event, not two. Not measured: the hub's index lookups (chat → users →
//! connections) and the mutex around them, and draining the outboxes, which happens between
//! timed rounds (before the byte bound could be reached) and drops the queued messages untimed.
//! Throughput is in deliveries (elements = N per event).
//!
//! Run: `cargo bench -p edge --bench fanout` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a quick pass).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edge::EdgeConfig;
use edge::hub::EncodedFrame;
use edge::outbox::{Outbox, Outgoing, Pushed, Status};
use protocol::codec::{encode_server, encode_server_json};
use protocol::{ChatId, Encoding, Event, EventBody, ServerFrame};
use tokio_tungstenite::tungstenite::Message;

const CHAT: ChatId = 6_004_799_503_160_661;
const FANOUT: [usize; 4] = [1, 100, 1_000, 10_000];
/// Deliveries per timed stretch before the outboxes are drained: enough to amortise the
/// timer at small N, few enough that naive copies stay a few MiB and no outbox nears its bound.
const DELIVERIES_PER_DRAIN: usize = 4_096;
/// Most events queued on one outbox between drains.
const MAX_ROUNDS_PER_DRAIN: usize = 64;

fn event() -> Event {
    let text = "Running ten minutes late, start without me; I will bring the slides and the printed agenda for all. ";
    let text = text[..100].to_string();
    assert_eq!(text.len(), 100);
    Event {
        seq: 48_213,
        ts: 1_767_225_600_000,
        sender: "user-123456".to_string(),
        body: EventBody::Message {
            client_msg_id: "0d9f4c1e-6b7a-4c3e-9a51-2f8e7d6c5b4a".to_string(),
            text,
            edited: false,
            deleted: false,
        },
    }
}

/// One event to every connection, encoded once per encoding (as `Hub::forward`). Returns how
/// many pushes were queued.
fn encode_once(event: &Event, conns: &[(Encoding, Outbox)], limit: usize) -> usize {
    let frame = ServerFrame::Event { chat: CHAT, event: event.clone() };
    let mut encoded = EncodedFrame::new(&frame);
    let now = Instant::now();
    let mut queued = 0;
    for (encoding, outbox) in conns {
        let out = Outgoing { chat: CHAT, seq: event.seq, message: encoded.get(*encoding), queued: now };
        if outbox.push(out, false, limit) == Pushed::Queued {
            queued += 1;
        }
    }
    queued
}

/// One event to every connection, encoded separately for each.
fn naive(event: &Event, conns: &[(Encoding, Outbox)], limit: usize) -> usize {
    let frame = ServerFrame::Event { chat: CHAT, event: event.clone() };
    let now = Instant::now();
    let mut queued = 0;
    for (encoding, outbox) in conns {
        let message = match encoding {
            Encoding::Json => Message::Text(encode_server_json(&frame).into()),
            Encoding::Bincode => Message::Binary(encode_server(Encoding::Bincode, &frame)),
        };
        let out = Outgoing { chat: CHAT, seq: event.seq, message, queued: now };
        if outbox.push(out, false, limit) == Pushed::Queued {
            queued += 1;
        }
    }
    queued
}

type Fanout = fn(&Event, &[(Encoding, Outbox)], usize) -> usize;

/// Times `iters` fan-outs, draining every outbox (untimed) every few rounds, and asserts that
/// every push was queued.
fn run(iters: u64, fanout: Fanout, event: &Event, conns: &[(Encoding, Outbox)], limit: usize) -> Duration {
    let rounds_per_drain = (DELIVERIES_PER_DRAIN / conns.len()).clamp(1, MAX_ROUNDS_PER_DRAIN) as u64;
    let mut drained = Vec::with_capacity(MAX_ROUNDS_PER_DRAIN);
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let rounds = rounds_per_drain.min(iters - done);
        let mut queued = 0;
        let start = Instant::now();
        for _ in 0..rounds {
            queued += fanout(black_box(event), conns, limit);
        }
        total += start.elapsed();
        assert_eq!(queued, conns.len() * rounds as usize, "an outbox refused a push");
        for (_, outbox) in conns {
            assert_eq!(outbox.drain_into(&mut drained, usize::MAX), Status::Open);
            assert_eq!(drained.len(), rounds as usize);
            drained.clear();
        }
        done += rounds;
    }
    total
}

fn bench_fanout(c: &mut Criterion) {
    let limit = EdgeConfig::default().outbound_queue_bytes;
    let event = event();
    for encoding in [Encoding::Json, Encoding::Bincode] {
        let mut g = c.benchmark_group(format!("fanout/{}", encoding.as_str()));
        for n in FANOUT {
            let conns: Vec<(Encoding, Outbox)> = (0..n).map(|_| (encoding, Outbox::new())).collect();
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new("encode_once", n), &conns, |b, conns| {
                b.iter_custom(|iters| run(iters, encode_once, &event, conns, limit))
            });
            g.bench_with_input(BenchmarkId::new("naive", n), &conns, |b, conns| {
                b.iter_custom(|iters| run(iters, naive, &event, conns, limit))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_fanout);
criterion_main!(benches);
