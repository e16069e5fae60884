//! A shard: the one place a chat's writes are ordered.
//!
//! Requests about a chat's stream reach the shard that owns the chat (`chat % shards`). The
//! shard reads the facts once (the chat's kind, cached since it never changes; the
//! requester's role; the target of an edit or delete), lets [`rules::request::decide`]
//! judge, and carries out the decision.
//!
//! Writes are *pipelined*: the shard does not wait for one send's commit before judging the
//! next, so one fsync can cover many sends of a chat. Completions are taken in submission
//! order (a [`FuturesOrdered`]), which is seq order, so acks and published events never
//! overtake each other. Membership changes are barriers: the shard lets everything in flight
//! finish before one, and lets the change itself finish before judging anything after it, so
//! no request is ever authorized against a member list about to change.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bus::Bus;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use persistence::{Append, Appended, Mutation, StoreError};
use protocol::envelope::{BusEvent, RouterReply, chat_subject, user_subject};
use protocol::{ChatId, ChatKind, ErrorCode, EventBody, Role};
use rules::request::{ChatFacts, Decision};
use tokio::sync::mpsc;

use crate::answer::{publish, refused, send_reply, store_error};
use crate::dispatch::{Job, Services};

/// Answers `job`, if it takes an answer.
async fn answer(bus: &dyn Bus, job: &Job, reply: RouterReply) {
    if let Some(subject) = &job.reply {
        send_reply(bus, subject, reply).await;
    }
}

type Completion = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A store write that finished, with the request it answers.
enum Done {
    Appended { job: Job, chat: ChatId, result: Result<Appended, StoreError> },
    Read { job: Job, chat: ChatId, result: Result<u64, StoreError> },
}

pub(crate) struct Shard {
    services: Services,
    /// Chat kinds, which never change, so caching them is always right. Roles are read from
    /// the store on every request: during a router failover two routers may serve one chat,
    /// and a cached role could outlive a membership change made by the other.
    kinds: HashMap<ChatId, ChatKind>,
    cache_limit: usize,
    inflight: FuturesOrdered<Completion>,
}

impl Shard {
    pub(crate) fn new(services: Services, cache_limit: usize) -> Self {
        Shard { services, kinds: HashMap::new(), cache_limit, inflight: FuturesOrdered::new() }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        loop {
            tokio::select! {
                biased;
                Some(done) = self.inflight.next(), if !self.inflight.is_empty() => self.complete(done).await,
                job = rx.recv() => match job {
                    Some(job) => self.handle(job).await,
                    None => break,
                },
            }
        }
        self.drain().await;
    }

    async fn drain(&mut self) {
        while let Some(done) = self.inflight.next().await {
            self.complete(done).await;
        }
    }

    /// The chat's kind, from the cache or the store.
    async fn kind(&mut self, chat: ChatId) -> Result<ChatKind, RouterReply> {
        if let Some(kind) = self.kinds.get(&chat) {
            return Ok(*kind);
        }
        match self.services.store.chat(chat).await.map_err(store_error)? {
            Some(record) => {
                if self.kinds.len() >= self.cache_limit {
                    self.kinds.clear();
                }
                self.kinds.insert(chat, record.kind);
                Ok(record.kind)
            }
            None => Err(RouterReply::error(ErrorCode::NotFound, "no such chat")),
        }
    }

    /// Reads the facts (each once), decides, and carries out the decision.
    async fn handle(&mut self, job: Job) {
        let Some(chat) = job.request.op.chat() else { return };
        let facts = async {
            let kind = self.kind(chat).await?;
            let store = &self.services.store;
            let role: Option<Role> = store.role(chat, &job.request.user).await.map_err(store_error)?;
            let target = match rules::request::target_to_read(&job.request.op, role) {
                Some(seq) => store.event(chat, seq).await.map_err(store_error)?,
                None => None,
            };
            Ok::<_, RouterReply>((kind, role, target))
        };
        let (kind, role, target) = match facts.await {
            Ok(f) => f,
            Err(reply) => return answer(&*self.services.bus, &job, reply).await,
        };
        let facts = ChatFacts { kind, role, target: target.as_ref() };
        match rules::request::decide(&job.request.op, &job.request.user, &facts) {
            Decision::Refuse(r) => answer(&*self.services.bus, &job, refused(r)).await,
            Decision::Ignore => {}
            Decision::Typing => {
                let typing = BusEvent::Typing { chat, user: job.request.user.clone() };
                publish(&*self.services.bus, &chat_subject(chat), &typing).await;
            }
            Decision::Read { seq } => {
                let store = self.services.store.clone();
                self.inflight.push_back(Box::pin(async move {
                    let result = store.set_read(chat, &job.request.user, seq).await;
                    Done::Read { job, chat, result }
                }));
            }
            Decision::Append(mutation) => {
                // Membership changes and deletes are audited before they happen; without the
                // record, they do not happen.
                if let Some(event) = requested(&job.request.user, chat, &mutation)
                    && let Err(err) = self.services.audit.record(&event)
                {
                    tracing::error!(error = %err, "refusing an act that could not be audited");
                    let reply = RouterReply::error(ErrorCode::Unavailable, "audit unavailable; retry");
                    return answer(&*self.services.bus, &job, reply).await;
                }
                let barrier = mutation.is_barrier();
                if barrier {
                    self.drain().await;
                }
                let store = self.services.store.clone();
                let ts = self.services.clock.now_ms();
                let append = Append { chat, sender: job.request.user.clone(), ts, mutation };
                self.inflight.push_back(Box::pin(async move {
                    let result = store.append(append).await;
                    Done::Appended { job, chat, result }
                }));
                if barrier {
                    self.drain().await;
                }
            }
        }
    }

