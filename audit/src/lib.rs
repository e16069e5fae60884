//! The audit trail: "who did what, when, from where", one JSON line per security-relevant
//! act, on a sink of its own (a file, or stdout for a log shipper), apart from the logs.
//!
//! A record is written (and flushed to the operating system) before the act it describes is
//! acknowledged; where writing fails, the act fails instead (callers check
//! [`AuditLog::record`]'s result). Acts that change stored state are recorded twice: as
//! `requested` before the write, and `committed` (with the event's seq) after it.
//!
//! The schema of every record is documented in `docs/operations.md` ("Audit trail"); the
//! [`Event`] enum is that schema.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Whether a record describes an act about to happen or one that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Requested,
    Committed,
}

/// One audited act. Serialized with an `event` tag; field names are the documented schema.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A token was checked at connect (`result` `ok`, or why it was refused) or in-band
    /// (`refresh: true`).
    Auth {
        peer: IpAddr,
        client: IpAddr,
        #[serde(skip_serializing_if = "Option::is_none")]
        sub: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        jti: Option<&'a str>,
        refresh: bool,
        result: &'a str,
    },
    /// A connection was refused before authentication (origin, caps, connect rates).
    Refused {
        peer: IpAddr,
        client: IpAddr,
        reason: &'a str,
    },
    /// The server closed a connection for cause (abuse, limits, expiry).
    Closed {
        client: IpAddr,
        #[serde(skip_serializing_if = "Option::is_none")]
        sub: Option<&'a str>,
        code: u16,
        reason: &'a str,
    },
    ChatCreated {
        actor: &'a str,
        outcome: Outcome,
        chat: u64,
        kind: &'a str,
        members: &'a [String],
    },
    MembersAdded {
        actor: &'a str,
        outcome: Outcome,
        chat: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        users: &'a [String],
        role: &'a str,
    },
    MembersRemoved {
        actor: &'a str,
        outcome: Outcome,
        chat: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        users: &'a [String],
    },
    MessageDeleted {
        actor: &'a str,
        outcome: Outcome,
        chat: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        target: u64,
    },
    /// An operator revoked a token (`kind` `token`, `id` its jti) or a user's tokens issued
    /// before `before` (`kind` `user`, `id` the user).
    Revoked {
        actor: &'a str,
        outcome: Outcome,
        kind: &'a str,
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        until: u64,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    ts_ms: u64,
    node: &'a str,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// The record could not be written: the act it describes must not be acknowledged.
#[derive(Debug)]
pub struct AuditError(pub std::io::Error);

impl std::fmt::Display for AuditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit record not written: {}", self.0)
    }
}

impl std::error::Error for AuditError {}

/// Where audit records go. Cheap to share behind an `Arc`; records from concurrent tasks are
/// whole lines, never interleaved.
pub struct AuditLog {
    node: String,
    sink: Option<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("node", &self.node).field("enabled", &self.sink.is_some()).finish()
    }
}

impl AuditLog {
    /// No audit trail (library use and tests that do not look at it).
    pub fn off() -> Self {
        AuditLog { node: String::new(), sink: None }
    }

    /// Records to standard output, one JSON object a line, for a log shipper.
    pub fn stdout(node: impl Into<String>) -> Self {
        AuditLog { node: node.into(), sink: Some(Mutex::new(Box::new(std::io::stdout()))) }
    }

    /// Records to any writer (tests, or a sink of the embedder's choosing).
    pub fn writer(node: impl Into<String>, sink: Box<dyn Write + Send>) -> Self {
        AuditLog { node: node.into(), sink: Some(Mutex::new(sink)) }
    }

    /// Records appended to `path` (created owner-only). Rotate it with `copytruncate`, or
    /// ship stdout instead.
    pub fn file(path: &Path, node: impl Into<String>) -> std::io::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path)?;
        Ok(AuditLog { node: node.into(), sink: Some(Mutex::new(Box::new(file))) })
    }

    /// Writes `event` as one line and flushes it to the operating system. An error means the
    /// record is not written: the caller fails the act.
    pub fn record(&self, event: &Event<'_>) -> Result<(), AuditError> {
        let Some(sink) = &self.sink else { return Ok(()) };
        let ts_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut line = serde_json::to_vec(&Line { ts_ms, node: &self.node, event })
            .map_err(|e| AuditError(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
        let written = sink.write_all(&line).and_then(|_| sink.flush());
        match written {
            Ok(()) => {
                metrics::counter!("audit_records_total").increment(1);
                Ok(())
            }
            Err(e) => {
                metrics::counter!("audit_write_failures_total").increment(1);
                Err(AuditError(e))
            }
        }
    }

    /// Like [`AuditLog::record`], for acts that already happened or are refusals, which a
    /// failed record cannot undo: the failure is only counted (`audit_write_failures_total`).
    pub fn note(&self, event: &Event<'_>) {
        let _ = self.record(event);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn records_are_whole_json_lines_with_the_documented_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::file(&path, "edge-1").unwrap();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        log.record(&Event::Auth { peer: ip, client, sub: Some("alice"), jti: None, refresh: false, result: "ok" })
            .unwrap();
        let users = vec!["bob".to_string()];
        log.record(&Event::MembersAdded {
            actor: "alice",
            outcome: Outcome::Committed,
            chat: 7,
            seq: Some(12),
            users: &users,
            role: "member",
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "auth");
        assert_eq!(lines[0]["node"], "edge-1");
        assert_eq!(lines[0]["client"], "203.0.113.9");
        assert_eq!(lines[0]["sub"], "alice");
        assert!(lines[0].get("jti").is_none());
        assert!(lines[0]["ts_ms"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(lines[1]["event"], "members_added");
        assert_eq!(lines[1]["outcome"], "committed");
        assert_eq!(lines[1]["users"][0], "bob");
        assert_eq!(lines[1]["seq"], 12);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_sink_that_fails_fails_the_record() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = AuditLog::writer("n", Box::new(Broken));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(log.record(&Event::Refused { peer: ip, client: ip, reason: "ip_full" }).is_err());
        assert!(AuditLog::off().record(&Event::Refused { peer: ip, client: ip, reason: "ip_full" }).is_ok());
    }
}
