//! Reading a chat's events across its partitions: the true head, pages, ranges.

use protocol::codec::decode_envelope;
use protocol::{ChatId, Event, Seq};

use super::{CqlStore, corrupt, unavailable};
use crate::{HistoryPage, Page, StoreError};

impl CqlStore {
    async fn latest_in_bucket(&self, chat: ChatId, b: i64) -> Result<Option<Seq>, StoreError> {
        let result =
            self.session.execute_unpaged(&self.st.select_latest, (chat as i64, b)).await.map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let row: Option<(i64,)> = rows.maybe_first_row().map_err(corrupt)?;
        Ok(row.map(|(s,)| s as u64))
    }

    /// The true head: the newest event at or above the hint (buckets are probed forward).
    pub(super) async fn probe_head(&self, chat: ChatId, hint: Seq) -> Result<Seq, StoreError> {
        let mut head = hint;
        let mut b = self.bucket(hint.max(1));
        loop {
            match self.latest_in_bucket(chat, b).await? {
                Some(s) if s >= head => head = s,
                _ => return Ok(head),
            }
            if head + 1 < (b as u64 + 1) * self.bucket_size {
                return Ok(head);
            }
            b += 1;
        }
    }

    /// Events with seq in `(from, to]`, ascending.
    pub(super) async fn events_between(&self, chat: ChatId, from: Seq, to: Seq) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        let mut after = from;
        while after < to {
            let page = self.read_history(chat, Page::After { seq: after, limit: 200 }).await?;
            let Some(last) = page.events.last().map(|e| e.seq) else { break };
            out.extend(page.events.into_iter().filter(|e| e.seq <= to));
            after = last;
        }
        Ok(out)
    }

    /// Loads the head of a chat and completes the side effects of events above the hint.
    /// Reads history partitions in seq order, `ascending` from `start` or descending.
    async fn scan(
        &self,
        chat: ChatId,
        start: Seq,
        ascending: bool,
        want: usize,
        last_bucket: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        // The first partition that can hold a match: seq > start ascending, < start descending.
        let mut b = if ascending { self.bucket(start + 1) } else { self.bucket(start.saturating_sub(1)) };
        let mut bound = start;
        while out.len() < want && b >= 0 && b <= last_bucket {
            let limit = (want - out.len()) as i32;
            let (stmt, values) = if ascending {
                (&self.st.select_after, (chat as i64, b, bound as i64, limit))
            } else {
                (&self.st.select_before, (chat as i64, b, bound as i64, limit))
            };
            let result = self.session.execute_unpaged(stmt, values).await.map_err(unavailable)?;
            let rows = result.into_rows_result().map_err(unavailable)?;
            for row in rows.rows::<(Vec<u8>,)>().map_err(corrupt)? {
                let (body,) = row.map_err(corrupt)?;
                out.push(decode_envelope::<Event>(&body).map_err(corrupt)?);
            }
            if ascending {
                b += 1;
                bound = (b as u64 * self.bucket_size).saturating_sub(1);
            } else {
                if b == 0 {
                    break;
                }
                b -= 1;
                bound = (b as u64 + 1) * self.bucket_size;
            }
        }
        Ok(out)
    }

    /// A page of history: the head is probed, then partitions are read in seq order.
    pub(super) async fn read_history(&self, chat: ChatId, page: Page) -> Result<HistoryPage, StoreError> {
        let Some(record) = self.chat_row(chat).await? else {
            return Ok(HistoryPage { events: Vec::new(), more: false });
        };
        let head = self.probe_head(chat, record.last_seq).await?;
        let last_bucket = self.bucket(head);
        let (start, ascending, limit) = match page {
            Page::Latest { limit } => (head + 1, false, limit),
            Page::Before { seq, limit } => (seq.min(head + 1), false, limit),
            Page::After { seq, limit } => (seq, true, limit),
        };
        if (!ascending && start <= 1) || (ascending && start >= head) {
            return Ok(HistoryPage { events: Vec::new(), more: false });
        }
        let want = limit as usize + 1;
        let mut events = self.scan(chat, start, ascending, want, last_bucket).await?;
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        if !ascending {
            events.reverse();
        }
        Ok(HistoryPage { events, more })
    }
}
