//! A consumer's watch-fed view of one queue: which items exist and which are claimed.
//!
//! One persistent recursive watch on the queue's znode keeps the view current, so finding
//! the next item costs no ZooKeeper read and an enqueue wakes a waiting consumer at once.
//! The view is rebuilt from a full listing when it starts and after every reconnect
//! (ZooKeeper does not replay events a persistent watch missed while disconnected).
//!
//! The view knows every bucket but loads a bucket's items only when a consumer reaches
//! it, so its memory and the cost of `next` stay flat however deep the queue is: a
//! million items in a few hundred buckets cost a few hundred names until consumed.
//!
//! The view is advisory: it may briefly list an item that is gone or miss a claim; the
//! claim itself is the atomic step that decides (see `claim_next`).
//!
//! The views also remove buckets nothing will write to again: empty, and due
//! [`BUCKET_KEEP`] ago (see `item` for why a bucket must not go sooner).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::item::{ItemId, now_ms};
use crate::layout::QueuePaths;
use crate::session::{Session, SessionEvent};
use crate::zk;

/// What a consumer wants counted: ZooKeeper reads (tests show that waiting costs none)
/// and items dead-lettered on the way to the next item.
pub trait ConsumerObserver: Send + Sync {
    fn reads(&self, count: u64);
    fn dead_lettered(&self) {}
}

impl ConsumerObserver for () {
    fn reads(&self, _: u64) {}
}

/// How many ready items a consumer that lost a race chooses among.
pub const PICK_WINDOW: usize = 16;

/// How long a bucket is kept after its due-time slot: longer than anything may still
/// write to it (an enqueue retried for its session timeout, sidecars whose clocks are a
/// little apart). Then the views remove it once it is empty.
pub const BUCKET_KEEP: Duration = Duration::from_secs(120);

/// When a view removes old empty buckets.
#[derive(Debug, Clone, Copy)]
pub struct BucketRetention {
    /// Kept this long after its slot ([`BUCKET_KEEP`]).
    pub keep: Duration,
    /// Looked for at a random time in [1, 2) of this, so that the views of one queue
    /// seldom try the same bucket.
    pub every: Duration,
}

impl Default for BucketRetention {
    fn default() -> Self {
        Self { keep: BUCKET_KEEP, every: Duration::from_secs(20) }
    }
}

#[derive(Clone)]
pub struct QueueView {
    inner: Arc<Inner>,
}

struct Inner {
    paths: QueuePaths,
    state: Mutex<State>,
    changed: Notify,
    observer: Arc<dyn ConsumerObserver>,
}

#[derive(Default)]
struct State {
    /// Every bucket, in queue order; items only for buckets a consumer has reached.
    buckets: BTreeMap<String, Bucket>,
    claimed: HashSet<ItemId>,
    /// Items a consumer of this process is claiming right now: other consumers of the
    /// same process skip them instead of racing for them through ZooKeeper.
    reserved: HashSet<ItemId>,
    synced: bool,
    /// Set when the queue's znode does not exist.
    missing: bool,
    /// Item counts of buckets not loaded whose count is known: read at the last resync for
    /// the delayed ones, followed by watch events since (and from zero for buckets made
    /// since). For the gauges only.
    counted: HashMap<String, u64>,
    /// Dead letters: counted at the last resync, followed by watch events since.
    dead: u64,
}

#[derive(Debug, Default)]
enum Bucket {
    #[default]
    Unloaded,
    /// Item sequences; kept current by watch events from the moment loading began.
    Loaded(BTreeSet<String>),
}

/// What a view knows of its queue now, for gauges: no ZooKeeper read. Exact for the
/// buckets consumers have reached and those made since the last resync; after a
/// reconnect, a due bucket not reached yet counts as holding ready items of its due time,
/// and counts may be off by the changes in flight during the resync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewFigures {
    /// Ready items (due, not claimed).
    pub ready: u64,
    /// Items not due yet.
    pub delayed: u64,
    /// Dead letters.
    pub dead: u64,
    /// Items claimed by any consumer.
    pub in_flight: u64,
    /// Due time (ms since the epoch, to the bucket's 100 ms) of the earliest ready item.
    pub oldest_ready_due_ms: Option<u64>,
}

