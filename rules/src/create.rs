//! What creating a chat does: who its members are, with which roles, its first event, and
//! the key that makes a direct chat between two users unique.

use protocol::{ChatId, ChatKind, Event, EventBody, Role, UserId};

use crate::append::Effect;
use crate::validate::{self, Invalid};

/// A chat to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChat {
    /// A fresh random id (the router draws it); ignored when a direct chat already exists.
    pub id: ChatId,
    pub kind: ChatKind,
    pub title: String,
    pub creator: UserId,
    /// Every member including the creator, with roles; no duplicates.
    pub members: Vec<(UserId, Role)>,
    pub ts: u64,
}

impl NewChat {
    /// Checks a create request by `creator` and builds the chat: the creator is its admin (a
    /// plain member of a direct chat, where nobody administers anything), everyone else a
    /// member. `id` and `ts` come from the caller (a random id, the server clock).
    pub fn plan(
        id: ChatId,
        ts: u64,
        kind: ChatKind,
        title: &str,
        creator: &str,
        members: &[UserId],
    ) -> Result<NewChat, Invalid> {
        let others = validate::create(kind, title, creator, members)?;
        let mut all = Vec::with_capacity(others.len() + 1);
        all.push((creator.to_owned(), Self::creator_role(kind)));
        all.extend(others.into_iter().map(|u| (u, Role::Member)));
        Ok(NewChat { id, kind, title: title.to_owned(), creator: creator.to_owned(), members: all, ts })
    }

    /// The creator's role in a chat of `kind`.
    pub fn creator_role(kind: ChatKind) -> Role {
        if kind == ChatKind::Direct { Role::Member } else { Role::Admin }
    }

    /// The chat's first event (seq 1).
    pub fn created_event(&self) -> Event {
        Event {
            seq: 1,
            ts: self.ts,
            sender: self.creator.clone(),
            body: EventBody::Created {
                chat_kind: self.kind,
                title: self.title.clone(),
                members: self.members.iter().map(|(u, _)| u.clone()).collect(),
            },
        }
    }

    /// The membership rows to write with the chat.
    pub fn effects(&self) -> Vec<Effect> {
        self.members.iter().map(|(user, role)| Effect::AddMember { user: user.clone(), role: *role }).collect()
    }

    /// For a direct chat, its two members in sorted order: at most one direct chat exists per
    /// pair. `None` for other kinds; an error for a direct chat without exactly two members.
    pub fn direct_pair(&self) -> Result<Option<(&str, &str)>, Invalid> {
        if self.kind != ChatKind::Direct {
            return Ok(None);
        }
        let mut pair: Vec<&str> = self.members.iter().map(|(u, _)| u.as_str()).collect();
        pair.sort_unstable();
        match pair.as_slice() {
            [a, b] if a != b => Ok(Some((a, b))),
            _ => Err("a direct chat has exactly two members".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn creators_administer_groups_and_channels_but_not_direct_chats() {
        let g = NewChat::plan(9, 5, ChatKind::Group, "t", "a", &users(&["c", "b", "a", "c"])).expect("valid");
        assert_eq!(g.members, vec![("a".into(), Role::Admin), ("b".into(), Role::Member), ("c".into(), Role::Member)]);
        assert_eq!(g.direct_pair(), Ok(None));
        let d = NewChat::plan(9, 5, ChatKind::Direct, "", "z", &users(&["b"])).expect("valid");
        assert_eq!(d.members, vec![("z".into(), Role::Member), ("b".into(), Role::Member)]);
        assert_eq!(d.direct_pair(), Ok(Some(("b", "z"))));
        assert!(NewChat::plan(9, 5, ChatKind::Direct, "", "z", &users(&["z"])).is_err());
        assert!(NewChat::plan(9, 5, ChatKind::Direct, "", "z", &users(&["a", "b"])).is_err());
        let c = NewChat::plan(9, 5, ChatKind::Broadcast, "news", "a", &[]).expect("valid");
        assert_eq!(c.effects(), vec![Effect::AddMember { user: "a".into(), role: Role::Admin }]);
    }

    #[test]
    fn the_first_event_names_every_member() {
        let g = NewChat::plan(9, 5, ChatKind::Group, "t", "a", &users(&["b"])).expect("valid");
        let e = g.created_event();
        assert_eq!((e.seq, e.ts, e.sender.as_str()), (1, 5, "a"));
        assert_eq!(
            e.body,
            EventBody::Created { chat_kind: ChatKind::Group, title: "t".into(), members: users(&["a", "b"]) }
        );
        let broken = NewChat {
            members: vec![("a".into(), Role::Member)],
            ..NewChat::plan(1, 1, ChatKind::Direct, "", "a", &users(&["b"])).expect("valid")
        };
        assert!(broken.direct_pair().is_err());
    }
}
