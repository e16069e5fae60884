//! What a run does: the [`Plan`] the controller sends every worker, and the deterministic
//! split of its connections and chats among workers.
//!
//! Every scenario is one [`Workload`]: direct pairs, groups, one broadcast channel and idle
//! connections, each with a send rate. Connection `i` is user `<run>-<i>`; each connection is
//! in at most one chat, so a member learns its chat id from `list_chats`. Chats never span
//! workers except the broadcast channel, whose poster is on worker 0 and whose subscribers are
//! dealt round-robin.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Connections one worker process opens at most: each is a file, the limit here is 20,000 per
/// process, and the worker needs a few for itself.
pub const MAX_CONNECTIONS_PER_WORKER: u64 = 18_000;
/// Largest group: the creator plus one `create_chat` member list.
pub const MAX_GROUP_SIZE: u32 = protocol::limits::MAX_USERS_PER_REQUEST as u32 + 1;
/// Longest run a plan may ask for (a run always stops by itself).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Most retries of a first connect.
pub const MAX_CONNECT_RETRIES: u32 = 20;
/// Smallest message body: room for the timestamp the receivers read.
pub const MIN_MESSAGE_BYTES: usize = 24;

/// A whole run, as every worker sees it. It carries no secret: workers read the token secret
/// from their own environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Scenario name, for the report.
    pub scenario: String,
    /// Prefix of every user id, unique per run so runs never share chats.
    pub run_id: String,
    /// Edge WebSocket addresses (host:port); connections are dealt round-robin.
    pub edges: Vec<String>,
    /// `json` or `bincode`.
    pub encoding: String,
    /// New connections per second, all workers together.
    pub connect_rate: u32,
    /// Further attempts for a connection whose first connect fails (a real client retries;
    /// 0 measures how many a ramp loses).
    pub connect_retries: u32,
    /// Load phase length.
    pub duration_ms: u64,
    /// Longest wait after the load phase for in-flight acks and deliveries.
    pub drain_ms: u64,
    /// Message body size.
    pub message_bytes: usize,
    /// Source addresses per worker when the edges are on loopback (127.<w>.x.y); 0 = let the
    /// kernel choose.
    pub source_ips: u32,
    pub workload: Workload,
    pub storm: Option<Storm>,
}

/// Connections and send rates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Workload {
    /// 1:1 chats; both members send.
    pub direct_pairs: u64,
    /// Sends/s over all direct chats.
    pub direct_rate: f64,
    pub groups: u64,
    pub group_size: u32,
    /// Sends/s over all groups; every member sends.
    pub group_rate: f64,
    /// Subscribers of the one broadcast channel (0 = no channel).
    pub broadcast_subscribers: u64,
    /// Posts/s to the channel, from one poster.
    pub broadcast_rate: f64,
    /// Connections that only hold (and ping).
    pub idle: u64,
}

/// Drop a share of the connections at once, mid-run; each reconnects and resumes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Storm {
    pub percent: u8,
    /// Offset from the start of the load phase.
    pub at_ms: u64,
}

/// A plan the controller cannot run.
#[derive(Debug, thiserror::Error)]
#[error("invalid plan: {0}")]
pub struct PlanError(pub String);

