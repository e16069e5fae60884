//! Message authentication for the cluster bus: every message a cluster node publishes on NATS
//! carries an HMAC-SHA256 under a cluster key, over its subject, its payload and the time it
//! was signed, in the [`MAC_HEADER`] NATS header.
//!
//! NATS permissions decide *which role* may publish on a subject; they cannot tell a message
//! an edge made from one made by anything else holding NATS credentials that allow the same
//! subject (a leaked edge password, a mis-scoped service account, a debugging tool). The
//! cluster key closes that gap: the router acts on a request, and an edge delivers an event,
//! only when it was made by a holder of the key, on that very subject, recently.
//!
//! Pure: no IO and no clock; the caller passes the time in (milliseconds since the Unix
//! epoch), so every decision here is unit-tested.
//!
//! Header value: `v1:<key id>:<signed at, ms>:<tag>` with the key id and the tag in lowercase
//! hex. The key id (the first 4 bytes of SHA-256 of the key) picks the verification key
//! without trying each one, and names the key in logs during a rotation; it is not secret.

use std::fmt::Write;

use ring::{digest, hmac};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The NATS header that carries the MAC.
pub const MAC_HEADER: &str = "Messenger-Mac";

/// Shortest cluster key accepted: the HMAC-SHA256 block of security, 256 bits.
pub const MIN_KEY_BYTES: usize = 32;

/// Longest cluster key accepted; longer HMAC keys are hashed down anyway, so a longer one is
/// more likely a wrong file than a stronger key.
pub const MAX_KEY_BYTES: usize = 1024;

/// Most keys one node holds at once: the signing key and the ones being rolled out or in.
pub const MAX_KEYS: usize = 4;

/// Default bound on how far a message's signing time may be from the receiver's clock, either
/// way. It bounds replay of a captured message and must exceed the clock skew between nodes
/// plus the longest a message waits between publish and check (a NATS reconnect, a full
/// subscription buffer): messages older than that are dropped as `stale`.
pub const DEFAULT_MAX_AGE_MS: u64 = 60_000;

const VERSION: &str = "v1";

/// Separates this MAC from any other use of the same key.
const DOMAIN: &[u8] = b"messenger-bus-mac-v1\0";

/// Bytes of key id in the header.
const KEY_ID_BYTES: usize = 4;

/// Bytes of an HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

/// Why a cluster key file or list was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("no cluster key (one key per line, hex, at least {MIN_KEY_BYTES} bytes)")]
    Empty,
    #[error("cluster key on line {line} is not hex")]
    NotHex { line: usize },
    #[error("cluster key on line {line} has {bytes} bytes; it needs {MIN_KEY_BYTES} to {MAX_KEY_BYTES}")]
    Length { line: usize, bytes: usize },
    #[error("more than {MAX_KEYS} cluster keys")]
    TooMany,
    #[error("two cluster keys share the key id {0} (the same key twice?)")]
    Duplicate(String),
}

/// Why a message was refused. [`reason`](Rejection::reason) is the metric label.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    #[error("no MAC header")]
    Missing,
    #[error("MAC header malformed")]
    Malformed,
    #[error("signed with a key this node does not hold")]
    UnknownKey,
    #[error("MAC does not match")]
    BadMac,
    #[error("signing time outside the accepted window")]
    Stale,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::UnknownKey => "unknown_key",
            Rejection::BadMac => "bad_mac",
            Rejection::Stale => "stale",
        }
    }
}

struct Key {
    id: [u8; KEY_ID_BYTES],
    key: hmac::Key,
}

/// The cluster keys of a node: the first signs, every one verifies.
pub struct ClusterKeys {
    keys: Vec<Key>,
}

/// Never shows key material, only key ids.
impl std::fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.key_ids()).finish()
    }
}

