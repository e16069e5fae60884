//! The router: it sequences, authorizes, persists and fans out.
//!
//! Edges send [`protocol::envelope::RouterRequest`]s on the request subject; the router
//! validates and authorizes them, writes through the [`persistence::Store`] (which allocates
//! each chat's seq inside the durable write), answers the edge, and publishes the resulting
//! events on the chat's subject for every edge holding a member to fan out.
//!
//! Requests that touch one chat's stream go to the shard that owns the chat (`chat % shards`).
//! A shard keeps writes to a chat in order and *pipelines* them: it does not wait for one
//! send's commit before authorizing the next, and it publishes and acks completions in the
//! order it submitted them, which is seq order. Membership changes are barriers: a shard
//! waits for everything in flight before and after one, so no send is ever authorized
//! against a stale member list.
//!
//! Layout:
//! - [`authz`]: who may do what (pure).
//! - [`validate`]: field checks (pure).
//! - [`service`]: the tokio glue: [`Router`], its shards, its heartbeat.
#![forbid(unsafe_code)]

pub mod authz;
pub mod service;
pub mod validate;

pub use service::{BoundRouter, Router, RouterConfig, RouterError};
