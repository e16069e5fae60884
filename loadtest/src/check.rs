//! The correctness check: what each connection saw of each chat, and whether every acked
//! message reached every member's connection once, in order, without gaps.
//!
//! Pure bookkeeping, no IO. A [`Stream`] is one connection's view of one chat; senders record
//! acked seqs in a [`RangeSet`]; [`Verdict::judge`] compares them once every worker is done.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A set of seqs stored as sorted, disjoint, inclusive ranges: a gap-free stream is one range,
/// whatever its length.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RangeSet(Vec<[u64; 2]>);

impl RangeSet {
    pub fn new() -> Self {
        RangeSet(Vec::new())
    }

    /// Inserts `seq`; returns false if it was already present. Appending past the end (the
    /// usual case) is O(1).
    pub fn insert(&mut self, seq: u64) -> bool {
        if let Some(last) = self.0.last_mut() {
            if seq == last[1] + 1 {
                last[1] = seq;
                return true;
            }
            if seq > last[1] {
                self.0.push([seq, seq]);
                return true;
            }
        } else {
            self.0.push([seq, seq]);
            return true;
        }
        // Out of order: find the first range ending at or after seq - 1.
        let i = self.0.partition_point(|r| r[1].saturating_add(1) < seq);
        if i < self.0.len() && self.0[i][0] <= seq && seq <= self.0[i][1] {
            return false;
        }
        if i < self.0.len() && self.0[i][1] + 1 == seq {
            self.0[i][1] = seq;
            if i + 1 < self.0.len() && self.0[i + 1][0] == seq + 1 {
                self.0[i][1] = self.0[i + 1][1];
                self.0.remove(i + 1);
            }
        } else if i < self.0.len() && self.0[i][0] == seq + 1 {
            self.0[i][0] = seq;
        } else {
            self.0.insert(i, [seq, seq]);
        }
        true
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.0.partition_point(|r| r[1] < seq);
        i < self.0.len() && self.0[i][0] <= seq
    }

    /// Number of seqs in the set.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|r| r[1] - r[0] + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every seq of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        let mut all: Vec<[u64; 2]> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort_unstable();
        let mut out: Vec<[u64; 2]> = Vec::with_capacity(all.len());
        for r in all {
            match out.last_mut() {
                Some(last) if r[0] <= last[1].saturating_add(1) => last[1] = last[1].max(r[1]),
                _ => out.push(r),
            }
        }
        self.0 = out;
    }

    /// How many seqs of `self` are not in `other`.
    pub fn count_missing_from(&self, other: &RangeSet) -> u64 {
        let mut missing = 0;
        let mut j = 0;
        for &[lo, hi] in &self.0 {
            let mut covered = 0;
            while j < other.0.len() && other.0[j][1] < lo {
                j += 1;
            }
            let mut k = j;
            while k < other.0.len() && other.0[k][0] <= hi {
                covered += other.0[k][1].min(hi) - other.0[k][0].max(lo) + 1;
                k += 1;
            }
            missing += (hi - lo + 1) - covered;
        }
        missing
    }
}

/// One connection's view of one chat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stream {
    /// The chat's last seq when the connection started watching: events up to it are history.
    pub baseline: u64,
    /// Highest seq seen (the resume cursor after a reconnect).
    pub last: u64,
    /// Every seq after the baseline seen, of any event kind.
    pub seen: RangeSet,
    /// Seqs of message events seen (compared with the senders' acks).
    pub messages: RangeSet,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Times a seq arrived more than one past the previous highest.
    pub gaps: u64,
}

/// What [`Stream::observe`] made of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// New, in order.
    Fresh,
    /// New but it skipped seqs (counted as a gap).
    AfterGap,
    /// New but older than one already seen.
    OutOfOrder,
    /// Seen before.
    Duplicate,
    /// At or before the baseline: history from before the run, not judged.
    History,
}

impl Stream {
    pub fn new(baseline: u64) -> Self {
        Stream { baseline, last: baseline, ..Stream::default() }
    }

    pub fn observe(&mut self, seq: u64, is_message: bool) -> Observed {
        if seq <= self.baseline {
            return Observed::History;
        }
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return Observed::Duplicate;
        }
        if is_message {
            self.messages.insert(seq);
        }
        if seq < self.last {
            self.out_of_order += 1;
            return Observed::OutOfOrder;
        }
        let gap = seq > self.last + 1;
        self.last = seq;
        if gap {
            self.gaps += 1;
            Observed::AfterGap
        } else {
            Observed::Fresh
        }
    }
}

/// A stream as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamReport {
    pub chat: u64,
    pub user: String,
    pub stream: Stream,
}

/// The verdict over every stream of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// (connection, chat) streams judged.
    pub streams: u64,
    /// Messages acked to their sender.
    pub acked: u64,
    /// Deliveries the acks promise (acked × member connections).
    pub expected_deliveries: u64,
    /// Acked messages that never reached a member's connection.
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// Messages delivered whose ack the sender never saw (in flight at the end or lost with a
    /// dropped connection): not a violation, the sender would retry.
    pub delivered_unacked: u64,
    pub passed: bool,
}

