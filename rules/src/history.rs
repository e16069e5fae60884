//! Which page of history a request asks for, and how much of it one reply may carry.

use protocol::Seq;
use protocol::limits::{DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE, MAX_HISTORY_PAGE_BYTES};
use protocol::{Event, EventBody};

/// Which page of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest `limit` events.
    Latest { limit: u32 },
    /// Up to `limit` events with seq < `seq`, the newest of them.
    Before { seq: Seq, limit: u32 },
    /// Up to `limit` events with seq > `seq`, the oldest of them.
    After { seq: Seq, limit: u32 },
}

impl Page {
    /// The page a `history` request names: `limit` 0 means the default, and is capped at
    /// [`MAX_HISTORY_PAGE`]; `before` and `after` together are refused.
    pub fn requested(before: Option<Seq>, after: Option<Seq>, limit: u32) -> Result<Page, &'static str> {
        let limit = if limit == 0 { DEFAULT_HISTORY_PAGE } else { limit.min(MAX_HISTORY_PAGE) };
        match (before, after) {
            (Some(_), Some(_)) => Err("give before or after, not both"),
            (Some(seq), None) => Ok(Page::Before { seq, limit }),
            (None, Some(seq)) => Ok(Page::After { seq, limit }),
            (None, None) => Ok(Page::Latest { limit }),
        }
    }

    /// Pages that read backwards (latest, before) keep their newest events when trimmed.
    pub fn newest_first(&self) -> bool {
        !matches!(self, Page::After { .. })
    }
}

/// Bounds a page by [`MAX_HISTORY_PAGE_BYTES`] of text, keeping at least one event. For pages
/// that read backwards (latest, before) the newest events are kept; for `after`, the oldest.
/// Returns whether anything was cut.
pub fn trim_page(mut events: Vec<Event>, newest_first: bool) -> (Vec<Event>, bool) {
    // Bytes of text once JSON-escaped: control characters grow sixfold (\u0001), so the
    // budget must count them as they will be sent.
    let size = |e: &Event| match &e.body {
        EventBody::Message { text, .. } | EventBody::Edited { text, .. } => text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' => 2,
                0..=0x1f => 6,
                _ => 1,
            })
            .sum::<usize>(),
        _ => 0,
    };
    let mut total = 0;
    let mut fits = |e: &&Event| {
        total += size(e);
        total <= MAX_HISTORY_PAGE_BYTES
    };
    let keep = if newest_first {
        events.iter().rev().take_while(&mut fits).count()
    } else {
        events.iter().take_while(&mut fits).count()
    }
    .max(1)
    .min(events.len());
    let trimmed = keep < events.len();
    if newest_first {
        events.drain(..events.len() - keep);
    } else {
        events.truncate(keep);
    }
    (events, trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, len: usize) -> Event {
        Event {
            seq,
            ts: 0,
            sender: "a".into(),
            body: EventBody::Message {
                client_msg_id: "m".into(),
                text: "x".repeat(len),
                edited: false,
                deleted: false,
            },
        }
    }

    #[test]
    fn pages_requested() {
        let d = DEFAULT_HISTORY_PAGE;
        assert_eq!(Page::requested(None, None, 0), Ok(Page::Latest { limit: d }));
        assert_eq!(Page::requested(Some(5), None, 3), Ok(Page::Before { seq: 5, limit: 3 }));
        assert_eq!(Page::requested(None, Some(5), u32::MAX), Ok(Page::After { seq: 5, limit: MAX_HISTORY_PAGE }));
        assert!(Page::requested(Some(1), Some(2), 1).is_err());
        assert!(Page::Latest { limit: 1 }.newest_first());
        assert!(!Page::After { seq: 1, limit: 1 }.newest_first());
    }

    #[test]
    fn pages_are_bounded_in_bytes() {
        let big = MAX_HISTORY_PAGE_BYTES / 3;
        let events: Vec<Event> = (1..=5).map(|s| msg(s, big)).collect();
        let (kept, trimmed) = trim_page(events.clone(), true);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(trimmed);
        let (kept, trimmed) = trim_page(events, false);
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(trimmed);
        let (kept, trimmed) = trim_page(vec![msg(1, 10), msg(2, 10)], true);
        assert_eq!((kept.len(), trimmed), (2, false));
        let (kept, _) = trim_page(vec![msg(1, MAX_HISTORY_PAGE_BYTES * 2)], true);
        assert_eq!(kept.len(), 1, "one event always fits");
        // Control characters count at their escaped size.
        let mut ctl = msg(1, 0);
        if let EventBody::Message { text, .. } = &mut ctl.body {
            *text = "\u{1}".repeat(MAX_HISTORY_PAGE_BYTES / 4);
        }
        let (kept, trimmed) = trim_page(vec![ctl.clone(), ctl], false);
        assert_eq!((kept.len(), trimmed), (1, true));
        assert_eq!(trim_page(Vec::new(), true), (Vec::new(), false));
    }
}
