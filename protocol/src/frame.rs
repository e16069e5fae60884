//! Frames of client protocol v1 and the events of a chat's sequenced stream.
//!
//! The same Rust types serve both encodings: serde gives the JSON form (an object with a
//! `"type"` tag), bincode's derive the binary form (a varint variant index, then the fields
//! in declaration order). Declaration order is therefore part of the protocol: add new
//! variants and fields only at the end.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ids::{ChatId, Seq, UserId};

/// A request id chosen by the client and echoed in the reply, so replies can be matched.
pub type ReqId = u64;

/// What kind of chat this is; fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// Exactly two members, both ordinary; created once per pair (creating again returns it).
    Direct,
    /// Any number of members; admins manage membership; everyone posts.
    Group,
    /// A channel: only admins post, members read.
    Broadcast,
}

/// A member's role in a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
}

/// A user's presence as other members see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Encode, Decode)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

/// The per-chat cursor a client sends when it resumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ResumeCursor {
    pub chat: ChatId,
    /// The highest seq the client has seen in this chat (0 if none).
    pub last_seq: Seq,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticate with a JWT, when the token was not given at the upgrade.
    Auth { token: String },
    /// Heartbeat; also resets the idle timer.
    Ping { req: ReqId },
    /// Create a chat. The creator is a member (an admin of groups and broadcasts).
    CreateChat {
        req: ReqId,
        kind: ChatKind,
        #[serde(default)]
        title: String,
        /// The other members. A direct chat names exactly one.
        members: Vec<UserId>,
    },
    /// Add members (admins only; not in direct chats).
    AddMembers {
        req: ReqId,
        chat: ChatId,
        users: Vec<UserId>,
        #[serde(default = "default_role")]
        role: Role,
    },
    /// Remove members (admins only; anyone may remove themselves, i.e. leave).
    RemoveMembers { req: ReqId, chat: ChatId, users: Vec<UserId> },
    /// List my chats with their last seq and my read cursor.
    ListChats { req: ReqId },
    /// Post a message. `client_msg_id` makes the send idempotent.
    Send { req: ReqId, chat: ChatId, client_msg_id: String, body: String },
    /// Replace the body of one of my messages.
    Edit { req: ReqId, chat: ChatId, target: Seq, body: String },
    /// Delete one of my messages (admins may delete anyone's).
    Delete { req: ReqId, chat: ChatId, target: Seq },
    /// A page of a chat's events: `after` (ascending from after+1) or `before` (the events just
    /// below `before`, still returned in ascending order); neither means the latest page.
    History {
        req: ReqId,
        chat: ChatId,
        #[serde(default)]
        before: Option<Seq>,
        #[serde(default)]
        after: Option<Seq>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Catch up after a reconnect: the server sends every event after each `last_seq`, then a
    /// `resumed` frame per chat, then live events, with no gap and no duplicate at the seam.
    Resume { req: ReqId, chats: Vec<ResumeCursor> },
    /// Move my read cursor in a chat forward (it never moves back).
    Read { req: ReqId, chat: ChatId, seq: Seq },
    /// I am typing in this chat (ephemeral, rate limited, never stored).
    Typing { chat: ChatId },
    /// Set my presence (ephemeral, rate limited, never stored).
    Presence { status: PresenceStatus },
}

fn default_role() -> Role {
    Role::Member
}

impl ClientFrame {
    /// The request id, for frames that carry one.
    pub fn req(&self) -> Option<ReqId> {
        match self {
            ClientFrame::Auth { .. } | ClientFrame::Typing { .. } | ClientFrame::Presence { .. } => None,
            ClientFrame::Ping { req }
            | ClientFrame::CreateChat { req, .. }
            | ClientFrame::AddMembers { req, .. }
            | ClientFrame::RemoveMembers { req, .. }
            | ClientFrame::ListChats { req }
            | ClientFrame::Send { req, .. }
            | ClientFrame::Edit { req, .. }
            | ClientFrame::Delete { req, .. }
            | ClientFrame::History { req, .. }
            | ClientFrame::Resume { req, .. }
            | ClientFrame::Read { req, .. } => Some(*req),
        }
    }

    /// A short stable name of the operation, for metrics labels.
    pub fn op(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::CreateChat { .. } => "create_chat",
            ClientFrame::AddMembers { .. } => "add_members",
            ClientFrame::RemoveMembers { .. } => "remove_members",
            ClientFrame::ListChats { .. } => "list_chats",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Edit { .. } => "edit",
            ClientFrame::Delete { .. } => "delete",
            ClientFrame::History { .. } => "history",
            ClientFrame::Resume { .. } => "resume",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Presence { .. } => "presence",
        }
    }

    /// Whether this frame is ephemeral (typing, presence): rate limited on its own budget.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self, ClientFrame::Typing { .. } | ClientFrame::Presence { .. })
    }
}

