//! The cost of the cluster MAC per bus message: `sign` (what the publisher adds to every
//! publish) and `verify` (what every receiver adds before a message reaches its sink), for
//! payloads of the sizes the bus carries:
//!
//! - 64 B: a heartbeat, typing, a small reply (ack);
//! - 200 B: a 1:1 send request or its chat event with a ~100-byte text (the hot path);
//! - 4 KiB: a long message or a history reply of a few events;
//! - 64 KiB: a large history page.
//!
//! `sign+verify/<size>` is the round trip one message costs the cluster (one sign at the
//! publisher, one verify per receiving process). Throughput is the payload size.
//!
//! Run: `cargo bench -p bus --bench mac` (add `-- --warm-up-time 1 --measurement-time 3` for
//! a quick pass).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bus::ClusterKeys;
use bus::mac::DEFAULT_MAX_AGE_MS;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Milliseconds since the epoch, early 2026.
const NOW: u64 = 1_767_225_600_000;

const SIZES: [usize; 4] = [64, 200, 4096, 65_536];

fn mac(c: &mut Criterion) {
    let keys = ClusterKeys::new(&[[0x5au8; 32]]).unwrap();
    let subject = "chat.6004799503160661";
    let mut group = c.benchmark_group("mac");
    for size in SIZES {
        let payload = vec![0xa7u8; size];
        let header = keys.sign(subject, &payload, NOW);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("sign/{size}"), |b| {
            b.iter(|| keys.sign(black_box(subject), black_box(&payload), black_box(NOW)))
        });
        group.bench_function(format!("verify/{size}"), |b| {
            b.iter(|| {
                keys.verify(black_box(subject), black_box(&payload), Some(black_box(&header)), NOW, DEFAULT_MAX_AGE_MS)
                    .unwrap()
            })
        });
        group.bench_function(format!("sign+verify/{size}"), |b| {
            b.iter(|| {
                let header = keys.sign(black_box(subject), black_box(&payload), black_box(NOW));
                keys.verify(subject, &payload, Some(&header), NOW, DEFAULT_MAX_AGE_MS).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mac);
criterion_main!(benches);
