//! Removing buckets and groups nothing will write to again: empty, and due (a group:
//! emptied, and its items due) [`BUCKET_KEEP`] ago (see `item` and `group` for why they
//! must not go sooner: a node made again starts its sequence numbers over).

use std::sync::Weak;
use std::time::Duration;

use super::{Bucket, Inner};
use crate::queue::item::now_ms;
use crate::session::Session;
use crate::zk;

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

impl Inner {
    /// Buckets due `keep` before `now` that are not known to hold items.
    fn old_buckets(&self, now: u64, keep: Duration) -> Vec<String> {
        let keep = keep.as_millis() as u64;
        let state = self.state.lock().expect("not poisoned");
        state
            .buckets
            .iter()
            .filter(|(name, bucket)| {
                crate::queue::item::parse_bucket(name).is_some_and(|(_, due)| due + keep < now)
                    && !matches!(bucket, Bucket::Loaded(seqs) if !seqs.is_empty())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl Inner {
    fn old_groups(&self, now: u64, keep: Duration) -> Vec<crate::queue::group::GroupKey> {
        self.state.lock().expect("not poisoned").groups.old_empty(now, keep.as_millis() as u64)
    }

    fn forget_empty_group(&self, key: &crate::queue::group::GroupKey) {
        self.state.lock().expect("not poisoned").groups.forget_empty(key);
    }
}

/// Removes the queue's old empty buckets now and then, for as long as anyone holds the
/// view. A bucket is removed only when a read finds it empty (a delete that fails is
/// still a write through the quorum); one that fills meanwhile fails the delete with
/// `NotEmpty` and stays.
pub(super) async fn remove_old_buckets(session: Session, inner: Weak<Inner>, retention: BucketRetention) {
    loop {
        let jitter = (uuid::Uuid::new_v4().as_u128() % retention.every.as_millis().max(1)) as u64;
        tokio::time::sleep(retention.every + Duration::from_millis(jitter)).await;
        let Some(strong) = inner.upgrade() else { return };
        let old = strong.old_buckets(now_ms(), retention.keep);
        let old_groups = strong.old_groups(now_ms(), retention.keep);
        if old.is_empty() && old_groups.is_empty() {
            continue;
        }
        let Ok(current) = session.wait_connected(Duration::from_secs(1)).await else { continue };
        let mut removed = 0;
        for bucket in &old {
            let path = strong.paths.bucket(bucket);
            match remove_if_empty(&current.client, &path).await {
                Ok(true) => removed += 1,
                Ok(false) | Err(zk::Error::NoNode | zk::Error::NotEmpty) => {}
                Err(err) => {
                    tracing::debug!(queue = strong.paths.base, bucket, error = %err, "old buckets: trying later");
                    break;
                }
            }
        }
        for group in &old_groups {
            match remove_if_empty(&current.client, &strong.paths.group(group.encoded())).await {
                Ok(_) | Err(zk::Error::NoNode | zk::Error::NotEmpty) => strong.forget_empty_group(group),
                Err(err) => {
                    tracing::debug!(queue = strong.paths.base, error = %err, "old groups: trying later");
                    break;
                }
            }
        }
        tracing::debug!(queue = strong.paths.base, removed, "old empty buckets removed");
    }
}

/// Deletes a node a read finds empty (a delete that fails is still a write through the
/// quorum); true when it did.
async fn remove_if_empty(client: &zk::Client, path: &str) -> Result<bool, zk::Error> {
    match client.check_stat(path).await? {
        Some(stat) if stat.num_children == 0 => client.delete(path, None).await.map(|()| true),
        _ => Ok(false),
    }
}
