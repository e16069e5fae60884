//! What an append does to a chat: "mutation + the chat's current state → event + effects".
//!
//! Both stores carry out these decisions; neither decides anything itself. A store:
//! 1. asks [`Append::lookups`] which facts the decision needs and reads them (inside its
//!    write transaction, or from the database),
//! 2. calls [`decide`] with the seq it is about to allocate,
//! 3. writes the event under that seq and carries out every [`Effect`] in order, atomically
//!    with the event where the backend can (embedded), or after it, idempotently (CQL).
//!
//! A store that must complete the effects of an event written earlier (the CQL store after a
//! crash between the event and its effects) asks [`effect_lookups`] and calls [`effects`]:
//! the same rule, so a replay can never disagree with the original append.

use protocol::{ChatId, Event, EventBody, Role, Seq, UserId};
use thiserror::Error;

/// A sequenced write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Message { client_msg_id: String, text: String },
    Edit { target: Seq, text: String },
    Delete { target: Seq },
    AddMembers { users: Vec<UserId>, role: Role },
    RemoveMembers { users: Vec<UserId> },
}

impl Mutation {
    /// Membership changes: the router lets nothing else of the chat be in flight around one,
    /// so that no send is authorized against a member list about to change.
    pub fn is_barrier(&self) -> bool {
        matches!(self, Mutation::AddMembers { .. } | Mutation::RemoveMembers { .. })
    }
}

/// An append to a chat's stream. `ts` is the server time the router gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub chat: ChatId,
    pub sender: UserId,
    pub ts: u64,
    pub mutation: Mutation,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored as this event.
    New(Event),
    /// A message with this sender and client message id was stored before, at `seq`/`ts`.
    Duplicate { seq: Seq, ts: u64 },
}

/// The facts a decision needs, named by what a store must read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups<'a> {
    /// The idempotency record of (sender, client message id), and the event it points to.
    pub earlier: Option<(&'a str, &'a str)>,
    /// The role of each of these users (membership changes).
    pub roles: &'a [UserId],
    /// The event at this seq (the target of an edit or delete).
    pub target: Option<Seq>,
    /// Every edit event of the message at this seq.
    pub edits_of: Option<Seq>,
}

/// The earlier message that an idempotency record points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    pub seq: Seq,
    pub ts: u64,
    /// The stored event at `seq`, when it could be read.
    pub event: Option<Event>,
}

/// What a store read, for the [`Lookups`] it was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub earlier: Option<Earlier>,
    /// Current members among the users asked about, with their role; absent users are not
    /// members.
    pub roles: Vec<(UserId, Role)>,
    /// The target event, when it exists.
    pub target: Option<Event>,
    /// The edit events of the target, in any order.
    pub edits: Vec<Event>,
}

impl Facts {
    fn role_of(&self, user: &str) -> Option<Role> {
        self.roles.iter().find(|(u, _)| u == user).map(|(_, r)| *r)
    }
}

/// A write that an event implies besides its own row. Every effect is idempotent: carrying
/// it out twice leaves what carrying it out once does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Overwrite the stored event at `event.seq` (an edited or deleted message, or an edit
    /// whose text a delete erased).
    Rewrite(Event),
    /// Remember that `sender`'s `client_msg_id` was stored at `seq`/`ts`.
    RecordIdempotency { sender: UserId, client_msg_id: String, seq: Seq, ts: u64 },
    /// Make `user` a member with `role`, and list the chat among the user's chats.
    AddMember { user: UserId, role: Role },
    /// Remove `user`'s membership, the chat from the user's chats, and the user's read cursor.
    RemoveMember { user: UserId },
    /// Index the edit at `seq` under the message it edits, so a delete can find it.
    RecordEdit { target: Seq, seq: Seq },
}

/// The decision on an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Store `event` under its seq and carry out `effects`.
    New { event: Event, effects: Vec<Effect> },
    /// Nothing to store: the message was stored before.
    Duplicate { seq: Seq, ts: u64 },
}

/// Why an append is refused. Nothing is written for a refused append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refused {
    /// The target of an edit or delete is missing, not a message, or already deleted.
    #[error("target message not found")]
    TargetNotFound,
    /// The request would change nothing.
    #[error("no change: {0}")]
    NoChange(&'static str),
    /// The client message id was used before for a different message.
    #[error("client message id reused for a different message")]
    Conflict,
}