impl ClusterKeys {
    /// Keys from raw bytes, the signing key first.
    pub fn new<K: AsRef<[u8]>>(keys: &[K]) -> Result<ClusterKeys, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        if keys.len() > MAX_KEYS {
            return Err(KeyError::TooMany);
        }
        let mut out: Vec<Key> = Vec::with_capacity(keys.len());
        for (i, raw) in keys.iter().enumerate() {
            let raw = raw.as_ref();
            if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&raw.len()) {
                return Err(KeyError::Length { line: i + 1, bytes: raw.len() });
            }
            let mut id = [0u8; KEY_ID_BYTES];
            id.copy_from_slice(&digest::digest(&digest::SHA256, raw).as_ref()[..KEY_ID_BYTES]);
            if out.iter().any(|k| k.id == id) {
                return Err(KeyError::Duplicate(hex(&id)));
            }
            out.push(Key { id, key: hmac::Key::new(hmac::HMAC_SHA256, raw) });
        }
        Ok(ClusterKeys { keys: out })
    }

    /// Keys from the text of a key file: one key per line in hex, the signing key first;
    /// blank lines and lines starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<ClusterKeys, KeyError> {
        let mut raw = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = unhex(line).ok_or(KeyError::NotHex { line: i + 1 })?;
            if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
                return Err(KeyError::Length { line: i + 1, bytes: bytes.len() });
            }
            raw.push(bytes);
        }
        ClusterKeys::new(&raw)
    }

    /// The key ids (hex), the signing key's first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| hex(&k.id)).collect()
    }

    /// The [`MAC_HEADER`] value for `payload` published on `subject` at `now_ms`.
    pub fn sign(&self, subject: &str, payload: &[u8], now_ms: u64) -> String {
        // `new` refuses an empty list, so there is always a first key.
        let key = &self.keys[0];
        let tag = mac(&key.key, subject, payload, now_ms);
        let mut out = String::with_capacity(VERSION.len() + 3 + 2 * KEY_ID_BYTES + 20 + 2 * TAG_BYTES);
        out.push_str(VERSION);
        out.push(':');
        push_hex(&mut out, &key.id);
        out.push(':');
        // Writing to a String cannot fail.
        let _ = write!(out, "{now_ms}");
        out.push(':');
        push_hex(&mut out, tag.as_ref());
        out
    }

    /// Accepts a message if `header` (the [`MAC_HEADER`] value, if any) is a MAC of `subject`
    /// and `payload` under one of the keys, made no more than `max_age_ms` from `now_ms`.
    pub fn verify(
        &self,
        subject: &str,
        payload: &[u8],
        header: Option<&str>,
        now_ms: u64,
        max_age_ms: u64,
    ) -> Result<(), Rejection> {
        let header = header.ok_or(Rejection::Missing)?;
        let mut parts = header.split(':');
        let (Some(VERSION), Some(id), Some(ts), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Rejection::Malformed);
        };
        let id: [u8; KEY_ID_BYTES] = unhex_array(id).ok_or(Rejection::Malformed)?;
        let tag: [u8; TAG_BYTES] = unhex_array(tag).ok_or(Rejection::Malformed)?;
        if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Rejection::Malformed);
        }
        let signed_at: u64 = ts.parse().map_err(|_| Rejection::Malformed)?;
        let key = self.keys.iter().find(|k| k.id == id).ok_or(Rejection::UnknownKey)?;
        // The MAC first: a forger must not learn whether a timestamp would have passed.
        let expected = mac(&key.key, subject, payload, signed_at);
        if !bool::from(expected.as_ref().ct_eq(&tag)) {
            return Err(Rejection::BadMac);
        }
        if now_ms.abs_diff(signed_at) > max_age_ms {
            return Err(Rejection::Stale);
        }
        Ok(())
    }
}

/// HMAC over the domain, the signing time, the subject (length first, so that no subject and
/// payload pair can be read as another) and the payload, without copying the payload.
fn mac(key: &hmac::Key, subject: &str, payload: &[u8], signed_at: u64) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(DOMAIN);
    ctx.update(&signed_at.to_be_bytes());
    // Subjects are far below 4 GiB (NATS caps a whole message at its max_payload).
    ctx.update(&(subject.len() as u64).to_be_bytes());
    ctx.update(subject.as_bytes());
    ctx.update(payload);
    ctx.sign()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    out
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

