//! The embedded backend: one redb file on local disk.
//!
//! Writes go through one writer thread that takes every write waiting in its queue (up to
//! [`EmbeddedConfig::max_batch`]), applies them in one transaction and commits once with
//! fsync: a group commit. Under load, one fsync covers hundreds of sends; alone, a send
//! waits for exactly one. Replies are sent only after the commit returns, so an ack is never
//! ahead of the disk. Reads run on the blocking pool against a read snapshot.
//!
//! Each write is validated before it writes anything, so a rejected write (unknown target,
//! nothing to change) leaves the batch untouched; a storage error aborts the whole batch and
//! every write in it gets [`StoreError::Unavailable`], with nothing half-written.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use protocol::codec::{decode_envelope, encode_envelope};
use protocol::revocation::{Revocation, RevocationKey};
use protocol::{ChatId, ChatSummary, Event, Role, Seq};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use rules::append::{Decision, Earlier, Effect, Facts, Lookups};
use tokio::sync::{mpsc, oneshot};

use crate::{Append, Appended, ChatRecord, Created, HistoryPage, NewChat, Page, Store, StoreError};
use crate::{role_code as role_byte, role_from_code as byte_role};

/// chat → [`ChatRecord`]
const CHATS: TableDefinition<u64, &[u8]> = TableDefinition::new("chats");
/// (chat, user) → role (0 member, 1 admin)
const MEMBERS: TableDefinition<(u64, &str), u8> = TableDefinition::new("members");
/// (user, chat) → 0; the reverse index of MEMBERS, for "my chats".
const USER_CHATS: TableDefinition<(&str, u64), u8> = TableDefinition::new("user_chats");
/// (chat, seq) → [`Event`]
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
/// (chat, sender, client_msg_id) → (seq, ts)
const IDEMPOTENCY: TableDefinition<(u64, &str, &str), (u64, u64)> = TableDefinition::new("idempotency");
/// (chat, user) → read cursor
const READS: TableDefinition<(u64, &str), u64> = TableDefinition::new("reads");
/// (chat, target seq, edit seq) → 0: the edits of a message, so a delete can erase their text.
/// Kept after the delete (a few bytes each), as in the CQL store, where removing them would
/// write tombstones.
const EDITS: TableDefinition<(u64, u64, u64), u8> = TableDefinition::new("edits");
/// (user a, user b) with a < b → direct chat id
const DIRECT: TableDefinition<(&str, &str), u64> = TableDefinition::new("direct");
/// (kind, id) → revocation (bincode)
const REVOCATIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("revocations");
/// (until, kind, id) → (): which revocations to forget, oldest first.
const REVOCATION_EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("revocation_expiry");
/// Expired revocations forgotten per revocation written: pruning stays a bounded cost of a
/// write instead of a scan.
const PRUNE_PER_WRITE: usize = 256;

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// The database file; created if missing.
    pub path: PathBuf,
    /// Most writes committed together in one transaction (one fsync).
    pub max_batch: usize,
    /// Writes that may wait for the writer thread; senders wait (backpressure) beyond it.
    pub queue_capacity: usize,
}

impl EmbeddedConfig {
    /// Default group-commit size: large enough that one fsync serves a burst, small enough
    /// that one transaction stays a few hundred KiB.
    pub const DEFAULT_MAX_BATCH: usize = 512;
    /// Default write queue length.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;

    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            path: path.into(),
            max_batch: Self::DEFAULT_MAX_BATCH,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
        }
    }
}

enum WriteOp {
    Create(NewChat),
    Append(Append),
    SetRead { chat: ChatId, user: String, seq: Seq },
    Revoke { revocation: Revocation, now: u64 },
}

enum WriteDone {
    Created(Created),
    Appended(Appended),
    Read(Seq),
    Revoked(Revocation),
}

struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteDone, StoreError>>,
}

/// The embedded store. Cloning is cheap; the writer thread stops when the last clone drops.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writes: mpsc::Sender<WriteJob>,
    _writer: Arc<WriterThread>,
}

struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        // The channel is closed by now (the store's sender dropped with it), so the thread
        // finishes its last batch and exits; joining makes "dropped" mean "committed".
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database and starts the writer thread.
    pub fn open(config: EmbeddedConfig) -> Result<Self, StoreError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(|e| StoreError::Unavailable(format!("create {dir:?}: {e}")))?;
        }
        let db = Database::create(&config.path).map_err(unavailable)?;
        restrict_file(&config.path).map_err(|e| StoreError::Unavailable(format!("chmod {:?}: {e}", config.path)))?;
        let db = Arc::new(db);
        init_tables(&db).map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let writer_db = db.clone();
        let max_batch = config.max_batch.max(1);
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_db, rx, max_batch))
            .map_err(|e| StoreError::Unavailable(format!("spawn writer: {e}")))?;
        Ok(EmbeddedStore { db, writes: tx, _writer: Arc::new(WriterThread(Some(handle))) })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteDone, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writes.send(WriteJob { op, reply }).await.map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("writer stopped".into()))?
    }

    /// A point lookup (one key), run on the caller's thread. It costs a few microseconds of
    /// B-tree walk over cached pages; sending it to the blocking pool and back cost two thread
    /// wake-ups, and the router does one per request (the sender's role), so at 10,000 sends/s
    /// the hand-offs were a visible share of the node's CPU and of its tail latency. Scans
    /// (history pages, chat lists) still go through [`EmbeddedStore::read`].
    fn lookup<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        f(&txn)
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            f(&txn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("read task: {e}")))?
    }
}

/// Creates a data directory (and any missing parent) owner-only: every message is in it in
/// plain text. A directory that already exists is left as it is (a volume mount may need
/// group access), but one that others can read is reported with a warning.
#[cfg(unix)]
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "the data directory is open to other users; chmod 700 it");
    }
    Ok(())
}

/// Creates a data directory (and any missing parent).
#[cfg(not(unix))]
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn restrict_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn restrict_file(_: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn init_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(CHATS)?;
    txn.open_table(MEMBERS)?;
    txn.open_table(USER_CHATS)?;
    txn.open_table(EVENTS)?;
    txn.open_table(IDEMPOTENCY)?;
    txn.open_table(READS)?;
    txn.open_table(DIRECT)?;
    txn.open_table(EDITS)?;
    txn.open_table(REVOCATIONS)?;
    txn.open_table(REVOCATION_EXPIRY)?;
    txn.commit()?;
    Ok(())
}

fn writer_loop(db: Arc<Database>, mut rx: mpsc::Receiver<WriteJob>, max_batch: usize) {
    let mut jobs = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("store_group_commit_writes").record(jobs.len() as f64);
        match commit_batch(&db, &jobs) {
            Ok(results) => {
                for (job, result) in jobs.drain(..).zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, writes = jobs.len(), "group commit failed; batch rejected");
                metrics::counter!("store_commit_failures_total").increment(1);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Unavailable(err.to_string())));
                }
            }
        }
    }
}

struct Tables<'t> {
    chats: Table<'t, u64, &'static [u8]>,
    members: Table<'t, (u64, &'static str), u8>,
    user_chats: Table<'t, (&'static str, u64), u8>,
    events: Table<'t, (u64, u64), &'static [u8]>,
    idempotency: Table<'t, (u64, &'static str, &'static str), (u64, u64)>,
    reads: Table<'t, (u64, &'static str), u64>,
    direct: Table<'t, (&'static str, &'static str), u64>,
    edits: Table<'t, (u64, u64, u64), u8>,
}

/// Applies every job in one transaction. The outer error aborts the batch; inner errors are
/// per-write rejections that wrote nothing.
fn commit_batch(db: &Database, jobs: &[WriteJob]) -> Result<Vec<Result<WriteDone, StoreError>>, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut results = Vec::with_capacity(jobs.len());
    {
        let mut t = Tables {
            chats: txn.open_table(CHATS)?,
            members: txn.open_table(MEMBERS)?,
            user_chats: txn.open_table(USER_CHATS)?,
            events: txn.open_table(EVENTS)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            reads: txn.open_table(READS)?,
            direct: txn.open_table(DIRECT)?,
            edits: txn.open_table(EDITS)?,
        };
        for job in jobs {
            let result = match &job.op {
                WriteOp::Create(chat) => apply_create(&mut t, chat)?.map(WriteDone::Created),
                WriteOp::Append(append) => apply_append(&mut t, append)?.map(WriteDone::Appended),
                WriteOp::SetRead { chat, user, seq } => apply_read(&mut t, *chat, user, *seq)?.map(WriteDone::Read),
                WriteOp::Revoke { revocation, now } => {
                    apply_revoke(&txn, revocation.clone(), *now)?.map(WriteDone::Revoked)
                }
            };
            results.push(result);
        }
    }
    txn.commit()?;
    Ok(results)
}

type Applied<T> = Result<Result<T, StoreError>, redb::Error>;