impl Append {
    /// The facts [`decide`] needs for this append.
    pub fn lookups(&self) -> Lookups<'_> {
        match &self.mutation {
            Mutation::Message { client_msg_id, .. } => {
                Lookups { earlier: Some((&self.sender, client_msg_id)), ..Lookups::default() }
            }
            Mutation::Edit { target, .. } => Lookups { target: Some(*target), ..Lookups::default() },
            Mutation::Delete { target } => {
                Lookups { target: Some(*target), edits_of: Some(*target), ..Lookups::default() }
            }
            Mutation::AddMembers { users, .. } | Mutation::RemoveMembers { users } => {
                Lookups { roles: users, ..Lookups::default() }
            }
        }
    }
}

/// Decides an append that would be stored at `seq`, given the [`Facts`] its
/// [`Append::lookups`] named.
pub fn decide(append: &Append, seq: Seq, facts: &Facts) -> Result<Decision, Refused> {
    let body = match &append.mutation {
        Mutation::Message { client_msg_id, text } => {
            if let Some(earlier) = &facts.earlier {
                // A retry carries the same text; the same id with other text is a client bug
                // that must not be papered over with the first message's ack. (A message
                // edited or deleted since still answers as a duplicate.)
                if let Some(Event {
                    body: EventBody::Message { text: stored, edited: false, deleted: false, .. }, ..
                }) = &earlier.event
                    && stored != text
                {
                    return Err(Refused::Conflict);
                }
                return Ok(Decision::Duplicate { seq: earlier.seq, ts: earlier.ts });
            }
            EventBody::Message {
                client_msg_id: client_msg_id.clone(),
                text: text.clone(),
                edited: false,
                deleted: false,
            }
        }
        Mutation::Edit { target, text } => {
            live_message(facts.target.as_ref(), *target)?;
            EventBody::Edited { target: *target, text: text.clone() }
        }
        Mutation::Delete { target } => {
            live_message(facts.target.as_ref(), *target)?;
            EventBody::Deleted { target: *target }
        }
        Mutation::AddMembers { users, role } => {
            let added = distinct(users, |u| facts.role_of(u) != Some(*role));
            if added.is_empty() {
                return Err(Refused::NoChange("already members with that role"));
            }
            EventBody::MembersAdded { users: added, role: *role }
        }
        Mutation::RemoveMembers { users } => {
            let removed = distinct(users, |u| facts.role_of(u).is_some());
            if removed.is_empty() {
                return Err(Refused::NoChange("not members"));
            }
            EventBody::MembersRemoved { users: removed }
        }
    };
    let event = Event { seq, ts: append.ts, sender: append.sender.clone(), body };
    let effects = effects(&event, facts);
    Ok(Decision::New { event, effects })
}

/// The facts [`effects`] needs to complete `event`'s effects after the fact.
pub fn effect_lookups(event: &Event) -> Lookups<'_> {
    match &event.body {
        EventBody::Edited { target, .. } | EventBody::Deleted { target } => {
            Lookups { target: Some(*target), edits_of: Some(*target), ..Lookups::default() }
        }
        _ => Lookups::default(),
    }
}

