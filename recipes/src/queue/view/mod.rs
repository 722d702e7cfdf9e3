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
//!
//! Files: here the view's state and what consumers and gauges ask of it; `follow` keeps
//! it current from ZooKeeper; `retention` removes old buckets.

mod follow;
mod groups;
mod retention;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use self::groups::Groups;
pub use self::retention::{BUCKET_KEEP, BucketRetention};
use super::group::GroupKey;
use super::item::{ItemId, now_ms};
use crate::layout::QueuePaths;
use crate::session::Session;

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
    /// Every group's items (all loaded at a resync: a group's head must be known to place
    /// it among the others).
    groups: Groups,
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
        tokio::spawn(follow::follow(session.clone(), Arc::downgrade(&inner)));
        tokio::spawn(retention::remove_old_buckets(session, Arc::downgrade(&inner), retention));
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
                // A bucket known to be empty (made ahead) is nothing to wait for.
                let empty = match bucket {
                    Bucket::Loaded(seqs) => seqs.is_empty(),
                    Bucket::Unloaded => state.counted.get(name) == Some(&0),
                };
                if !empty {
                    next_due = Some(next_due.map_or(due, |d: u64| d.min(due)));
                }
                continue;
            }
            match bucket {
                Bucket::Unloaded if window.is_empty() => return Next::Load(name.clone()),
                Bucket::Unloaded => break,
                Bucket::Loaded(seqs) => {
                    for seq in seqs {
                        let id = ItemId { bucket: name.clone(), seq: seq.clone(), group: None };
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
        let state = &mut *state;
        let keep = |id: &ItemId| !state.reserved.contains(id) && !skip.contains(id);
        let (heads, heads_due) = state.groups.heads(now, want, keep);
        next_due = match (next_due, heads_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if !heads.is_empty() {
            // Ungrouped items and groups' heads, merged in queue order (bucket, then arrival).
            window.extend(heads);
            window.sort_by(|a, b| a.bucket.cmp(&b.bucket));
            window.truncate(want);
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
                        .filter(|seq| {
                            !state.claimed.contains(&ItemId { bucket: name.clone(), seq: (*seq).clone(), group: None })
                        })
                        .count() as u64;
                    figures.ready += unclaimed;
                    unclaimed > 0
                }
            };
            if ready {
                figures.oldest_ready_due_ms = Some(figures.oldest_ready_due_ms.map_or(due, |d| d.min(due)));
            }
        }
        let (ready, delayed, oldest) = state.groups.figures(now, &state.claimed);
        figures.ready += ready;
        figures.delayed += delayed;
        if let Some(oldest) = oldest {
            figures.oldest_ready_due_ms = Some(figures.oldest_ready_due_ms.map_or(oldest, |d| d.min(oldest)));
        }
        figures
    }

    /// Groups with items, and the longest group with its length.
    pub fn group_lengths(&self) -> (usize, Option<(GroupKey, usize)>) {
        self.inner.state.lock().expect("not poisoned").groups.lengths()
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
        let mut guard = self.inner.state.lock().expect("not poisoned");
        let state = &mut *guard;
        state.claimed.remove(id);
        if id.group.is_some() {
            state.groups.remove(id, &state.claimed);
        } else if let Some(Bucket::Loaded(seqs)) = state.buckets.get_mut(&id.bucket) {
            seqs.remove(&id.seq);
        }
    }

    /// Whether the view would still offer the item: known, not claimed (an item it never
    /// listed counts as offered).
    pub fn is_offered(&self, id: &ItemId) -> bool {
        let state = self.inner.state.lock().expect("not poisoned");
        !state.claimed.contains(id)
            && match (&id.group, state.buckets.get(&id.bucket)) {
                (Some(_), _) => state.groups.contains(id),
                (None, Some(Bucket::Loaded(seqs))) => seqs.contains(&id.seq),
                (None, _) => true,
            }
    }

    /// Marks an item claimed (we just claimed it, or found it claimed).
    pub fn mark_claimed(&self, id: &ItemId) {
        let mut guard = self.inner.state.lock().expect("not poisoned");
        let state = &mut *guard;
        state.claimed.insert(id.clone());
        state.groups.claim_changed(id, &state.claimed);
    }

    /// Forgets that an item is claimed, as a view that has not yet had the claim's watch
    /// event would not know it. For tests of what the claim transaction itself decides.
    #[doc(hidden)]
    pub fn unmark_claimed_for_test(&self, id: &ItemId) {
        let mut guard = self.inner.state.lock().expect("not poisoned");
        let state = &mut *guard;
        state.claimed.remove(id);
        state.groups.claim_changed(id, &state.claimed);
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
            .sum::<usize>()
            + state.groups.len();
        (state.buckets.len(), loaded, state.claimed.len())
    }
}
