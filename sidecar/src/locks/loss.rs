//! How a held lock is found lost, and the app told: the holder's node deleted (one
//! persistent watch per lock and session), the lease not renewed in time, the session
//! expired, or the connection lost past the session timeout.
//!
//! Invariants:
//! - Lost is final for a (lock, owner, token): the entry turns `lost` once, the event
//!   and metric follow, and only a new acquire (a new token) holds again.
//! - A node we could not delete when declaring its lock lost (disconnected) is deleted
//!   once the connection is back, if the session survived.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use paddock_recipes::lock;
use paddock_recipes::{Name, SessionEvent, zk};
use tokio::time::Instant;

use super::{Entry, HeldLock, Inner, Key, LostLock};
use crate::events::{Event, LossReason, now};
use crate::metrics::{ReasonLabel, lock_label};

impl Inner {
    /// Turns a held entry into a lost one (if it still holds `token`) and tells everyone.
    pub(super) fn mark_lost(&self, key: &Key, token: i64, reason: LossReason, orphan: Option<String>) -> bool {
        let mut table = self.table.lock().expect("not poisoned");
        if !matches!(table.get(key), Some(Entry::Held(h)) if h.held.token == token) {
            return false;
        }
        let at = now();
        let lost = table.insert(key.clone(), Entry::Lost(LostLock { token, reason, at: at.clone(), orphan }));
        drop(table);
        if let Some(Entry::Held(held)) = &lost {
            self.observe_hold(&key.0, held);
        }
        self.ctx.metrics.locks_held.dec();
        self.count_loss(reason);
        self.ctx.events.publish(Event::LockLost { name: key.0.to_string(), owner: key.1.clone(), token, reason, at });
        true
    }

    /// A hold ended (released or lost): its length into the lock's histogram.
    pub(super) fn observe_hold(&self, lock: &Name, held: &HeldLock) {
        let seconds = held.since.elapsed().as_secs_f64();
        self.ctx.metrics.lock_hold_seconds.get_or_create(&lock_label(lock.as_str())).observe(seconds);
    }

    pub(super) fn count_loss(&self, reason: LossReason) {
        self.ctx.metrics.lock_losses.get_or_create(&ReasonLabel { reason: reason.as_str().to_owned() }).inc();
    }