/// Everything `event` implies besides its own row, given the current state of its target.
///
/// A delete erases the message's text *and the text of every earlier edit of it*: history
/// and resume return those `edited` events with empty text, so a deleted message's words
/// survive nowhere. An edit rewrites its target only while it is the newest edit of a
/// message not deleted since (that matters when an edit's effects are completed late).
pub fn effects(event: &Event, facts: &Facts) -> Vec<Effect> {
    match &event.body {
        EventBody::Message { client_msg_id, .. } => vec![Effect::RecordIdempotency {
            sender: event.sender.clone(),
            client_msg_id: client_msg_id.clone(),
            seq: event.seq,
            ts: event.ts,
        }],
        EventBody::Edited { target, text } => {
            let mut out = vec![Effect::RecordEdit { target: *target, seq: event.seq }];
            let newer = facts.edits.iter().any(|e| e.seq > event.seq);
            if let Some(mut original) = facts.target.clone()
                && let EventBody::Message { text: current, edited, deleted: false, .. } = &mut original.body
                && !newer
            {
                current.clone_from(text);
                *edited = true;
                out.push(Effect::Rewrite(original));
            }
            out
        }
        EventBody::Deleted { .. } => {
            let mut out = Vec::new();
            if let Some(mut original) = facts.target.clone()
                && let EventBody::Message { text, deleted, .. } = &mut original.body
                && !(*deleted && text.is_empty())
            {
                text.clear();
                *deleted = true;
                out.push(Effect::Rewrite(original));
            }
            let mut edits: Vec<&Event> = facts.edits.iter().collect();
            edits.sort_unstable_by_key(|e| e.seq);
            for edit in edits {
                if let EventBody::Edited { text, .. } = &edit.body
                    && !text.is_empty()
                {
                    let mut erased = edit.clone();
                    if let EventBody::Edited { text, .. } = &mut erased.body {
                        text.clear();
                    }
                    out.push(Effect::Rewrite(erased));
                }
            }
            out
        }
        EventBody::MembersAdded { users, role } => {
            users.iter().map(|u| Effect::AddMember { user: u.clone(), role: *role }).collect()
        }
        EventBody::MembersRemoved { users } => users.iter().map(|u| Effect::RemoveMember { user: u.clone() }).collect(),
        // A chat's first event is written by chat creation, with its members.
        EventBody::Created { .. } => Vec::new(),
    }
}

/// The target of an edit or delete must be a message that is not deleted.
fn live_message(target: Option<&Event>, seq: Seq) -> Result<(), Refused> {
    match target {
        Some(Event { seq: s, body: EventBody::Message { deleted: false, .. }, .. }) if *s == seq => Ok(()),
        _ => Err(Refused::TargetNotFound),
    }
}

/// The users for whom `keep` holds, each once, in request order.
fn distinct(users: &[UserId], keep: impl Fn(&str) -> bool) -> Vec<UserId> {
    let mut out: Vec<UserId> = Vec::new();
    for u in users {
        if keep(u) && !out.contains(u) {
            out.push(u.clone());
        }
    }
    out
}