/// What one connection does.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnSpec {
    /// Global index (the user is `<run>-<index>`).
    pub index: u64,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    Idle,
    Member {
        /// Global chat index.
        chat: u64,
        /// What this connection creates in the setup phase.
        creates: Option<Creation>,
        /// Send period and the offset of the first send from the start of the load phase.
        sends: Option<(Duration, Duration)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Creation {
    Direct {
        peer: u64,
    },
    Group {
        members: Vec<u64>,
    },
    /// The broadcast channel (created in the prepare phase, before anyone connects).
    Broadcast {
        subscribers: std::ops::Range<u64>,
    },
}

impl Plan {
    pub fn validate(&self) -> Result<(), PlanError> {
        let err = |s: &str| Err(PlanError(s.to_owned()));
        let w = &self.workload;
        if self.edges.is_empty() {
            return err("at least one edge address is needed");
        }
        if !matches!(self.encoding.as_str(), "json" | "bincode") {
            return err("encoding must be json or bincode");
        }
        if self.connect_rate == 0 {
            return err("connect rate must be positive");
        }
        if self.connect_retries > MAX_CONNECT_RETRIES {
            return err("connect retries must be at most 20");
        }
        if self.duration_ms == 0 || Duration::from_millis(self.duration_ms) > MAX_DURATION {
            return err("duration must be between 1 ms and 24 h");
        }
        if self.message_bytes < MIN_MESSAGE_BYTES || self.message_bytes > protocol::limits::MAX_BODY_BYTES {
            return err("message size must be between 24 bytes and the protocol's body limit (16 KiB)");
        }
        if self.run_id.is_empty() || self.run_id.len() > 32 || !self.run_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return err("run id must be 1-32 ASCII letters or digits");
        }
        if w.groups > 0 && !(2..=MAX_GROUP_SIZE).contains(&w.group_size) {
            return err("group size must be between 2 and 257");
        }
        for (rate, n, what) in [
            (w.direct_rate, w.direct_pairs, "direct"),
            (w.group_rate, w.groups, "group"),
            (w.broadcast_rate, w.broadcast_subscribers, "broadcast"),
        ] {
            if !rate.is_finite() || !(0.0..=10_000_000.0).contains(&rate) {
                return Err(PlanError(format!("{what} rate must be between 0 and 10,000,000/s")));
            }
            if rate > 0.0 && n == 0 {
                return Err(PlanError(format!("a {what} rate needs {what} connections")));
            }
        }
        if self.connections() == 0 {
            return err("the plan opens no connections");
        }
        if let Some(s) = self.storm
            && (s.percent == 0 || s.percent > 100 || s.at_ms >= self.duration_ms)
        {
            return err("storm needs 1-100 percent at a time inside the load phase");
        }
        Ok(())
    }

    pub fn connections(&self) -> u64 {
        let w = &self.workload;
        let broadcast = if w.broadcast_subscribers > 0 { w.broadcast_subscribers + 1 } else { 0 };
        2 * w.direct_pairs + w.groups * u64::from(w.group_size) + broadcast + w.idle
    }

    /// Total target sends per second.
    pub fn target_rate(&self) -> f64 {
        let w = &self.workload;
        w.direct_rate + w.group_rate + w.broadcast_rate
    }

    /// Workers needed so that none exceeds [`MAX_CONNECTIONS_PER_WORKER`].
    pub fn min_workers(&self) -> u32 {
        self.connections().div_ceil(MAX_CONNECTIONS_PER_WORKER).max(1) as u32
    }

    pub fn user(&self, index: u64) -> String {
        format!("{}-{index}", self.run_id)
    }

    /// The global chat index of the broadcast channel, if any.
    pub fn broadcast_chat(&self) -> Option<u64> {
        (self.workload.broadcast_subscribers > 0).then_some(self.workload.direct_pairs + self.workload.groups)
    }

    /// The connections worker `worker` of `workers` runs, in connect order.
    pub fn share(&self, worker: u32, workers: u32) -> Vec<ConnSpec> {
        let (worker, workers) = (u64::from(worker), u64::from(workers.max(1)));
        let w = &self.workload;
        let mut out = Vec::new();
        let mut base = 0u64;
        // Direct pairs: both members send.
        let senders = 2 * w.direct_pairs;
        for pair in (0..w.direct_pairs).filter(|p| p % workers == worker) {
            for side in 0..2 {
                let index = base + 2 * pair + side;
                out.push(ConnSpec {
                    index,
                    role: Role::Member {
                        chat: pair,
                        creates: (side == 0).then_some(Creation::Direct { peer: index + 1 }),
                        sends: schedule(w.direct_rate, senders, 2 * pair + side),
                    },
                });
            }
        }
        base += senders;
        let size = u64::from(w.group_size);
        let senders = w.groups * size;
        for group in (0..w.groups).filter(|g| g % workers == worker) {
            for m in 0..size {
                let index = base + group * size + m;
                out.push(ConnSpec {
                    index,
                    role: Role::Member {
                        chat: w.direct_pairs + group,
                        creates: (m == 0).then(|| Creation::Group { members: (index + 1..index + size).collect() }),
                        sends: schedule(w.group_rate, senders, group * size + m),
                    },
                });
            }
        }
        base += senders;
        if let Some(chat) = self.broadcast_chat() {
            let subscribers = base + 1..base + 1 + w.broadcast_subscribers;
            if worker == 0 {
                out.push(ConnSpec {
                    index: base,
                    role: Role::Member {
                        chat,
                        creates: Some(Creation::Broadcast { subscribers: subscribers.clone() }),
                        sends: schedule(w.broadcast_rate, 1, 0),
                    },
                });
            }
            for index in subscribers.clone().filter(|i| (i - subscribers.start) % workers == worker) {
                out.push(ConnSpec { index, role: Role::Member { chat, creates: None, sends: None } });
            }
            base = subscribers.end;
        }
        for i in (0..w.idle).filter(|i| i % workers == worker) {
            out.push(ConnSpec { index: base + i, role: Role::Idle });
        }
        out
    }
}

