//! A connection's session state, without sockets or clocks: what to do with each client
//! frame, which sequenced events a connection still has to write, and what it holds back
//! until the client resumes.
//!
//! The connection task ([`crate::connection`]) owns one [`Session`] and carries out its
//! answers; everything here takes the time as an argument, so it is tested directly.

use std::collections::HashMap;
use std::time::Instant;

use protocol::envelope::{RouterOp, RouterReply};
use protocol::frame::ResumeCursor;
use protocol::limits::MAX_RESUME_CHATS;
use protocol::ratelimit::{FloodGuard, FloodLimits, Verdict};
use protocol::{ChatId, ClientFrame, ErrorCode, Seq, ServerFrame};

use crate::outbox::Outgoing;

/// What the connection does with one client frame.
#[derive(Debug)]
pub(crate) enum Action {
    /// Answer at once, without the router.
    Reply(ServerFrame),
    /// Tell the router; nothing is answered (typing, presence).
    Tell(RouterOp),
    /// Ask the router and answer request `req` with its reply.
    Call { req: u64, op: RouterOp },
    /// Catch up on these chats, then release live events.
    Resume { req: u64, chats: Vec<ResumeCursor> },
    /// Verify this fresh token and, if it is the same user's, extend the connection's life.
    Refresh { token: String },
}

/// Maps an authenticated client's frame to what the connection does with it.
pub(crate) fn action(frame: ClientFrame) -> Action {
    let (req, op) = match frame {
        ClientFrame::Auth { token } => return Action::Refresh { token },
        ClientFrame::Ping { req } => return Action::Reply(ServerFrame::Pong { req }),
        ClientFrame::Typing { chat } => return Action::Tell(RouterOp::Typing { chat }),
        ClientFrame::Presence { status } => return Action::Tell(RouterOp::Presence { status }),
        ClientFrame::Resume { req, chats } if chats.len() > MAX_RESUME_CHATS => {
            let why = format!("at most {MAX_RESUME_CHATS} chats per resume");
            return Action::Reply(ServerFrame::error(Some(req), ErrorCode::Invalid, why));
        }
        ClientFrame::Resume { req, chats } => return Action::Resume { req, chats },
        ClientFrame::CreateChat { req, kind, title, members } => (req, RouterOp::CreateChat { kind, title, members }),
        ClientFrame::AddMembers { req, chat, users, role } => (req, RouterOp::AddMembers { chat, users, role }),
        ClientFrame::RemoveMembers { req, chat, users } => (req, RouterOp::RemoveMembers { chat, users }),
        ClientFrame::ListChats { req } => (req, RouterOp::ListChats),
        ClientFrame::Send { req, chat, client_msg_id, body } => (req, RouterOp::Send { chat, client_msg_id, body }),
        ClientFrame::Edit { req, chat, target, body } => (req, RouterOp::Edit { chat, target, body }),
        ClientFrame::Delete { req, chat, target } => (req, RouterOp::Delete { chat, target }),
        ClientFrame::History { req, chat, before, after, limit } => {
            (req, RouterOp::History { chat, before, after, limit: limit.unwrap_or(0) })
        }
        ClientFrame::Read { req, chat, seq } => (req, RouterOp::Read { chat, seq }),
    };
    Action::Call { req, op }
}

/// Turns the router's answer into the client's reply frame.
pub(crate) fn reply_frame(req: u64, chat: Option<ChatId>, reply: RouterReply) -> ServerFrame {
    match reply {
        RouterReply::Ack { chat, seq, ts, duplicate } => ServerFrame::Ack { req, chat, seq, ts, duplicate },
        RouterReply::ChatCreated { chat, created } => ServerFrame::ChatCreated { req, chat, created },
        RouterReply::Chats(chats) => ServerFrame::Chats { req, chats },
        RouterReply::History { events, more, .. } => {
            ServerFrame::History { req, chat: chat.unwrap_or(0), events, more }
        }
        RouterReply::Ok => ServerFrame::Ok { req },
        RouterReply::Error { code, message } => ServerFrame::Error { req: Some(req), code, message },
        RouterReply::ChatIds(_) | RouterReply::Revocations { .. } => {
            ServerFrame::error(Some(req), ErrorCode::Unavailable, "unexpected reply")
        }
    }
}

/// What [`Session::hold`] did with a frame.
#[derive(Debug)]
pub(crate) enum Holding {
    /// Held until the resume.
    Held,
    /// Not held: write it (replies, or any frame once the client resumed).
    Write(Outgoing),
    /// Holding it would pass the outbound bound: close as a slow consumer.
    Overflow,
}

/// What the token's clock asks of the connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenStep {
    /// Nothing yet; look again at this time (seconds since the Unix epoch).
    WaitUntil(u64),
    /// Tell the client its token expires at `exp`; look again at the given time.
    Warn { exp: u64, next: u64 },
    /// The token expired (leeway included) and no fresh one came: close with 4012.
    Expire,
}

