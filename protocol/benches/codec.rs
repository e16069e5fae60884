//! Codec micro benchmarks: one frame encoded or decoded per iteration, in JSON and in bincode,
//! through the same `protocol::codec` functions the server and the clients use.
//!
//! - Client frames (`send`, `history`, `resume`, `create_chat`, `ping`): `encode/<enc>/<frame>`
//!   is `encode_client` (what a client does), `decode/<enc>/<frame>` is `decode_client` (what
//!   the edge does with every frame it receives).
//! - Server frames (`event` with a 100-byte message, `ack`, `history_page` of 50 such events,
//!   `hello`, `error`): `encode/<enc>/<frame>` is what the edge sends (`encode_server_json` for
//!   JSON text frames, `encode_server(Bincode, ..)` for binary frames), `decode/<enc>/<frame>`
//!   is `decode_server` (what a client does).
//!
//! Throughput is the encoded size of the frame, so MiB/s is comparable across encodings.
//!
//! Run: `cargo bench -p protocol --bench codec` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a quick pass, or a filter such as `-- decode/json`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use protocol::codec::{decode_client, decode_server, encode_client, encode_server, encode_server_json};
use protocol::frame::ResumeCursor;
use protocol::{ChatKind, ClientFrame, Encoding, ErrorCode, Event, EventBody, ServerFrame};

/// A chat id as the router mints them: random below 2^53, so usually a large number.
const CHAT: u64 = 6_004_799_503_160_661;
/// Milliseconds since the epoch, early 2026.
const TS: u64 = 1_767_225_600_000;

/// Exactly 100 bytes of ASCII text.
fn body_100() -> String {
    let s = "Running ten minutes late, start without me; I will bring the slides and the printed agenda for all. ";
    let s = &s[..100];
    assert_eq!(s.len(), 100);
    s.to_string()
}

fn client_msg_id(n: u64) -> String {
    format!("0d9f4c1e-6b7a-4c3e-9a51-{n:012x}")
}

fn message_event(seq: u64, sender: &str) -> Event {
    Event {
        seq,
        ts: TS + seq * 1_250,
        sender: sender.to_string(),
        body: EventBody::Message { client_msg_id: client_msg_id(seq), text: body_100(), edited: false, deleted: false },
    }
}

fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    vec![
        ("send", ClientFrame::Send { req: 1_042, chat: CHAT, client_msg_id: client_msg_id(1_042), body: body_100() }),
        (
            "history",
            ClientFrame::History { req: 1_043, chat: CHAT, before: Some(48_213), after: None, limit: Some(50) },
        ),
        (
            "resume",
            ClientFrame::Resume {
                req: 1_044,
                chats: (0..20u64)
                    .map(|i| ResumeCursor { chat: CHAT - i * 7_919_111, last_seq: 1_000 + i * 373 })
                    .collect(),
            },
        ),
        (
            "create_chat",
            ClientFrame::CreateChat {
                req: 1_045,
                kind: ChatKind::Group,
                title: "Quarterly planning".to_string(),
                members: (0..5).map(|i| format!("user-{}", 123_457 + i)).collect(),
            },
        ),
        ("ping", ClientFrame::Ping { req: 1_046 }),
    ]
}

fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    vec![
        ("event", ServerFrame::Event { chat: CHAT, event: message_event(48_213, "user-123456") }),
        ("ack", ServerFrame::Ack { req: 1_042, chat: CHAT, seq: 48_213, ts: TS, duplicate: false }),
        (
            "history_page",
            ServerFrame::History {
                req: 1_043,
                chat: CHAT,
                events: (48_163..48_213u64)
                    .map(|seq| message_event(seq, &format!("user-{}", 123_456 + seq % 7)))
                    .collect(),
                more: true,
            },
        ),
        (
            "hello",
            ServerFrame::Hello {
                user: "user-123456".to_string(),
                protocol: 1,
                heartbeat_ms: 30_000,
                max_frame_bytes: 65_536,
            },
        ),
        ("error", ServerFrame::error(Some(1_044), ErrorCode::NotFound, "no such chat")),
    ]
}

/// The bytes the edge writes for a server frame, as `encode_server_*` produce them.
fn server_bytes(encoding: Encoding, frame: &ServerFrame) -> Vec<u8> {
    match encoding {
        Encoding::Json => encode_server_json(frame).into_bytes(),
        Encoding::Bincode => encode_server(Encoding::Bincode, frame).to_vec(),
    }
}

fn bench_client_frames(c: &mut Criterion) {
    for encoding in [Encoding::Json, Encoding::Bincode] {
        let enc = encoding.as_str();
        for (name, frame) in client_frames() {
            let bytes = encode_client(encoding, &frame);
            assert_eq!(decode_client(encoding, &bytes).unwrap(), frame, "{enc} {name} round trip");
            let mut g = c.benchmark_group(format!("encode/{enc}"));
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_function(name, |b| b.iter(|| encode_client(encoding, black_box(&frame))));
            g.finish();
            let mut g = c.benchmark_group(format!("decode/{enc}"));
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_function(name, |b| b.iter(|| decode_client(encoding, black_box(&bytes)).unwrap()));
            g.finish();
        }
    }
}

fn bench_server_frames(c: &mut Criterion) {
    for encoding in [Encoding::Json, Encoding::Bincode] {
        let enc = encoding.as_str();
        for (name, frame) in server_frames() {
            let bytes = server_bytes(encoding, &frame);
            assert_eq!(decode_server(encoding, &bytes).unwrap(), frame, "{enc} {name} round trip");
            let mut g = c.benchmark_group(format!("encode/{enc}"));
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            match encoding {
                Encoding::Json => g.bench_function(name, |b| b.iter(|| encode_server_json(black_box(&frame)))),
                Encoding::Bincode => {
                    g.bench_function(name, |b| b.iter(|| encode_server(Encoding::Bincode, black_box(&frame))))
                }
            };
            g.finish();
            let mut g = c.benchmark_group(format!("decode/{enc}"));
            g.throughput(Throughput::Bytes(bytes.len() as u64));
            g.bench_function(name, |b| b.iter(|| decode_server(encoding, black_box(&bytes)).unwrap()));
            g.finish();
        }
    }
}

criterion_group!(benches, bench_client_frames, bench_server_frames);
criterion_main!(benches);
