//! Buckets made before an enqueue needs them.
//!
//! Ready items go to the bucket of the current [`BUCKET_SPAN_MS`] slot, so a steady
//! producer moves to a new bucket ten times a second. The first enqueue into a bucket
//! that does not exist yet costs four requests instead of one: its multi fails, the
//! bucket is looked for, made, and the multi sent again — a latency spike on one enqueue
//! in every few dozen (the p99 of a single enqueue), and 5 % more requests. So an enqueue
//! that lands in slot `s` has the buckets of slots `s + 1` and `s + 2` made in the
//! background, once per slot and priority in this process: the next slot's enqueues find
//! theirs there.
//!
//! A bucket made ahead is an ordinary bucket, as an older sidecar's enqueue would make
//! it; one that gets no item is removed like any empty bucket once its slot is past (see
//! `view::retention`), never before, so the ids stay unique.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use super::enqueue::ensure_bucket;
use super::item::{BUCKET_SPAN_MS, bucket_name, parse_bucket};
use crate::layout::QueuePaths;
use crate::zk;

/// Slots made ahead of the current one.
const SLOTS_AHEAD: u64 = 2;

/// A producer's queue and priority: (its session, the bucket directory, the priority).
/// Keyed by session id, which two ensembles can share: a process talking to both (tests)
/// may then skip a bucket on one, which its first enqueue makes (slower, not wrong).
type Producer = (i64, String, u8);

/// The furthest slot made ahead, by producer.
static MADE: LazyLock<Mutex<HashMap<Producer, u64>>> = LazyLock::new(Mutex::default);

/// Slots after which a producer's entry is dropped (a queue no longer written, a session
/// that ended).
const FORGET_AFTER_SLOTS: u64 = 600;

/// After an enqueue into `bucket`: makes, in the background, the buckets of the next
/// slots of its priority that this process has not made yet. Buckets of delayed items
/// (due in a later slot) are left alone: a delay spreads them over many slots.
pub(super) fn make_next(client: &zk::Client, paths: &QueuePaths, bucket: &str, now_ms: u64) {
    let Some((priority, due_ms)) = parse_bucket(bucket) else { return };
    let (slot, now_slot) = (due_ms / BUCKET_SPAN_MS, now_ms / BUCKET_SPAN_MS);
    if slot > now_slot {
        return;
    }
    // The enqueue may have been sent in an earlier slot than it was answered in.
    let last = now_slot + SLOTS_AHEAD;
    let from = {
        let mut made = MADE.lock().expect("not poisoned");
        let furthest = made.entry((client.session_id().0, paths.items(), priority)).or_default();
        if *furthest >= last {
            return;
        }
        let from = (*furthest + 1).max(now_slot + 1);
        *furthest = last;
        made.retain(|_, furthest| *furthest + FORGET_AFTER_SLOTS > now_slot);
        from
    };
    let (client, paths) = (client.clone(), paths.clone());
    tokio::spawn(async move {
        for ahead in from..=last {
            let bucket = bucket_name(priority, ahead * BUCKET_SPAN_MS);
            if let Err(err) = ensure_bucket(&client, &paths, &bucket).await {
                tracing::debug!(bucket, error = %err, "a bucket was not made ahead; its first enqueue makes it");
            }
        }
    });
}
