//! Where chats, memberships, events, read cursors and idempotency records live.
//!
//! The [`Store`] trait is all the router knows about storage. What an append or a chat
//! creation *does* (idempotency, member filtering, edit and delete targets, erasing deleted
//! text) is decided by the pure [`rules`] crate; each backend only reads the facts the rules
//! ask for and carries out the effects they decide. Sequencing happens *inside* a
//! store's [`Store::append`]: the seq is allocated in the same atomic write that stores the
//! event, so "ack means durable" and "gap-free seq" hold by construction: an append that fails
//! allocates nothing, and one that succeeded is on disk before the ack is sent.
//!
//! Layout:
//! - this file: the trait, its request/answer types and [`StoreError`].
//! - [`embedded`]: the single-node backend on redb (pure Rust, one file, fsync per group
//!   commit).
//! - [`cql`]: the cluster backend on ScyllaDB (or any CQL database accepting the same CQL),
//!   with seqs claimed by lightweight transactions.
#![forbid(unsafe_code)]

pub mod cql;
pub mod embedded;

use async_trait::async_trait;
use protocol::revocation::{Revocation, RevocationKey};
use protocol::{ChatId, ChatKind, ChatSummary, Event, Role, Seq, UserId};
use rules::Refused;
use thiserror::Error;

pub use cql::{CqlConfig, CqlStore};
pub use embedded::{EmbeddedConfig, EmbeddedStore};
pub use rules::{Append, Appended, Mutation, NewChat, Page};

/// What [`Store::create_chat`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new chat; `event` is its seq-1 `created` event.
    New { chat: ChatId, event: Event },
    /// The direct chat between these two users already existed.
    Existing { chat: ChatId },
}

/// A chat's stored header.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct ChatRecord {
    pub kind: ChatKind,
    pub title: String,
    pub creator: UserId,
    pub created_ts: u64,
    pub last_seq: Seq,
}

/// A page of events in ascending seq order, and whether more lie beyond it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub events: Vec<Event>,
    pub more: bool,
}

/// A role as stored: one byte, 0 member, 1 admin (anything else reads as member).
pub(crate) fn role_code(role: Role) -> u8 {
    match role {
        Role::Member => 0,
        Role::Admin => 1,
    }
}

/// The inverse of [`role_code`].
pub(crate) fn role_from_code(code: u8) -> Role {
    if code == 1 { Role::Admin } else { Role::Member }
}

/// Why a store call failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No such chat.
    #[error("chat not found")]
    ChatNotFound,
    /// The target of an edit or delete is missing, not a message, or already deleted.
    #[error("target message not found")]
    TargetNotFound,
    /// The request would change nothing (all users already members / none are members).
    #[error("no change: {0}")]
    NoChange(&'static str),
    /// The client message id was used before for a different message.
    #[error("client message id reused for a different message")]
    Conflict,
    /// A new chat's id is taken: the caller draws another and retries. Nothing was written.
    #[error("chat id already in use")]
    IdCollision,
    /// The request breaks a rule no router would let through (a direct chat without exactly
    /// two members). Nothing was written.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The backend could not complete the call; retrying may succeed. Nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored bytes did not decode: a bug or disk corruption, never retried.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<Refused> for StoreError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::TargetNotFound => StoreError::TargetNotFound,
            Refused::NoChange(why) => StoreError::NoChange(why),
            Refused::Conflict => StoreError::Conflict,
        }
    }
}

/// The storage interface the router sequences, authorizes and persists through.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a chat with its members and its seq-1 `created` event, atomically.
    async fn create_chat(&self, chat: NewChat) -> Result<Created, StoreError>;

    /// A chat's header.
    async fn chat(&self, chat: ChatId) -> Result<Option<ChatRecord>, StoreError>;

    /// A user's role in a chat, `None` when not a member.
    async fn role(&self, chat: ChatId, user: &str) -> Result<Option<Role>, StoreError>;

    /// One event.
    async fn event(&self, chat: ChatId, seq: Seq) -> Result<Option<Event>, StoreError>;

    /// Allocates the next seq and stores the event under it, atomically with its side effects
    /// (membership rows, idempotency record, the edited/deleted target). Durable on return.
    async fn append(&self, append: Append) -> Result<Appended, StoreError>;

    /// A page of a chat's events.
    async fn history(&self, chat: ChatId, page: Page) -> Result<HistoryPage, StoreError>;

    /// The chats a user is a member of, with their role, last seq and read cursor.
    async fn user_chats(&self, user: &str) -> Result<Vec<ChatSummary>, StoreError>;

    /// Ids of the chats a user is a member of.
    async fn chat_ids(&self, user: &str) -> Result<Vec<ChatId>, StoreError>;

    /// Moves a read cursor forward (never back, never past the chat's last seq); returns it.
    async fn set_read(&self, chat: ChatId, user: &str, seq: Seq) -> Result<Seq, StoreError>;

    /// Makes everything written so far durable (a no-op where every write already is).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Records a revocation, durably, merged with an earlier one of the same key (never
    /// narrowing it). Entries whose `until` has passed at `now` may be forgotten.
    async fn revoke(&self, revocation: Revocation, now: u64) -> Result<Revocation, StoreError>;

    /// At most `limit` revocations in force at `now`, in the store's order, after the entry
    /// whose key is `after`.
    async fn revocations(
        &self,
        after: Option<RevocationKey>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Revocation>, StoreError>;
}
