//! The in-process bus of the standalone node.
//!
//! Delivery is in publish order per publisher, and a full sink makes the publisher wait rather
//! than drop: inside one process there is no network partition to protect against, and
//! backpressure is the behaviour that loses nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::{Bus, BusError, BusMessage, Sink, Subscription};

const INBOX_PREFIX: &str = "_INBOX.";

#[derive(Default)]
struct Subject {
    plain: Vec<(u64, Sink)>,
    groups: Vec<Group>,
}

struct Group {
    name: String,
    members: Vec<(u64, Sink)>,
    next: usize,
}

#[derive(Default)]
struct Inner {
    subjects: RwLock<HashMap<String, Subject>>,
    inboxes: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    next_id: AtomicU64,
    /// Round-robin cursors need mutation under a read-mostly map; a separate lock keeps
    /// publishes on plain subjects read-only.
    group_lock: Mutex<()>,
}

/// The in-process bus. Clones share one bus.
#[derive(Clone, Default)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

impl LocalBus {
    pub fn new() -> Self {
        LocalBus::default()
    }

    fn targets(&self, subject: &str) -> Vec<Sink> {
        let mut out = Vec::new();
        let has_groups = {
            let subjects = self.inner.subjects.read().unwrap_or_else(|p| p.into_inner());
            let Some(s) = subjects.get(subject) else { return out };
            out.extend(s.plain.iter().map(|(_, sink)| sink.clone()));
            !s.groups.is_empty()
        };
        if has_groups {
            let _g = self.inner.group_lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut subjects = self.inner.subjects.write().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = subjects.get_mut(subject) {
                for g in &mut s.groups {
                    if g.members.is_empty() {
                        continue;
                    }
                    g.next = (g.next + 1) % g.members.len();
                    out.push(g.members[g.next].1.clone());
                }
            }
        }
        out
    }
}

struct Unsubscribe {
    inner: Weak<Inner>,
    subject: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else { return };
        let mut subjects = inner.subjects.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = subjects.get_mut(&self.subject) {
            s.plain.retain(|(id, _)| *id != self.id);
            for g in &mut s.groups {
                g.members.retain(|(id, _)| *id != self.id);
            }
            s.groups.retain(|g| !g.members.is_empty());
            if s.plain.is_empty() && s.groups.is_empty() {
                subjects.remove(&self.subject);
            }
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    /// Delivery happens inside `publish`: nothing is ever pending.
    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        if let Some(id) = subject.strip_prefix(INBOX_PREFIX).and_then(|s| s.parse::<u64>().ok()) {
            let waiter = self.inner.inboxes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if let Some(tx) = waiter {
                let _ = tx.send(payload);
            }
            return Ok(());
        }
        for sink in self.targets(subject) {
            // A closed sink is a subscriber going away; its guard removes it shortly.
            let _ = sink.send(BusMessage { subject: subject.to_owned(), payload: payload.clone(), reply: None }).await;
        }
        Ok(())
    }

    async fn request(&self, subject: &str, payload: Bytes, timeout: Duration) -> Result<Bytes, BusError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.inboxes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let targets = self.targets(subject);
        if targets.is_empty() {
            self.inner.inboxes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(BusError::NoResponders);
        }
        let reply = format!("{INBOX_PREFIX}{id}");
        for sink in targets {
            let msg = BusMessage { subject: subject.to_owned(), payload: payload.clone(), reply: Some(reply.clone()) };
            let _ = sink.send(msg).await;
        }
        let result = tokio::time::timeout(timeout, rx).await;
        self.inner.inboxes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match result {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(_)) => Err(BusError::NoResponders),
            Err(_) => Err(BusError::Timeout),
        }
    }

    async fn subscribe(&self, subject: &str, queue_group: Option<&str>, sink: Sink) -> Result<Subscription, BusError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut subjects = self.inner.subjects.write().unwrap_or_else(|p| p.into_inner());
            let s = subjects.entry(subject.to_owned()).or_default();
            match queue_group {
                None => s.plain.push((id, sink)),
                Some(name) => match s.groups.iter_mut().find(|g| g.name == name) {
                    Some(g) => g.members.push((id, sink)),
                    None => s.groups.push(Group { name: name.to_owned(), members: vec![(id, sink)], next: 0 }),
                },
            }
        }
        Ok(Subscription::new(Unsubscribe { inner: Arc::downgrade(&self.inner), subject: subject.to_owned(), id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn publish_reaches_plain_subscribers_and_one_per_group() {
        let bus = LocalBus::new();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (tx2, mut rx2) = mpsc::channel(8);
        let (tx3, mut rx3) = mpsc::channel(8);
        let _a = bus.subscribe("s", None, tx1).await.unwrap();
        let _b = bus.subscribe("s", Some("g"), tx2).await.unwrap();
        let _c = bus.subscribe("s", Some("g"), tx3).await.unwrap();
        for i in 0..4u8 {
            bus.publish("s", Bytes::from(vec![i])).await.unwrap();
        }
        for i in 0..4u8 {
            assert_eq!(rx1.recv().await.unwrap().payload[0], i);
        }
        let mut group = 0;
        while rx2.try_recv().is_ok() {
            group += 1;
        }
        while rx3.try_recv().is_ok() {
            group += 1;
        }
        assert_eq!(group, 4);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let bus = LocalBus::new();
        let (tx, mut rx) = mpsc::channel(8);
        let sub = bus.subscribe("s", None, tx).await.unwrap();
        drop(sub);
        bus.publish("s", Bytes::from_static(b"x")).await.unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn request_reply() {
        let bus = LocalBus::new();
        assert!(matches!(
            bus.request("svc", Bytes::new(), Duration::from_millis(10)).await,
            Err(BusError::NoResponders)
        ));
        let (tx, mut rx) = mpsc::channel::<BusMessage>(8);
        let _s = bus.subscribe("svc", Some("g"), tx).await.unwrap();
        let responder = bus.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let reply = m.reply.unwrap();
                responder.publish(&reply, m.payload).await.unwrap();
            }
        });
        let got = bus.request("svc", Bytes::from_static(b"ping"), Duration::from_secs(5)).await.unwrap();
        assert_eq!(&got[..], b"ping");
    }
}
