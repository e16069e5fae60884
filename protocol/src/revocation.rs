//! Token revocation: what a revocation says, and whether it refuses a token (pure).
//!
//! Two kinds: one token by its id (`jti`), or every token of a user issued before a time
//! ("sign out everywhere", a stolen device). Each entry carries `until`: the time after
//! which no token it matches can still be valid (the longest token lifetime has passed), so
//! it can be forgotten. Routers store revocations and broadcast them; every edge keeps a
//! [`RevocationList`] and checks it at connect, at refresh, and against the connections it
//! already holds when a revocation arrives.

use std::collections::HashMap;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Subject on which routers broadcast each new revocation to every edge.
pub const REVOCATION_SUBJECT: &str = "ctl.revoked";

/// Longest token id accepted in a revocation (bytes).
pub const MAX_JTI_BYTES: usize = 256;

/// Revocations per page of [`RouterOp::Revocations`](crate::envelope::RouterOp): small enough
/// that a page of the longest entries stays far below NATS's default 1 MiB payload limit.
pub const REVOCATION_PAGE: usize = 1000;

/// Where an entry sorts in a store, and the cursor of a page: the kind (`"jti"` or
/// `"user"`) and the id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct RevocationKey {
    pub kind: String,
    pub id: String,
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// The token whose `jti` claim is `jti`.
    Token {
        jti: String,
        /// Seconds since the Unix epoch after which the entry may be forgotten.
        until: u64,
    },
    /// Every token of `user` issued (`iat`) strictly before `before`. A token without `iat`
    /// counts as issued at `exp` minus the longest lifetime: the earliest it can have been.
    User {
        user: UserId,
        /// Seconds since the Unix epoch.
        before: u64,
        until: u64,
    },
}

impl Revocation {
    /// When the entry may be forgotten.
    pub fn until(&self) -> u64 {
        match self {
            Revocation::Token { until, .. } | Revocation::User { until, .. } => *until,
        }
    }

    /// The entry's key in a store: kind `jti` or `user`, and the id.
    pub fn key(&self) -> RevocationKey {
        let (kind, id) = match self {
            Revocation::Token { jti, .. } => ("jti", jti),
            Revocation::User { user, .. } => ("user", user),
        };
        RevocationKey { kind: kind.to_owned(), id: id.clone() }
    }

    /// This revocation combined with an `earlier` one of the same key: the wider cut and the
    /// later `until`, so that storing a revocation never narrows what an earlier one refused.
    pub fn merged(self, earlier: Option<&Revocation>) -> Revocation {
        match (self, earlier) {
            (Revocation::Token { jti, until }, Some(Revocation::Token { jti: e, until: u })) if *e == jti => {
                Revocation::Token { jti, until: until.max(*u) }
            }
            (Revocation::User { user, before, until }, Some(Revocation::User { user: e, before: b, until: u }))
                if *e == user =>
            {
                Revocation::User { user, before: before.max(*b), until: until.max(*u) }
            }
            (this, _) => this,
        }
    }

    /// Whether it refuses `token`. `max_lifetime` is the verifier's longest token lifetime.
    pub fn matches(&self, token: &TokenFacts<'_>, max_lifetime: u64) -> bool {
        match self {
            Revocation::Token { jti, .. } => token.jti == Some(jti.as_str()),
            Revocation::User { user, before, .. } => user == token.user && token.issued(max_lifetime) < *before,
        }
    }
}

/// What a revocation is checked against: the verified claims of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFacts<'a> {
    pub user: &'a str,
    pub jti: Option<&'a str>,
    pub iat: Option<u64>,
    pub exp: u64,
}

impl TokenFacts<'_> {
    /// When the token was issued, or the earliest it can have been.
    fn issued(&self, max_lifetime: u64) -> u64 {
        self.iat.unwrap_or_else(|| self.exp.saturating_sub(max_lifetime))
    }
}

/// The revocations in force, as an edge holds them: a lookup by token id and by user, so
/// that a check costs two hash lookups whatever the list's size.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    tokens: HashMap<String, u64>,
    /// user → (issued before, until).
    users: HashMap<String, (u64, u64)>,
}

impl RevocationList {
    pub fn new() -> Self {
        RevocationList::default()
    }

    /// Adds `r`; returns whether it revokes more than the list already did (so that the
    /// caller knows whether open connections need checking).
    pub fn insert(&mut self, r: &Revocation) -> bool {
        match r {
            Revocation::Token { jti, until } => match self.tokens.get_mut(jti) {
                Some(u) => {
                    *u = (*u).max(*until);
                    false
                }
                None => {
                    self.tokens.insert(jti.clone(), *until);
                    true
                }
            },
            Revocation::User { user, before, until } => match self.users.get_mut(user) {
                Some((b, u)) => {
                    *u = (*u).max(*until);
                    let wider = *before > *b;
                    *b = (*b).max(*before);
                    wider
                }
                None => {
                    self.users.insert(user.clone(), (*before, *until));
                    true
                }
            },
        }
    }