/// Stores a revocation merged with the earlier one of its key, and forgets a bounded number
/// of expired ones.
fn apply_revoke(txn: &redb::WriteTransaction, revocation: Revocation, now: u64) -> Applied<Revocation> {
    let mut table = txn.open_table(REVOCATIONS)?;
    let mut expiry = txn.open_table(REVOCATION_EXPIRY)?;
    let key = revocation.key();
    let earlier = match table.get((key.kind.as_str(), key.id.as_str()))? {
        None => None,
        Some(g) => match decode_envelope::<Revocation>(g.value()) {
            Ok(r) => Some(r),
            Err(e) => return Ok(Err(corrupt(e))),
        },
    };
    let merged = revocation.merged(earlier.as_ref());
    if let Some(e) = &earlier {
        expiry.remove((e.until(), key.kind.as_str(), key.id.as_str()))?;
    }
    table.insert((key.kind.as_str(), key.id.as_str()), encode_envelope(&merged).as_ref())?;
    expiry.insert((merged.until(), key.kind.as_str(), key.id.as_str()), ())?;
    let mut expired = Vec::new();
    for item in expiry.range((0, "", "")..(now.saturating_add(1), "", ""))?.take(PRUNE_PER_WRITE) {
        let (k, _) = item?;
        let (until, kind, id) = k.value();
        expired.push((until, kind.to_owned(), id.to_owned()));
    }
    for (until, kind, id) in expired {
        expiry.remove((until, kind.as_str(), id.as_str()))?;
        table.remove((kind.as_str(), id.as_str()))?;
    }
    Ok(Ok(merged))
}

fn load_chat(t: &Tables<'_>, chat: ChatId) -> Applied<ChatRecord> {
    Ok(match t.chats.get(chat)? {
        None => Err(StoreError::ChatNotFound),
        Some(bytes) => decode_envelope::<ChatRecord>(bytes.value()).map_err(corrupt),
    })
}

fn apply_create(t: &mut Tables<'_>, new: &NewChat) -> Applied<Created> {
    let pair = match new.direct_pair() {
        Ok(pair) => pair,
        Err(why) => return Ok(Err(StoreError::Invalid(why))),
    };
    if let Some((a, b)) = pair
        && let Some(existing) = t.direct.get((a, b))?
    {
        return Ok(Ok(Created::Existing { chat: existing.value() }));
    }
    if t.chats.get(new.id)?.is_some() {
        return Ok(Err(StoreError::IdCollision));
    }
    let record = ChatRecord {
        kind: new.kind,
        title: new.title.clone(),
        creator: new.creator.clone(),
        created_ts: new.ts,
        last_seq: 1,
    };
    let event = new.created_event();
    t.chats.insert(new.id, encode_envelope(&record).as_ref())?;
    t.events.insert((new.id, 1), encode_envelope(&event).as_ref())?;
    for effect in new.effects() {
        carry_out(t, new.id, &effect)?;
    }
    if let Some((a, b)) = pair {
        t.direct.insert((a, b), new.id)?;
    }
    Ok(Ok(Created::New { chat: new.id, event }))
}