/// What `next` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Item(ItemId),
    /// The next ready items are in a bucket not loaded yet: list it, then `loaded`.
    Load(String),
    /// Nothing ready; the earliest delayed item is due at this time (ms), if any.
    Empty {
        next_due_ms: Option<u64>,
    },
}

impl QueueView {
    /// Starts keeping a view of the queue at `paths`, following `session` across reconnects
    /// and new sessions. The task ends when the last handle to the view is dropped.
    pub fn start(session: Session, paths: QueuePaths, observer: Arc<dyn ConsumerObserver>) -> Self {
        Self::start_with(session, paths, observer, BucketRetention::default())
    }

    /// [`QueueView::start`] with old buckets removed as `retention` says.
    pub fn start_with(
        session: Session,
        paths: QueuePaths,
        observer: Arc<dyn ConsumerObserver>,
        retention: BucketRetention,
    ) -> Self {
        let inner = Arc::new(Inner { paths, state: Mutex::default(), changed: Notify::new(), observer });
        tokio::spawn(follow(session.clone(), Arc::downgrade(&inner)));
        tokio::spawn(remove_old_buckets(session, Arc::downgrade(&inner), retention));
        Self { inner }
    }

    /// A ready item (due, not claimed, not reserved, not in `skip`), reserved for the
    /// caller until [`QueueView::unreserve`]: the first in queue order when `pick` is 0,
    /// else the `pick`-th (modulo) of the first [`PICK_WINDOW`] — consumers that lost a
    /// race for the head spread out instead of racing again. Or the bucket to load first.
    pub fn next(&self, skip: &HashSet<ItemId>, pick: usize) -> Next {
        let now = now_ms();
        let mut state = self.inner.state.lock().expect("not poisoned");
        let mut next_due: Option<u64> = None;
        let mut window: Vec<ItemId> = Vec::new();
        let want = if pick == 0 { 1 } else { PICK_WINDOW };
        for (name, bucket) in &state.buckets {
            let Some((_, due)) = super::item::parse_bucket(name) else { continue };
            if due > now {
                next_due = Some(next_due.map_or(due, |d: u64| d.min(due)));
                continue;
            }
            match bucket {
                Bucket::Unloaded if window.is_empty() => return Next::Load(name.clone()),
                Bucket::Unloaded => break,
                Bucket::Loaded(seqs) => {
                    for seq in seqs {
                        let id = ItemId { bucket: name.clone(), seq: seq.clone() };
                        if !state.claimed.contains(&id) && !state.reserved.contains(&id) && !skip.contains(&id) {
                            window.push(id);
                            if window.len() == want {
                                break;
                            }
                        }
                    }
                }
            }
            if window.len() == want {
                break;
            }
        }
        if window.is_empty() {
            return Next::Empty { next_due_ms: next_due };
        }
        let index = pick % window.len();
        let id = window.swap_remove(index);
        state.reserved.insert(id.clone());
        Next::Item(id)
    }

