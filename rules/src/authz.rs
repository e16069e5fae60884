//! Who may do what in a chat. Pure decisions over the facts the caller looked up.

use protocol::{ChatKind, ErrorCode, Role, UserId};

/// An action on a chat, with the facts its decision needs.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Read history, resume, move the read cursor.
    Read,
    /// Post a message.
    Post,
    /// Signal typing.
    Typing,
    /// Edit a message written by `author`.
    Edit { author: &'a str },
    /// Delete a message written by `author`.
    Delete { author: &'a str },
    /// Add members.
    AddMembers,
    /// Remove these members.
    RemoveMembers { users: &'a [UserId] },
}

/// Why an action was refused, already in the shape of the error the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub code: ErrorCode,
    pub reason: &'static str,
}

const NOT_FOUND: Denied = Denied { code: ErrorCode::NotFound, reason: "no such chat" };

fn forbidden(reason: &'static str) -> Denied {
    Denied { code: ErrorCode::Forbidden, reason }
}

/// Membership, the first check of every act: non-members get `not_found`, exactly what a
/// missing chat gets, so they learn nothing about which chats exist.
pub fn member(role: Option<Role>) -> Result<Role, Denied> {
    role.ok_or(NOT_FOUND)
}

/// Decides whether a member `user` with `role` in a chat of `kind` may take `action`.
pub fn permit(kind: ChatKind, role: Role, user: &str, action: Action<'_>) -> Result<(), Denied> {
    let admin = role == Role::Admin;
    match action {
        Action::Read => Ok(()),
        Action::Post | Action::Typing if kind == ChatKind::Broadcast && !admin => {
            Err(forbidden("only admins post in a broadcast channel"))
        }
        Action::Post | Action::Typing => Ok(()),
        Action::Edit { author } if author == user => Ok(()),
        Action::Edit { .. } => Err(forbidden("only the author edits a message")),
        Action::Delete { author } if author == user || admin => Ok(()),
        Action::Delete { .. } => Err(forbidden("only the author or an admin deletes a message")),
        Action::AddMembers | Action::RemoveMembers { .. } if kind == ChatKind::Direct => {
            Err(forbidden("a direct chat's members are fixed"))
        }
        Action::AddMembers if admin => Ok(()),
        Action::AddMembers => Err(forbidden("only admins add members")),
        Action::RemoveMembers { users } if admin || users.iter().all(|u| u == user) => Ok(()),
        Action::RemoveMembers { .. } => Err(forbidden("only admins remove others")),
    }
}

/// Membership, then permission: whether `user`, with `role` in a chat of `kind` (`None`: not a
/// member), may take `action`.
pub fn authorize(kind: ChatKind, role: Option<Role>, user: &str, action: Action<'_>) -> Result<(), Denied> {
    permit(kind, member(role)?, user, action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChatKind::*;

    #[test]
    fn non_members_learn_nothing() {
        for kind in [Direct, Group, Broadcast] {
            for action in [Action::Read, Action::Post, Action::Typing, Action::AddMembers] {
                assert_eq!(authorize(kind, None, "eve", action).unwrap_err().code, ErrorCode::NotFound);
            }
        }
    }

    #[test]
    fn broadcast_only_admins_post() {
        assert_eq!(authorize(Broadcast, Some(Role::Member), "m", Action::Post).unwrap_err().code, ErrorCode::Forbidden);
        assert!(authorize(Broadcast, Some(Role::Admin), "a", Action::Post).is_ok());
        assert!(authorize(Broadcast, Some(Role::Member), "m", Action::Read).is_ok());
        assert!(authorize(Group, Some(Role::Member), "m", Action::Post).is_ok());
    }

    #[test]
    fn edit_and_delete() {
        assert!(authorize(Group, Some(Role::Member), "a", Action::Edit { author: "a" }).is_ok());
        assert!(authorize(Group, Some(Role::Admin), "b", Action::Edit { author: "a" }).is_err());
        assert!(authorize(Group, Some(Role::Admin), "b", Action::Delete { author: "a" }).is_ok());
        assert!(authorize(Group, Some(Role::Member), "b", Action::Delete { author: "a" }).is_err());
    }

    #[test]
    fn membership_management() {
        let me = vec!["m".to_string()];
        let other = vec!["o".to_string()];
        assert!(authorize(Group, Some(Role::Member), "m", Action::RemoveMembers { users: &me }).is_ok());
        assert!(authorize(Group, Some(Role::Member), "m", Action::RemoveMembers { users: &other }).is_err());
        assert!(authorize(Group, Some(Role::Admin), "a", Action::RemoveMembers { users: &other }).is_ok());
        assert!(authorize(Group, Some(Role::Member), "m", Action::AddMembers).is_err());
        assert!(authorize(Direct, Some(Role::Admin), "a", Action::AddMembers).is_err());
        assert!(authorize(Direct, Some(Role::Member), "m", Action::RemoveMembers { users: &me }).is_err());
    }
}
