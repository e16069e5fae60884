//! The store conformance suite: the same checks for every backend. A backend joins by adding
//! one `conformance!` line with a constructor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use persistence::{
    Append, Appended, Created, EmbeddedConfig, EmbeddedStore, Mutation, NewChat, Page, Store, StoreError,
};
use protocol::{ChatKind, EventBody, Role};
use testkit::KeyspaceGuard;

fn new_chat(id: u64, kind: ChatKind, creator: &str, others: &[&str]) -> NewChat {
    let mut members = vec![(creator.to_owned(), if kind == ChatKind::Direct { Role::Member } else { Role::Admin })];
    members.extend(others.iter().map(|u| (u.to_string(), Role::Member)));
    NewChat { id, kind, title: "t".into(), creator: creator.into(), members, ts: 1 }
}

fn message(chat: u64, sender: &str, id: &str, text: &str) -> Append {
    Append {
        chat,
        sender: sender.into(),
        ts: 2,
        mutation: Mutation::Message { client_msg_id: id.into(), text: text.into() },
    }
}

fn new_seq(a: Appended) -> u64 {
    match a {
        Appended::New(e) => e.seq,
        other => panic!("{other:?}"),
    }
}

pub async fn creates_chats_at_seq_1(store: Arc<dyn Store>) {
    let c = store.create_chat(new_chat(10, ChatKind::Group, "a", &["b"])).await.unwrap();
    match c {
        Created::New { chat, event } => {
            assert_eq!((chat, event.seq), (10, 1));
            assert!(matches!(event.body, EventBody::Created { ref members, .. } if members.len() == 2));
        }
        other => panic!("{other:?}"),
    }
    let rec = store.chat(10).await.unwrap().unwrap();
    assert_eq!((rec.kind, rec.last_seq), (ChatKind::Group, 1));
    assert_eq!(store.role(10, "a").await.unwrap(), Some(Role::Admin));
    assert_eq!(store.role(10, "b").await.unwrap(), Some(Role::Member));
    assert_eq!(store.role(10, "c").await.unwrap(), None);
    assert!(store.chat(11).await.unwrap().is_none());
    // Direct chats exist once per pair, whoever creates them.
    assert!(matches!(
        store.create_chat(new_chat(20, ChatKind::Direct, "a", &["b"])).await.unwrap(),
        Created::New { .. }
    ));
    assert_eq!(
        store.create_chat(new_chat(21, ChatKind::Direct, "b", &["a"])).await.unwrap(),
        Created::Existing { chat: 20 }
    );
    // An id in use is a typed collision (the router draws another id), not an overwrite.
    assert!(matches!(store.create_chat(new_chat(10, ChatKind::Group, "x", &[])).await, Err(StoreError::IdCollision)));
    let mut ids = store.chat_ids("a").await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![10, 20]);
    let chats = store.user_chats("b").await.unwrap();
    assert_eq!(chats.len(), 2);
}

pub async fn allocates_gap_free_seqs_under_concurrency(store: Arc<dyn Store>) {
    store.create_chat(new_chat(1, ChatKind::Group, "a", &[])).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                seqs.push(new_seq(store.append(message(1, "a", &format!("{w}-{i}"), "x")).await.unwrap()));
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for s in t.await.unwrap() {
            assert!(all.insert(s), "seq {s} given twice");
        }
    }
    assert_eq!(all, (2..=401).collect::<BTreeSet<_>>());
    assert_eq!(store.chat(1).await.unwrap().unwrap().last_seq, 401);
}

