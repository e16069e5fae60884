//! Which router owns which chat: rendezvous hashing over the routers seen alive. Pure: it is
//! told heartbeats and the time, and answers owners.
//!
//! Every edge and router keeps its own `Ring` from the routers' heartbeats, so views can
//! differ for a moment while a router joins or dies. That is safe, not just tolerated: the
//! store claims each seq with a compare-and-set, so two routers writing one chat can never
//! both store seq N; ownership only keeps that from being the common case.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ids::ChatId;

/// A router's id on the bus: random per process start.
pub type RouterId = u64;

/// How often routers announce themselves.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A router not heard from for this long is dead; its chats move to the others. This is the
/// bound on how long a dead router's chats answer `unavailable`.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

/// The live routers as one participant sees them.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    routers: BTreeMap<RouterId, Instant>,
}

impl Ring {
    /// A heartbeat from `id` at `now`; `stopping` removes it at once (graceful shutdown).
    pub fn observe(&mut self, id: RouterId, stopping: bool, now: Instant) {
        if stopping {
            self.routers.remove(&id);
        } else {
            self.routers.insert(id, now);
        }
    }

    /// Forgets routers silent for longer than [`HEARTBEAT_TIMEOUT`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.routers.len();
        self.routers.retain(|_, seen| now.saturating_duration_since(*seen) <= HEARTBEAT_TIMEOUT);
        before - self.routers.len()
    }

    /// The live routers' ids, ascending.
    pub fn members(&self) -> impl Iterator<Item = RouterId> + '_ {
        self.routers.keys().copied()
    }

    /// Live routers.
    pub fn len(&self) -> usize {
        self.routers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }

    /// The owner of `chat`: the live router with the highest `score(chat, router)`. Adding or
    /// removing a router moves only the chats that router gains or had.
    pub fn owner(&self, chat: ChatId) -> Option<RouterId> {
        self.routers.keys().copied().max_by_key(|&r| score(chat, r))
    }
}

/// A well-mixed 64-bit hash of the pair (SplitMix64 finalizer), stable across processes and
/// versions: every participant must compute the same owner.
fn score(chat: ChatId, router: RouterId) -> u64 {
    let mut z = chat ^ router.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_stable_and_move_minimally() {
        let t0 = Instant::now();
        let mut ring = Ring::default();
        assert_eq!(ring.owner(1), None);
        for r in [10, 20, 30] {
            ring.observe(r, false, t0);
        }
        let before: Vec<_> = (0..3000).map(|c| ring.owner(c).unwrap()).collect();
        // Spread: each router owns a fair share.
        for r in [10, 20, 30] {
            let n = before.iter().filter(|&&o| o == r).count();
            assert!((800..1200).contains(&n), "router {r} owns {n}");
        }
        // Router 20 stops: only its chats move.
        ring.observe(20, true, t0);
        for (c, &old) in before.iter().enumerate() {
            let new = ring.owner(c as u64).unwrap();
            if old != 20 {
                assert_eq!(new, old);
            } else {
                assert_ne!(new, 20);
            }
        }
    }

    #[test]
    fn silent_routers_expire() {
        let t0 = Instant::now();
        let mut ring = Ring::default();
        ring.observe(1, false, t0);
        ring.observe(2, false, t0 + Duration::from_secs(2));
        assert_eq!(ring.expire(t0 + HEARTBEAT_TIMEOUT + Duration::from_millis(1)), 1);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.owner(5), Some(2));
    }
}