    /// Publishes what a finished write made happen, then answers its request.
    async fn complete(&mut self, done: Done) {
        let bus = &*self.services.bus;
        match done {
            Done::Appended { job, chat, result } => {
                let reply = match result {
                    Ok(Appended::New(event)) => {
                        metrics::counter!("router_appends_total").increment(1);
                        committed(&self.services.audit, &job.request.user, chat, &event);
                        let (seq, ts) = (event.seq, event.ts);
                        if let EventBody::MembersAdded { users, .. } = &event.body {
                            for u in users {
                                let joined = BusEvent::Joined { chat, user: u.clone(), event: event.clone() };
                                publish(bus, &user_subject(u), &joined).await;
                            }
                        }
                        publish(bus, &chat_subject(chat), &BusEvent::Sequenced { chat, event }).await;
                        RouterReply::Ack { chat, seq, ts, duplicate: false }
                    }
                    Ok(Appended::Duplicate { seq, ts }) => {
                        metrics::counter!("router_duplicate_sends_total").increment(1);
                        RouterReply::Ack { chat, seq, ts, duplicate: true }
                    }
                    Err(e) => store_error(e),
                };
                metrics::histogram!("router_write_seconds").record(job.received.elapsed().as_secs_f64());
                answer(bus, &job, reply).await;
            }
            Done::Read { job, chat, result } => {
                let reply = match result {
                    Ok(seq) => {
                        let event = BusEvent::Receipt { chat, user: job.request.user.clone(), seq };
                        publish(bus, &chat_subject(chat), &event).await;
                        RouterReply::Ok
                    }
                    Err(e) => store_error(e),
                };
                answer(bus, &job, reply).await;
            }
        }
    }
}

/// The audit record of a sensitive act about to be appended: membership changes and
/// deletes; `None` for anything else.
fn requested<'a>(actor: &'a str, chat: ChatId, mutation: &'a Mutation) -> Option<audit::Event<'a>> {
    let (outcome, seq) = (audit::Outcome::Requested, None);
    match mutation {
        Mutation::AddMembers { users, role } => {
            Some(audit::Event::MembersAdded { actor, outcome, chat, seq, users, role: role_name(*role) })
        }
        Mutation::RemoveMembers { users } => Some(audit::Event::MembersRemoved { actor, outcome, chat, seq, users }),
        Mutation::Delete { target } => {
            Some(audit::Event::MessageDeleted { actor, outcome, chat, seq, target: *target })
        }
        Mutation::Message { .. } | Mutation::Edit { .. } => None,
    }
}

