//! A token bucket that is told the time instead of reading a clock, so its decisions are
//! deterministic under test.

use std::time::{Duration, Instant};

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
    burst: f32,
    per_second: f32,
}

impl TokenBucket {
    /// A full bucket as of `now`.
    pub fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        TokenBucket { tokens: burst as f32, last: now, burst: burst as f32, per_second: per_second as f32 }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f32() * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with a frame given the connection's recent behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Reject it with a `rate_limited` error frame.
    Reject,
    /// Too many rejections in a row: close the connection (4008).
    Close,
}

/// Per-connection flood control: a bucket for ordinary requests, a separate one for ephemeral
/// frames, and a strike counter so that a client that ignores `rate_limited` errors is cut off.
#[derive(Debug, Clone)]
pub struct FloodGuard {
    requests: TokenBucket,
    ephemeral: TokenBucket,
    strikes: u16,
    max_strikes: u16,
}

/// Rates for a [`FloodGuard`].
#[derive(Debug, Clone, Copy)]
pub struct FloodLimits {
    pub requests_per_second: u32,
    pub request_burst: u32,
    pub ephemeral_per_second: u32,
    pub ephemeral_burst: u32,
    /// Rejections in a row (without an allowed frame in between... of any kind) before close.
    pub max_strikes: u16,
}

impl FloodGuard {
    pub fn new(limits: FloodLimits, now: Instant) -> Self {
        FloodGuard {
            requests: TokenBucket::new(limits.requests_per_second, limits.request_burst, now),
            ephemeral: TokenBucket::new(limits.ephemeral_per_second, limits.ephemeral_burst, now),
            strikes: 0,
            max_strikes: limits.max_strikes,
        }
    }

    /// Judges one incoming frame at `now`.
    pub fn check(&mut self, ephemeral: bool, now: Instant) -> Verdict {
        let ok = if ephemeral { self.ephemeral.try_take(now) } else { self.requests.try_take(now) };
        if ok {
            self.strikes = 0;
            Verdict::Allow
        } else {
            self.strikes = self.strikes.saturating_add(1);
            if self.strikes >= self.max_strikes { Verdict::Close } else { Verdict::Reject }
        }
    }
}

/// Helper for tests and callers that count in whole durations.
pub fn after(now: Instant, ms: u64) -> Instant {
    now + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(b.try_take(after(t0, 100)));
        assert!(!b.try_take(after(t0, 100)));
        // Never more than the burst, however long the pause.
        let later = after(t0, 60_000);
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }

    #[test]
    fn flood_guard_rejects_then_closes_and_forgives() {
        let t0 = Instant::now();
        let limits = FloodLimits {
            requests_per_second: 1,
            request_burst: 1,
            ephemeral_per_second: 1,
            ephemeral_burst: 1,
            max_strikes: 3,
        };
        let mut g = FloodGuard::new(limits, t0);
        assert_eq!(g.check(false, t0), Verdict::Allow);
        assert_eq!(g.check(false, t0), Verdict::Reject);
        // Ephemeral frames have their own budget.
        assert_eq!(g.check(true, t0), Verdict::Allow);
        assert_eq!(g.check(false, t0), Verdict::Reject);
        assert_eq!(g.check(false, t0), Verdict::Reject);
        assert_eq!(g.check(false, t0), Verdict::Close);
        let mut g = FloodGuard::new(limits, t0);
        assert_eq!(g.check(false, t0), Verdict::Allow);
        assert_eq!(g.check(false, t0), Verdict::Reject);
        assert_eq!(g.check(false, after(t0, 1000)), Verdict::Allow);
        assert_eq!(g.check(false, after(t0, 1000)), Verdict::Reject);
    }
}
