//! What the router does with a request about one chat: "operation + facts → decision".
//!
//! The order of the checks is part of the contract: membership first (a non-member gets
//! `not_found` whatever else is wrong with the request, so errors never reveal which chats
//! exist), then the request's fields (`invalid`), then the target of an edit or delete
//! (`not_found`), then the permission for the act (`forbidden`). Each is checked once.

use protocol::envelope::RouterOp;
use protocol::{ChatKind, ErrorCode, Event, EventBody, Role, Seq};

use crate::append::Mutation;
use crate::authz::{Action, Denied, member, permit};
use crate::validate;

/// What the router knows about the chat and the requester when it decides.
#[derive(Debug, Clone, Copy)]
pub struct ChatFacts<'a> {
    pub kind: ChatKind,
    /// The requester's role; `None` when not a member.
    pub role: Option<Role>,
    /// The target of an edit or delete, as read for [`target_to_read`].
    pub target: Option<&'a Event>,
}

/// An error answer, in the shape the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl From<Denied> for Refusal {
    fn from(d: Denied) -> Self {
        Refusal { code: d.code, message: d.reason.into() }
    }
}

fn invalid(why: String) -> Refusal {
    Refusal { code: ErrorCode::Invalid, message: why }
}

/// What to do with a request about one chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer with this error; nothing else happens.
    Refuse(Refusal),
    /// Drop without an answer (typing, which has none).
    Ignore,
    /// Append this mutation to the chat's stream.
    Append(Mutation),
    /// Move the requester's read cursor to `seq` (clamped by the store).
    Read { seq: Seq },
    /// Publish that the requester is typing.
    Typing,
}

/// The event the router must read before [`decide`] can judge this op: the target of an edit
/// or delete, and only for a member whose request is otherwise valid (a refused request costs
/// no read).
pub fn target_to_read(op: &RouterOp, role: Option<Role>) -> Option<Seq> {
    role?;
    match op {
        RouterOp::Edit { target, body, .. } => validate::body(body).ok().map(|_| *target),
        RouterOp::Delete { target, .. } => Some(*target),
        _ => None,
    }
}

/// Decides a sequenced op (one that goes through the chat's shard) by `user`.
pub fn decide(op: &RouterOp, user: &str, facts: &ChatFacts<'_>) -> Decision {
    let role = match member(facts.role) {
        Ok(role) => role,
        Err(_) if matches!(op, RouterOp::Typing { .. }) => return Decision::Ignore,
        Err(d) => return Decision::Refuse(d.into()),
    };
    let permit = |action: Action<'_>| permit(facts.kind, role, user, action).map_err(Refusal::from);
    let decided = match op {
        RouterOp::Send { client_msg_id, body, .. } => validate::client_msg_id(client_msg_id)
            .and_then(|_| validate::body(body))
            .map_err(invalid)
            .and_then(|_| permit(Action::Post))
            .map(|_| Decision::Append(Mutation::Message { client_msg_id: client_msg_id.clone(), text: body.clone() })),
        RouterOp::Edit { target, body, .. } => validate::body(body).map_err(invalid).and_then(|_| {
            let author = live_author(facts.target, *target)?;
            permit(Action::Edit { author })?;
            Ok(Decision::Append(Mutation::Edit { target: *target, text: body.clone() }))
        }),
        RouterOp::Delete { target, .. } => live_author(facts.target, *target).and_then(|author| {
            permit(Action::Delete { author })?;
            Ok(Decision::Append(Mutation::Delete { target: *target }))
        }),
        RouterOp::AddMembers { users, role: new_role, .. } => validate::users(users)
            .map_err(invalid)
            .and_then(|_| permit(Action::AddMembers))
            .map(|_| Decision::Append(Mutation::AddMembers { users: users.clone(), role: *new_role })),
        RouterOp::RemoveMembers { users, .. } => validate::users(users)
            .map_err(invalid)
            .and_then(|_| permit(Action::RemoveMembers { users }))
            .map(|_| Decision::Append(Mutation::RemoveMembers { users: users.clone() })),
        RouterOp::Read { seq, .. } => Ok(Decision::Read { seq: *seq }),
        RouterOp::Typing { .. } => Ok(match permit(Action::Typing) {
            Ok(()) => Decision::Typing,
            Err(_) => Decision::Ignore,
        }),
        // Not about one chat's stream: the router never sends these to a shard.
        _ => Err(Refusal { code: ErrorCode::UnknownOp, message: "misrouted request".into() }),
    };
    decided.unwrap_or_else(Decision::Refuse)
}