/// When a connection's token runs out, and whether the client was told.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenClock {
    exp: u64,
    warned: bool,
    /// Seconds before `exp` the client is told.
    warn_ahead: u64,
    /// Seconds after `exp` the connection may still live (clock skew).
    leeway: u64,
}

impl TokenClock {
    pub(crate) fn new(exp: u64, warn_ahead: u64, leeway: u64) -> Self {
        TokenClock { exp, warned: false, warn_ahead, leeway }
    }

    /// Decides at `now` (seconds since the Unix epoch).
    pub(crate) fn step(&mut self, now: u64) -> TokenStep {
        let end = self.exp.saturating_add(self.leeway);
        if now >= end {
            return TokenStep::Expire;
        }
        let warn_at = self.exp.saturating_sub(self.warn_ahead);
        if self.warned {
            return TokenStep::WaitUntil(end);
        }
        if now >= warn_at {
            self.warned = true;
            return TokenStep::Warn { exp: self.exp, next: end };
        }
        TokenStep::WaitUntil(warn_at)
    }

    /// A fresh token of the same user came: the connection lives until its `exp`. A token
    /// that expires sooner than the current one does not shorten the connection.
    pub(crate) fn refresh(&mut self, exp: u64) -> u64 {
        if exp > self.exp {
            self.exp = exp;
            self.warned = false;
        }
        self.exp
    }
}

/// Per-connection state that decides what is written.
pub(crate) struct Session {
    /// Highest seq written per chat: nothing at or below it is written again.
    delivered: HashMap<ChatId, Seq>,
    /// Sequenced events held from `hello` until the client's first `resume`, with their
    /// byte total; `None` once resumed.
    held: Option<(Vec<Outgoing>, usize)>,
    /// The outbound bound, which held events count against.
    max_held_bytes: usize,
    flood: FloodGuard,
}

impl Session {
    pub(crate) fn new(flood: FloodLimits, max_held_bytes: usize, now: Instant) -> Self {
        Session {
            delivered: HashMap::new(),
            held: Some((Vec::new(), 0)),
            max_held_bytes,
            flood: FloodGuard::new(flood, now),
        }
    }

    /// Whether a frame arriving at `now` is within the client's rate.
    pub(crate) fn check_rate(&mut self, ephemeral: bool, now: Instant) -> Verdict {
        self.flood.check(ephemeral, now)
    }

    /// Until the first resume, sequenced events wait: the client must first learn what it
    /// missed, or the live events would overtake the catch-up.
    pub(crate) fn hold(&mut self, item: Outgoing) -> Holding {
        match &mut self.held {
            Some((held, bytes)) if item.seq != 0 => {
                *bytes += item.message.len();
                held.push(item);
                if *bytes > self.max_held_bytes { Holding::Overflow } else { Holding::Held }
            }
            _ => Holding::Write(item),
        }
    }

    /// Whether the connection has not resumed yet.
    pub(crate) fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// Applies the per-chat high-water mark: `true` when the frame is to be written (replies
    /// always; a sequenced event only above what this connection already got).
    pub(crate) fn admit(&mut self, chat: ChatId, seq: Seq) -> bool {
        if seq == 0 {
            return true;
        }
        let last = self.delivered.entry(chat).or_insert(0);
        if seq <= *last {
            return false;
        }
        *last = seq;
        true
    }

    /// Where a chat's catch-up starts: after the client's cursor, and after anything already
    /// written on this connection.
    pub(crate) fn resume_from(&self, chat: ChatId, cursor: Seq) -> Seq {
        cursor.max(self.delivered.get(&chat).copied().unwrap_or(0))
    }

    /// A chat's catch-up was written up to `seq`.
    pub(crate) fn resumed(&mut self, chat: ChatId, seq: Seq) {
        self.delivered.insert(chat, seq);
    }

