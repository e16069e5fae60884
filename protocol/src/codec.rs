//! The one place where bytes become frames and back.
//!
//! Every decode here is bounded: JSON by the WebSocket message limit enforced before it gets
//! here, bincode by a configured byte limit, so a hostile length prefix (a `Vec` claiming 2^60
//! elements) fails instead of allocating.

use std::borrow::Cow;

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::error::DecodeError;
use bincode::{Decode, Encode};
use bytes::Bytes;
use serde::Deserialize;
use thiserror::Error;

use crate::frame::{ClientFrame, ServerFrame};
use crate::limits::{MAX_CLIENT_FRAME_BYTES, MAX_ENVELOPE_BYTES};

/// WebSocket subprotocol for JSON text frames.
pub const SUBPROTOCOL_JSON: &str = "msg.v1.json";
/// WebSocket subprotocol for bincode binary frames.
pub const SUBPROTOCOL_BINCODE: &str = "msg.v1.bincode";

type ClientConfig = Configuration<LittleEndian, Varint, Limit<MAX_CLIENT_FRAME_BYTES>>;
type BusConfig = Configuration<LittleEndian, Varint, Limit<MAX_ENVELOPE_BYTES>>;

const fn client_config() -> ClientConfig {
    config::standard().with_limit::<MAX_CLIENT_FRAME_BYTES>()
}

const fn bus_config() -> BusConfig {
    config::standard().with_limit::<MAX_ENVELOPE_BYTES>()
}

/// The encoding a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// UTF-8 JSON in text frames (`msg.v1.json`, also the default when none is offered).
    Json,
    /// bincode 2 (standard config: little-endian, varint) in binary frames (`msg.v1.bincode`).
    Bincode,
}

impl Encoding {
    /// Picks the encoding from the client's offered subprotocols, first match wins.
    /// `None` means the client offered subprotocols but none of ours.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Encoding> {
        let mut any = false;
        for p in offered {
            any = true;
            match p.trim() {
                SUBPROTOCOL_JSON => return Some(Encoding::Json),
                SUBPROTOCOL_BINCODE => return Some(Encoding::Bincode),
                _ => {}
            }
        }
        if any { None } else { Some(Encoding::Json) }
    }

    /// The subprotocol name echoed in the upgrade response.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::Bincode => SUBPROTOCOL_BINCODE,
        }
    }

    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Bincode => "bincode",
        }
    }
}

/// Why bytes did not decode.
#[derive(Debug, Error)]
pub enum CodecError {
    /// Structurally broken input.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Well-formed, but the operation is not one we know.
    #[error("unknown operation {0:?}")]
    UnknownOp(String),
    /// Bus envelope of another version.
    #[error("unsupported envelope version {0}")]
    Version(u8),
}

/// Names of every client operation, for telling "unknown op" from "malformed".
const CLIENT_OPS: &[&str] = &[
    "auth",
    "ping",
    "create_chat",
    "add_members",
    "remove_members",
    "list_chats",
    "send",
    "edit",
    "delete",
    "history",
    "resume",
    "read",
    "typing",
    "presence",
];

#[derive(Deserialize)]
struct TagOnly<'a> {
    #[serde(rename = "type", borrow, default)]
    ty: Option<Cow<'a, str>>,
}

/// Decodes a client frame in the given encoding.
pub fn decode_client(encoding: Encoding, bytes: &[u8]) -> Result<ClientFrame, CodecError> {
    match encoding {
        Encoding::Json => match serde_json::from_slice::<ClientFrame>(bytes) {
            Ok(frame) => Ok(frame),
            Err(err) => match serde_json::from_slice::<TagOnly<'_>>(bytes) {
                Ok(TagOnly { ty: Some(ty) }) if !CLIENT_OPS.contains(&ty.as_ref()) => {
                    Err(CodecError::UnknownOp(truncate(&ty)))
                }
                _ => Err(CodecError::Malformed(err.to_string())),
            },
        },
        Encoding::Bincode => decode_exact(bytes, client_config()),
    }
}