/// The author of the target message, if it is a message that is not deleted.
fn live_author(target: Option<&Event>, seq: Seq) -> Result<&str, Refusal> {
    match target {
        Some(e) if e.seq == seq && matches!(e.body, EventBody::Message { deleted: false, .. }) => Ok(&e.sender),
        _ => Err(Refusal { code: ErrorCode::NotFound, message: "no such message".into() }),
    }
}

/// Decides whether `user` may read the chat (history): membership alone.
pub fn may_read(role: Option<Role>) -> Result<(), Refusal> {
    member(role).map(|_| ()).map_err(Refusal::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChatKind::*;
    use protocol::limits::MAX_BODY_BYTES;

    fn send(body: &str) -> RouterOp {
        RouterOp::Send { chat: 1, client_msg_id: "c1".into(), body: body.into() }
    }

    fn msg(seq: Seq, author: &str, deleted: bool) -> Event {
        Event {
            seq,
            ts: 0,
            sender: author.into(),
            body: EventBody::Message { client_msg_id: "c".into(), text: "t".into(), edited: false, deleted },
        }
    }

    fn facts(kind: ChatKind, role: Option<Role>, target: Option<&Event>) -> ChatFacts<'_> {
        ChatFacts { kind, role, target }
    }

    fn code(d: Decision) -> Option<ErrorCode> {
        match d {
            Decision::Refuse(r) => Some(r.code),
            _ => None,
        }
    }

    #[test]
    fn every_answer_of_every_op() {
        use ErrorCode::*;
        let mine = msg(3, "me", false);
        let theirs = msg(3, "you", false);
        let gone = msg(3, "me", true);
        let long = "x".repeat(MAX_BODY_BYTES + 1);
        let me = vec!["me".to_string()];
        let you = vec!["you".to_string()];
        let edit = |body: &str| RouterOp::Edit { chat: 1, target: 3, body: body.into() };
        let delete = RouterOp::Delete { chat: 1, target: 3 };
        let add = |users: &Vec<String>| RouterOp::AddMembers { chat: 1, users: users.clone(), role: Role::Member };
        let remove = |users: &Vec<String>| RouterOp::RemoveMembers { chat: 1, users: users.clone() };
        let (m, a) = (Some(Role::Member), Some(Role::Admin));
        #[rustfmt::skip]
        let table: Vec<(&str, RouterOp, ChatFacts<'_>, Option<ErrorCode>)> = vec![
            ("send by a member", send("hi"), facts(Group, m, None), None),
            ("send by a non-member", send("hi"), facts(Group, None, None), Some(NotFound)),
            ("invalid send by a non-member", send(""), facts(Group, None, None), Some(NotFound)),
            ("empty body", send(""), facts(Group, m, None), Some(Invalid)),
            ("long body", send(&long), facts(Group, m, None), Some(Invalid)),
            ("bad client id", RouterOp::Send { chat: 1, client_msg_id: String::new(), body: "x".into() }, facts(Group, m, None), Some(Invalid)),
            ("member posts in a channel", send("hi"), facts(Broadcast, m, None), Some(Forbidden)),
            ("invalid post in a channel", send(""), facts(Broadcast, m, None), Some(Invalid)),
            ("admin posts in a channel", send("hi"), facts(Broadcast, a, None), None),
            ("edit own", edit("new"), facts(Group, m, Some(&mine)), None),
            ("edit another's", edit("new"), facts(Group, a, Some(&theirs)), Some(Forbidden)),
            ("edit a deleted message", edit("new"), facts(Group, m, Some(&gone)), Some(NotFound)),
            ("edit a missing message", edit("new"), facts(Group, m, None), Some(NotFound)),
            ("edit with an empty body", edit(""), facts(Group, m, Some(&mine)), Some(Invalid)),
            ("edit by a non-member", edit("new"), facts(Group, None, Some(&mine)), Some(NotFound)),
            ("delete own", delete.clone(), facts(Group, m, Some(&mine)), None),
            ("admin deletes another's", delete.clone(), facts(Group, a, Some(&theirs)), None),
            ("member deletes another's", delete.clone(), facts(Group, m, Some(&theirs)), Some(Forbidden)),
            ("delete a missing message", delete.clone(), facts(Group, m, None), Some(NotFound)),
            ("admin adds", add(&you), facts(Group, a, None), None),
            ("member adds", add(&you), facts(Group, m, None), Some(Forbidden)),
            ("add to a direct chat", add(&you), facts(Direct, a, None), Some(Forbidden)),
            ("add nobody", add(&vec![]), facts(Group, a, None), Some(Invalid)),
            ("add a bad id", add(&vec!["no spaces".into()]), facts(Group, a, None), Some(Invalid)),
            ("leave", remove(&me), facts(Group, m, None), None),
            ("member removes another", remove(&you), facts(Group, m, None), Some(Forbidden)),
            ("admin removes another", remove(&you), facts(Group, a, None), None),
            ("leave a direct chat", remove(&me), facts(Direct, m, None), Some(Forbidden)),
            ("read", RouterOp::Read { chat: 1, seq: 9 }, facts(Broadcast, m, None), None),
            ("read by a non-member", RouterOp::Read { chat: 1, seq: 9 }, facts(Group, None, None), Some(NotFound)),
            ("misrouted", RouterOp::ListChats, facts(Group, m, None), Some(UnknownOp)),
        ];
        for (name, op, f, want) in table {
            assert_eq!(code(decide(&op, "me", &f)), want, "{name}");
        }
    }

    #[test]
    fn accepted_ops_become_the_right_mutation() {
        let mine = msg(3, "me", false);
        let f = facts(Group, Some(Role::Admin), Some(&mine));
        assert_eq!(
            decide(&send("hi"), "me", &f),
            Decision::Append(Mutation::Message { client_msg_id: "c1".into(), text: "hi".into() })
        );
        assert_eq!(
            decide(&RouterOp::Edit { chat: 1, target: 3, body: "e".into() }, "me", &f),
            Decision::Append(Mutation::Edit { target: 3, text: "e".into() })
        );
        assert_eq!(
            decide(&RouterOp::Delete { chat: 1, target: 3 }, "me", &f),
            Decision::Append(Mutation::Delete { target: 3 })
        );
        assert_eq!(decide(&RouterOp::Read { chat: 1, seq: 4 }, "me", &f), Decision::Read { seq: 4 });
    }

    #[test]
    fn typing_is_silent_when_refused() {
        let t = RouterOp::Typing { chat: 1 };
        assert_eq!(decide(&t, "me", &facts(Group, Some(Role::Member), None)), Decision::Typing);
        assert_eq!(decide(&t, "me", &facts(Group, None, None)), Decision::Ignore);
        assert_eq!(decide(&t, "me", &facts(Broadcast, Some(Role::Member), None)), Decision::Ignore);
        assert_eq!(decide(&t, "me", &facts(Broadcast, Some(Role::Admin), None)), Decision::Typing);
    }

    #[test]
    fn targets_are_read_only_for_members_with_valid_requests() {
        let edit = |body: &str| RouterOp::Edit { chat: 1, target: 3, body: body.into() };
        let m = Some(Role::Member);
        assert_eq!(target_to_read(&edit("x"), m), Some(3));
        assert_eq!(target_to_read(&edit(""), m), None);
        assert_eq!(target_to_read(&edit("x"), None), None);
        assert_eq!(target_to_read(&RouterOp::Delete { chat: 1, target: 3 }, m), Some(3));
        assert_eq!(target_to_read(&send("x"), m), None);
        assert_eq!(may_read(None).map_err(|r| r.code), Err(ErrorCode::NotFound));
        assert!(may_read(m).is_ok());
    }
}