    /// The queue's figures as the view holds them at `now` (ms).
    pub fn figures(&self, now: u64) -> ViewFigures {
        let state = self.inner.state.lock().expect("not poisoned");
        let mut figures =
            ViewFigures { in_flight: state.claimed.len() as u64, dead: state.dead, ..ViewFigures::default() };
        for (name, bucket) in &state.buckets {
            let Some((_, due)) = super::item::parse_bucket(name) else { continue };
            let counted = state.counted.get(name).copied();
            if due > now {
                figures.delayed += counted.unwrap_or_default();
                continue;
            }
            let ready = match bucket {
                Bucket::Unloaded => {
                    figures.ready += counted.unwrap_or_default();
                    counted != Some(0)
                }
                Bucket::Loaded(seqs) => {
                    let unclaimed = seqs
                        .iter()
                        .filter(|seq| !state.claimed.contains(&ItemId { bucket: name.clone(), seq: (*seq).clone() }))
                        .count() as u64;
                    figures.ready += unclaimed;
                    unclaimed > 0
                }
            };
            if ready {
                figures.oldest_ready_due_ms = Some(figures.oldest_ready_due_ms.map_or(due, |d| d.min(due)));
            }
        }
        figures
    }

    /// Ends a reservation made by `next`.
    pub fn unreserve(&self, id: &ItemId) {
        self.inner.state.lock().expect("not poisoned").reserved.remove(id);
    }

    /// Marks a bucket as loading: from now on watch events keep its items.
    pub fn loading(&self, bucket: &str) {
        let mut state = self.inner.state.lock().expect("not poisoned");
        let entry = state.buckets.entry(bucket.to_owned()).or_default();
        if matches!(entry, Bucket::Unloaded) {
            *entry = Bucket::Loaded(BTreeSet::new());
        }
        state.counted.remove(bucket);
    }

    /// Merges a listing of a bucket begun after `loading` (None: the bucket is gone).
    pub fn loaded(&self, bucket: &str, nodes: Option<Vec<String>>) {
        let mut state = self.inner.state.lock().expect("not poisoned");
        match nodes {
            None => {
                state.buckets.remove(bucket);
            }
            Some(nodes) => {
                if let Some(Bucket::Loaded(seqs)) = state.buckets.get_mut(bucket) {
                    seqs.extend(nodes.iter().filter_map(|n| n.strip_prefix("item-")).map(str::to_owned));
                }
            }
        }
    }