impl Verdict {
    /// Judges `streams` against the union of `acked` seqs per chat.
    pub fn judge<'a>(acked: &BTreeMap<u64, RangeSet>, streams: impl IntoIterator<Item = &'a StreamReport>) -> Verdict {
        let mut v = Verdict { acked: acked.values().map(RangeSet::len).sum(), ..Verdict::default() };
        let empty = RangeSet::new();
        for r in streams {
            let acked = acked.get(&r.chat).unwrap_or(&empty);
            v.streams += 1;
            v.expected_deliveries += acked.len();
            v.missing += acked.count_missing_from(&r.stream.messages);
            v.delivered_unacked += r.stream.messages.count_missing_from(acked);
            v.duplicates += r.stream.duplicates;
            v.out_of_order += r.stream.out_of_order;
            v.gaps += r.stream.gaps;
        }
        v.passed = v.missing == 0 && v.duplicates == 0 && v.out_of_order == 0 && v.gaps == 0;
        v
    }

    /// Violations of every kind.
    pub fn violations(&self) -> u64 {
        self.missing + self.duplicates + self.out_of_order + self.gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(seqs: &[u64]) -> RangeSet {
        let mut s = RangeSet::new();
        for &q in seqs {
            s.insert(q);
        }
        s
    }

    #[test]
    fn range_set_merges_out_of_order_inserts() {
        let s = set(&[5, 1, 3, 2, 4, 9, 7, 8]);
        assert_eq!(s, RangeSet(vec![[1, 5], [7, 9]]));
        assert!(s.contains(3) && !s.contains(6) && s.contains(9) && !s.contains(10));
        assert_eq!(s.len(), 8);
        let mut s = s;
        assert!(!s.insert(4));
        assert!(s.insert(6));
        assert_eq!(s, RangeSet(vec![[1, 9]]));
        let mut s = set(&[10, 20]);
        s.insert(19);
        s.insert(11);
        assert_eq!(s, RangeSet(vec![[10, 11], [19, 20]]));
        s.insert(5);
        assert_eq!(s, RangeSet(vec![[5, 5], [10, 11], [19, 20]]));
    }

    #[test]
    fn union_and_missing_count() {
        let mut a = set(&[1, 2, 3, 10]);
        a.union(&set(&[4, 5, 11, 20]));
        assert_eq!(a, RangeSet(vec![[1, 5], [10, 11], [20, 20]]));
        assert_eq!(a.count_missing_from(&set(&[1, 2, 3, 4, 5, 10, 11, 20])), 0);
        assert_eq!(a.count_missing_from(&set(&[2, 3, 11])), 5);
        assert_eq!(a.count_missing_from(&RangeSet::new()), 8);
        assert_eq!(RangeSet::new().count_missing_from(&a), 0);
    }

    #[test]
    fn stream_classifies_each_event() {
        let mut s = Stream::new(10);
        assert_eq!(s.observe(9, false), Observed::History);
        assert_eq!(s.observe(11, true), Observed::Fresh);
        assert_eq!(s.observe(11, true), Observed::Duplicate);
        assert_eq!(s.observe(14, true), Observed::AfterGap);
        assert_eq!(s.observe(12, false), Observed::OutOfOrder);
        assert_eq!(s.observe(15, true), Observed::Fresh);
        assert_eq!((s.duplicates, s.gaps, s.out_of_order, s.last), (1, 1, 1, 15));
        assert_eq!(s.messages, set(&[11, 14, 15]));
    }

    fn report(chat: u64, seqs: &[u64]) -> StreamReport {
        let mut stream = Stream::new(0);
        for &q in seqs {
            stream.observe(q, true);
        }
        StreamReport { chat, user: "u".into(), stream }
    }

    #[test]
    fn a_clean_run_passes() {
        let acked = BTreeMap::from([(1, set(&[1, 2, 3])), (2, set(&[1]))]);
        let v = Verdict::judge(&acked, &[report(1, &[1, 2, 3]), report(1, &[1, 2, 3, 4]), report(2, &[1])]);
        assert!(v.passed, "{v:?}");
        assert_eq!((v.streams, v.acked, v.expected_deliveries, v.delivered_unacked), (3, 4, 7, 1));
    }

    #[test]
    fn each_violation_fails_the_run() {
        let acked = BTreeMap::from([(1, set(&[1, 2, 3, 4]))]);
        let missing = Verdict::judge(&acked, &[report(1, &[1, 2, 3])]);
        assert_eq!((missing.missing, missing.passed), (1, false));
        let gap = Verdict::judge(&acked, &[report(1, &[1, 3, 4, 2])]);
        assert_eq!((gap.gaps, gap.out_of_order, gap.missing, gap.passed), (1, 1, 0, false));
        let dup = Verdict::judge(&acked, &[report(1, &[1, 2, 2, 3, 4])]);
        assert_eq!((dup.duplicates, dup.passed), (1, false));
        assert_eq!(dup.violations(), 1);
        // A member that saw nothing misses every acked message.
        let silent = Verdict::judge(&acked, &[report(1, &[])]);
        assert_eq!(silent.missing, 4);
    }
}