/// Period and first-send offset of sender `n` of `senders` sharing `rate`; offsets spread the
/// senders evenly over one period so the total rate is smooth, not bursty.
fn schedule(rate: f64, senders: u64, n: u64) -> Option<(Duration, Duration)> {
    if rate <= 0.0 || senders == 0 {
        return None;
    }
    let period = senders as f64 / rate;
    Some((Duration::from_secs_f64(period), Duration::from_secs_f64(period * n as f64 / senders as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(workload: Workload) -> Plan {
        Plan {
            scenario: "test".into(),
            run_id: "r1".into(),
            edges: vec!["127.0.0.1:1".into()],
            encoding: "bincode".into(),
            connect_rate: 1000,
            connect_retries: 0,
            duration_ms: 1000,
            drain_ms: 1000,
            message_bytes: 100,
            source_ips: 4,
            workload,
            storm: None,
        }
    }

    #[test]
    fn shares_cover_every_connection_once_and_keep_chats_whole() {
        let p = plan(Workload {
            direct_pairs: 5,
            direct_rate: 100.0,
            groups: 3,
            group_size: 4,
            group_rate: 60.0,
            broadcast_subscribers: 7,
            broadcast_rate: 2.0,
            idle: 4,
        });
        p.validate().unwrap();
        assert_eq!(p.connections(), 10 + 12 + 8 + 4);
        let shares: Vec<_> = (0..3).map(|w| p.share(w, 3)).collect();
        let mut all: Vec<u64> = shares.iter().flatten().map(|c| c.index).collect();
        all.sort_unstable();
        assert_eq!(all, (0..p.connections()).collect::<Vec<_>>());
        // Direct and group chats live on one worker each; the channel spans them.
        for (w, share) in shares.iter().enumerate() {
            for c in share {
                if let Role::Member { chat, creates, .. } = &c.role {
                    if *chat < 8 {
                        let owner = if *chat < 5 { chat % 3 } else { (chat - 5) % 3 };
                        assert_eq!(owner, w as u64, "chat {chat} on worker {w}");
                    }
                    if let Some(Creation::Broadcast { subscribers }) = creates {
                        assert_eq!((w, subscribers.clone()), (0, 23..30));
                    }
                }
            }
        }
        // The rates add up: sum over senders of 1/period.
        let rate: f64 = shares
            .iter()
            .flatten()
            .filter_map(|c| match c.role {
                Role::Member { sends: Some((period, _)), .. } => Some(1.0 / period.as_secs_f64()),
                _ => None,
            })
            .sum();
        assert!((rate - 162.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn senders_are_spread_over_one_period() {
        let p = plan(Workload { direct_pairs: 2, direct_rate: 40.0, ..Workload::default() });
        let offsets: Vec<Duration> = p
            .share(0, 1)
            .into_iter()
            .filter_map(|c| match c.role {
                Role::Member { sends: Some((period, offset)), .. } => {
                    assert_eq!(period, Duration::from_millis(100));
                    Some(offset)
                }
                _ => None,
            })
            .collect();
        assert_eq!(offsets, [0, 25, 50, 75].map(Duration::from_millis));
    }

    #[test]
    fn bad_plans_are_refused() {
        let ok = plan(Workload { idle: 1, ..Workload::default() });
        ok.validate().unwrap();
        let mut p = ok.clone();
        p.workload.idle = 0;
        assert!(p.validate().is_err());
        let mut p = ok.clone();
        p.workload.direct_rate = 10.0;
        assert!(p.validate().is_err(), "a rate without senders");
        let mut p = ok.clone();
        p.message_bytes = 10;
        assert!(p.validate().is_err());
        let mut p = ok.clone();
        p.run_id = "a b".into();
        assert!(p.validate().is_err());
        let mut p = ok.clone();
        p.storm = Some(Storm { percent: 50, at_ms: 5000 });
        assert!(p.validate().is_err(), "storm after the end");
        let mut p = ok;
        p.workload = Workload { groups: 1, group_size: 300, ..Workload::default() };
        assert!(p.validate().is_err());
    }

    #[test]
    fn workers_respect_the_file_limit() {
        let p = plan(Workload { idle: 100_000, ..Workload::default() });
        assert_eq!(p.min_workers(), 6);
    }
}
