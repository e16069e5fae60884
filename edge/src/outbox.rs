//! A connection's outbound queue, bounded in bytes.
//!
//! The hub pushes already-encoded frames; the connection task drains them into its socket.
//! Past half the bound, ephemeral frames (typing, presence, receipts) are dropped; past the
//! bound the queue is emptied, marked overflowed, and the connection closes with 4009: the
//! client resumes from its cursor, so nothing durable is lost and one slow reader costs the
//! server at most the bound.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use protocol::{ChatId, Seq};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// A frame waiting to be written.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The chat it belongs to and its seq, for sequenced events (seq 0 otherwise): the
    /// connection drops those at or below a resume floor.
    pub chat: ChatId,
    pub seq: Seq,
    pub message: Message,
    /// When the hub queued it, for the delivery-latency histogram.
    pub queued: Instant,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Ephemeral and the queue is under pressure.
    Dropped,
    /// The bound was passed; the connection must close.
    Overflow,
    /// The connection is gone.
    Closed,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    overflowed: bool,
    closed: bool,
    go_away: bool,
    revoked: bool,
}

/// What a drain found besides frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    /// The byte bound was passed: close with 4009.
    Overflowed,
    /// The edge is draining: send `goaway` and close with 1001.
    GoAway,
    /// The connection's token was revoked: close it (4013) without writing more.
    Revoked,
}

impl State {
    fn status(&self) -> Status {
        if self.overflowed {
            Status::Overflowed
        } else if self.revoked {
            Status::Revoked
        } else if self.go_away {
            Status::GoAway
        } else {
            Status::Open
        }
    }
}

/// The queue. Shared by the hub (producer) and the connection (consumer).
#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
}

fn size_of(m: &Message) -> usize {
    m.len() + 32
}

impl Outbox {
    pub fn new() -> Self {
        Outbox::default()
    }

    /// Queues a frame unless `limit` bytes would be passed.
    pub fn push(&self, item: Outgoing, ephemeral: bool, limit: usize) -> Pushed {
        let size = size_of(&item.message);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.closed || s.overflowed {
            return Pushed::Closed;
        }
        if ephemeral && s.bytes + size > limit / 2 {
            return Pushed::Dropped;
        }
        if s.bytes + size > limit {
            s.overflowed = true;
            s.queue = VecDeque::new();
            s.bytes = 0;
            drop(s);
            self.ready.notify_one();
            return Pushed::Overflow;
        }
        let was_empty = s.queue.is_empty();
        s.bytes += size;
        s.queue.push_back(item);
        drop(s);
        if was_empty {
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// Moves up to `max` queued frames into `out`.
    pub fn drain_into(&self, out: &mut Vec<Outgoing>, max: usize) -> Status {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.queue.len().min(max);
        let mut freed = 0;
        for item in s.queue.drain(..n) {
            freed += size_of(&item.message);
            out.push(item);
        }
        s.bytes = s.bytes.saturating_sub(freed);
        if s.queue.is_empty() && s.queue.capacity() > 64 {
            // A burst is over; give its memory back rather than hold it while idle.
            s.queue = VecDeque::new();
        }
        s.status()
    }

    /// Wakes the consumer without pushing (it has more to take).
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Asks the connection to leave (drain).
    pub fn go_away(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).go_away = true;
        self.ready.notify_one();
    }

    /// The queue's status without taking anything.
    /// Marks the connection's token revoked and wakes its writer, which closes it.
    pub fn revoke(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).revoked = true;
        self.ready.notify_one();
    }

    pub fn status(&self) -> Status {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).status()
    }

    /// Whether frames are waiting.
    pub fn has_pending(&self) -> bool {
        !self.state.lock().unwrap_or_else(|p| p.into_inner()).queue.is_empty()
    }

    /// Waits until something is pushed (or the queue overflows).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Marks the connection gone: later pushes are refused and queued frames freed.
    pub fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.closed = true;
        s.queue = VecDeque::new();
        s.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> Outgoing {
        Outgoing { chat: 1, seq: 1, message: Message::Binary(vec![0u8; n].into()), queued: Instant::now() }
    }

    #[test]
    fn bounded_in_bytes_and_ephemeral_first() {
        let o = Outbox::new();
        assert_eq!(o.push(item(100), false, 1000), Pushed::Queued);
        assert_eq!(o.push(item(300), false, 1000), Pushed::Queued);
        // 464 queued: an ephemeral frame would pass half the bound.
        assert_eq!(o.push(item(100), true, 1000), Pushed::Dropped);
        assert_eq!(o.push(item(400), false, 1000), Pushed::Queued);
        assert_eq!(o.push(item(100), false, 1000), Pushed::Overflow);
        assert_eq!(o.push(item(1), false, 1000), Pushed::Closed);
        let mut out = Vec::new();
        assert_eq!(o.drain_into(&mut out, 10), Status::Overflowed);
        assert!(out.is_empty(), "overflow frees the queue");
    }

    #[test]
    fn drain_frees_bytes() {
        let o = Outbox::new();
        for _ in 0..5 {
            assert_eq!(o.push(item(100), false, 700), Pushed::Queued);
        }
        let mut out = Vec::new();
        assert_eq!(o.drain_into(&mut out, 3), Status::Open);
        assert_eq!(out.len(), 3);
        assert_eq!(o.push(item(100), false, 700), Pushed::Queued);
        assert_eq!(o.push(item(100), false, 700), Pushed::Queued);
    }
}
