//! Identifiers and their validation.

use crate::limits::{MAX_CLIENT_MSG_ID_BYTES, MAX_USER_ID_BYTES};

/// A chat's id: random, in `1..2^53`, so that ids leak nothing and fit a JavaScript number.
pub type ChatId = u64;

/// A position in a chat's event stream; the first event of a chat has seq 1.
pub type Seq = u64;

/// A user id, as carried in the token's `sub` claim.
pub type UserId = String;

/// True when `id` is a well-formed user id: 1 to 64 bytes of `[A-Za-z0-9._@-]`.
///
/// The alphabet is narrow on purpose: user ids end up in bus subjects and store keys, where a
/// space, a dot-star or a control character would be a bug waiting to happen.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// True when `id` is a well-formed client message id: 1 to 64 printable ASCII bytes.
pub fn valid_client_msg_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_MSG_ID_BYTES && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The bus-safe token for a user id. Dots are legal in user ids but separate NATS subject
/// tokens, so they are escaped; the mapping is injective because `~` is not in the alphabet.
pub fn subject_token(user: &str) -> String {
    user.replace('.', "~")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(valid_user_id("alice"));
        assert!(valid_user_id("a.b-c_d@e"));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id("a b"));
        assert!(!valid_user_id("a*"));
        assert!(!valid_user_id("ä"));
        assert!(!valid_user_id(&"x".repeat(65)));
        assert!(valid_user_id(&"x".repeat(64)));
    }

    #[test]
    fn client_msg_ids() {
        assert!(valid_client_msg_id("550e8400-e29b-41d4-a716-446655440000"));
        assert!(!valid_client_msg_id(""));
        assert!(!valid_client_msg_id("a b"));
        assert!(!valid_client_msg_id(&"x".repeat(65)));
    }

    #[test]
    fn subject_tokens_are_distinct() {
        assert_eq!(subject_token("a.b"), "a~b");
        assert_ne!(subject_token("a.b"), subject_token("a_b"));
    }
}
