//! The cluster backend: ScyllaDB in production, any CQL database that accepts the same CQL
//! (the tests run Apache Cassandra 5).
//!
//! # How the seq stays gap-free and unique
//!
//! The `events` row *is* the claim on a seq: an append inserts `(chat, bucket, seq)` with a
//! lightweight transaction (`IF NOT EXISTS`, Paxos at the serial consistency level), so two
//! writers can never both own a seq, whatever they believe about ownership. A writer that
//! loses the race reloads the chat's head and tries the next seq. Appends to one chat are
//! serialized inside a process (one LWT in flight per chat), so a failed append never leaves
//! a later one committed after a hole.
//!
//! Side effects of an event (idempotency record, membership rows, the rewritten target of an
//! edit or delete) are written after its LWT, then the chat's `last_seq` hint. A crash in
//! between leaves events above the hint whose side effects may be missing: the first append
//! to a chat after (re)loading its head replays the side effects of every event above the
//! hint. They are idempotent writes, so replaying twice is harmless. Until that replay, an
//! append outcome that was unknown (a timeout) is never reported as success.
//!
//! # Partitions
//!
//! Events are partitioned by `(chat, bucket)` with `bucket = seq / EVENTS_PER_BUCKET`, so a
//! partition never holds more than [`EVENTS_PER_BUCKET`] events, however busy the chat: at
//! 100 messages/s for a year (3.15 billion events) a chat has about 192,000 partitions of
//! 16,384 events (≈ 8 MiB each at 500-byte messages). Nothing writes nulls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use protocol::codec::{decode_envelope, encode_envelope};
use protocol::{ChatId, ChatKind, ChatSummary, Event, EventBody, Role, Seq};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

use crate::{Append, Appended, ChatRecord, Created, HistoryPage, Mutation, NewChat, Page, Store, StoreError};

/// Events per partition of the `events` table, for a new keyspace. It is recorded in the
/// keyspace (`settings`) on creation and read back on every connect, since changing it under
/// existing data would misplace every event.
pub const EVENTS_PER_BUCKET: u64 = 16_384;

/// Attempts at an append when other writers keep taking the next seq.
const MAX_APPEND_ATTEMPTS: usize = 16;

/// Chats whose head a store keeps in memory; idle ones are forgotten past this.
const MAX_CACHED_HEADS: usize = 100_000;

/// Settings of the CQL store.
#[derive(Debug, Clone)]
pub struct CqlConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace; created if missing. `[a-z0-9_]`, at most 48 characters.
    pub keyspace: String,
    /// The replication map used when the keyspace is created, e.g.
    /// `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`.
    pub replication: String,
    /// Consistency of reads and writes (LOCAL_QUORUM in production).
    pub consistency: Consistency,
    /// Consistency of the Paxos phase of seq claims (LOCAL_SERIAL in production).
    pub serial_consistency: SerialConsistency,
    pub username: Option<String>,
    pub password: Option<String>,
    /// A PEM file of CA certificates: when set, connections use TLS and verify the nodes.
    pub tls_ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Events per `events` partition when the keyspace is created (see [`EVENTS_PER_BUCKET`]).
    pub events_per_bucket: u64,
}

impl CqlConfig {
    /// Settings for a local single-node database (tests, development).
    pub fn local(node: impl Into<String>, keyspace: impl Into<String>) -> Self {
        CqlConfig {
            nodes: vec![node.into()],
            keyspace: keyspace.into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: Consistency::LocalQuorum,
            serial_consistency: SerialConsistency::LocalSerial,
            username: None,
            password: None,
            tls_ca: None,
            connect_timeout: Duration::from_secs(10),
            events_per_bucket: EVENTS_PER_BUCKET,
        }
    }
}

/// Parses a consistency name as the CLI takes it (`local_quorum`, `quorum`, `one`, ...).
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => return Err(format!("unknown consistency {other:?}")),
    })
}

/// Parses a serial consistency name (`local_serial` or `serial`).
pub fn parse_serial_consistency(s: &str) -> Result<SerialConsistency, String> {
    match s.to_ascii_lowercase().as_str() {
        "serial" => Ok(SerialConsistency::Serial),
        "local_serial" => Ok(SerialConsistency::LocalSerial),
        other => Err(format!("unknown serial consistency {other:?}")),
    }
}

