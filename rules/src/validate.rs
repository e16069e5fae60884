//! Field validation of requests, before anything is looked up. Pure.

use protocol::ids::{valid_client_msg_id, valid_user_id};
use protocol::limits::{MAX_BODY_BYTES, MAX_TITLE_BYTES, MAX_USERS_PER_REQUEST};
use protocol::{ChatKind, UserId};

/// What is wrong with a request, as told to the client with `invalid`.
pub type Invalid = String;

pub fn body(text: &str) -> Result<(), Invalid> {
    if text.is_empty() {
        Err("body is empty".into())
    } else if text.len() > MAX_BODY_BYTES {
        Err(format!("body is {} bytes; the limit is {MAX_BODY_BYTES}", text.len()))
    } else {
        Ok(())
    }
}

pub fn client_msg_id(id: &str) -> Result<(), Invalid> {
    if valid_client_msg_id(id) { Ok(()) } else { Err("client_msg_id must be 1-64 printable ASCII bytes".into()) }
}

pub fn users(users: &[UserId]) -> Result<(), Invalid> {
    if users.is_empty() {
        return Err("no users given".into());
    }
    if users.len() > MAX_USERS_PER_REQUEST {
        return Err(format!("at most {MAX_USERS_PER_REQUEST} users per request"));
    }
    match users.iter().find(|u| !valid_user_id(u)) {
        Some(_) => Err("user ids are 1-64 bytes of [A-Za-z0-9._@-]".into()),
        None => Ok(()),
    }
}

/// Checks a create request and returns the other members, deduplicated, without the creator.
pub fn create(kind: ChatKind, title: &str, creator: &str, members: &[UserId]) -> Result<Vec<UserId>, Invalid> {
    if title.len() > MAX_TITLE_BYTES {
        return Err(format!("title is longer than {MAX_TITLE_BYTES} bytes"));
    }
    if members.len() > MAX_USERS_PER_REQUEST {
        return Err(format!("at most {MAX_USERS_PER_REQUEST} users per request"));
    }
    if members.iter().any(|u| !valid_user_id(u)) {
        return Err("user ids are 1-64 bytes of [A-Za-z0-9._@-]".into());
    }
    let mut others: Vec<UserId> = members.iter().filter(|u| u.as_str() != creator).cloned().collect();
    others.sort_unstable();
    others.dedup();
    if kind == ChatKind::Direct && others.len() != 1 {
        return Err("a direct chat names exactly one other member".into());
    }
    Ok(others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert!(body("").is_err());
        assert!(body("x").is_ok());
        assert!(body(&"x".repeat(MAX_BODY_BYTES)).is_ok());
        assert!(body(&"x".repeat(MAX_BODY_BYTES + 1)).is_err());
    }

    #[test]
    fn creates() {
        let b = |s: &str| s.to_string();
        assert_eq!(create(ChatKind::Direct, "", "a", &[b("b"), b("a")]).unwrap(), vec![b("b")]);
        assert!(create(ChatKind::Direct, "", "a", &[b("a")]).is_err());
        assert!(create(ChatKind::Direct, "", "a", &[b("b"), b("c")]).is_err());
        assert_eq!(create(ChatKind::Group, "t", "a", &[b("c"), b("b"), b("c")]).unwrap(), vec![b("b"), b("c")]);
        assert!(create(ChatKind::Group, "t", "a", &[b("no spaces")]).is_err());
        assert!(create(ChatKind::Group, &"t".repeat(300), "a", &[]).is_err());
    }
}