    pub(super) fn held_of_generation(&self, generation: u64) -> Vec<(Key, HeldLock)> {
        self.table
            .lock()
            .expect("not poisoned")
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Held(h) if h.generation <= generation => Some((k.clone(), h.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Makes sure this session watches `lock_path` (one persistent recursive watch per lock
/// and session, shared by every holder in this pod): a holder's node deleted by anyone
/// but us means its lock is lost. The first time, our node is checked after the watch is
/// in place, so a deletion before it is not missed.
pub(super) async fn ensure_holder_watch(
    inner: Arc<Inner>,
    lock_path: String,
    node_path: String,
    client: zk::Client,
    generation: u64,
) {
    {
        let mut watched = inner.watched_locks.lock().expect("not poisoned");
        if watched.get(&lock_path) == Some(&generation) {
            return;
        }
        watched.insert(lock_path.clone(), generation);
    }
    let watched = paddock_recipes::retry::while_unknown(&client, "watching a lock", |_| {
        client.watch(&lock_path, zk::AddWatchMode::PersistentRecursive)
    })
    .await;
    let mut watcher = match watched {
        Ok(watcher) => watcher,
        Err(err) => {
            // The session is over (its holders are reported lost) or the lock is gone.
            tracing::debug!(lock = lock_path, error = %err, "not watching lock");
            inner.watched_locks.lock().expect("not poisoned").remove(&lock_path);
            return;
        }
    };
    if let Ok(None) = client.check_stat(&node_path).await {
        node_gone(&inner, &node_path);
    }
    loop {
        let event = watcher.changed().await;
        match event.event_type {
            zk::EventType::NodeDeleted => node_gone(&inner, &event.path),
            // The session is over (the watcher must not be polled again); `follow_session`
            // reports the losses and the next acquire watches again.
            zk::EventType::Session if event.session_state.is_terminated() => return,
            _ => {}
        }
    }
}

/// A contender node vanished: if it is one we hold, the lock is lost.
fn node_gone(inner: &Inner, node_path: &str) {
    let held: Option<(Key, i64)> = inner.table.lock().expect("not poisoned").iter().find_map(|(k, e)| match e {
        Entry::Held(h) if h.held.node_path == node_path => Some((k.clone(), h.held.token)),
        _ => None,
    });
    if let Some((key, token)) = held {
        // Deleted while we are cut off: the ensemble expired our session (a notification
        // can arrive just before the connection is found dead).
        let reason =
            if inner.ctx.session.is_connected() { LossReason::NodeDeleted } else { LossReason::SessionExpired };
        inner.mark_lost(&key, token, reason, None);
    }
}

/// Releases a lock whose lease was not renewed in time and reports it lost.
pub(super) async fn enforce_lease(inner: Arc<Inner>, key: Key, token: i64) {
    loop {
        let due = match inner.table.lock().expect("not poisoned").get(&key) {
            Some(Entry::Held(h)) if h.held.token == token => h.expires_at,
            _ => return,
        };
        let Some(due) = due else { return };
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
            continue;
        }
        let held = match inner.table.lock().expect("not poisoned").get(&key) {
            Some(Entry::Held(h)) if h.held.token == token => h.held.clone(),
            _ => return,
        };
        // Lost first, so the app sees `lost` before anyone else can hold the lock. Not a
        // release: the app may still be writing, so the lock's lock-delay applies.
        if !inner.mark_lost(&key, token, LossReason::TtlElapsed, None) {
            return;
        }
        if let Ok(current) = inner.ctx.session.client()
            && let Err(err) = lock::abandon(&current.client, &held).await
        {
            tracing::warn!(node = held.node_path, error = %err, "could not delete expired lease's node");
        }
        return;
    }
}

/// Turns session events into lost locks and events for the app.
pub(super) async fn follow_session(inner: Arc<Inner>) {
    let mut events = inner.ctx.session.subscribe();
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let (state, generation) = match &event {
            SessionEvent::Established { generation, .. } => ("established", *generation),
            SessionEvent::Suspended { generation } => ("suspended", *generation),
            SessionEvent::Reconnected { generation } => ("reconnected", *generation),
            SessionEvent::Expired { generation, .. } => ("expired", *generation),
        };
        inner.ctx.events.publish(Event::Session { state, generation, at: now() });
        let epoch = inner.connection_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        match event {
            SessionEvent::Expired { generation, .. } => {
                for (key, held) in inner.held_of_generation(generation) {
                    inner.mark_lost(&key, held.held.token, LossReason::SessionExpired, None);
                }
            }
            SessionEvent::Suspended { generation } => {
                let inner = inner.clone();
                let timeout = inner.ctx.session.session_timeout();
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    if inner.connection_epoch.load(Ordering::SeqCst) != epoch {
                        return; // reconnected or expired meanwhile
                    }
                    for (key, held) in inner.held_of_generation(generation) {
                        let orphan = Some(held.held.node_path.clone());
                        inner.mark_lost(&key, held.held.token, LossReason::ConnectionLost, orphan);
                    }
                });
            }
            SessionEvent::Reconnected { .. } => delete_orphans(&inner).await,
            SessionEvent::Established { .. } => {}
        }
    }
}

/// Deletes nodes of locks declared lost while disconnected, if the session survived.
async fn delete_orphans(inner: &Inner) {
    let orphans: Vec<String> = inner
        .table
        .lock()
        .expect("not poisoned")
        .values_mut()
        .filter_map(|e| match e {
            Entry::Lost(lost) => lost.orphan.take(),
            _ => None,
        })
        .collect();
    let Ok(current) = inner.ctx.session.client() else { return };
    for path in orphans {
        match current.client.delete(&path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(err) => tracing::warn!(node = path, error = %err, "could not delete a lost lock's node"),
        }
    }
}