/// Versioned schema migrations. Each statement is idempotent (`IF NOT EXISTS`), so a
/// migration interrupted half way is simply run again; `{ks}` is the keyspace.
const MIGRATIONS: &[(i32, &str, &[&str])] = &[(
    1,
    "chats, members, events, idempotency, reads, direct chats, edits",
    &[
        "CREATE TABLE IF NOT EXISTS {ks}.chats (chat bigint PRIMARY KEY, kind tinyint, title text, creator text, created_ts bigint, last_seq bigint)",
        "CREATE TABLE IF NOT EXISTS {ks}.members (chat bigint, user text, role tinyint, PRIMARY KEY (chat, user))",
        "CREATE TABLE IF NOT EXISTS {ks}.user_chats (user text, chat bigint, PRIMARY KEY (user, chat))",
        "CREATE TABLE IF NOT EXISTS {ks}.events (chat bigint, bucket bigint, seq bigint, body blob, PRIMARY KEY ((chat, bucket), seq)) WITH CLUSTERING ORDER BY (seq DESC)",
        "CREATE TABLE IF NOT EXISTS {ks}.idempotency (chat bigint, sender text, client_msg_id text, seq bigint, ts bigint, PRIMARY KEY ((chat, sender, client_msg_id)))",
        "CREATE TABLE IF NOT EXISTS {ks}.reads (chat bigint, user text, seq bigint, PRIMARY KEY (chat, user))",
        "CREATE TABLE IF NOT EXISTS {ks}.direct_chats (pair text PRIMARY KEY, chat bigint)",
        "CREATE TABLE IF NOT EXISTS {ks}.edits (chat bigint, target bigint, seq bigint, PRIMARY KEY ((chat, target), seq))",
        "CREATE TABLE IF NOT EXISTS {ks}.settings (name text PRIMARY KEY, value bigint)",
    ],
)];

struct Statements {
    insert_chat_lwt: PreparedStatement,
    select_chat: PreparedStatement,
    update_head: PreparedStatement,
    insert_member: PreparedStatement,
    delete_member: PreparedStatement,
    select_role: PreparedStatement,
    insert_user_chat: PreparedStatement,
    delete_user_chat: PreparedStatement,
    select_user_chats: PreparedStatement,
    insert_event_lwt: PreparedStatement,
    insert_event: PreparedStatement,
    select_event: PreparedStatement,
    select_latest: PreparedStatement,
    select_after: PreparedStatement,
    select_before: PreparedStatement,
    insert_idem: PreparedStatement,
    select_idem: PreparedStatement,
    upsert_read: PreparedStatement,
    select_read: PreparedStatement,
    delete_read: PreparedStatement,
    insert_direct_lwt: PreparedStatement,
    select_direct: PreparedStatement,
    insert_edit: PreparedStatement,
    select_edits: PreparedStatement,
}

/// What a process knows of a chat's head. Guarded by a per-chat async lock: one append at a
/// time per chat.
#[derive(Default)]
struct Head {
    /// Highest seq known written, valid when `loaded`.
    last: Seq,
    loaded: bool,
}

/// The CQL store.
pub struct CqlStore {
    session: Session,
    st: Statements,
    bucket_size: u64,
    heads: Mutex<HashMap<ChatId, Arc<tokio::sync::Mutex<Head>>>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn kind_byte(kind: ChatKind) -> i8 {
    match kind {
        ChatKind::Direct => 0,
        ChatKind::Group => 1,
        ChatKind::Broadcast => 2,
    }
}

fn byte_kind(b: i8) -> Result<ChatKind, StoreError> {
    match b {
        0 => Ok(ChatKind::Direct),
        1 => Ok(ChatKind::Group),
        2 => Ok(ChatKind::Broadcast),
        other => Err(StoreError::Corrupt(format!("chat kind {other}"))),
    }
}

fn role_byte(role: Role) -> i8 {
    crate::role_code(role) as i8
}

fn byte_role(b: i8) -> Role {
    crate::role_from_code(b as u8)
}

/// Whether an LWT was applied: the first column of its result row.
fn applied(result: scylla::response::query_result::QueryResult) -> Result<(bool, Row), StoreError> {
    let rows = result.into_rows_result().map_err(unavailable)?;
    let row: Row = rows.first_row().map_err(unavailable)?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(b))) => Ok((*b, row)),
        _ => Err(StoreError::Unavailable("LWT result without [applied]".into())),
    }
}

