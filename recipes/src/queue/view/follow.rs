//! Keeping a view current: one persistent recursive watch on the queue's znode, its
//! events applied as they come, and a full listing when the view starts and after every
//! reconnect.

use std::collections::{HashMap, HashSet};

use super::{Bucket, Groups, Inner, State};
use crate::queue::group::GroupKey;
use crate::queue::item::{ItemId, Place, now_ms};
use crate::session::{Session, SessionEvent};
use crate::zk;

enum Change {
    BucketCreated(String),
    BucketDeleted(String),
    ItemCreated(ItemId),
    ItemDeleted(ItemId),
    Claimed(ItemId),
    Unclaimed(ItemId),
    DeadLettered,
    DeadLetterGone,
}

impl Inner {
    fn classify(&self, event: &zk::WatchedEvent) -> Option<Change> {
        let rest = event.path.strip_prefix(&self.paths.base)?;
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match (parts.as_slice(), event.event_type) {
            (["items", bucket], zk::EventType::NodeCreated) => Some(Change::BucketCreated((*bucket).to_owned())),
            (["items", bucket], zk::EventType::NodeDeleted) => Some(Change::BucketDeleted((*bucket).to_owned())),
            (["items", bucket, node], zk::EventType::NodeCreated) => {
                ItemId::from_node(bucket, node).map(Change::ItemCreated)
            }
            (["items", bucket, node], zk::EventType::NodeDeleted) => {
                ItemId::from_node(bucket, node).map(Change::ItemDeleted)
            }
            (["groups", group, node], zk::EventType::NodeCreated) => {
                self.group_item(group, node).map(Change::ItemCreated)
            }
            (["groups", group, node], zk::EventType::NodeDeleted) => {
                self.group_item(group, node).map(Change::ItemDeleted)
            }
            (["claims", id], zk::EventType::NodeCreated) => ItemId::parse(id).ok().map(Change::Claimed),
            (["claims", id], zk::EventType::NodeDeleted) => ItemId::parse(id).ok().map(Change::Unclaimed),
            (["dead", _], zk::EventType::NodeCreated) => Some(Change::DeadLettered),
            (["dead", _], zk::EventType::NodeDeleted) => Some(Change::DeadLetterGone),
            _ => None,
        }
    }

    fn group_item(&self, group: &str, node: &str) -> Option<ItemId> {
        Place::Group(GroupKey::from_encoded(group).ok()?).id_of_node(node)
    }

    fn apply(&self, change: Change) {
        let mut guard = self.state.lock().expect("not poisoned");
        let state = &mut *guard;
        let wakes = match change {
            Change::ItemCreated(id) if id.group.is_some() => {
                state.groups.insert(&id, &state.claimed);
                true
            }
            Change::ItemDeleted(id) if id.group.is_some() => {
                state.claimed.remove(&id);
                state.groups.remove(&id, &state.claimed);
                false
            }
            // A bucket made while the view follows is empty, and every item put in it
            // comes as an event after this one: known without a listing. Nothing in it to
            // offer yet (buckets are made ahead of the enqueues that fill them).
            Change::BucketCreated(bucket) => {
                if !state.buckets.contains_key(&bucket) {
                    state.counted.insert(bucket.clone(), 0);
                    state.buckets.insert(bucket, Bucket::Loaded(Default::default()));
                }
                false
            }
            Change::BucketDeleted(bucket) => {
                state.counted.remove(&bucket);
                state.buckets.remove(&bucket);
                false
            }
            Change::ItemCreated(id) => {
                if let Some(count) = state.counted.get_mut(&id.bucket) {
                    *count += 1;
                }
                match state.buckets.entry(id.bucket).or_default() {
                    Bucket::Loaded(seqs) => seqs.insert(id.seq),
                    Bucket::Unloaded => true,
                }
            }
            Change::ItemDeleted(id) => {
                state.claimed.remove(&id);
                if let Some(count) = state.counted.get_mut(&id.bucket) {
                    *count = count.saturating_sub(1);
                }
                if let Some(Bucket::Loaded(seqs)) = state.buckets.get_mut(&id.bucket) {
                    seqs.remove(&id.seq);
                }
                false
            }
            Change::DeadLettered => {
                state.dead += 1;
                false
            }
            Change::DeadLetterGone => {
                state.dead = state.dead.saturating_sub(1);
                false
            }
            Change::Claimed(id) => {
                state.claimed.insert(id.clone());
                state.groups.claim_changed(&id, &state.claimed);
                false
            }
            Change::Unclaimed(id) => {
                let was = state.claimed.remove(&id);
                state.groups.claim_changed(&id, &state.claimed);
                was
            }
        };
        drop(guard);
        if wakes {
            self.changed.notify_waiters();
        }
    }

    fn set_unsynced(&self) {
        self.state.lock().expect("not poisoned").synced = false;
    }