fn unhex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, p) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = nibble(p[0])? << 4 | nibble(p[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600_000;
    const WINDOW: u64 = DEFAULT_MAX_AGE_MS;

    fn keys(seeds: &[u8]) -> ClusterKeys {
        let raw: Vec<Vec<u8>> = seeds.iter().map(|s| vec![*s; 32]).collect();
        ClusterKeys::new(&raw).unwrap()
    }

    #[test]
    fn a_signed_message_verifies_on_its_subject_and_payload_only() {
        let k = keys(&[1]);
        let h = k.sign("router.req", b"payload", NOW);
        assert_eq!(k.verify("router.req", b"payload", Some(&h), NOW, WINDOW), Ok(()));
        assert_eq!(k.verify("router.req", b"payloaD", Some(&h), NOW, WINDOW), Err(Rejection::BadMac));
        assert_eq!(k.verify("router.chat.1", b"payload", Some(&h), NOW, WINDOW), Err(Rejection::BadMac));
        assert_eq!(k.verify("router.req", b"", Some(&h), NOW, WINDOW), Err(Rejection::BadMac));
        // Moving bytes between subject and payload changes the MAC.
        let h = k.sign("chat.1", b"2x", NOW);
        assert_eq!(k.verify("chat.12", b"x", Some(&h), NOW, WINDOW), Err(Rejection::BadMac));
    }

    #[test]
    fn another_key_is_refused_and_a_missing_header_too() {
        let h = keys(&[1]).sign("chat.1", b"x", NOW);
        assert_eq!(keys(&[2]).verify("chat.1", b"x", Some(&h), NOW, WINDOW), Err(Rejection::UnknownKey));
        assert_eq!(keys(&[1]).verify("chat.1", b"x", None, NOW, WINDOW), Err(Rejection::Missing));
    }

    #[test]
    fn a_forged_tag_with_a_known_key_id_is_a_bad_mac() {
        let k = keys(&[1]);
        let h = k.sign("chat.1", b"x", NOW);
        let (head, tag) = h.rsplit_once(':').unwrap();
        let flipped = if tag.starts_with('0') { "1" } else { "0" };
        let forged = format!("{head}:{flipped}{}", &tag[1..]);
        assert_eq!(k.verify("chat.1", b"x", Some(&forged), NOW, WINDOW), Err(Rejection::BadMac));
        // Changing the timestamp invalidates the tag: it is covered.
        let parts: Vec<&str> = h.split(':').collect();
        let moved = format!("{}:{}:{}:{}", parts[0], parts[1], NOW + 1, parts[3]);
        assert_eq!(k.verify("chat.1", b"x", Some(&moved), NOW, WINDOW), Err(Rejection::BadMac));
    }

    #[test]
    fn the_window_bounds_both_directions() {
        let k = keys(&[1]);
        let h = k.sign("chat.1", b"x", NOW);
        assert_eq!(k.verify("chat.1", b"x", Some(&h), NOW + WINDOW, WINDOW), Ok(()));
        assert_eq!(k.verify("chat.1", b"x", Some(&h), NOW - WINDOW, WINDOW), Ok(()));
        assert_eq!(k.verify("chat.1", b"x", Some(&h), NOW + WINDOW + 1, WINDOW), Err(Rejection::Stale));
        assert_eq!(k.verify("chat.1", b"x", Some(&h), NOW - WINDOW - 1, WINDOW), Err(Rejection::Stale));
        // A stale message with a bad tag reports the bad tag.
        assert_eq!(k.verify("chat.2", b"x", Some(&h), NOW + 10 * WINDOW, WINDOW), Err(Rejection::BadMac));
    }

    #[test]
    fn rotation_signs_with_the_first_key_and_verifies_with_all() {
        let old = keys(&[1]);
        let both = keys(&[2, 1]);
        let new = keys(&[2]);
        let by_old = old.sign("chat.1", b"x", NOW);
        let by_both = both.sign("chat.1", b"x", NOW);
        assert_eq!(both.verify("chat.1", b"x", Some(&by_old), NOW, WINDOW), Ok(()));
        assert_eq!(new.verify("chat.1", b"x", Some(&by_both), NOW, WINDOW), Ok(()));
        assert_eq!(old.verify("chat.1", b"x", Some(&by_both), NOW, WINDOW), Err(Rejection::UnknownKey));
        assert_eq!(new.verify("chat.1", b"x", Some(&by_old), NOW, WINDOW), Err(Rejection::UnknownKey));
        assert_eq!(both.key_ids()[0], new.key_ids()[0]);
    }

    #[test]
    fn malformed_headers_are_refused_without_panicking() {
        let k = keys(&[1]);
        let good = k.sign("s", b"x", NOW);
        let id = &k.key_ids()[0];
        let tag = good.rsplit(':').next().unwrap();
        for bad in [
            "",
            "v1",
            "v2:00000000:1:00",
            &good.replacen("v1", "v2", 1),
            &format!("{good}:extra"),
            &format!("v1:{id}::{tag}"),
            &format!("v1:{id}:-1:{tag}"),
            &format!("v1:{id}:+1:{tag}"),
            &format!("v1:{id}:99999999999999999999999:{tag}"),
            &format!("v1:{id}:1:{}", &tag[..62]),
            &format!("v1:{id}:1:{}zz", &tag[..62]),
            &format!("v1:{}:1:{tag}", &id[..6]),
            "v1:é:1:x",
        ] {
            assert_eq!(k.verify("s", b"x", Some(bad), NOW, WINDOW), Err(Rejection::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn key_files_take_hex_lines_and_refuse_weak_or_odd_keys() {
        let a = "ab".repeat(32);
        let b = "CD".repeat(40);
        let k = ClusterKeys::parse(&format!("# rolled in 2026\n{a}\n\n  {b}  \n")).unwrap();
        assert_eq!(k.key_ids().len(), 2);
        assert_eq!(k.key_ids()[0], keys(&[0xab]).key_ids()[0]);
        assert_eq!(ClusterKeys::parse("# nothing\n\n").err(), Some(KeyError::Empty));
        assert_eq!(ClusterKeys::parse(&"ab".repeat(31)).err(), Some(KeyError::Length { line: 1, bytes: 31 }));
        assert_eq!(ClusterKeys::parse(&format!("{a}\nxyz")).err(), Some(KeyError::NotHex { line: 2 }));
        assert_eq!(ClusterKeys::parse(&format!("{a}0")).err(), Some(KeyError::NotHex { line: 1 }));
        assert_eq!(ClusterKeys::parse(&format!("{a}\n{a}")).err(), Some(KeyError::Duplicate(k.key_ids()[0].clone())));
        assert_eq!(ClusterKeys::parse(&format!("{a}\n{a}1f\n{a}2f\n{a}3f\n{a}4f")).err(), Some(KeyError::TooMany));
        assert!(!format!("{k:?}").contains(&a), "Debug shows key material");
    }
}
