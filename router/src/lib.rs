//! The router: it sequences, authorizes, persists and fans out.
//!
//! Edges send [`protocol::envelope::RouterRequest`]s on the request subject; the router reads
//! the facts a request needs, lets the pure chat rules ([`rules`]) decide, writes through the
//! [`persistence::Store`] (which allocates each chat's seq inside the durable write), answers
//! the edge, and publishes the resulting events on the chat's subject for every edge holding
//! a member to fan out.
//!
//! Layout:
//! - [`dispatch`]: [`Router`] and [`BoundRouter`]: subscribing, routing each request to its
//!   chat's shard or to a task of its own, the heartbeat.
//! - [`shard`]: the per-chat pipeline: facts read once, decisions, pipelined writes with
//!   completions in seq order, membership barriers.
//! - [`requests`]: requests that need no ordering (create, list, history, presence).
//! - [`answer`]: replies, publishing, and the errors a client sees for store errors.
//! - [`revocation`]: token revocations stored and broadcast to every edge ([`Revoker`]).
//! - [`clock`]: the server clock, injectable.
#![forbid(unsafe_code)]

mod answer;
pub mod clock;
mod dispatch;
mod requests;
pub mod revocation;
mod shard;

pub use clock::{Clock, FixedClock, SystemClock};
pub use dispatch::{BoundRouter, Router, RouterConfig, RouterError};
pub use revocation::{RevokeError, RevokeRequest, Revoker};
