//! Wire types and codecs shared by every part of the messenger.
//!
//! This crate knows nothing about sockets, tasks or clocks: it only says what the bytes on
//! the wire mean. Everything that crosses a trust boundary is decoded here, through one codec
//! module, with a size limit, so that a hostile length prefix can never make us allocate.
//!
//! Layout:
//! - [`limits`]: every size limit of the protocol, in one place.
//! - [`ids`]: chat ids, sequence numbers, user ids and their validation.
//! - [`frame`]: client → server and server → client frames of protocol v1, and the events
//!   that make up a chat's sequenced stream.
//! - [`error`]: error codes carried in error frames, and WebSocket close codes.
//! - [`codec`]: the two client encodings (JSON text, bincode binary) negotiated by
//!   subprotocol, and the bincode configuration used on the bus.
//! - [`envelope`]: versioned messages between edges and routers on the bus.
//! - [`ratelimit`]: a token bucket that takes the time as an input.
//! - [`ring`]: which router owns which chat (rendezvous hashing over live routers).
//! - [`revocation`]: token revocations and the list every edge checks them against.
#![forbid(unsafe_code)]

pub mod codec;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod ratelimit;
pub mod revocation;
pub mod ring;

pub use codec::{CodecError, Encoding};
pub use error::{CloseCode, ErrorCode};
pub use frame::{ChatKind, ChatSummary, ClientFrame, Event, EventBody, PresenceStatus, Role, ServerFrame};
pub use ids::{ChatId, Seq, UserId};
