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

mod history;
mod schema;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use protocol::codec::{decode_envelope, encode_envelope};
use protocol::revocation::{Revocation, RevocationKey};
use protocol::{ChatId, ChatKind, ChatSummary, Event, Role, Seq};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

pub use schema::valid_keyspace;
use schema::{Statements, bucket_size, migrate, tls_config};

use rules::append::{Decision, Earlier, Effect, Facts, Lookups};

use crate::{Append, Appended, ChatRecord, Created, HistoryPage, NewChat, Page, Store, StoreError};

/// Events per partition of the `events` table, for a new keyspace. It is recorded in the
/// keyspace (`settings`) on creation and read back on every connect, since changing it under
/// existing data would misplace every event.
pub const EVENTS_PER_BUCKET: u64 = 16_384;

/// Attempts at an append when other writers keep taking the next seq.
const MAX_APPEND_ATTEMPTS: usize = 16;

/// Chats whose head a store keeps in memory; idle ones are forgotten past this.
const MAX_CACHED_HEADS: usize = 100_000;

/// Cassandra's largest TTL (20 years), the bound of a revocation row's lifetime.
const MAX_TTL_SECONDS: u64 = 630_720_000;

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
    /// A client certificate chain and its private key (PEM files, both or neither), presented
    /// to nodes that authenticate clients by certificate. Needs `tls_ca`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
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
            tls_cert: None,
            tls_key: None,
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
        let identity = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(StoreError::Unavailable("a TLS client certificate needs its key, and the reverse".into())),
        };
        match (&config.tls_ca, identity) {
            (Some(ca), identity) => builder = builder.tls_context(Some(tls_config(ca, identity)?)),
            (None, Some(_)) => {
                return Err(StoreError::Unavailable("a TLS client certificate needs the CA of the nodes".into()));
            }
            (None, None) => {}
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

    async fn load_head(&self, chat: ChatId, head: &mut Head) -> Result<(), StoreError> {
        let Some(record) = self.chat_row(chat).await? else { return Err(StoreError::ChatNotFound) };
        let last = self.probe_head(chat, record.last_seq).await?;
        if last > record.last_seq {
            metrics::counter!("store_cql_side_effect_replays_total").increment(1);
            for event in self.events_between(chat, record.last_seq, last).await? {
                self.replay(chat, &event).await?;
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

    /// Reads what the rules asked for.
    async fn facts(&self, chat: ChatId, lookups: &Lookups<'_>) -> Result<Facts, StoreError> {
        let mut facts = Facts::default();
        if let Some((sender, client_msg_id)) = lookups.earlier
            && let Some((seq, ts)) = self.idempotency(chat, sender, client_msg_id).await?
        {
            // An unreadable original still answers as a duplicate: never store a message twice.
            let event = self.event_at(chat, seq).await.ok().flatten();
            facts.earlier = Some(Earlier { seq, ts, event });
        }
        for user in lookups.roles {
            if let Some(role) = self.role_of(chat, user).await? {
                facts.roles.push((user.clone(), role));
            }
        }
        if let Some(target) = lookups.target {
            facts.target = self.event_at(chat, target).await?;
        }
        if let Some(target) = lookups.edits_of {
            let result = self
                .session
                .execute_unpaged(&self.st.select_edits, (chat as i64, target as i64))
                .await
                .map_err(unavailable)?;
            let rows = result.into_rows_result().map_err(unavailable)?;
            let seqs: Vec<(i64,)> = rows.rows().map_err(corrupt)?.collect::<Result<_, _>>().map_err(corrupt)?;
            for (seq,) in seqs {
                // An undecodable edit cannot be erased, and must not block the delete.
                if let Ok(Some(edit)) = self.event_at(chat, seq as u64).await {
                    facts.edits.push(edit);
                }
            }
        }
        Ok(facts)
    }

    /// Completes the effects of an event written earlier (the rules decide them again from
    /// the current state; every effect is idempotent).
    async fn replay(&self, chat: ChatId, event: &Event) -> Result<(), StoreError> {
        let facts = self.facts(chat, &rules::append::effect_lookups(event)).await?;
        for effect in rules::append::effects(event, &facts) {
            self.carry_out(chat, &effect).await?;
        }
        Ok(())
    }

    /// Carries out one effect the rules decided. Idempotent, as every effect is.
    async fn carry_out(&self, chat: ChatId, effect: &Effect) -> Result<(), StoreError> {
        let c = chat as i64;
        match effect {
            Effect::Rewrite(event) => self.put_event(chat, event).await?,
            Effect::RecordIdempotency { sender, client_msg_id, seq, ts } => {
                self.session
                    .execute_unpaged(
                        &self.st.insert_idem,
                        (c, sender.as_str(), client_msg_id.as_str(), *seq as i64, *ts as i64),
                    )
                    .await
                    .map_err(unavailable)?;
            }
            Effect::AddMember { user, role } => self.add_member(chat, user, *role).await?,
            Effect::RemoveMember { user } => {
                let u = user.as_str();
                self.session.execute_unpaged(&self.st.delete_member, (c, u)).await.map_err(unavailable)?;
                self.session.execute_unpaged(&self.st.delete_user_chat, (u, c)).await.map_err(unavailable)?;
                self.session.execute_unpaged(&self.st.delete_read, (c, u)).await.map_err(unavailable)?;
            }
            Effect::RecordEdit { target, seq } => {
                self.session
                    .execute_unpaged(&self.st.insert_edit, (c, *target as i64, *seq as i64))
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
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
}

#[async_trait]
impl Store for CqlStore {
    async fn create_chat(&self, new: NewChat) -> Result<Created, StoreError> {
        let mut id = new.id;
        let mut resuming_direct = false;
        if let Some((a, b)) = new.direct_pair().map_err(StoreError::Invalid)? {
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
            return Err(StoreError::IdCollision);
        }
        let event = new.created_event();
        // The chat is invisible until its members are written, so a crash before here leaves
        // only an unreachable row; the event is written last so seq 1 exists once visible.
        for effect in new.effects() {
            self.carry_out(id, &effect).await?;
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
            let facts = self.facts(a.chat, &a.lookups()).await?;
            let (event, effects) = match rules::append::decide(&a, head.last + 1, &facts)? {
                Decision::New { event, effects } => (event, effects),
                Decision::Duplicate { seq, ts } => return Ok(Appended::Duplicate { seq, ts }),
            };
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
                    let carried = async {
                        for effect in &effects {
                            self.carry_out(a.chat, effect).await?;
                        }
                        self.write_hint(a.chat, event.seq).await
                    };
                    if let Err(e) = carried.await {
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
        self.read_history(chat, page).await
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
        let next = rules::append::read_cursor(seq, record.last_seq, current);
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

    async fn revoke(&self, revocation: Revocation, now: u64) -> Result<Revocation, StoreError> {
        let key = revocation.key();
        let result = self
            .session
            .execute_unpaged(&self.st.select_revocation, (key.kind.as_str(), key.id.as_str()))
            .await
            .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let earlier = match rows.maybe_first_row::<(Vec<u8>,)>().map_err(corrupt)? {
            Some((body,)) => Some(decode_envelope::<Revocation>(&body).map_err(corrupt)?),
            None => None,
        };
        // Read, merge, write: two administrators revoking the same key at the same moment
        // with different cuts could keep the narrower; revocations are rare and a retry fixes it.
        let merged = revocation.merged(earlier.as_ref());
        // The row expires when no token it matches can be valid any more: pruning for free.
        let ttl = merged.until().saturating_sub(now).clamp(1, MAX_TTL_SECONDS) as i32;
        self.session
            .execute_unpaged(
                &self.st.insert_revocation,
                (key.kind.as_str(), key.id.as_str(), encode_envelope(&merged).to_vec(), ttl),
            )
            .await
            .map_err(unavailable)?;
        Ok(merged)
    }

    async fn revocations(
        &self,
        after: Option<RevocationKey>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Revocation>, StoreError> {
        let limit = limit.clamp(1, i32::MAX as usize) as i32;
        let result = match &after {
            None => self.session.execute_unpaged(&self.st.select_revocations_first, (limit,)).await,
            Some(k) => {
                self.session
                    .execute_unpaged(&self.st.select_revocations_after, (k.kind.as_str(), k.id.as_str(), limit))
                    .await
            }
        }
        .map_err(unavailable)?;
        let rows = result.into_rows_result().map_err(unavailable)?;
        let mut out = Vec::new();
        for row in rows.rows::<(Vec<u8>,)>().map_err(corrupt)? {
            let (body,) = row.map_err(corrupt)?;
            let r = decode_envelope::<Revocation>(&body).map_err(corrupt)?;
            if r.until() > now {
                out.push(r);
            }
        }
        Ok(out)
    }
}
