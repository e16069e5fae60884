//! The rules of a chat, in one place, with no IO: no tokio, no store, no clock.
//!
//! Everything here takes what it needs as arguments (the time included) and returns a
//! decision. The router and both stores (embedded and CQL) are executors of these decisions,
//! so a rule is written once, and tested here, table-driven, in milliseconds. The model is
//! `quinn-proto` under `quinn`: the protocol core without IO, the glue elsewhere.
//!
//! Layout:
//! - [`request`]: the router's side, "operation + facts → decision": membership, field
//!   validation, target and permission checks, in their contractual order, each once.
//! - [`append`]: the stores' side, "mutation + current chat state → event + effects":
//!   idempotency, member filtering, edit and delete targets, erasing a deleted message's
//!   text everywhere; and the read-cursor rule.
//! - [`create`]: a new chat's members, roles, first event and direct-chat key.
//! - [`history`]: which page a request names and how much of it fits in one reply.
//! - [`authz`]: who may do what (membership, then permission).
//! - [`validate`]: field checks of requests.
#![forbid(unsafe_code)]

pub mod append;
pub mod authz;
pub mod create;
pub mod history;
pub mod request;
pub mod validate;

pub use append::{Append, Appended, Effect, Facts, Lookups, Mutation, Refused};
pub use create::NewChat;
pub use history::Page;