    /// Lists buckets and claims and replaces the view with what it found; bucket items
    /// are loaded again as consumers reach them.
    async fn resync(&self, client: &zk::Client) -> Result<(), zk::Error> {
        let listed = async {
            let buckets = match client.list_children(&self.paths.items()).await {
                Ok(b) => b,
                Err(zk::Error::NoNode) => return Ok(None),
                Err(e) => return Err(e),
            };
            let claimed: HashSet<ItemId> = match client.list_children(&self.paths.claims()).await {
                Ok(c) => c.iter().filter_map(|c| ItemId::parse(c).ok()).collect(),
                Err(zk::Error::NoNode) => HashSet::new(),
                Err(e) => return Err(e),
            };
            // For the gauges: the dead letters, and the items of delayed buckets (which no
            // consumer loads before they are due).
            let dead = client.check_stat(&self.paths.dead()).await?.map_or(0, |s| s.num_children as u64);
            let now = now_ms();
            let mut counted = HashMap::new();
            for bucket in &buckets {
                if crate::queue::item::parse_bucket(bucket).is_some_and(|(_, due)| due > now)
                    && let Some(stat) = client.check_stat(&self.paths.bucket(bucket)).await?
                {
                    counted.insert(bucket.clone(), stat.num_children as u64);
                }
            }
            self.observer.reads(1 + counted.len() as u64);
            let groups = self.list_groups(client).await?;
            Ok(Some((buckets, claimed, counted, dead, groups)))
        }
        .await;
        self.observer.reads(2);
        let mut state = self.state.lock().expect("not poisoned");
        match listed? {
            Some((buckets, claimed, counted, dead, groups)) => {
                let buckets = buckets.into_iter().map(|b| (b, Bucket::Unloaded)).collect();
                let groups = Groups::listed(groups, &claimed);
                *state = State { buckets, claimed, counted, dead, groups, synced: true, ..State::default() };
            }
            None => *state = State { synced: true, missing: true, ..State::default() },
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }
}

impl Inner {
    /// Every group's items: the groups, then each one's children, a few hundred listings
    /// in flight at a time.
    async fn list_groups(&self, client: &zk::Client) -> Result<Vec<(GroupKey, Vec<ItemId>)>, zk::Error> {
        let names = match client.list_children(&self.paths.groups()).await {
            Ok(names) => names,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let keys: Vec<GroupKey> = names.iter().filter_map(|n| GroupKey::from_encoded(n).ok()).collect();
        let mut listed = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(256) {
            let lists = chunk.iter().map(|key| client.list_children(&self.paths.group(key.encoded())));
            for (key, list) in chunk.iter().zip(futures::future::join_all(lists).await) {
                let nodes = match list {
                    Ok(nodes) => nodes,
                    Err(zk::Error::NoNode) => continue,
                    Err(err) => return Err(err),
                };
                let place = Place::Group(key.clone());
                listed.push((key.clone(), nodes.iter().filter_map(|n| place.id_of_node(n)).collect()));
            }
        }
        self.observer.reads(1 + keys.len() as u64);
        Ok(listed)
    }
}

/// Keeps the view in sync for as long as anyone holds it.
pub(super) async fn follow(session: Session, inner: std::sync::Weak<Inner>) {
    let mut session_events = session.subscribe();
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let current = match session.wait_connected(std::time::Duration::from_secs(5)).await {
            Ok(current) => current,
            Err(_) => continue,
        };
        let mut watcher = match current.client.watch(&strong.paths.base, zk::AddWatchMode::PersistentRecursive).await {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::warn!(queue = strong.paths.base, error = %err, "cannot watch queue; retrying");
                drop(strong);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(err) = strong.resync(&current.client).await {
            tracing::warn!(queue = strong.paths.base, error = %err, "cannot list queue; retrying");
            drop(strong);
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        tracing::debug!(queue = strong.paths.base, generation = current.generation, "queue view following");
        drop(strong);
        // Follow events until the session ends; resync after each reconnect.
        loop {
            let event = tokio::select! {
                event = watcher.changed() => event,
                session_event = session_events.recv() => {
                    match session_event {
                        Ok(SessionEvent::Expired { generation, .. }) if generation >= current.generation => break,
                        _ => continue,
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                    let Some(strong) = inner.upgrade() else { return };
                    // A resync that failed after a reconnect is retried here.
                    if !strong.state.lock().expect("not poisoned").synced
                        && current.client.state() == zk::SessionState::SyncConnected
                        && let Err(err) = strong.resync(&current.client).await
                    {
                        tracing::warn!(queue = strong.paths.base, error = %err, "resync failed; retrying");
                    }
                    continue;
                }
            };
            let Some(strong) = inner.upgrade() else { return };
            if event.event_type == zk::EventType::Session {
                tracing::debug!(queue = strong.paths.base, state = ?event.session_state, "queue view: session event");
                match event.session_state {
                    zk::SessionState::Disconnected => strong.set_unsynced(),
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        if let Err(err) = strong.resync(&current.client).await {
                            tracing::warn!(queue = strong.paths.base, error = %err, "resync after reconnect failed");
                            strong.set_unsynced();
                        }
                    }
                    _ => break, // terminal: the watcher must not be polled again
                }
                continue;
            }
            tracing::trace!(queue = strong.paths.base, event = ?event.event_type, path = event.path, "queue view: watch event");
            if let Some(change) = strong.classify(&event) {
                strong.apply(change);
            }
        }
        if let Some(strong) = inner.upgrade() {
            strong.set_unsynced();
        }
    }
}