/// Encodes a client frame (used by clients: tests, the load generator).
pub fn encode_client(encoding: Encoding, frame: &ClientFrame) -> Bytes {
    match encoding {
        Encoding::Json => Bytes::from(json_string(frame)),
        Encoding::Bincode => Bytes::from(bincode_vec(frame, client_config())),
    }
}

/// Encodes a server frame. JSON output is always valid UTF-8.
pub fn encode_server(encoding: Encoding, frame: &ServerFrame) -> Bytes {
    match encoding {
        Encoding::Json => Bytes::from(json_string(frame)),
        Encoding::Bincode => Bytes::from(bincode_vec(frame, bus_config())),
    }
}

/// Encodes a server frame as JSON text, for a WebSocket text frame.
pub fn encode_server_json(frame: &ServerFrame) -> String {
    json_string(frame)
}

/// Decodes a server frame (used by clients), bounded like bus envelopes since history pages
/// are larger than client frames.
pub fn decode_server(encoding: Encoding, bytes: &[u8]) -> Result<ServerFrame, CodecError> {
    match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string())),
        Encoding::Bincode => decode_exact(bytes, bus_config()),
    }
}

/// The version byte that leads every bus envelope.
pub const ENVELOPE_VERSION: u8 = 1;

/// Encodes a bus envelope: one version byte, then bincode.
pub fn encode_envelope<T: Encode>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.push(ENVELOPE_VERSION);
    // Encoding into a Vec cannot fail for our types (no limits on encode, no IO).
    if let Err(err) = bincode::encode_into_std_write(value, &mut out, bus_config()) {
        unreachable!("encoding into a Vec failed: {err}");
    }
    Bytes::from(out)
}

/// Decodes a bus envelope, bounded by [`MAX_ENVELOPE_BYTES`].
pub fn decode_envelope<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        Some((&ENVELOPE_VERSION, rest)) => decode_exact(rest, bus_config()),
        Some((&v, _)) => Err(CodecError::Version(v)),
        None => Err(CodecError::Malformed("empty envelope".into())),
    }
}

fn decode_exact<T: Decode<()>, C: bincode::config::Config>(bytes: &[u8], cfg: C) -> Result<T, CodecError> {
    match bincode::decode_from_slice::<T, C>(bytes, cfg) {
        Ok((value, read)) if read == bytes.len() => Ok(value),
        Ok((_, read)) => Err(CodecError::Malformed(format!("{} trailing bytes", bytes.len() - read))),
        // Only an unknown *frame* variant is an unknown operation; a bad index inside a frame
        // (a chat kind, a role) is a malformed frame.
        Err(DecodeError::UnexpectedVariant { found, type_name, .. })
            if type_name.ends_with("ClientFrame") || type_name.ends_with("ServerFrame") =>
        {
            Err(CodecError::UnknownOp(format!("variant {found}")))
        }
        Err(err) => Err(CodecError::Malformed(err.to_string())),
    }
}

fn json_string<T: serde::Serialize>(value: &T) -> String {
    // Our frames have string keys and no non-finite floats, so serialization cannot fail.
    match serde_json::to_string(value) {
        Ok(s) => s,
        Err(err) => unreachable!("JSON encoding failed: {err}"),
    }
}