    /// Whether a token with these facts is revoked.
    pub fn revokes(&self, token: &TokenFacts<'_>, max_lifetime: u64) -> bool {
        if token.jti.is_some_and(|jti| self.tokens.contains_key(jti)) {
            return true;
        }
        self.users.get(token.user).is_some_and(|(before, _)| token.issued(max_lifetime) < *before)
    }

    /// Forgets entries whose `until` has passed at `now`.
    pub fn prune(&mut self, now: u64) {
        self.tokens.retain(|_, until| *until > now);
        self.users.retain(|_, (_, until)| *until > now);
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.tokens.len() + self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn facts<'a>(user: &'a str, jti: Option<&'a str>, iat: Option<u64>, exp: u64) -> TokenFacts<'a> {
        TokenFacts { user, jti, iat, exp }
    }

    #[test]
    fn by_token_id() {
        let mut list = RevocationList::new();
        assert!(list.insert(&Revocation::Token { jti: "t1".into(), until: 500 }));
        assert!(!list.insert(&Revocation::Token { jti: "t1".into(), until: 400 }), "already revoked");
        assert!(list.revokes(&facts("alice", Some("t1"), None, 200), DAY));
        assert!(!list.revokes(&facts("alice", Some("t2"), None, 200), DAY));
        assert!(!list.revokes(&facts("alice", None, None, 200), DAY));
    }

    #[test]
    fn by_user_issued_before() {
        let mut list = RevocationList::new();
        assert!(list.insert(&Revocation::User { user: "bob".into(), before: 1000, until: 1000 + DAY }));
        assert!(list.revokes(&facts("bob", None, Some(999), 2000), DAY));
        assert!(!list.revokes(&facts("bob", None, Some(1000), 2000), DAY), "issued at the cut: new");
        assert!(!list.revokes(&facts("carol", None, Some(10), 2000), DAY), "another user");
        // Without iat: the earliest it can have been issued is exp - max lifetime.
        assert!(list.revokes(&facts("bob", None, None, 1000 + DAY - 1), DAY));
        assert!(!list.revokes(&facts("bob", None, None, 1000 + DAY), DAY));
        // A later cut widens; an earlier one does not narrow.
        assert!(list.insert(&Revocation::User { user: "bob".into(), before: 1500, until: 1500 + DAY }));
        assert!(!list.insert(&Revocation::User { user: "bob".into(), before: 1200, until: 1200 + DAY }));
        assert!(list.revokes(&facts("bob", None, Some(1400), 2000), DAY));
    }

    #[test]
    fn matches_agrees_with_the_list() {
        let rs = [
            Revocation::Token { jti: "x".into(), until: 10 },
            Revocation::User { user: "u".into(), before: 100, until: 200 },
        ];
        let tokens = [
            facts("u", Some("x"), Some(150), 300),
            facts("u", Some("y"), Some(99), 300),
            facts("u", Some("y"), Some(100), 300),
            facts("v", Some("y"), Some(1), 300),
        ];
        for r in &rs {
            let mut list = RevocationList::new();
            list.insert(r);
            for t in &tokens {
                assert_eq!(r.matches(t, DAY), list.revokes(t, DAY), "{r:?} {t:?}");
            }
        }
    }

    #[test]
    fn merging_never_narrows() {
        let old = Revocation::User { user: "u".into(), before: 100, until: 500 };
        let new = Revocation::User { user: "u".into(), before: 50, until: 600 };
        assert_eq!(new.merged(Some(&old)), Revocation::User { user: "u".into(), before: 100, until: 600 });
        let t = Revocation::Token { jti: "a".into(), until: 5 };
        assert_eq!(t.clone().merged(Some(&Revocation::Token { jti: "a".into(), until: 9 })).until(), 9);
        assert_eq!(t.clone().merged(Some(&old)), t, "another key is not merged");
    }

    #[test]
    fn expired_entries_are_pruned() {
        let mut list = RevocationList::new();
        list.insert(&Revocation::Token { jti: "a".into(), until: 100 });
        list.insert(&Revocation::User { user: "u".into(), before: 50, until: 200 });
        list.prune(100);
        assert_eq!(list.len(), 1);
        assert!(!list.revokes(&facts("x", Some("a"), None, 150), DAY));
        list.prune(200);
        assert!(list.is_empty());
    }

    #[test]
    fn the_admin_json_shape() {
        let r: Revocation = serde_json::from_str(r#"{"kind":"user","user":"bob","before":5,"until":9}"#).unwrap();
        assert_eq!(r, Revocation::User { user: "bob".into(), before: 5, until: 9 });
        assert_eq!(
            serde_json::to_string(&Revocation::Token { jti: "t".into(), until: 3 }).unwrap(),
            r#"{"kind":"token","jti":"t","until":3}"#
        );
    }
}
