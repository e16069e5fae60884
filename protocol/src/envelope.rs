//! Messages between edges and routers on the bus, and the subjects they travel on.
//!
//! Envelopes are bincode behind a version byte ([`crate::codec::ENVELOPE_VERSION`]) and are
//! decoded with a size limit, like anything else that arrives from a socket.

use bincode::{Decode, Encode};

use crate::error::ErrorCode;
use crate::frame::{ChatKind, ChatSummary, Event, PresenceStatus, Role};
use crate::ids::{ChatId, Seq, UserId, subject_token};

/// Subject on which routers take requests (a queue group shares the load).
pub const ROUTER_REQUEST_SUBJECT: &str = "router.req";

/// Queue group name routers subscribe with.
pub const ROUTER_QUEUE_GROUP: &str = "routers";

/// Subject routers announce themselves on ([`RouterHeartbeat`]).
pub const ROUTER_HEARTBEAT_SUBJECT: &str = "router.heartbeat";

/// Subject on which one router takes the requests for the chats it owns.
pub fn router_subject(router: crate::ring::RouterId) -> String {
    format!("router.chat.{router}")
}

/// A router's periodic announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct RouterHeartbeat {
    pub id: crate::ring::RouterId,
    /// Sent once on graceful shutdown: forget me now.
    pub stopping: bool,
}

/// Subject of a chat's events: sequenced events and ephemeral ones (typing, receipts,
/// presence). Edges subscribe while they hold a member's connection.
pub fn chat_subject(chat: ChatId) -> String {
    format!("chat.{chat}")
}

/// Subject of events addressed to one user wherever they are connected (being added to a
/// chat). Edges subscribe while they hold one of the user's connections.
pub fn user_subject(user: &str) -> String {
    format!("user.{}", subject_token(user))
}

/// A request from an edge, on behalf of an authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RouterRequest {
    /// The user, as authenticated by the edge. Routers trust edges, never clients.
    pub user: UserId,
    pub op: RouterOp,
}

/// What the user asks for.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RouterOp {
    CreateChat {
        kind: ChatKind,
        title: String,
        members: Vec<UserId>,
    },
    AddMembers {
        chat: ChatId,
        users: Vec<UserId>,
        role: Role,
    },
    RemoveMembers {
        chat: ChatId,
        users: Vec<UserId>,
    },
    ListChats,
    /// The ids of every chat the user is a member of (edges subscribe to them).
    ChatIds,
    Send {
        chat: ChatId,
        client_msg_id: String,
        body: String,
    },
    Edit {
        chat: ChatId,
        target: Seq,
        body: String,
    },
    Delete {
        chat: ChatId,
        target: Seq,
    },
    History {
        chat: ChatId,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: u32,
    },
    Read {
        chat: ChatId,
        seq: Seq,
    },
    Typing {
        chat: ChatId,
    },
    Presence {
        status: PresenceStatus,
    },
    /// A page of the revocations in force, after the entry whose key is `after` (an edge
    /// starting, or catching up after a lost broadcast). Not on behalf of a user: the
    /// request's `user` is ignored.
    Revocations {
        after: Option<crate::revocation::RevocationKey>,
    },
}

impl RouterOp {
    /// The chat the op is about, if any.
    pub fn chat(&self) -> Option<ChatId> {
        match self {
            RouterOp::AddMembers { chat, .. }
            | RouterOp::RemoveMembers { chat, .. }
            | RouterOp::Send { chat, .. }
            | RouterOp::Edit { chat, .. }
            | RouterOp::Delete { chat, .. }
            | RouterOp::History { chat, .. }
            | RouterOp::Read { chat, .. }
            | RouterOp::Typing { chat } => Some(*chat),
            RouterOp::CreateChat { .. }
            | RouterOp::ListChats
            | RouterOp::ChatIds
            | RouterOp::Presence { .. }
            | RouterOp::Revocations { .. } => None,
        }
    }
}

/// The router's answer.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RouterReply {
    Ack {
        chat: ChatId,
        seq: Seq,
        ts: u64,
        duplicate: bool,
    },
    ChatCreated {
        chat: ChatSummary,
        created: bool,
    },
    Chats(Vec<ChatSummary>),
    ChatIds(Vec<ChatId>),
    /// `last_seq` is the chat's newest seq when the page was read.
    History {
        events: Vec<Event>,
        more: bool,
        last_seq: Seq,
    },
    Ok,
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Answer to [`RouterOp::Revocations`]: at most
    /// [`REVOCATION_PAGE`](crate::revocation::REVOCATION_PAGE) entries in key order; `more`
    /// when another page follows. Last, so that older variants keep their tags.
    Revocations {
        entries: Vec<crate::revocation::Revocation>,
        more: bool,
    },
}

impl RouterReply {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        RouterReply::Error { code, message: message.into() }
    }
}

/// What routers publish for edges to fan out.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum BusEvent {
    /// An event of the chat's sequenced stream (on the chat subject).
    Sequenced { chat: ChatId, event: Event },
    /// A read cursor moved (on the chat subject).
    Receipt { chat: ChatId, user: UserId, seq: Seq },
    /// Someone is typing (on the chat subject).
    Typing { chat: ChatId, user: UserId },
    /// Someone's presence changed (on the subject of each chat they share).
    Presence { chat: ChatId, user: UserId, status: PresenceStatus },
    /// `user` joined `chat` through `event` (on the user subject): edges holding the user
    /// start delivering the chat to them.
    Joined { chat: ChatId, user: UserId, event: Event },
}
