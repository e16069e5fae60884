//! Every size limit of protocol v1, set once. `docs/protocol.md` quotes these numbers; change
//! both together.

/// Largest WebSocket message (and frame) a client may send. Larger ones close the
/// connection with 1009 before they are buffered whole.
pub const MAX_CLIENT_FRAME_BYTES: usize = 64 * 1024;

/// Largest message body, in UTF-8 bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Longest user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 64;

/// Longest client message id, in bytes.
pub const MAX_CLIENT_MSG_ID_BYTES: usize = 64;

/// Longest chat title, in bytes.
pub const MAX_TITLE_BYTES: usize = 256;

/// Most users named in one create or add/remove-members request.
pub const MAX_USERS_PER_REQUEST: usize = 256;

/// Most chats named in one resume request.
pub const MAX_RESUME_CHATS: usize = 1024;

/// Largest history page a client may ask for; larger `limit`s are clamped to it.
pub const MAX_HISTORY_PAGE: u32 = 200;

/// Most message text in one history page, bytes: a page stops early (with `more`) rather
/// than exceed it, so that one reply always fits a connection's outbound queue.
pub const MAX_HISTORY_PAGE_BYTES: usize = 256 * 1024;

/// History page size when the client gives no `limit`.
pub const DEFAULT_HISTORY_PAGE: u32 = 50;

/// Longest token, in bytes. JWTs are small; anything bigger is an attack.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Decode limit for bus envelopes: a frame body at most, plus a page of history.
pub const MAX_ENVELOPE_BYTES: usize = 8 * 1024 * 1024;

/// Chat ids are below 2^53 so that JavaScript clients can hold them as numbers.
pub const MAX_CHAT_ID: u64 = (1 << 53) - 1;