pub async fn sends_are_idempotent_per_sender(store: Arc<dyn Store>) {
    store.create_chat(new_chat(1, ChatKind::Group, "a", &["b"])).await.unwrap();
    let first = store.append(message(1, "a", "m1", "hello")).await.unwrap();
    let Appended::New(ev) = first else { panic!() };
    assert_eq!(
        store.append(message(1, "a", "m1", "hello")).await.unwrap(),
        Appended::Duplicate { seq: ev.seq, ts: ev.ts }
    );
    // The same id with other text is a conflict, not a duplicate.
    assert!(matches!(store.append(message(1, "a", "m1", "other")).await, Err(StoreError::Conflict)));
    // The same id from someone else is their own message.
    assert_eq!(new_seq(store.append(message(1, "b", "m1", "hi")).await.unwrap()), ev.seq + 1);
    let page = store.history(1, Page::Latest { limit: 10 }).await.unwrap();
    assert_eq!(page.events.len(), 3);
    assert!(store.append(message(99, "a", "m1", "x")).await.is_err_and(|e| matches!(e, StoreError::ChatNotFound)));
}

pub async fn edits_and_deletes_rewrite_their_target(store: Arc<dyn Store>) {
    store.create_chat(new_chat(1, ChatKind::Group, "a", &[])).await.unwrap();
    let m = new_seq(store.append(message(1, "a", "m", "original")).await.unwrap());
    let edit = |target, text: &str| Append {
        chat: 1,
        sender: "a".into(),
        ts: 3,
        mutation: Mutation::Edit { target, text: text.into() },
    };
    let delete = |target| Append { chat: 1, sender: "a".into(), ts: 4, mutation: Mutation::Delete { target } };
    assert_eq!(new_seq(store.append(edit(m, "changed")).await.unwrap()), m + 1);
    let ev = store.event(1, m).await.unwrap().unwrap();
    assert!(matches!(ev.body, EventBody::Message { ref text, edited: true, deleted: false, .. } if text == "changed"));
    assert_eq!(new_seq(store.append(delete(m)).await.unwrap()), m + 2);
    let ev = store.event(1, m).await.unwrap().unwrap();
    assert!(matches!(ev.body, EventBody::Message { ref text, deleted: true, .. } if text.is_empty()));
    // The edit's text is gone too.
    let edit_event = store.event(1, m + 1).await.unwrap().unwrap();
    assert!(matches!(edit_event.body, EventBody::Edited { ref text, .. } if text.is_empty()));
    // Gone targets and non-messages are refused without using a seq.
    assert!(matches!(store.append(delete(m)).await, Err(StoreError::TargetNotFound)));
    assert!(matches!(store.append(edit(1, "x")).await, Err(StoreError::TargetNotFound)));
    assert!(matches!(store.append(edit(999, "x")).await, Err(StoreError::TargetNotFound)));
    assert_eq!(store.chat(1).await.unwrap().unwrap().last_seq, m + 2);
}

