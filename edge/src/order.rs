//! Per-chat delivery order at the edge: every sequenced event is handed to local connections
//! once, in seq order, without gaps. Pure: it takes seqs and returns decisions.
//!
//! Live events arrive from the bus in publish order, which is seq order, but an edge can miss
//! some: it subscribes to a chat only when a member connects or joins, and anything published
//! before that subscription took effect never arrives. When a seq jumps, the edge stops
//! forwarding the chat, fetches the missing range from history (the store is the buffer, so
//! nothing is held here), forwards it, and resumes live delivery. Events that arrive while
//! the repair runs are dropped and refetched.

use protocol::Seq;

/// What to do with a live event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Hand it to local connections.
    Forward,
    /// Already forwarded (or will be by the running repair).
    Drop,
    /// A gap: drop this event and fetch everything after `after` from history.
    Repair { after: Seq },
}

/// The order state of one chat on one edge.
#[derive(Debug, Clone, Default)]
pub struct ChatOrder {
    /// Highest seq forwarded; `None` until the first event (a chat subscribed on connect
    /// starts wherever live delivery starts; clients resume the part before).
    last: Option<Seq>,
    /// Highest seq seen live.
    seen: Seq,
    repairing: bool,
}

impl ChatOrder {
    /// Order state for a chat whose events up to `last` were already handed out.
    pub fn after(last: Seq) -> Self {
        ChatOrder { last: Some(last), seen: last, repairing: false }
    }

    /// Whether a repair is running.
    pub fn repairing(&self) -> bool {
        self.repairing
    }

    /// Starts a repair explicitly (after subscribing late), returning where to fetch from.
    pub fn start_repair(&mut self) -> Option<Seq> {
        if self.repairing {
            return None;
        }
        self.repairing = true;
        Some(self.last.unwrap_or(0))
    }

    /// Judges a live event.
    pub fn admit(&mut self, seq: Seq) -> Admit {
        self.seen = self.seen.max(seq);
        if self.repairing {
            return Admit::Drop;
        }
        match self.last {
            None => {
                self.last = Some(seq);
                Admit::Forward
            }
            Some(last) if seq <= last => Admit::Drop,
            Some(last) if seq == last + 1 => {
                self.last = Some(seq);
                Admit::Forward
            }
            Some(last) => {
                self.repairing = true;
                Admit::Repair { after: last }
            }
        }
    }

    /// A repair fetch returned events (ascending). Returns how many leading ones to forward
    /// (those that continue the order) and, if the repair must go on, where to fetch next.
    pub fn repaired(&mut self, seqs: &[Seq], more: bool) -> (std::ops::Range<usize>, Option<Seq>) {
        let mut last = self.last.unwrap_or(0);
        let start = seqs.iter().position(|&s| s > last).unwrap_or(seqs.len());
        let mut end = start;
        while end < seqs.len() && seqs[end] == last + 1 {
            last += 1;
            end += 1;
        }
        self.last = Some(last);
        if end < seqs.len() {
            // A hole inside history itself cannot happen (seqs are gap-free in the store);
            // skip past it rather than loop forever.
            self.last = Some(seqs[seqs.len() - 1]);
            end = seqs.len();
        }
        let last = self.last.unwrap_or(0);
        if more || last < self.seen {
            (start..end, Some(last))
        } else {
            self.repairing = false;
            (start..end, None)
        }
    }

    /// A repair fetch failed: give up on the gap (clients fill it from history by seq) rather
    /// than stall the chat.
    pub fn repair_failed(&mut self) {
        self.repairing = false;
        self.last = Some(self.seen.max(self.last.unwrap_or(0)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut o = ChatOrder::default();
        assert_eq!(o.admit(5), Admit::Forward);
        assert_eq!(o.admit(6), Admit::Forward);
        assert_eq!(o.admit(6), Admit::Drop);
        assert_eq!(o.admit(3), Admit::Drop);
        assert_eq!(o.admit(7), Admit::Forward);
    }

    #[test]
    fn gap_triggers_repair_and_repair_fills_it() {
        let mut o = ChatOrder::after(10);
        assert_eq!(o.admit(13), Admit::Repair { after: 10 });
        assert_eq!(o.admit(14), Admit::Drop);
        assert!(o.repairing());
        // History returns 11..=13 (14 was committed after the fetch's snapshot).
        let (fwd, next) = o.repaired(&[11, 12, 13], false);
        assert_eq!(fwd, 0..3);
        assert_eq!(next, Some(13), "14 was seen live, so fetch again");
        let (fwd, next) = o.repaired(&[14], false);
        assert_eq!(fwd, 0..1);
        assert_eq!(next, None);
        assert_eq!(o.admit(15), Admit::Forward);
        assert_eq!(o.admit(14), Admit::Drop);
    }

    #[test]
    fn repair_skips_already_forwarded() {
        let mut o = ChatOrder::after(10);
        assert_eq!(o.start_repair(), Some(10));
        let (fwd, next) = o.repaired(&[9, 10, 11], false);
        assert_eq!(fwd, 2..3);
        assert_eq!(next, None);
    }

    #[test]
    fn failed_repair_moves_on() {
        let mut o = ChatOrder::after(1);
        assert_eq!(o.admit(5), Admit::Repair { after: 1 });
        o.repair_failed();
        assert_eq!(o.admit(6), Admit::Forward);
    }

    #[test]
    fn paged_repair_continues_while_more() {
        let mut o = ChatOrder::after(0);
        assert_eq!(o.admit(3), Admit::Repair { after: 0 });
        let (fwd, next) = o.repaired(&[1, 2], true);
        assert_eq!((fwd, next), (0..2, Some(2)));
        let (fwd, next) = o.repaired(&[3], false);
        assert_eq!((fwd, next), (0..1, None));
    }
}