/// Reads what the rules asked for, inside the write transaction (so it sees the earlier
/// writes of the same batch).
fn facts(t: &Tables<'_>, chat: ChatId, lookups: &Lookups<'_>) -> Applied<Facts> {
    let event_at = |seq: Seq| -> Applied<Option<Event>> {
        Ok(match t.events.get((chat, seq))? {
            None => Ok(None),
            Some(g) => decode_envelope::<Event>(g.value()).map(Some).map_err(corrupt),
        })
    };
    let mut facts = Facts::default();
    if let Some((sender, client_msg_id)) = lookups.earlier
        && let Some(record) = t.idempotency.get((chat, sender, client_msg_id))?
    {
        let (seq, ts) = record.value();
        // An unreadable original still answers as a duplicate: never store a message twice.
        let event = event_at(seq)?.ok().flatten();
        facts.earlier = Some(Earlier { seq, ts, event });
    }
    for user in lookups.roles {
        if let Some(role) = t.members.get((chat, user.as_str()))? {
            facts.roles.push((user.clone(), byte_role(role.value())));
        }
    }
    if let Some(target) = lookups.target {
        facts.target = match event_at(target)? {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
    }
    if let Some(target) = lookups.edits_of {
        let mut seqs = Vec::new();
        for item in t.edits.range((chat, target, 0)..=(chat, target, u64::MAX))? {
            seqs.push(item?.0.value().2);
        }
        for seq in seqs {
            // An undecodable edit cannot be erased, and must not block the delete.
            if let Ok(Some(edit)) = event_at(seq)? {
                facts.edits.push(edit);
            }
        }
    }
    Ok(Ok(facts))
}

/// Carries out one effect the rules decided.
fn carry_out(t: &mut Tables<'_>, chat: ChatId, effect: &Effect) -> Result<(), redb::Error> {
    match effect {
        Effect::Rewrite(event) => {
            t.events.insert((chat, event.seq), encode_envelope(event).as_ref())?;
        }
        Effect::RecordIdempotency { sender, client_msg_id, seq, ts } => {
            t.idempotency.insert((chat, sender.as_str(), client_msg_id.as_str()), (*seq, *ts))?;
        }
        Effect::AddMember { user, role } => {
            t.members.insert((chat, user.as_str()), role_byte(*role))?;
            t.user_chats.insert((user.as_str(), chat), 0)?;
        }
        Effect::RemoveMember { user } => {
            t.members.remove((chat, user.as_str()))?;
            t.user_chats.remove((user.as_str(), chat))?;
            t.reads.remove((chat, user.as_str()))?;
        }
        Effect::RecordEdit { target, seq } => {
            t.edits.insert((chat, *target, *seq), 0)?;
        }
    }
    Ok(())
}

fn apply_append(t: &mut Tables<'_>, a: &Append) -> Applied<Appended> {
    let mut record = match load_chat(t, a.chat)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let facts = match facts(t, a.chat, &a.lookups())? {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let (event, effects) = match rules::append::decide(a, record.last_seq + 1, &facts) {
        Ok(Decision::New { event, effects }) => (event, effects),
        Ok(Decision::Duplicate { seq, ts }) => return Ok(Ok(Appended::Duplicate { seq, ts })),
        Err(refused) => return Ok(Err(refused.into())),
    };
    t.events.insert((a.chat, event.seq), encode_envelope(&event).as_ref())?;
    for effect in &effects {
        carry_out(t, a.chat, effect)?;
    }
    record.last_seq = event.seq;
    t.chats.insert(a.chat, encode_envelope(&record).as_ref())?;
    Ok(Ok(Appended::New(event)))
}

fn apply_read(t: &mut Tables<'_>, chat: ChatId, user: &str, seq: Seq) -> Applied<Seq> {
    let record = match load_chat(t, chat)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let current = t.reads.get((chat, user))?.map(|g| g.value()).unwrap_or(0);
    let next = rules::append::read_cursor(seq, record.last_seq, current);
    if next != current {
        t.reads.insert((chat, user), next)?;
    }
    Ok(Ok(next))
}

fn read_chat(txn: &redb::ReadTransaction, chat: ChatId) -> Result<Option<ChatRecord>, StoreError> {
    let table = txn.open_table(CHATS).map_err(unavailable)?;
    match table.get(chat).map_err(unavailable)? {
        None => Ok(None),
        Some(g) => decode_envelope(g.value()).map(Some).map_err(corrupt),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create_chat(&self, chat: NewChat) -> Result<Created, StoreError> {
        match self.write(WriteOp::Create(chat)).await? {
            WriteDone::Created(c) => Ok(c),
            _ => Err(StoreError::Corrupt("writer answered the wrong kind".into())),
        }
    }

    async fn chat(&self, chat: ChatId) -> Result<Option<ChatRecord>, StoreError> {
        self.lookup(move |txn| read_chat(txn, chat))
    }

    async fn role(&self, chat: ChatId, user: &str) -> Result<Option<Role>, StoreError> {
        self.lookup(|txn| {
            let table = txn.open_table(MEMBERS).map_err(unavailable)?;
            Ok(table.get((chat, user)).map_err(unavailable)?.map(|g| byte_role(g.value())))
        })
    }

    async fn event(&self, chat: ChatId, seq: Seq) -> Result<Option<Event>, StoreError> {
        self.lookup(|txn| {
            let table = txn.open_table(EVENTS).map_err(unavailable)?;
            match table.get((chat, seq)).map_err(unavailable)? {
                None => Ok(None),
                Some(g) => decode_envelope(g.value()).map(Some).map_err(corrupt),
            }
        })
    }

    async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        match self.write(WriteOp::Append(append)).await? {
            WriteDone::Appended(a) => Ok(a),
            _ => Err(StoreError::Corrupt("writer answered the wrong kind".into())),
        }
    }

    async fn history(&self, chat: ChatId, page: Page) -> Result<HistoryPage, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(EVENTS).map_err(unavailable)?;
            let (range, limit, descending) = match page {
                Page::Latest { limit } => ((chat, 0)..=(chat, u64::MAX), limit, true),
                Page::Before { seq, limit } => ((chat, 0)..=(chat, seq.saturating_sub(1)), limit, true),
                Page::After { seq, limit } => ((chat, seq.saturating_add(1))..=(chat, u64::MAX), limit, false),
            };
            let limit = limit as usize;
            let mut events = Vec::with_capacity(limit.min(256));
            let mut more = false;
            if matches!(page, Page::Before { seq: 0 | 1, .. }) {
                return Ok(HistoryPage { events, more });
            }
            let iter = table.range(range).map_err(unavailable)?;
            let mut push = |item: Result<
                (redb::AccessGuard<'_, (u64, u64)>, redb::AccessGuard<'_, &[u8]>),
                redb::StorageError,
            >|
             -> Result<bool, StoreError> {
                if events.len() == limit {
                    more = true;
                    return Ok(false);
                }
                let (_, v) = item.map_err(unavailable)?;
                events.push(decode_envelope::<Event>(v.value()).map_err(corrupt)?);
                Ok(true)
            };
            if descending {
                for item in iter.rev() {
                    if !push(item)? {
                        break;
                    }
                }
                events.reverse();
            } else {
                for item in iter {
                    if !push(item)? {
                        break;
                    }
                }
            }
            Ok(HistoryPage { events, more })
        })
        .await
    }

    async fn user_chats(&self, user: &str) -> Result<Vec<ChatSummary>, StoreError> {
        let user = user.to_owned();
        self.read(move |txn| {
            let index = txn.open_table(USER_CHATS).map_err(unavailable)?;
            let members = txn.open_table(MEMBERS).map_err(unavailable)?;
            let reads = txn.open_table(READS).map_err(unavailable)?;
            let mut out = Vec::new();
            for item in index.range((user.as_str(), 0)..=(user.as_str(), u64::MAX)).map_err(unavailable)? {
                let (k, _) = item.map_err(unavailable)?;
                let chat = k.value().1;
                let Some(record) = read_chat(txn, chat)? else { continue };
                let role = members.get((chat, user.as_str())).map_err(unavailable)?.map(|g| byte_role(g.value()));
                let read_seq = reads.get((chat, user.as_str())).map_err(unavailable)?.map(|g| g.value()).unwrap_or(0);
                out.push(ChatSummary {
                    chat,
                    kind: record.kind,
                    title: record.title,
                    role: role.unwrap_or(Role::Member),
                    last_seq: record.last_seq,
                    read_seq,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn chat_ids(&self, user: &str) -> Result<Vec<ChatId>, StoreError> {
        let user = user.to_owned();
        self.read(move |txn| {
            let index = txn.open_table(USER_CHATS).map_err(unavailable)?;
            let mut out = Vec::new();
            for item in index.range((user.as_str(), 0)..=(user.as_str(), u64::MAX)).map_err(unavailable)? {
                let (k, _) = item.map_err(unavailable)?;
                out.push(k.value().1);
            }
            Ok(out)
        })
        .await
    }

    async fn set_read(&self, chat: ChatId, user: &str, seq: Seq) -> Result<Seq, StoreError> {
        match self.write(WriteOp::SetRead { chat, user: user.to_owned(), seq }).await? {
            WriteDone::Read(s) => Ok(s),
            _ => Err(StoreError::Corrupt("writer answered the wrong kind".into())),
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every commit is fsynced before it is acknowledged; nothing is pending.
        Ok(())
    }

    async fn revoke(&self, revocation: Revocation, now: u64) -> Result<Revocation, StoreError> {
        match self.write(WriteOp::Revoke { revocation, now }).await? {
            WriteDone::Revoked(r) => Ok(r),
            _ => Err(StoreError::Corrupt("writer answered the wrong kind".into())),
        }
    }

    async fn revocations(
        &self,
        after: Option<RevocationKey>,
        limit: usize,
        now: u64,
    ) -> Result<Vec<Revocation>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(REVOCATIONS).map_err(unavailable)?;
            let range = match &after {
                None => table.range::<(&str, &str)>(..),
                Some(k) => table.range::<(&str, &str)>((
                    std::ops::Bound::Excluded((k.kind.as_str(), k.id.as_str())),
                    std::ops::Bound::Unbounded,
                )),
            }
            .map_err(unavailable)?;
            let mut out = Vec::new();
            for item in range {
                let (_, v) = item.map_err(unavailable)?;
                let r = decode_envelope::<Revocation>(v.value()).map_err(corrupt)?;
                if r.until() > now {
                    out.push(r);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}