/// Where a read cursor moves when `user` says they read up to `requested`: forward only,
/// never past the chat's last seq. Returns the cursor after the move.
pub fn read_cursor(requested: Seq, last_seq: Seq, current: Seq) -> Seq {
    requested.min(last_seq).max(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: Seq, sender: &str, text: &str) -> Event {
        Event {
            seq,
            ts: 100 + seq,
            sender: sender.into(),
            body: EventBody::Message {
                client_msg_id: format!("m{seq}"),
                text: text.into(),
                edited: false,
                deleted: false,
            },
        }
    }

    fn edit(seq: Seq, target: Seq, text: &str) -> Event {
        Event { seq, ts: 100 + seq, sender: "a".into(), body: EventBody::Edited { target, text: text.into() } }
    }

    fn append(mutation: Mutation) -> Append {
        Append { chat: 7, sender: "a".into(), ts: 999, mutation }
    }

    fn send(id: &str, text: &str) -> Append {
        append(Mutation::Message { client_msg_id: id.into(), text: text.into() })
    }

    fn users(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn new_event(d: Result<Decision, Refused>) -> (Event, Vec<Effect>) {
        match d {
            Ok(Decision::New { event, effects }) => (event, effects),
            other => panic!("expected a new event, got {other:?}"),
        }
    }

    #[test]
    fn lookups_name_exactly_the_facts_each_mutation_needs() {
        let s = send("c1", "hi");
        assert_eq!(s.lookups(), Lookups { earlier: Some(("a", "c1")), ..Lookups::default() });
        let e = append(Mutation::Edit { target: 3, text: "x".into() });
        assert_eq!(e.lookups(), Lookups { target: Some(3), ..Lookups::default() });
        let d = append(Mutation::Delete { target: 3 });
        assert_eq!(d.lookups(), Lookups { target: Some(3), edits_of: Some(3), ..Lookups::default() });
        let list = users(&["b", "c"]);
        let add = append(Mutation::AddMembers { users: list.clone(), role: Role::Member });
        assert_eq!(add.lookups().roles, &list[..]);
        let rm = append(Mutation::RemoveMembers { users: list.clone() });
        assert_eq!(rm.lookups().roles, &list[..]);
        assert_eq!(effect_lookups(&msg(1, "a", "x")), Lookups::default());
        assert_eq!(effect_lookups(&edit(4, 2, "y")).edits_of, Some(2));
    }

    #[test]
    fn a_new_message_records_its_idempotency_key() {
        let (event, effects) = new_event(decide(&send("c1", "hi"), 5, &Facts::default()));
        assert_eq!((event.seq, event.ts, event.sender.as_str()), (5, 999, "a"));
        assert!(matches!(&event.body, EventBody::Message { text, edited: false, deleted: false, .. } if text == "hi"));
        assert_eq!(
            effects,
            vec![Effect::RecordIdempotency { sender: "a".into(), client_msg_id: "c1".into(), seq: 5, ts: 999 }]
        );
    }

    #[test]
    fn retries_answer_with_the_original_and_reused_ids_conflict() {
        let stored = msg(3, "a", "hi");
        let earlier =
            |event: Option<Event>| Facts { earlier: Some(Earlier { seq: 3, ts: 103, event }), ..Facts::default() };
        let table: Vec<(&str, Facts, Result<Decision, Refused>)> = vec![
            ("same text", earlier(Some(stored.clone())), Ok(Decision::Duplicate { seq: 3, ts: 103 })),
            ("other text", earlier(Some(msg(3, "a", "other"))), Err(Refused::Conflict)),
            ("original unreadable", earlier(None), Ok(Decision::Duplicate { seq: 3, ts: 103 })),
        ];
        for (name, facts, want) in table {
            assert_eq!(decide(&send("c1", "hi"), 9, &facts), want, "{name}");
        }
        // Edited or deleted since: still the original's ack, whatever the text.
        for body in [
            EventBody::Message { client_msg_id: "c1".into(), text: "changed".into(), edited: true, deleted: false },
            EventBody::Message { client_msg_id: "c1".into(), text: String::new(), edited: false, deleted: true },
        ] {
            let facts = earlier(Some(Event { body, ..stored.clone() }));
            assert_eq!(decide(&send("c1", "hi"), 9, &facts), Ok(Decision::Duplicate { seq: 3, ts: 103 }));
        }
    }

    #[test]
    fn edits_and_deletes_need_a_live_message() {
        let deleted = Event {
            body: EventBody::Message { client_msg_id: "m".into(), text: String::new(), edited: false, deleted: true },
            ..msg(2, "a", "")
        };
        let bad_targets = [None, Some(deleted), Some(edit(2, 1, "x")), Some(msg(5, "a", "wrong seq"))];
        for target in bad_targets {
            let facts = Facts { target: target.clone(), ..Facts::default() };
            for m in [Mutation::Edit { target: 2, text: "x".into() }, Mutation::Delete { target: 2 }] {
                assert_eq!(decide(&append(m), 9, &facts), Err(Refused::TargetNotFound), "{target:?}");
            }
        }
    }

    #[test]
    fn an_edit_rewrites_its_target_and_is_indexed() {
        let facts = Facts { target: Some(msg(2, "a", "old")), ..Facts::default() };
        let (event, effects) = new_event(decide(&append(Mutation::Edit { target: 2, text: "new".into() }), 9, &facts));
        assert_eq!(event.body, EventBody::Edited { target: 2, text: "new".into() });
        let mut rewritten = msg(2, "a", "new");
        if let EventBody::Message { edited, .. } = &mut rewritten.body {
            *edited = true;
        }
        assert_eq!(effects, vec![Effect::RecordEdit { target: 2, seq: 9 }, Effect::Rewrite(rewritten)]);
    }

    #[test]
    fn a_late_edit_never_overwrites_a_newer_one_nor_revives_a_deleted_message() {
        let late = edit(9, 2, "older");
        let newer = Facts {
            target: Some(msg(2, "a", "newest")),
            edits: vec![late.clone(), edit(12, 2, "newest")],
            ..Facts::default()
        };
        assert_eq!(effects(&late, &newer), vec![Effect::RecordEdit { target: 2, seq: 9 }]);
        let mut gone = msg(2, "a", "");
        gone.body = EventBody::Message { client_msg_id: "m2".into(), text: String::new(), edited: true, deleted: true };
        let deleted = Facts { target: Some(gone), ..Facts::default() };
        assert_eq!(effects(&late, &deleted), vec![Effect::RecordEdit { target: 2, seq: 9 }]);
    }

    #[test]
    fn a_delete_erases_the_message_and_every_earlier_edit() {
        let facts = Facts {
            target: Some(msg(2, "a", "secret v2")),
            edits: vec![edit(6, 2, "secret v2"), edit(4, 2, "secret v1"), edit(5, 2, "")],
            ..Facts::default()
        };
        let (event, effects) = new_event(decide(&append(Mutation::Delete { target: 2 }), 9, &facts));
        assert_eq!(event.body, EventBody::Deleted { target: 2 });
        let mut erased = msg(2, "a", "");
        erased.body =
            EventBody::Message { client_msg_id: "m2".into(), text: String::new(), edited: false, deleted: true };
        assert_eq!(
            effects,
            vec![Effect::Rewrite(erased), Effect::Rewrite(edit(4, 2, "")), Effect::Rewrite(edit(6, 2, ""))]
        );
        // Completed again (a replay): nothing left to erase.
        let after = Facts {
            target: match &effects[0] {
                Effect::Rewrite(e) => Some(e.clone()),
                _ => None,
            },
            edits: vec![edit(4, 2, ""), edit(5, 2, ""), edit(6, 2, "")],
            ..Facts::default()
        };
        assert_eq!(super::effects(&event, &after), Vec::new());
    }

    #[test]
    fn membership_changes_keep_only_real_changes_once_each() {
        let facts = Facts { roles: vec![("b".into(), Role::Member), ("c".into(), Role::Admin)], ..Facts::default() };
        let table: Vec<(Mutation, Result<EventBody, Refused>)> = vec![
            (
                Mutation::AddMembers { users: users(&["b", "d", "c", "d"]), role: Role::Member },
                Ok(EventBody::MembersAdded { users: users(&["d", "c"]), role: Role::Member }),
            ),
            (
                Mutation::AddMembers { users: users(&["c"]), role: Role::Admin },
                Err(Refused::NoChange("already members with that role")),
            ),
            (
                Mutation::AddMembers { users: users(&["b"]), role: Role::Admin },
                Ok(EventBody::MembersAdded { users: users(&["b"]), role: Role::Admin }),
            ),
            (
                Mutation::RemoveMembers { users: users(&["x", "c", "b", "c"]) },
                Ok(EventBody::MembersRemoved { users: users(&["c", "b"]) }),
            ),
            (Mutation::RemoveMembers { users: users(&["x"]) }, Err(Refused::NoChange("not members"))),
        ];
        for (m, want) in table {
            let got = decide(&append(m.clone()), 4, &facts).map(|d| match d {
                Decision::New { event, .. } => event.body,
                Decision::Duplicate { .. } => panic!("no duplicates here"),
            });
            assert_eq!(got, want, "{m:?}");
        }
        let (_, effects) = new_event(decide(&append(Mutation::RemoveMembers { users: users(&["b"]) }), 4, &facts));
        assert_eq!(effects, vec![Effect::RemoveMember { user: "b".into() }]);
        let (_, effects) =
            new_event(decide(&append(Mutation::AddMembers { users: users(&["z"]), role: Role::Member }), 4, &facts));
        assert_eq!(effects, vec![Effect::AddMember { user: "z".into(), role: Role::Member }]);
    }

    #[test]
    fn only_membership_changes_are_barriers() {
        assert!(Mutation::AddMembers { users: vec![], role: Role::Member }.is_barrier());
        assert!(Mutation::RemoveMembers { users: vec![] }.is_barrier());
        assert!(!Mutation::Delete { target: 1 }.is_barrier());
        assert!(!Mutation::Message { client_msg_id: "c".into(), text: "t".into() }.is_barrier());
    }

    #[test]
    fn read_cursors_move_forward_only_and_never_past_the_head() {
        for (requested, last, current, want) in [(5, 10, 3, 5), (2, 10, 3, 3), (50, 10, 3, 10), (0, 0, 0, 0)] {
            assert_eq!(read_cursor(requested, last, current), want);
        }
    }
}