/// Records that an audited act was committed (a failure is counted; the act stands, and its
/// `requested` record exists).
fn committed(audit: &audit::AuditLog, actor: &str, chat: ChatId, event: &protocol::Event) {
    let (outcome, seq) = (audit::Outcome::Committed, Some(event.seq));
    match &event.body {
        EventBody::MembersAdded { users, role } => {
            audit.note(&audit::Event::MembersAdded { actor, outcome, chat, seq, users, role: role_name(*role) })
        }
        EventBody::MembersRemoved { users } => {
            audit.note(&audit::Event::MembersRemoved { actor, outcome, chat, seq, users })
        }
        EventBody::Deleted { target } => {
            audit.note(&audit::Event::MessageDeleted { actor, outcome, chat, seq, target: *target })
        }
        _ => {}
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

#[cfg(test)]
mod tests {
    //! The pipeline and its barriers, deterministically: the real embedded store behind a
    //! gate that holds each write's result until the test releases it, the in-process bus, a
    //! fixed clock.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use bus::{BusMessage, LocalBus};
    use persistence::{
        ChatRecord, Created, EmbeddedConfig, EmbeddedStore, HistoryPage, Mutation, NewChat, Page, Store,
    };
    use protocol::codec::decode_envelope;
    use protocol::envelope::{RouterOp, RouterRequest};
    use protocol::{ChatSummary, Event, Seq};
    use tokio::sync::oneshot;

    use super::*;
    use crate::clock::FixedClock;

    const CHAT: ChatId = 42;
    const NOW: u64 = 1_700_000_000_123;
    /// How long a test waits to be sure something did *not* happen.
    const QUIET: Duration = Duration::from_millis(200);
    const WAIT: Duration = Duration::from_secs(10);

    /// A write that reached the store and waits for the test to let its result go.
    struct Held {
        mutation: Option<Mutation>,
        release: oneshot::Sender<()>,
    }

    #[derive(Default)]
    struct Reads {
        chat: AtomicUsize,
        role: AtomicUsize,
        event: AtomicUsize,
    }

    struct Gated {
        inner: EmbeddedStore,
        held: mpsc::UnboundedSender<Held>,
        reads: Arc<Reads>,
    }

    impl Gated {
        async fn hold(&self, mutation: Option<Mutation>) {
            let (release, wait) = oneshot::channel();
            let _ = self.held.send(Held { mutation, release });
            let _ = wait.await;
        }
    }

    #[async_trait]
    impl Store for Gated {
        async fn create_chat(&self, chat: NewChat) -> Result<Created, StoreError> {
            self.inner.create_chat(chat).await
        }
        async fn chat(&self, chat: ChatId) -> Result<Option<ChatRecord>, StoreError> {
            self.reads.chat.fetch_add(1, Ordering::SeqCst);
            self.inner.chat(chat).await
        }
        async fn role(&self, chat: ChatId, user: &str) -> Result<Option<Role>, StoreError> {
            self.reads.role.fetch_add(1, Ordering::SeqCst);
            self.inner.role(chat, user).await
        }
        async fn event(&self, chat: ChatId, seq: Seq) -> Result<Option<Event>, StoreError> {
            self.reads.event.fetch_add(1, Ordering::SeqCst);
            self.inner.event(chat, seq).await
        }
        async fn append(&self, append: Append) -> Result<Appended, StoreError> {
            let mutation = append.mutation.clone();
            let result = self.inner.append(append).await;
            self.hold(Some(mutation)).await;
            result
        }
        async fn history(&self, chat: ChatId, page: Page) -> Result<HistoryPage, StoreError> {
            self.inner.history(chat, page).await
        }
        async fn user_chats(&self, user: &str) -> Result<Vec<ChatSummary>, StoreError> {
            self.inner.user_chats(user).await
        }
        async fn chat_ids(&self, user: &str) -> Result<Vec<ChatId>, StoreError> {
            self.inner.chat_ids(user).await
        }
        async fn set_read(&self, chat: ChatId, user: &str, seq: Seq) -> Result<Seq, StoreError> {
            let result = self.inner.set_read(chat, user, seq).await;
            self.hold(None).await;
            result
        }
        async fn flush(&self) -> Result<(), StoreError> {
            self.inner.flush().await
        }
        async fn revoke(
            &self,
            r: protocol::revocation::Revocation,
            now: u64,
        ) -> Result<protocol::revocation::Revocation, StoreError> {
            self.inner.revoke(r, now).await
        }
        async fn revocations(
            &self,
            after: Option<protocol::revocation::RevocationKey>,
            limit: usize,
            now: u64,
        ) -> Result<Vec<protocol::revocation::Revocation>, StoreError> {
            self.inner.revocations(after, limit, now).await
        }
    }

    struct Harness {
        jobs: mpsc::Sender<Job>,
        held: mpsc::UnboundedReceiver<Held>,
        /// Replies (on `reply.*`) and chat events (on the chat subject), in arrival order.
        out: mpsc::Receiver<BusMessage>,
        reads: Arc<Reads>,
        _subscriptions: Vec<bus::Subscription>,
        _dir: tempfile::TempDir,
    }

    /// A shard over a group chat where `admin` is admin and `member` a member.
    async fn harness() -> Harness {
        harness_with(|_| Arc::new(audit::AuditLog::off())).await
    }

    async fn harness_with(audit: impl FnOnce(&std::path::Path) -> Arc<audit::AuditLog>) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let inner = EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("db.redb"))).expect("open store");
        let new = NewChat::plan(CHAT, 1, ChatKind::Group, "g", "admin", &["member".to_string()]).expect("valid");
        inner.create_chat(new).await.expect("create");
        let (held_tx, held) = mpsc::unbounded_channel();
        let reads = Arc::new(Reads::default());
        let store = Arc::new(Gated { inner, held: held_tx, reads: reads.clone() });
        let bus = Arc::new(LocalBus::new());
        let (sink, out) = mpsc::channel(1024);
        let mut subscriptions = vec![bus.subscribe(&chat_subject(CHAT), None, sink.clone()).await.expect("sub")];
        for i in 0..16 {
            subscriptions.push(bus.subscribe(&format!("reply.{i}"), None, sink.clone()).await.expect("sub"));
        }
        let audit = audit(dir.path());
        let services = Services { store, bus, clock: Arc::new(FixedClock(NOW)), audit };
        let (jobs, rx) = mpsc::channel(64);
        tokio::spawn(Shard::new(services, 100).run(rx));
        Harness { jobs, held, out, reads, _subscriptions: subscriptions, _dir: dir }
    }

    impl Harness {
        async fn submit(&self, reply: u32, user: &str, op: RouterOp) {
            let request = RouterRequest { user: user.into(), op };
            let job = Job { request, reply: Some(format!("reply.{reply}")), received: Instant::now() };
            self.jobs.send(job).await.expect("shard running");
        }

        async fn held(&mut self) -> Held {
            tokio::time::timeout(WAIT, self.held.recv()).await.expect("a write reaches the store").expect("open")
        }

        async fn nothing_held(&mut self) {
            assert!(tokio::time::timeout(QUIET, self.held.recv()).await.is_err(), "a write started too early");
        }

        async fn next_out(&mut self) -> (String, Option<RouterReply>, Option<BusEvent>) {
            let m = tokio::time::timeout(WAIT, self.out.recv()).await.expect("output").expect("open");
            let reply = decode_envelope::<RouterReply>(&m.payload).ok().filter(|_| m.subject.starts_with("reply."));
            let event = decode_envelope::<BusEvent>(&m.payload).ok().filter(|_| !m.subject.starts_with("reply."));
            (m.subject, reply, event)
        }

        async fn nothing_out(&mut self) {
            assert!(tokio::time::timeout(QUIET, self.out.recv()).await.is_err(), "output too early");
        }
    }

    fn send(id: &str) -> RouterOp {
        RouterOp::Send { chat: CHAT, client_msg_id: id.into(), body: format!("body of {id}") }
    }

    fn ack(reply: Option<RouterReply>) -> (Seq, u64) {
        match reply {
            Some(RouterReply::Ack { seq, ts, duplicate: false, .. }) => (seq, ts),
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn acks_and_events_leave_in_seq_order_whatever_order_writes_finish() {
        let mut h = harness().await;
        for i in 0..3 {
            h.submit(i, "member", send(&format!("m{i}"))).await;
        }
        // All three are in the store at once: the shard did not wait for one to judge the next.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(h.held().await);
        }
        // The last two finish first: nothing may leave before the first.
        let first = held.remove(0);
        for later in held.into_iter().rev() {
            let _ = later.release.send(());
        }
        h.nothing_out().await;
        let _ = first.release.send(());
        for (i, seq) in (0..3).zip(2..) {
            let (subject, _, event) = h.next_out().await;
            assert_eq!(subject, chat_subject(CHAT));
            assert!(matches!(event, Some(BusEvent::Sequenced { event: Event { seq: s, .. }, .. }) if s == seq));
            let (subject, reply, _) = h.next_out().await;
            assert_eq!(subject, format!("reply.{i}"));
            assert_eq!(ack(reply), (seq, NOW), "acks carry the injected clock's time");
        }
    }

    #[tokio::test]
    async fn membership_changes_wait_for_what_is_in_flight_and_hold_what_follows() {
        let mut h = harness().await;
        h.submit(0, "member", send("before")).await;
        let before = h.held().await;
        let add = RouterOp::AddMembers { chat: CHAT, users: vec!["newcomer".into()], role: Role::Member };
        h.submit(1, "admin", add).await;
        h.nothing_held().await;
        let _ = before.release.send(());
        let added = h.held().await;
        assert!(
            matches!(&added.mutation, Some(Mutation::AddMembers { users, .. }) if users == &["newcomer".to_string()])
        );
        // The newcomer's first send must be judged after the add, not refused as a non-member.
        h.submit(2, "newcomer", send("hello")).await;
        h.nothing_held().await;
        let _ = added.release.send(());
        let hello = h.held().await;
        assert!(matches!(&hello.mutation, Some(Mutation::Message { client_msg_id, .. }) if client_msg_id == "hello"));
        let _ = hello.release.send(());
        let mut acks = Vec::new();
        while acks.len() < 3 {
            let (subject, reply, _) = h.next_out().await;
            if let Some(reply) = reply {
                acks.push((subject, ack(Some(reply)).0));
            }
        }
        assert_eq!(acks, vec![("reply.0".into(), 2), ("reply.1".into(), 3), ("reply.2".into(), 4)]);
    }

    #[tokio::test]
    async fn each_request_reads_each_fact_once_and_refusals_write_nothing() {
        let mut h = harness().await;
        let reads = |h: &Harness| {
            (
                h.reads.chat.load(Ordering::SeqCst),
                h.reads.role.load(Ordering::SeqCst),
                h.reads.event.load(Ordering::SeqCst),
            )
        };
        h.submit(0, "member", send("a")).await;
        let _ = h.held().await.release.send(());
        assert_eq!(reads(&h), (1, 1, 0), "a send reads the kind and the role once");
        let (_, _, _) = h.next_out().await;
        let (_, reply, _) = h.next_out().await;
        let (seq, _) = ack(reply);
        h.submit(1, "member", RouterOp::Edit { chat: CHAT, target: seq, body: "edited".into() }).await;
        let _ = h.held().await.release.send(());
        assert_eq!(reads(&h), (1, 2, 1), "an edit reads the role and its target once; the kind is cached");
        // A non-member's edit: refused not_found, its target never read, nothing written.
        h.submit(2, "stranger", RouterOp::Edit { chat: CHAT, target: seq, body: "x".into() }).await;
        let mut refusal = None;
        while refusal.is_none() {
            let (subject, reply, _) = h.next_out().await;
            if subject == "reply.2" {
                refusal = reply;
            }
        }
        assert!(matches!(refusal, Some(RouterReply::Error { code: ErrorCode::NotFound, .. })));
        assert_eq!(reads(&h), (1, 3, 1));
        // Another's message: forbidden, after one read of the target.
        h.submit(3, "admin", RouterOp::Edit { chat: CHAT, target: seq, body: "x".into() }).await;
        loop {
            let (subject, reply, _) = h.next_out().await;
            if subject == "reply.3" {
                assert!(matches!(reply, Some(RouterReply::Error { code: ErrorCode::Forbidden, .. })));
                break;
            }
        }
        assert_eq!(reads(&h), (1, 4, 2));
        h.nothing_held().await;
    }

    #[tokio::test]
    async fn membership_changes_are_audited_before_and_after_and_not_done_without_a_record() {
        let mut h =
            harness_with(|dir| Arc::new(audit::AuditLog::file(&dir.join("audit.log"), "router").expect("open"))).await;
        let path = h._dir.path().join("audit.log");
        let add = RouterOp::AddMembers { chat: CHAT, users: vec!["newcomer".into()], role: Role::Member };
        h.submit(0, "admin", add).await;
        let held = h.held().await;
        // The change is in the store, not yet acknowledged: its `requested` record is written.
        let lines = std::fs::read_to_string(&path).expect("audit log");
        assert!(lines.contains(r#""event":"members_added""#) && lines.contains(r#""outcome":"requested""#), "{lines}");
        assert!(!lines.contains("committed"), "{lines}");
        let _ = held.release.send(());
        loop {
            let (subject, reply, _) = h.next_out().await;
            if subject == "reply.0" {
                assert_eq!(ack(reply).0, 2);
                break;
            }
        }
        let lines = std::fs::read_to_string(&path).expect("audit log");
        let committed = lines.lines().find(|l| l.contains("committed")).expect("a committed record");
        assert!(committed.contains(r#""seq":2"#) && committed.contains(r#""actor":"admin""#), "{committed}");

        // An audit trail that cannot be written refuses the act: nothing reaches the store.
        struct Broken;
        impl std::io::Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = harness_with(|_| Arc::new(audit::AuditLog::writer("router", Box::new(Broken)))).await;
        let remove = RouterOp::RemoveMembers { chat: CHAT, users: vec!["member".into()] };
        h.submit(1, "admin", remove).await;
        let (subject, reply, _) = h.next_out().await;
        assert_eq!(subject, "reply.1");
        assert!(matches!(reply, Some(RouterReply::Error { code: ErrorCode::Unavailable, .. })), "{reply:?}");
        h.nothing_held().await;
        // Ordinary sends are not audited, so they go on.
        h.submit(2, "member", send("still-here")).await;
        let _ = h.held().await.release.send(());
    }
}