/// One event in a chat's sequenced stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct Event {
    pub seq: Seq,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Who caused the event.
    pub sender: UserId,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened at a seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// The chat was created with these members (seq 1 of every chat).
    Created { chat_kind: ChatKind, title: String, members: Vec<UserId> },
    /// A message. `deleted` is true (and `text` empty) once it was deleted; `edited` once edited.
    Message { client_msg_id: String, text: String, edited: bool, deleted: bool },
    /// A message was edited to `text`.
    Edited { target: Seq, text: String },
    /// A message was deleted.
    Deleted { target: Seq },
    /// Members joined (with this role).
    MembersAdded { users: Vec<UserId>, role: Role },
    /// Members left or were removed.
    MembersRemoved { users: Vec<UserId> },
}

/// A chat as listed to one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct ChatSummary {
    pub chat: ChatId,
    pub kind: ChatKind,
    pub title: String,
    /// Your role in it.
    pub role: Role,
    /// The seq of its newest event.
    pub last_seq: Seq,
    /// Your read cursor (0 if you never sent `read`).
    pub read_seq: Seq,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Sent once authentication succeeds.
    Hello {
        user: UserId,
        protocol: u32,
        /// Send a `ping` at least this often; after twice this the server closes (4010).
        heartbeat_ms: u64,
        max_frame_bytes: u64,
    },
    Pong {
        req: ReqId,
    },
    /// A sequenced write is durable: `send`, `edit`, `delete`, `add_members`, `remove_members`.
    /// `duplicate` is true when this repeats the ack of an earlier send with the same id.
    Ack {
        req: ReqId,
        chat: ChatId,
        seq: Seq,
        ts: u64,
        duplicate: bool,
    },
    /// Reply to `create_chat`; `created` is false when an existing direct chat is returned.
    ChatCreated {
        req: ReqId,
        chat: ChatSummary,
        created: bool,
    },
    /// Reply to `list_chats`.
    Chats {
        req: ReqId,
        chats: Vec<ChatSummary>,
    },
    /// Reply to `history`; events ascend by seq; `more` says whether older (for `before` or
    /// latest) or newer (for `after`) events remain beyond this page.
    History {
        req: ReqId,
        chat: ChatId,
        events: Vec<Event>,
        more: bool,
    },
    /// Resume of `chat` is complete: every event up to `last_seq` was sent; live ones follow.
    Resumed {
        req: ReqId,
        chat: ChatId,
        last_seq: Seq,
    },
    /// Success without data (`read`).
    Ok {
        req: ReqId,
    },
    /// An event in a chat's stream, live or during resume.
    Event {
        chat: ChatId,
        event: Event,
    },
    /// A member's read cursor moved.
    Receipt {
        chat: ChatId,
        user: UserId,
        seq: Seq,
    },
    /// A member is typing.
    Typing {
        chat: ChatId,
        user: UserId,
    },
    /// A member's presence changed.
    Presence {
        user: UserId,
        status: PresenceStatus,
    },
    /// A request failed (`req` absent when the frame had none or could not be decoded).
    Error {
        req: Option<ReqId>,
        code: ErrorCode,
        message: String,
    },
    /// The server is going away: reconnect after the delay (to any node), then resume.
    /// A close with code 1001 follows.
    GoAway {
        reconnect_after_ms: u64,
        reason: String,
    },
    /// The connection's token expires at `exp` (seconds since the Unix epoch): send an `auth`
    /// frame with a fresh token for the same user before then, or the connection is closed
    /// with 4012 at `exp` (plus the server's clock-skew leeway).
    TokenExpiring {
        exp: u64,
    },
    /// An in-band `auth` was accepted: the connection now lives until `exp`.
    TokenRefreshed {
        exp: u64,
    },
}

impl ServerFrame {
    /// A short stable name, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Hello { .. } => "hello",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::ChatCreated { .. } => "chat_created",
            ServerFrame::Chats { .. } => "chats",
            ServerFrame::History { .. } => "history",
            ServerFrame::Resumed { .. } => "resumed",
            ServerFrame::Ok { .. } => "ok",
            ServerFrame::Event { .. } => "event",
            ServerFrame::Receipt { .. } => "receipt",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Error { .. } => "error",
            ServerFrame::GoAway { .. } => "goaway",
            ServerFrame::TokenExpiring { .. } => "token_expiring",
            ServerFrame::TokenRefreshed { .. } => "token_refreshed",
        }
    }

    /// Builds an error frame.
    pub fn error(req: Option<ReqId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error { req, code, message: message.into() }
    }
}