fn bincode_vec<T: Encode, C: bincode::config::Config>(value: &T, cfg: C) -> Vec<u8> {
    match bincode::encode_to_vec(value, cfg) {
        Ok(v) => v,
        Err(err) => unreachable!("bincode encoding failed: {err}"),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use crate::frame::{ChatKind, Event, EventBody};

    fn all_client_frames() -> Vec<ClientFrame> {
        vec![
            ClientFrame::Auth { token: "t".into() },
            ClientFrame::Ping { req: 1 },
            ClientFrame::CreateChat { req: 2, kind: ChatKind::Group, title: "t".into(), members: vec!["bob".into()] },
            ClientFrame::Send { req: 3, chat: 9, client_msg_id: "m1".into(), body: "hi".into() },
            ClientFrame::History { req: 4, chat: 9, before: None, after: Some(3), limit: Some(10) },
            ClientFrame::Typing { chat: 9 },
        ]
    }

    #[test]
    fn client_frames_round_trip_in_both_encodings() {
        for enc in [Encoding::Json, Encoding::Bincode] {
            for f in all_client_frames() {
                let bytes = encode_client(enc, &f);
                assert_eq!(decode_client(enc, &bytes).unwrap(), f, "{enc:?}");
            }
        }
    }

    #[test]
    fn json_shapes_are_documented_ones() {
        let f = decode_client(Encoding::Json, br#"{"type":"send","req":7,"chat":5,"client_msg_id":"a","body":"x"}"#)
            .unwrap();
        assert_eq!(f, ClientFrame::Send { req: 7, chat: 5, client_msg_id: "a".into(), body: "x".into() });
        let ev = ServerFrame::Event {
            chat: 5,
            event: Event {
                seq: 2,
                ts: 10,
                sender: "a".into(),
                body: EventBody::Message { client_msg_id: "m".into(), text: "x".into(), edited: false, deleted: false },
            },
        };
        let json = String::from_utf8(encode_server(Encoding::Json, &ev).to_vec()).unwrap();
        assert_eq!(
            json,
            r#"{"type":"event","chat":5,"event":{"seq":2,"ts":10,"sender":"a","kind":"message","client_msg_id":"m","text":"x","edited":false,"deleted":false}}"#
        );
        let err = ServerFrame::error(Some(1), ErrorCode::NotFound, "no such chat");
        let json = String::from_utf8(encode_server(Encoding::Json, &err).to_vec()).unwrap();
        assert_eq!(json, r#"{"type":"error","req":1,"code":"not_found","message":"no such chat"}"#);
        assert_eq!(decode_server(Encoding::Json, json.as_bytes()).unwrap(), err);
    }

    #[test]
    fn unknown_op_is_told_apart_from_garbage() {
        assert!(matches!(decode_client(Encoding::Json, br#"{"type":"frobnicate"}"#), Err(CodecError::UnknownOp(_))));
        assert!(matches!(decode_client(Encoding::Json, br#"{"type":"send"}"#), Err(CodecError::Malformed(_))));
        assert!(matches!(decode_client(Encoding::Json, b"\xff\x00"), Err(CodecError::Malformed(_))));
        assert!(matches!(decode_client(Encoding::Bincode, &[200]), Err(CodecError::UnknownOp(_))));
        assert!(matches!(decode_client(Encoding::Bincode, &[]), Err(CodecError::Malformed(_))));
        // create_chat (variant 2) with req 1 and chat kind 9: a bad field, not a bad op.
        assert!(matches!(decode_client(Encoding::Bincode, &[2, 1, 9]), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // Variant 0 (auth), then a string length of u64::MAX as a varint.
        let mut evil = vec![0u8, 0xFF];
        evil.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode_client(Encoding::Bincode, &evil), Err(CodecError::Malformed(_))));
        // Same against the envelope decoder.
        let mut env = vec![ENVELOPE_VERSION, 0xFF];
        env.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_envelope::<Vec<u8>>(&env).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode_client(Encoding::Bincode, &ClientFrame::Ping { req: 1 }).to_vec();
        bytes.push(0);
        assert!(matches!(decode_client(Encoding::Bincode, &bytes), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn envelope_version_is_checked() {
        let mut b = encode_envelope(&42u64).to_vec();
        assert_eq!(decode_envelope::<u64>(&b).unwrap(), 42);
        b[0] = 9;
        assert!(matches!(decode_envelope::<u64>(&b), Err(CodecError::Version(9))));
    }

    #[test]
    fn negotiation() {
        assert_eq!(Encoding::negotiate([]), Some(Encoding::Json));
        assert_eq!(Encoding::negotiate(["msg.v1.bincode", "msg.v1.json"]), Some(Encoding::Bincode));
        assert_eq!(Encoding::negotiate(["mqtt"]), None);
    }
}
