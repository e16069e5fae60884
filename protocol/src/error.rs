//! Error codes carried in `error` frames and the WebSocket close codes the server uses.
//! `docs/protocol.md` lists the same table; keep them in step.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Why a request failed. The connection stays open after an error frame unless the table in
/// `docs/protocol.md` says a close follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded (not JSON / not bincode / wrong field types).
    BadFrame,
    /// The frame decoded but names an operation this server does not know.
    UnknownOp,
    /// A field is out of range: empty body, bad user id, too many users, and so on.
    Invalid,
    /// The chat (or the target message) does not exist *or you are not a member*: the two are
    /// deliberately indistinguishable, so non-members learn nothing.
    NotFound,
    /// You are a member but not allowed: posting to a broadcast channel as a non-admin,
    /// editing someone else's message, managing members without being an admin.
    Forbidden,
    /// Too many requests; back off. Repeated flooding closes the connection with 4008.
    RateLimited,
    /// A frame other than `auth` arrived before authentication.
    Unauthenticated,
    /// The server could not complete the request (store or bus unavailable). Retryable: a
    /// retried send with the same `client_msg_id` never duplicates.
    Unavailable,
    /// The request is already done in a way that conflicts, e.g. a `client_msg_id` reused for
    /// a different chat body. Not retryable.
    Conflict,
}

impl ErrorCode {
    /// The stable snake_case name, as used in JSON and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Conflict => "conflict",
        }
    }

    /// Whether a client should retry the same request later.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::RateLimited)
    }
}

/// WebSocket close codes sent by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client asked to close.
    Normal,
    /// 1001: the server is shutting down or draining; reconnect (to another node) after the
    /// delay given in the preceding `goaway` frame, and resume.
    GoingAway,
    /// 1002: a WebSocket protocol violation, or a frame of the wrong type for the negotiated
    /// encoding (binary on JSON, text on bincode).
    ProtocolError,
    /// 1009: a message larger than the limit.
    TooBig,
    /// 1011: an unexpected server error.
    InternalError,
    /// 4001: the token was missing, invalid or expired.
    Unauthorized,
    /// 4002: no valid `auth` frame within the authentication deadline.
    AuthTimeout,
    /// 4008: the client kept sending after being rate limited.
    RateLimited,
    /// 4009: the client did not read fast enough and its outbound queue passed its byte bound.
    /// Nothing is lost: reconnect and resume from the last seq seen.
    SlowConsumer,
    /// 4010: nothing was received within the idle timeout (send `ping` frames).
    IdleTimeout,
    /// 4011: this user already holds as many connections (devices) on the node as allowed.
    /// Close another device's connection, or retry later.
    TooManyConnections,
    /// 4012: the token expired and no fresh one came in time (see `token_expiring`).
    /// Reconnect with a fresh token and resume.
    TokenExpired,
    /// 4013: the token was revoked (by its id, or every token of the user issued before a
    /// time): at connect, or while connected. Sign in again for a new token; do not retry
    /// with the same one.
    TokenRevoked,
}

impl CloseCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::TooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::Unauthorized => 4001,
            CloseCode::AuthTimeout => 4002,
            CloseCode::RateLimited => 4008,
            CloseCode::SlowConsumer => 4009,
            CloseCode::IdleTimeout => 4010,
            CloseCode::TooManyConnections => 4011,
            CloseCode::TokenExpired => 4012,
            CloseCode::TokenRevoked => 4013,
        }
    }

    /// The short reason text sent with the close frame, also the metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "reconnect",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::TooBig => "too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::AuthTimeout => "auth_timeout",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::TooManyConnections => "too_many_connections",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::TokenRevoked => "token_revoked",
        }
    }
}