pub async fn membership_changes_are_events(store: Arc<dyn Store>) {
    store.create_chat(new_chat(1, ChatKind::Group, "a", &[])).await.unwrap();
    let add = |users: &[&str], role| Append {
        chat: 1,
        sender: "a".into(),
        ts: 5,
        mutation: Mutation::AddMembers { users: users.iter().map(|u| u.to_string()).collect(), role },
    };
    let remove = |users: &[&str]| Append {
        chat: 1,
        sender: "a".into(),
        ts: 6,
        mutation: Mutation::RemoveMembers { users: users.iter().map(|u| u.to_string()).collect() },
    };
    match store.append(add(&["b", "c", "b"], Role::Member)).await.unwrap() {
        Appended::New(e) => {
            assert_eq!(e.seq, 2);
            assert!(
                matches!(e.body, EventBody::MembersAdded { ref users, role: Role::Member } if users == &["b", "c"])
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(store.append(add(&["b"], Role::Member)).await, Err(StoreError::NoChange(_))));
    assert_eq!(new_seq(store.append(add(&["b"], Role::Admin)).await.unwrap()), 3);
    assert_eq!(store.role(1, "b").await.unwrap(), Some(Role::Admin));
    assert_eq!(store.chat_ids("c").await.unwrap(), vec![1]);
    assert_eq!(new_seq(store.append(remove(&["c", "zed"])).await.unwrap()), 4);
    assert_eq!(store.role(1, "c").await.unwrap(), None);
    assert!(store.chat_ids("c").await.unwrap().is_empty());
    assert!(matches!(store.append(remove(&["c"])).await, Err(StoreError::NoChange(_))));
}

pub async fn pages_history(store: Arc<dyn Store>) {
    store.create_chat(new_chat(1, ChatKind::Group, "a", &[])).await.unwrap();
    for i in 0..20 {
        store.append(message(1, "a", &i.to_string(), "x")).await.unwrap();
    }
    let seqs = |p: persistence::HistoryPage| (p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), p.more);
    assert_eq!(seqs(store.history(1, Page::Latest { limit: 3 }).await.unwrap()), (vec![19, 20, 21], true));
    assert_eq!(seqs(store.history(1, Page::Before { seq: 4, limit: 10 }).await.unwrap()), (vec![1, 2, 3], false));
    assert_eq!(seqs(store.history(1, Page::Before { seq: 10, limit: 2 }).await.unwrap()), (vec![8, 9], true));
    assert_eq!(seqs(store.history(1, Page::After { seq: 18, limit: 10 }).await.unwrap()), (vec![19, 20, 21], false));
    assert_eq!(seqs(store.history(1, Page::After { seq: 0, limit: 2 }).await.unwrap()), (vec![1, 2], true));
    assert_eq!(seqs(store.history(1, Page::After { seq: 21, limit: 2 }).await.unwrap()), (vec![], false));
    assert_eq!(seqs(store.history(1, Page::Before { seq: 1, limit: 2 }).await.unwrap()), (vec![], false));
    assert_eq!(seqs(store.history(2, Page::Latest { limit: 2 }).await.unwrap()), (vec![], false));
}

pub async fn read_cursors_only_move_forward(store: Arc<dyn Store>) {
    store.create_chat(new_chat(1, ChatKind::Group, "a", &["b"])).await.unwrap();
    for i in 0..5 {
        store.append(message(1, "a", &i.to_string(), "x")).await.unwrap();
    }
    assert_eq!(store.set_read(1, "b", 3).await.unwrap(), 3);
    assert_eq!(store.set_read(1, "b", 2).await.unwrap(), 3);
    assert_eq!(store.set_read(1, "b", 100).await.unwrap(), 6);
    let chats = store.user_chats("b").await.unwrap();
    assert_eq!((chats[0].last_seq, chats[0].read_seq), (6, 6));
    assert!(matches!(store.set_read(9, "b", 1).await, Err(StoreError::ChatNotFound)));
}

pub async fn keeps_revocations_merged_paged_and_pruned(store: Arc<dyn Store>) {
    use protocol::revocation::Revocation;
    let now = 1_000_000;
    // 2,500 entries: three pages of 1,000, the last one short.
    for i in 0..2500 {
        store.revoke(Revocation::Token { jti: format!("t{i}"), until: now + 3600 }, now).await.unwrap();
    }
    let user = Revocation::User { user: "bob".into(), before: now, until: now + 3600 };
    store.revoke(user, now).await.unwrap();
    // An earlier cut does not narrow the stored one; a later `until` extends it.
    let merged =
        store.revoke(Revocation::User { user: "bob".into(), before: now - 50, until: now + 7200 }, now).await.unwrap();
    assert_eq!(merged, Revocation::User { user: "bob".into(), before: now, until: now + 7200 });
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.revocations(after, 1000, now).await.unwrap();
        assert!(page.len() <= 1000);
        let full = page.len() == 1000;
        after = page.last().map(Revocation::key);
        seen.extend(page);
        if !full {
            break;
        }
    }
    assert_eq!(seen.len(), 2501, "every entry exactly once across pages");
    let mut keys: Vec<_> = seen.iter().map(Revocation::key).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 2501);
    assert!(seen.contains(&merged));
    // Past their `until` the entries are no longer in force.
    assert!(store.revocations(None, 10, now + 3600).await.unwrap().iter().all(|r| r == &merged));
    assert!(store.revocations(None, 10, now + 7200).await.unwrap().is_empty());
}