fn valid_keyspace(ks: &str) -> bool {
    !ks.is_empty() && ks.len() <= 48 && ks.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl CqlStore {
    /// Connects, creates the keyspace if needed, runs pending migrations, prepares statements.
    pub async fn connect(config: &CqlConfig) -> Result<Self, StoreError> {
        if !valid_keyspace(&config.keyspace) {
            return Err(StoreError::Unavailable(format!(
                "keyspace {:?} must be 1-48 characters of [a-z0-9_]",
                config.keyspace
            )));
        }
        let mut builder = SessionBuilder::new().known_nodes(&config.nodes).connection_timeout(config.connect_timeout);
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.user(user, password);
        }
        if let Some(ca) = &config.tls_ca {
            builder = builder.tls_context(Some(tls_config(ca)?));
        }
        let session = builder.build().await.map_err(unavailable)?;
        let ks = &config.keyspace;
        session
            .query_unpaged(format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}", config.replication), ())
            .await
            .map_err(unavailable)?;
        migrate(&session, ks).await?;
        let st = Statements::prepare(&session, ks, config).await?;
        let bucket_size = bucket_size(&session, ks, config.events_per_bucket.max(1)).await?;
        Ok(CqlStore { session, st, bucket_size, heads: Mutex::new(HashMap::new()) })
    }

    fn bucket(&self, seq: Seq) -> i64 {
        (seq / self.bucket_size) as i64
    }

    fn head_lock(&self, chat: ChatId) -> Arc<tokio::sync::Mutex<Head>> {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        if heads.len() >= MAX_CACHED_HEADS {
            heads.retain(|_, h| Arc::strong_count(h) > 1);
        }
        heads.entry(chat).or_default().clone()
    }

    async fn chat_row(&self, chat: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        let result = self.session.execute_unpaged(&self.st.select_chat, (chat as i64,)).await.map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let row: Option<(i8, String, String, i64, i64)> = rows.maybe_first_row().map_err(corrupt)?;
        match row {
            None => Ok(None),
            Some((kind, title, creator, created_ts, last_seq)) => Ok(Some(ChatRecord {
                kind: byte_kind(kind)?,
                title,
                creator,
                created_ts: created_ts as u64,
                last_seq: last_seq as u64,
            })),
        }
    }

    async fn latest_in_bucket(&self, chat: ChatId, b: i64) -> Result<Option<Seq>, StoreError> {
        let result =
            self.session.execute_unpaged(&self.st.select_latest, (chat as i64, b)).await.map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let row: Option<(i64,)> = rows.maybe_first_row().map_err(corrupt)?;
        Ok(row.map(|(s,)| s as u64))
    }

    /// The true head: the newest event at or above the hint (buckets are probed forward).
    async fn probe_head(&self, chat: ChatId, hint: Seq) -> Result<Seq, StoreError> {
        let mut head = hint;
        let mut b = self.bucket(hint.max(1));
        loop {
            match self.latest_in_bucket(chat, b).await? {
                Some(s) if s >= head => head = s,
                _ => return Ok(head),
            }
            if head + 1 < (b as u64 + 1) * self.bucket_size {
                return Ok(head);
            }
            b += 1;
        }
    }

    async fn event_at(&self, chat: ChatId, seq: Seq) -> Result<Option<Event>, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.st.select_event, (chat as i64, self.bucket(seq), seq as i64))
            .await
            .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let row: Option<(Vec<u8>,)> = rows.maybe_first_row().map_err(corrupt)?;
        row.map(|(body,)| decode_envelope::<Event>(&body).map_err(corrupt)).transpose()
    }

    /// Events with seq in `(from, to]`, ascending.
    async fn events_between(&self, chat: ChatId, from: Seq, to: Seq) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        let mut after = from;
        while after < to {
            let page = self.history(chat, Page::After { seq: after, limit: 200 }).await?;
            let Some(last) = page.events.last().map(|e| e.seq) else { break };
            out.extend(page.events.into_iter().filter(|e| e.seq <= to));
            after = last;
        }
        Ok(out)
    }

    /// Loads the head of a chat and completes the side effects of events above the hint.
    async fn load_head(&self, chat: ChatId, head: &mut Head) -> Result<(), StoreError> {
        let Some(record) = self.chat_row(chat).await? else { return Err(StoreError::ChatNotFound) };
        let last = self.probe_head(chat, record.last_seq).await?;
        if last > record.last_seq {
            metrics::counter!("store_cql_side_effect_replays_total").increment(1);
            for event in self.events_between(chat, record.last_seq, last).await? {
                self.side_effects(chat, &event).await?;
            }
            self.write_hint(chat, last).await?;
        }
        head.last = last;
        head.loaded = true;
        Ok(())
    }

    async fn write_hint(&self, chat: ChatId, last: Seq) -> Result<(), StoreError> {
        self.session.execute_unpaged(&self.st.update_head, (last as i64, chat as i64)).await.map_err(unavailable)?;
        Ok(())
    }

    async fn put_event(&self, chat: ChatId, event: &Event) -> Result<(), StoreError> {
        let body = encode_envelope(event).to_vec();
        self.session
            .execute_unpaged(&self.st.insert_event, (chat as i64, self.bucket(event.seq), event.seq as i64, body))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn add_member(&self, chat: ChatId, user: &str, role: Role) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.st.insert_member, (chat as i64, user, role_byte(role)))
            .await
            .map_err(unavailable)?;
        self.session.execute_unpaged(&self.st.insert_user_chat, (user, chat as i64)).await.map_err(unavailable)?;
        Ok(())
    }

    /// Everything an event implies besides its own row. Idempotent.
    async fn side_effects(&self, chat: ChatId, event: &Event) -> Result<(), StoreError> {
        match &event.body {
            EventBody::Message { client_msg_id, .. } => {
                self.session
                    .execute_unpaged(
                        &self.st.insert_idem,
                        (chat as i64, event.sender.as_str(), client_msg_id.as_str(), event.seq as i64, event.ts as i64),
                    )
                    .await
                    .map_err(unavailable)?;
            }
            EventBody::MembersAdded { users, role } => {
                for u in users {
                    self.add_member(chat, u, *role).await?;
                }
            }
            EventBody::MembersRemoved { users } => {
                for u in users {
                    let (c, u) = (chat as i64, u.as_str());
                    self.session.execute_unpaged(&self.st.delete_member, (c, u)).await.map_err(unavailable)?;
                    self.session.execute_unpaged(&self.st.delete_user_chat, (u, c)).await.map_err(unavailable)?;
                    self.session.execute_unpaged(&self.st.delete_read, (c, u)).await.map_err(unavailable)?;
                }
            }
            EventBody::Edited { target, text } => {
                self.session
                    .execute_unpaged(&self.st.insert_edit, (chat as i64, *target as i64, event.seq as i64))
                    .await
                    .map_err(unavailable)?;
                if let Some(mut original) = self.event_at(chat, *target).await?
                    && let EventBody::Message { text: t, edited, deleted: false, .. } = &mut original.body
                    && (!*edited || self.is_latest_edit(chat, *target, event.seq).await?)
                {
                    t.clone_from(text);
                    *edited = true;
                    self.put_event(chat, &original).await?;
                }
            }
            EventBody::Deleted { target } => {
                if let Some(mut original) = self.event_at(chat, *target).await?
                    && let EventBody::Message { text, deleted, .. } = &mut original.body
                {
                    text.clear();
                    *deleted = true;
                    self.put_event(chat, &original).await?;
                }
                let result = self
                    .session
                    .execute_unpaged(&self.st.select_edits, (chat as i64, *target as i64))
                    .await
                    .map_err(unavailable)?;
                let rows = result.into_rows_result().map_err(unavailable)?;
                let seqs: Vec<(i64,)> = rows.rows().map_err(corrupt)?.collect::<Result<_, _>>().map_err(corrupt)?;
                for (s,) in seqs {
                    if let Some(mut edit) = self.event_at(chat, s as u64).await?
                        && let EventBody::Edited { text, .. } = &mut edit.body
                        && !text.is_empty()
                    {
                        text.clear();
                        self.put_event(chat, &edit).await?;
                    }
                }
            }
            EventBody::Created { .. } => {}
        }
        Ok(())
    }

    async fn is_latest_edit(&self, chat: ChatId, target: Seq, seq: Seq) -> Result<bool, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.st.select_edits, (chat as i64, target as i64))
            .await
            .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let seqs: Vec<(i64,)> = rows.rows().map_err(corrupt)?.collect::<Result<_, _>>().map_err(corrupt)?;
        Ok(seqs.iter().all(|(s,)| *s as u64 <= seq))
    }

    async fn role_of(&self, chat: ChatId, user: &str) -> Result<Option<Role>, StoreError> {
        let result =
            self.session.execute_unpaged(&self.st.select_role, (chat as i64, user)).await.map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let row: Option<(i8,)> = rows.maybe_first_row().map_err(corrupt)?;
        Ok(row.map(|(r,)| byte_role(r)))
    }

    async fn idempotency(&self, chat: ChatId, sender: &str, cmid: &str) -> Result<Option<(Seq, u64)>, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.st.select_idem, (chat as i64, sender, cmid))
            .await
            .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let row: Option<(i64, i64)> = rows.maybe_first_row().map_err(corrupt)?;
        Ok(row.map(|(s, t)| (s as u64, t as u64)))
    }

    /// Builds the event body for an append at the current head, or rejects it.
    async fn prepare_append(&self, a: &Append) -> Result<Result<EventBody, Appended>, StoreError> {
        Ok(Ok(match &a.mutation {
            Mutation::Message { client_msg_id, text } => {
                if let Some((seq, ts)) = self.idempotency(a.chat, &a.sender, client_msg_id).await? {
                    if let Some(Event {
                        body: EventBody::Message { text: stored, edited: false, deleted: false, .. },
                        ..
                    }) = self.event_at(a.chat, seq).await?
                        && stored != *text
                    {
                        return Err(StoreError::Conflict);
                    }
                    return Ok(Err(Appended::Duplicate { seq, ts }));
                }
                EventBody::Message {
                    client_msg_id: client_msg_id.clone(),
                    text: text.clone(),
                    edited: false,
                    deleted: false,
                }
            }
            Mutation::Edit { target, text } => {
                self.check_target(a.chat, *target).await?;
                EventBody::Edited { target: *target, text: text.clone() }
            }
            Mutation::Delete { target } => {
                self.check_target(a.chat, *target).await?;
                EventBody::Deleted { target: *target }
            }
            Mutation::AddMembers { users, role } => {
                let mut added = Vec::new();
                for u in users {
                    if self.role_of(a.chat, u).await? != Some(*role) && !added.contains(u) {
                        added.push(u.clone());
                    }
                }
                if added.is_empty() {
                    return Err(StoreError::NoChange("already members with that role"));
                }
                EventBody::MembersAdded { users: added, role: *role }
            }
            Mutation::RemoveMembers { users } => {
                let mut removed = Vec::new();
                for u in users {
                    if self.role_of(a.chat, u).await?.is_some() && !removed.contains(u) {
                        removed.push(u.clone());
                    }
                }
                if removed.is_empty() {
                    return Err(StoreError::NoChange("not members"));
                }
                EventBody::MembersRemoved { users: removed }
            }
        }))
    }

    async fn check_target(&self, chat: ChatId, target: Seq) -> Result<(), StoreError> {
        match self.event_at(chat, target).await? {
            Some(Event { body: EventBody::Message { deleted: false, .. }, .. }) => Ok(()),
            _ => Err(StoreError::TargetNotFound),
        }
    }

    /// Reads history partitions in seq order, `ascending` from `start` or descending.
    async fn scan(
        &self,
        chat: ChatId,
        start: Seq,
        ascending: bool,
        want: usize,
        last_bucket: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let mut out = Vec::new();
        // The first partition that can hold a match: seq > start ascending, < start descending.
        let mut b = if ascending { self.bucket(start + 1) } else { self.bucket(start.saturating_sub(1)) };
        let mut bound = start;
        while out.len() < want && b >= 0 && b <= last_bucket {
            let limit = (want - out.len()) as i32;
            let (stmt, values) = if ascending {
                (&self.st.select_after, (chat as i64, b, bound as i64, limit))
            } else {
                (&self.st.select_before, (chat as i64, b, bound as i64, limit))
            };
            let result = self.session.execute_unpaged(stmt, values).await.map_err(unavailable)?;
            let rows = result.into_rows_result().map_err(unavailable)?;
            for row in rows.rows::<(Vec<u8>,)>().map_err(corrupt)? {
                let (body,) = row.map_err(corrupt)?;
                out.push(decode_envelope::<Event>(&body).map_err(corrupt)?);
            }
            if ascending {
                b += 1;
                bound = (b as u64 * self.bucket_size).saturating_sub(1);
            } else {
                if b == 0 {
                    break;
                }
                b -= 1;
                bound = (b as u64 + 1) * self.bucket_size;
            }
        }
        Ok(out)
    }
}

fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    let pem = std::fs::read(ca).map_err(|e| StoreError::Unavailable(format!("read {ca:?}: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| StoreError::Unavailable(format!("CA file {ca:?}: {e}")))?;
        roots.add(cert).map_err(|e| StoreError::Unavailable(format!("CA file {ca:?}: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unavailable)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The keyspace's bucket size: the one recorded at creation, or `proposed` for a new keyspace.
async fn bucket_size(session: &Session, ks: &str, proposed: u64) -> Result<u64, StoreError> {
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.settings (name, value) VALUES ('events_per_bucket', ?) IF NOT EXISTS"),
            (proposed as i64,),
        )
        .await
        .map_err(unavailable)?;
    let result = session
        .query_unpaged(format!("SELECT value FROM {ks}.settings WHERE name = 'events_per_bucket'"), ())
        .await
        .map_err(unavailable)?;
    let rows = result.into_rows_result().map_err(unavailable)?;
    let (value,): (i64,) = rows.first_row().map_err(corrupt)?;
    if value <= 0 {
        return Err(StoreError::Corrupt(format!("events_per_bucket {value}")));
    }
    Ok(value as u64)
}

async fn migrate(session: &Session, ks: &str) -> Result<(), StoreError> {
    session
        .query_unpaged(
            format!("CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, description text)"),
            (),
        )
        .await
        .map_err(unavailable)?;
    let result =
        session.query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), ()).await.map_err(unavailable)?;
    let rows = result.into_rows_result().map_err(unavailable)?;
    let applied: Vec<i32> =
        rows.rows::<(i32,)>().map_err(corrupt)?.map(|r| r.map(|(v,)| v)).collect::<Result<_, _>>().map_err(corrupt)?;
    for (version, description, statements) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, description, "applying schema migration");
        for stmt in *statements {
            session.query_unpaged(stmt.replace("{ks}", ks), ()).await.map_err(unavailable)?;
        }
        session
            .query_unpaged(
                format!("INSERT INTO {ks}.schema_migrations (version, description) VALUES (?, ?)"),
                (*version, *description),
            )
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

impl Statements {
    async fn prepare(session: &Session, ks: &str, config: &CqlConfig) -> Result<Self, StoreError> {
        let prep = |cql: String| async move {
            let mut p = session.prepare(cql).await.map_err(unavailable)?;
            p.set_consistency(config.consistency);
            p.set_serial_consistency(Some(config.serial_consistency));
            Ok::<_, StoreError>(p)
        };
        Ok(Statements {
            insert_chat_lwt: prep(format!("INSERT INTO {ks}.chats (chat, kind, title, creator, created_ts, last_seq) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS")).await?,
            select_chat: prep(format!("SELECT kind, title, creator, created_ts, last_seq FROM {ks}.chats WHERE chat = ?")).await?,
            update_head: prep(format!("UPDATE {ks}.chats SET last_seq = ? WHERE chat = ?")).await?,
            insert_member: prep(format!("INSERT INTO {ks}.members (chat, user, role) VALUES (?, ?, ?)")).await?,
            delete_member: prep(format!("DELETE FROM {ks}.members WHERE chat = ? AND user = ?")).await?,
            select_role: prep(format!("SELECT role FROM {ks}.members WHERE chat = ? AND user = ?")).await?,
            insert_user_chat: prep(format!("INSERT INTO {ks}.user_chats (user, chat) VALUES (?, ?)")).await?,
            delete_user_chat: prep(format!("DELETE FROM {ks}.user_chats WHERE user = ? AND chat = ?")).await?,
            select_user_chats: prep(format!("SELECT chat FROM {ks}.user_chats WHERE user = ?")).await?,
            insert_event_lwt: prep(format!("INSERT INTO {ks}.events (chat, bucket, seq, body) VALUES (?, ?, ?, ?) IF NOT EXISTS")).await?,
            insert_event: prep(format!("INSERT INTO {ks}.events (chat, bucket, seq, body) VALUES (?, ?, ?, ?)")).await?,
            select_event: prep(format!("SELECT body FROM {ks}.events WHERE chat = ? AND bucket = ? AND seq = ?")).await?,
            select_latest: prep(format!("SELECT seq FROM {ks}.events WHERE chat = ? AND bucket = ? LIMIT 1")).await?,
            select_after: prep(format!("SELECT body FROM {ks}.events WHERE chat = ? AND bucket = ? AND seq > ? ORDER BY seq ASC LIMIT ?")).await?,
            select_before: prep(format!("SELECT body FROM {ks}.events WHERE chat = ? AND bucket = ? AND seq < ? ORDER BY seq DESC LIMIT ?")).await?,
            insert_idem: prep(format!("INSERT INTO {ks}.idempotency (chat, sender, client_msg_id, seq, ts) VALUES (?, ?, ?, ?, ?)")).await?,
            select_idem: prep(format!("SELECT seq, ts FROM {ks}.idempotency WHERE chat = ? AND sender = ? AND client_msg_id = ?")).await?,
            upsert_read: prep(format!("UPDATE {ks}.reads SET seq = ? WHERE chat = ? AND user = ?")).await?,
            select_read: prep(format!("SELECT seq FROM {ks}.reads WHERE chat = ? AND user = ?")).await?,
            delete_read: prep(format!("DELETE FROM {ks}.reads WHERE chat = ? AND user = ?")).await?,
            insert_direct_lwt: prep(format!("INSERT INTO {ks}.direct_chats (pair, chat) VALUES (?, ?) IF NOT EXISTS")).await?,
            select_direct: prep(format!("SELECT chat FROM {ks}.direct_chats WHERE pair = ?")).await?,
            insert_edit: prep(format!("INSERT INTO {ks}.edits (chat, target, seq) VALUES (?, ?, ?)")).await?,
            select_edits: prep(format!("SELECT seq FROM {ks}.edits WHERE chat = ? AND target = ?")).await?,
        })
    }
}

#[async_trait]
impl Store for CqlStore {
    async fn create_chat(&self, new: NewChat) -> Result<Created, StoreError> {
        let mut id = new.id;
        let mut resuming_direct = false;
        if new.kind == ChatKind::Direct {
            let mut pair: Vec<&str> = new.members.iter().map(|(u, _)| u.as_str()).collect();
            pair.sort_unstable();
            let [a, b] = pair.as_slice() else {
                return Err(StoreError::NoChange("a direct chat has exactly two members"));
            };
            let key = format!("{a}\n{b}");
            let result = self
                .session
                .execute_unpaged(&self.st.insert_direct_lwt, (key.as_str(), id as i64))
                .await
                .map_err(unavailable)?;
            if !applied(result)?.0 {
                let result =
                    self.session.execute_unpaged(&self.st.select_direct, (key.as_str(),)).await.map_err(unavailable)?;
                let rows = result.into_rows_result().map_err(unavailable)?;
                let Some((existing,)) = rows.maybe_first_row::<(i64,)>().map_err(corrupt)? else {
                    return Err(StoreError::Unavailable("direct chat claim not readable yet; retry".into()));
                };
                let existing = existing as u64;
                if self.chat_row(existing).await?.is_some() {
                    return Ok(Created::Existing { chat: existing });
                }
                // A creation that crashed half way: finish it under the id it claimed.
                id = existing;
                resuming_direct = true;
            }
        }
        let result = self
            .session
            .execute_unpaged(
                &self.st.insert_chat_lwt,
                (id as i64, kind_byte(new.kind), new.title.as_str(), new.creator.as_str(), new.ts as i64, 1i64),
            )
            .await
            .map_err(unavailable)?;
        if !applied(result)?.0 && !resuming_direct {
            return Err(StoreError::Unavailable("chat id collision; retry".into()));
        }
        let event = new.created_event();
        // The chat is invisible until its members are written, so a crash before here leaves
        // only an unreachable row; the event is written last so seq 1 exists once visible.
        for (user, role) in &new.members {
            self.add_member(id, user, *role).await?;
        }
        self.put_event(id, &event).await?;
        Ok(Created::New { chat: id, event })
    }

    async fn chat(&self, chat: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        self.chat_row(chat).await
    }

    async fn role(&self, chat: ChatId, user: &str) -> Result<Option<Role>, StoreError> {
        self.role_of(chat, user).await
    }

    async fn event(&self, chat: ChatId, seq: Seq) -> Result<Option<Event>, StoreError> {
        self.event_at(chat, seq).await
    }

    async fn append(&self, a: Append) -> Result<Appended, StoreError> {
        let lock = self.head_lock(a.chat);
        let mut head = lock.lock().await;
        for _ in 0..MAX_APPEND_ATTEMPTS {
            if !head.loaded {
                self.load_head(a.chat, &mut head).await?;
            }
            let body = match self.prepare_append(&a).await? {
                Ok(body) => body,
                Err(duplicate) => return Ok(duplicate),
            };
            let event = Event { seq: head.last + 1, ts: a.ts, sender: a.sender.clone(), body };
            let bytes = encode_envelope(&event).to_vec();
            let claim = self
                .session
                .execute_unpaged(
                    &self.st.insert_event_lwt,
                    (a.chat as i64, self.bucket(event.seq), event.seq as i64, bytes),
                )
                .await;
            let won = match claim {
                Ok(result) => applied(result),
                Err(e) => Err(unavailable(e)),
            };
            match won {
                Ok((true, _)) => {
                    head.last = event.seq;
                    // If these fail, the event stands (it is durable and was acked by the
                    // database) but its effects are incomplete: forget the head so the next
                    // append replays them, and report the failure.
                    let effects = async {
                        self.side_effects(a.chat, &event).await?;
                        self.write_hint(a.chat, event.seq).await
                    };
                    if let Err(e) = effects.await {
                        head.loaded = false;
                        return Err(e);
                    }
                    return Ok(Appended::New(event));
                }
                Ok((false, _)) => {
                    // Another writer holds this seq: catch up with it and try again.
                    metrics::counter!("store_cql_seq_conflicts_total").increment(1);
                    head.loaded = false;
                }
                Err(e) => {
                    // Unknown outcome (timeout, node down). Never report success on a guess:
                    // the next append reloads the head, replays effects, and a retried send
                    // then finds its own message as a duplicate.
                    head.loaded = false;
                    return Err(e);
                }
            }
        }
        Err(StoreError::Unavailable("too much contention on this chat's seq; retry".into()))
    }

    async fn history(&self, chat: ChatId, page: Page) -> Result<HistoryPage, StoreError> {
        let Some(record) = self.chat_row(chat).await? else {
            return Ok(HistoryPage { events: Vec::new(), more: false });
        };
        let head = self.probe_head(chat, record.last_seq).await?;
        let last_bucket = self.bucket(head);
        let (start, ascending, limit) = match page {
            Page::Latest { limit } => (head + 1, false, limit),
            Page::Before { seq, limit } => (seq.min(head + 1), false, limit),
            Page::After { seq, limit } => (seq, true, limit),
        };
        if (!ascending && start <= 1) || (ascending && start >= head) {
            return Ok(HistoryPage { events: Vec::new(), more: false });
        }
        let want = limit as usize + 1;
        let mut events = self.scan(chat, start, ascending, want, last_bucket).await?;
        let more = events.len() > limit as usize;
        events.truncate(limit as usize);
        if !ascending {
            events.reverse();
        }
        Ok(HistoryPage { events, more })
    }

    async fn user_chats(&self, user: &str) -> Result<Vec<ChatSummary>, StoreError> {
        let mut out = Vec::new();
        for chat in self.chat_ids(user).await? {
            let Some(record) = self.chat_row(chat).await? else { continue };
            let Some(role) = self.role_of(chat, user).await? else { continue };
            let result =
                self.session.execute_unpaged(&self.st.select_read, (chat as i64, user)).await.map_err(unavailable)?;
            let rows = result.into_rows_result().map_err(unavailable)?;
            let read: Option<(i64,)> = rows.maybe_first_row().map_err(corrupt)?;
            out.push(ChatSummary {
                chat,
                kind: record.kind,
                title: record.title,
                role,
                last_seq: record.last_seq,
                read_seq: read.map(|(s,)| s as u64).unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn chat_ids(&self, user: &str) -> Result<Vec<ChatId>, StoreError> {
        let result = self.session.execute_unpaged(&self.st.select_user_chats, (user,)).await.map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        rows.rows::<(i64,)>().map_err(corrupt)?.map(|r| r.map(|(c,)| c as u64).map_err(corrupt)).collect()
    }

    async fn set_read(&self, chat: ChatId, user: &str, seq: Seq) -> Result<Seq, StoreError> {
        let Some(record) = self.chat_row(chat).await? else { return Err(StoreError::ChatNotFound) };
        let result =
            self.session.execute_unpaged(&self.st.select_read, (chat as i64, user)).await.map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let current = rows.maybe_first_row::<(i64,)>().map_err(corrupt)?.map(|(s,)| s as u64).unwrap_or(0);
        let next = seq.min(record.last_seq).max(current);
        if next != current {
            self.session
                .execute_unpaged(&self.st.upsert_read, (next as i64, chat as i64, user))
                .await
                .map_err(unavailable)?;
        }
        Ok(next)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write was acknowledged by the database at the configured consistency.
        Ok(())
    }
}