    /// Waits until the view changes (an item or claim appeared or vanished, or a resync).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.changed.notified()
    }

    pub fn is_synced(&self) -> bool {
        self.inner.state.lock().expect("not poisoned").synced
    }

    /// True when the last sync found no znode for the queue.
    pub fn is_missing(&self) -> bool {
        self.inner.state.lock().expect("not poisoned").missing
    }

    /// Forgets an item known to be gone.
    pub fn forget(&self, id: &ItemId) {
        let mut state = self.inner.state.lock().expect("not poisoned");
        if let Some(Bucket::Loaded(seqs)) = state.buckets.get_mut(&id.bucket) {
            seqs.remove(&id.seq);
        }
        state.claimed.remove(id);
    }

    /// Marks an item claimed (we just claimed it, or found it claimed).
    pub fn mark_claimed(&self, id: &ItemId) {
        self.inner.state.lock().expect("not poisoned").claimed.insert(id.clone());
    }

    /// Forgets that an item is claimed, as a view that has not yet had the claim's watch
    /// event would not know it. For tests of what the claim transaction itself decides.
    #[doc(hidden)]
    pub fn unmark_claimed_for_test(&self, id: &ItemId) {
        self.inner.state.lock().expect("not poisoned").claimed.remove(id);
    }

    /// (buckets, loaded items, claimed) as the view holds them: what it costs in memory.
    pub fn footprint(&self) -> (usize, usize, usize) {
        let state = self.inner.state.lock().expect("not poisoned");
        let loaded = state
            .buckets
            .values()
            .map(|b| match b {
                Bucket::Loaded(seqs) => seqs.len(),
                Bucket::Unloaded => 0,
            })
            .sum();
        (state.buckets.len(), loaded, state.claimed.len())
    }
}

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
            (["claims", id], zk::EventType::NodeCreated) => ItemId::parse(id).ok().map(Change::Claimed),
            (["claims", id], zk::EventType::NodeDeleted) => ItemId::parse(id).ok().map(Change::Unclaimed),
            (["dead", _], zk::EventType::NodeCreated) => Some(Change::DeadLettered),
            (["dead", _], zk::EventType::NodeDeleted) => Some(Change::DeadLetterGone),
            _ => None,
        }
    }

    fn apply(&self, change: Change) {
        let mut state = self.state.lock().expect("not poisoned");
        let wakes = match change {
            Change::BucketCreated(bucket) => {
                if !state.buckets.contains_key(&bucket) {
                    state.counted.insert(bucket.clone(), 0);
                }
                state.buckets.entry(bucket).or_default();
                true
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
                state.claimed.insert(id);
                false
            }
            Change::Unclaimed(id) => state.claimed.remove(&id),
        };
        drop(state);
        if wakes {
            self.changed.notify_waiters();
        }
    }

    /// Buckets due `keep` before `now` that are not known to hold items.
    fn old_buckets(&self, now: u64, keep: Duration) -> Vec<String> {
        let keep = keep.as_millis() as u64;
        let state = self.state.lock().expect("not poisoned");
        state
            .buckets
            .iter()
            .filter(|(name, bucket)| {
                super::item::parse_bucket(name).is_some_and(|(_, due)| due + keep < now)
                    && !matches!(bucket, Bucket::Loaded(seqs) if !seqs.is_empty())
            })
            .map(|(name, _)| name.clone())
            .collect()
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
                if super::item::parse_bucket(bucket).is_some_and(|(_, due)| due > now)
                    && let Some(stat) = client.check_stat(&self.paths.bucket(bucket)).await?
                {
                    counted.insert(bucket.clone(), stat.num_children as u64);
                }
            }
            self.observer.reads(1 + counted.len() as u64);
            Ok(Some((buckets, claimed, counted, dead)))
        }
        .await;
        self.observer.reads(2);
        let mut state = self.state.lock().expect("not poisoned");
        match listed? {
            Some((buckets, claimed, counted, dead)) => {
                let buckets = buckets.into_iter().map(|b| (b, Bucket::Unloaded)).collect();
                *state = State { buckets, claimed, counted, dead, synced: true, ..State::default() };
            }
            None => *state = State { synced: true, missing: true, ..State::default() },
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }
}

/// Keeps the view in sync for as long as anyone holds it.
async fn follow(session: Session, inner: std::sync::Weak<Inner>) {
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

/// Removes the queue's old empty buckets now and then, for as long as anyone holds the
/// view. A bucket is removed only when a read finds it empty (a delete that fails is
/// still a write through the quorum); one that fills meanwhile fails the delete with
/// `NotEmpty` and stays.
async fn remove_old_buckets(session: Session, inner: Weak<Inner>, retention: BucketRetention) {
    loop {
        let jitter = (uuid::Uuid::new_v4().as_u128() % retention.every.as_millis().max(1)) as u64;
        tokio::time::sleep(retention.every + Duration::from_millis(jitter)).await;
        let Some(strong) = inner.upgrade() else { return };
        let old = strong.old_buckets(now_ms(), retention.keep);
        if old.is_empty() {
            continue;
        }
        let Ok(current) = session.wait_connected(Duration::from_secs(1)).await else { continue };
        let mut removed = 0;
        for bucket in &old {
            let path = strong.paths.bucket(bucket);
            let result = match current.client.check_stat(&path).await {
                Ok(Some(stat)) if stat.num_children == 0 => current.client.delete(&path, None).await.map(|()| true),
                Ok(_) => Ok(false),
                Err(err) => Err(err),
            };
            match result {
                Ok(true) => removed += 1,
                Ok(false) | Err(zk::Error::NoNode | zk::Error::NotEmpty) => {}
                Err(err) => {
                    tracing::debug!(queue = strong.paths.base, bucket, error = %err, "old buckets: trying later");
                    break;
                }
            }
        }
        tracing::debug!(queue = strong.paths.base, removed, "old empty buckets removed");
    }
}
