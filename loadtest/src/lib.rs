//! `loadtest`: a load generator that understands chat.
//!
//! Request counters (k6, Gatling, Tsung) tell how fast a server answers; they cannot tell
//! whether every message reached every recipient, once and in order. This tool opens real
//! WebSocket connections speaking protocol v1, runs a scenario on an open-model schedule
//! (latency counts from when a send was *due*, so a struggling server cannot hide by slowing
//! the load), checks every member's stream of every chat, and reports HdrHistogram
//! percentiles, a per-second timeline and a correctness verdict, with SLO thresholds that set
//! the exit code.
//!
//! Layout:
//! - [`plan`]: what a run does, split deterministically among workers.
//! - [`check`]: the correctness bookkeeping (pure).
//! - [`stats`]: histograms, per-second ticks, merging (pure).
//! - [`worker`]: one process's connections, one task each.
//! - [`controller`]: starts/accepts workers, walks the phases, merges, builds the report.
//! - [`wire`]: the controller/worker line protocol (works across machines).
//! - [`report`] and [`html`]: the JSON report, SLO checks, and the HTML page.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
pub mod controller;
pub mod html;
pub mod plan;
pub mod report;
pub mod stats;
pub mod wire;
pub mod worker;