    /// Ends the holding (the first resume finished): what was held, to write through
    /// [`Session::admit`].
    pub(crate) fn release(&mut self) -> Vec<Outgoing> {
        self.held.take().map(|(held, _)| held).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Message;

    fn event(chat: ChatId, seq: Seq, len: usize) -> Outgoing {
        Outgoing { chat, seq, message: Message::Binary(vec![0u8; len].into()), queued: Instant::now() }
    }

    const FLOOD: FloodLimits = FloodLimits {
        requests_per_second: 100,
        request_burst: 100,
        ephemeral_per_second: 10,
        ephemeral_burst: 10,
        max_strikes: 3,
    };

    fn session(bound: usize) -> Session {
        Session::new(FLOOD, bound, Instant::now())
    }

    #[test]
    fn events_wait_for_the_resume_and_replies_do_not() {
        let mut s = session(1000);
        assert!(s.holding());
        assert!(matches!(s.hold(event(1, 5, 10)), Holding::Held));
        assert!(matches!(s.hold(event(0, 0, 10)), Holding::Write(_)), "a reply is never held");
        assert!(matches!(s.hold(event(1, 6, 10)), Holding::Held));
        s.resumed(1, 5);
        let released: Vec<Seq> = s.release().into_iter().filter(|o| s.admit(o.chat, o.seq)).map(|o| o.seq).collect();
        assert_eq!(released, vec![6], "the resume already wrote seq 5");
        assert!(!s.holding());
        assert!(matches!(s.hold(event(1, 7, 10)), Holding::Write(_)));
    }

    #[test]
    fn held_events_count_against_the_outbound_bound() {
        let mut s = session(25);
        assert!(matches!(s.hold(event(1, 1, 10)), Holding::Held));
        assert!(matches!(s.hold(event(1, 2, 10)), Holding::Held));
        assert!(matches!(s.hold(event(1, 3, 10)), Holding::Overflow));
    }

    #[test]
    fn nothing_at_or_below_the_high_water_mark_is_written_twice() {
        let mut s = session(1000);
        assert!(s.admit(1, 3));
        assert!(!s.admit(1, 3));
        assert!(!s.admit(1, 2));
        assert!(s.admit(2, 1), "marks are per chat");
        assert!(s.admit(1, 0) && s.admit(1, 0), "replies always pass");
        assert_eq!(s.resume_from(1, 1), 3);
        assert_eq!(s.resume_from(1, 9), 9);
        assert_eq!(s.resume_from(7, 0), 0);
    }

    #[test]
    fn frames_map_to_their_actions() {
        assert!(matches!(action(ClientFrame::Ping { req: 4 }), Action::Reply(ServerFrame::Pong { req: 4 })));
        assert!(matches!(action(ClientFrame::Typing { chat: 3 }), Action::Tell(RouterOp::Typing { chat: 3 })));
        assert!(matches!(action(ClientFrame::Auth { token: "t".into() }), Action::Refresh { token } if token == "t"));
        let send = ClientFrame::Send { req: 9, chat: 2, client_msg_id: "c".into(), body: "b".into() };
        assert!(matches!(action(send), Action::Call { req: 9, op: RouterOp::Send { chat: 2, .. } }));
        let history = ClientFrame::History { req: 1, chat: 2, before: None, after: Some(5), limit: None };
        assert!(matches!(action(history), Action::Call { op: RouterOp::History { limit: 0, after: Some(5), .. }, .. }));
        let many = (0..=MAX_RESUME_CHATS as u64).map(|c| ResumeCursor { chat: c, last_seq: 0 }).collect();
        assert!(matches!(
            action(ClientFrame::Resume { req: 2, chats: many }),
            Action::Reply(ServerFrame::Error { req: Some(2), code: ErrorCode::Invalid, .. })
        ));
        assert!(matches!(action(ClientFrame::Resume { req: 2, chats: vec![] }), Action::Resume { req: 2, .. }));
    }

    #[test]
    fn router_replies_become_client_frames() {
        let ack = RouterReply::Ack { chat: 1, seq: 2, ts: 3, duplicate: true };
        assert!(matches!(reply_frame(7, Some(1), ack), ServerFrame::Ack { req: 7, seq: 2, duplicate: true, .. }));
        let err = RouterReply::error(ErrorCode::NotFound, "no such chat");
        assert!(matches!(
            reply_frame(7, None, err),
            ServerFrame::Error { req: Some(7), code: ErrorCode::NotFound, .. }
        ));
        let page = RouterReply::History { events: vec![], more: false, last_seq: 9 };
        assert!(matches!(reply_frame(7, Some(4), page), ServerFrame::History { chat: 4, .. }));
        assert!(matches!(
            reply_frame(7, None, RouterReply::ChatIds(vec![1])),
            ServerFrame::Error { code: ErrorCode::Unavailable, .. }
        ));
    }

    #[test]
    fn the_token_clock_warns_once_then_expires_after_the_leeway() {
        let mut t = TokenClock::new(1000, 60, 30);
        assert_eq!(t.step(100), TokenStep::WaitUntil(940));
        assert_eq!(t.step(940), TokenStep::Warn { exp: 1000, next: 1030 });
        assert_eq!(t.step(950), TokenStep::WaitUntil(1030), "warned once");
        assert_eq!(t.step(1029), TokenStep::WaitUntil(1030));
        assert_eq!(t.step(1030), TokenStep::Expire);
        // A token shorter than the warning period is warned about at once.
        let mut short = TokenClock::new(1010, 60, 0);
        assert_eq!(short.step(1000), TokenStep::Warn { exp: 1010, next: 1010 });
    }

    #[test]
    fn a_refresh_extends_and_rearms_the_warning_but_never_shortens() {
        let mut t = TokenClock::new(1000, 60, 0);
        assert!(matches!(t.step(990), TokenStep::Warn { .. }));
        assert_eq!(t.refresh(5000), 5000);
        assert_eq!(t.step(1000), TokenStep::WaitUntil(4940));
        assert_eq!(t.refresh(2000), 5000, "an older token changes nothing");
        assert_eq!(t.step(4940), TokenStep::Warn { exp: 5000, next: 5000 });
        assert_eq!(t.step(5000), TokenStep::Expire);
    }
}