macro_rules! conformance {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        // Dropped last, when the test ends or fails: the store's directory or keyspace.
                        let Some((store, _leftover)) = $open else { return };
                        super::$name(store).await;
                    }
                };
            }

            case!(creates_chats_at_seq_1);
            case!(allocates_gap_free_seqs_under_concurrency);
            case!(sends_are_idempotent_per_sender);
            case!(edits_and_deletes_rewrite_their_target);
            case!(membership_changes_are_events);
            case!(pages_history);
            case!(read_cursors_only_move_forward);
            case!(keeps_revocations_merged_paged_and_pruned);
        }
    };
}

/// What a test leaves behind, removed when it ends: a test database holding hundreds of
/// keyspaces (ten tables each) runs out of heap.
#[allow(dead_code)] // held only to be dropped
enum Leftover {
    Dir(tempfile::TempDir),
    Keyspace(KeyspaceGuard),
}

fn embedded() -> Option<(Arc<dyn Store>, Leftover)> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("s.redb"))).unwrap();
    Some((Arc::new(store), Leftover::Dir(dir)))
}

/// A fresh keyspace on the test database (`MESSENGER_TEST_CQL`, `host:port`; `scripts/test.sh`
/// starts one), so tests never see each other's data. In CI its absence is a failure, never a
/// skip.
async fn cql() -> Option<(Arc<dyn Store>, Leftover)> {
    let guard = KeyspaceGuard::on_test_database("t")?;
    let config = persistence::CqlConfig::local(guard.node.clone(), guard.keyspace.clone());
    let store = persistence::CqlStore::connect(&config).await.unwrap();
    Some((Arc::new(store), Leftover::Keyspace(guard)))
}

conformance!(embedded_store, embedded());
conformance!(cql_store, cql().await);

/// Two stores (two routers, during a failover) append to one chat at once: every seq is
/// claimed once, none is skipped, and every message is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_racing_writers_never_share_or_skip_a_seq() {
    let Some(ks) = KeyspaceGuard::on_test_database("t") else { return };
    let config = persistence::CqlConfig::local(ks.node.clone(), ks.keyspace.clone());
    let a: Arc<dyn Store> = Arc::new(persistence::CqlStore::connect(&config).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(persistence::CqlStore::connect(&config).await.unwrap());
    a.create_chat(new_chat(7, ChatKind::Group, "a", &[])).await.unwrap();
    let mut tasks = Vec::new();
    for (w, store) in [a.clone(), b.clone(), a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..40 {
                let id = format!("{w}-{i}");
                loop {
                    match store.append(message(7, "a", &id, &id)).await {
                        Ok(Appended::New(e)) => {
                            got.push((e.seq, id.clone()));
                            break;
                        }
                        Ok(Appended::Duplicate { seq, .. }) => {
                            got.push((seq, id.clone()));
                            break;
                        }
                        Err(StoreError::Unavailable(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            got
        }));
    }
    let mut by_seq = std::collections::BTreeMap::new();
    for t in tasks {
        for (seq, id) in t.await.unwrap() {
            assert!(by_seq.insert(seq, id).is_none(), "seq {seq} given to two messages");
        }
    }
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), (2..=161).collect::<Vec<_>>());
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = b.history(7, Page::After { seq: after, limit: 50 }).await.unwrap();
        for e in &page.events {
            if let EventBody::Message { client_msg_id, .. } = &e.body {
                assert_eq!(by_seq.get(&e.seq), Some(client_msg_id));
                stored.push(e.seq);
            }
        }
        after = page.events.last().map(|e| e.seq).unwrap_or(after);
        if !page.more {
            break;
        }
    }
    assert_eq!(stored.len(), 160);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = EmbeddedStore::open(EmbeddedConfig::new(&path)).unwrap();
        store.create_chat(new_chat(1, ChatKind::Group, "a", &[])).await.unwrap();
        store.append(message(1, "a", "m", "kept")).await.unwrap();
    }
    let store = EmbeddedStore::open(EmbeddedConfig::new(&path)).unwrap();
    let page = store.history(1, Page::Latest { limit: 10 }).await.unwrap();
    assert_eq!(page.events.len(), 2);
    assert_eq!(new_seq(store.append(message(1, "a", "m2", "next")).await.unwrap()), 3);
}

/// With tiny partitions (4 events), history pages and head discovery cross partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_history_and_heads_cross_partitions() {
    let Some(ks) = KeyspaceGuard::on_test_database("t") else { return };
    let mut config = persistence::CqlConfig::local(ks.node.clone(), ks.keyspace.clone());
    config.events_per_bucket = 4;
    let store = persistence::CqlStore::connect(&config).await.unwrap();
    store.create_chat(new_chat(1, ChatKind::Group, "a", &[])).await.unwrap();
    for i in 0..29 {
        store.append(message(1, "a", &i.to_string(), "x")).await.unwrap();
    }
    // A second store (no cached head) finds the head three partitions past any hint.
    let fresh = persistence::CqlStore::connect(&config).await.unwrap();
    assert_eq!(new_seq(fresh.append(message(1, "a", "late", "y")).await.unwrap()), 31);
    let seqs = |p: persistence::HistoryPage| (p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), p.more);
    assert_eq!(seqs(fresh.history(1, Page::Latest { limit: 6 }).await.unwrap()), ((26..=31).collect(), true));
    assert_eq!(seqs(fresh.history(1, Page::Before { seq: 10, limit: 7 }).await.unwrap()), ((3..=9).collect(), true));
    assert_eq!(seqs(fresh.history(1, Page::After { seq: 2, limit: 9 }).await.unwrap()), ((3..=11).collect(), true));
    assert_eq!(seqs(fresh.history(1, Page::After { seq: 0, limit: 100 }).await.unwrap()), ((1..=31).collect(), false));
    // A store opened with another bucket size keeps the keyspace's.
    config.events_per_bucket = 1000;
    let other = persistence::CqlStore::connect(&config).await.unwrap();
    assert_eq!(seqs(other.history(1, Page::Latest { limit: 3 }).await.unwrap()), ((29..=31).collect(), true));
}

/// A writer that died between claiming a seq and writing the event's side effects: the next
/// writer completes them, so a retry of that send is a duplicate, not a second message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_side_effects_of_a_crashed_append_are_replayed() {
    let Some(ks) = KeyspaceGuard::on_test_database("t") else { return };
    let (node, keyspace) = (&ks.node, &ks.keyspace);
    let config = persistence::CqlConfig::local(node.clone(), keyspace.clone());
    let store = persistence::CqlStore::connect(&config).await.unwrap();
    store.create_chat(new_chat(1, ChatKind::Group, "a", &[])).await.unwrap();
    // Play the crashed writer: claim seq 2 directly, with no idempotency record and no hint.
    let session = scylla::client::session_builder::SessionBuilder::new().known_node(node).build().await.unwrap();
    let event = protocol::Event {
        seq: 2,
        ts: 5,
        sender: "a".into(),
        body: EventBody::Message {
            client_msg_id: "lost-ack".into(),
            text: "hello".into(),
            edited: false,
            deleted: false,
        },
    };
    let body = protocol::codec::encode_envelope(&event).to_vec();
    session
        .query_unpaged(
            format!("INSERT INTO {keyspace}.events (chat, bucket, seq, body) VALUES (1, 0, 2, ?) IF NOT EXISTS"),
            (body,),
        )
        .await
        .unwrap();
    let fresh = persistence::CqlStore::connect(&config).await.unwrap();
    assert_eq!(
        fresh.append(message(1, "a", "lost-ack", "hello")).await.unwrap(),
        Appended::Duplicate { seq: 2, ts: 5 }
    );
    assert_eq!(new_seq(fresh.append(message(1, "a", "next", "x")).await.unwrap()), 3);
    assert_eq!(fresh.chat(1).await.unwrap().unwrap().last_seq, 3);
}
