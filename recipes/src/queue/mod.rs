//! The work queue recipe: at-least-once delivery over ZooKeeper.
//!
//! ```text
//! <queue>                         config (JSON)
//!     items/<bucket>/item-<seq>   persistent sequential; envelope + payload (immutable)
//!     items/<bucket>/receipt-<call>-<seq>  ephemeral; a create's, until it is answered
//!     claims/<id>                 ephemeral, owned by the consuming session
//!     attempts/<id>               persistent; delivery count and history of an item
//!     dead/<id>                   dead-lettered item with its history
//!     keys/<key>                  persistent, TTL; an idempotency key's item (see `dedup`)
//! ```
//!
//! Files: `enqueue` (creates), `ahead` (buckets made before they are needed), `claim`
//! (the next item), `batch` (several at once), `settle` (ack, nack, give up), `dead` (dead
//! letters), `dedup` (idempotency keys), `inspect` (peek and purge), `receipt` (finding a
//! create whose reply was lost), `group` (ordered groups), `view` (the consumer's
//! watch-fed view), `item` (ids, encoding).
//!
//! Invariants:
//! - An item is removed only by an ack (or moved, by a delayed nack or dead-lettering),
//!   in one multi that also removes its claim: nothing is deleted before it is processed.
//! - A claim is an ephemeral create: at most one live consumer holds an item. When the
//!   consumer's session ends the claim vanishes and the item is ready again, no timer
//!   needed. A live consumer that exceeds the visibility timeout gives its claim up (the
//!   sidecar does, see `paddock-sidecar`), and its later ack is refused.
//! - Every claim counts one attempt in `attempts/<id>`, in the same multi, so an item
//!   whose consumers keep dying is dead-lettered after `maxAttempts` like a nacked one.
//! - Dead-lettering never takes a held item: a consumer that is not the holder moves an
//!   item to `dead/` in a multi that also creates and deletes `claims/<id>`, which fails
//!   while anyone holds it.
//! - Every write has three outcomes, and the unknown one (reply lost) is resolved here,
//!   not by the caller: a multi that creates items also creates a receipt (in its first
//!   place and its buckets; a group's items are consumed from its head), looked for
//!   after `sync` (`receipt`), and deleted once the call is answered (by the session's
//!   next enqueue multi when one comes soon, `receipt::take_left`); multis on a claimed
//!   item are retried, and a retry that finds its nodes gone tells its own earlier effect
//!   from someone else's.

mod ahead;
mod batch;
pub mod claim;
mod dead;
mod dedup;
mod enqueue;
pub mod group;
mod inspect;
pub mod item;
mod receipt;
mod settle;
pub mod view;

use std::time::Duration;

use serde::Serialize;

pub use self::batch::claim_batch;
pub use self::claim::{Candidate, ClaimOutcome, claim_next};
pub use self::dead::{StoredDeadLetter, dead_letter, dead_letters, requeue_dead};
pub use self::dedup::{Enqueued, MAX_KEY_BYTES, enqueue_deduplicated};
pub use self::enqueue::enqueue;
pub use self::inspect::{Peeked, Purged, peek, purge, purge_dead};
use self::item::{Envelope, ItemId, now_ms};
pub use self::settle::{NackOutcome, ack, ack_many, nack, release_claim};
use crate::config::{ConfigError, QueueConfig};
use crate::layout::QueuePaths;
use crate::zk;

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue znode {0} does not exist")]
    NotProvisioned(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("item {0} is not in the queue")]
    NoSuchItem(String),
    #[error("dead letter {0} does not exist")]
    NoSuchDeadLetter(String),
    /// The item was moved to the dead letters while this consumer held it (possible only
    /// through a sidecar older than the claim check, or after the claim was lost).
    #[error("item {0} was dead-lettered; it is in the queue's dead letters, not acked")]
    DeadLettered(String),
    /// The item is in the queue but this session's claim on it is gone.
    #[error("item {0} is in the queue but this consumer's claim on it is gone")]
    ClaimLost(String),
    #[error("ZooKeeper: {0}")]
    ZooKeeper(#[from] zk::Error),
}

/// An item to enqueue.
#[derive(Debug, Clone, Default)]
pub struct NewItem {
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub priority: u8,
    pub delay: Duration,
    /// The group it is delivered in order with, if any.
    pub group: Option<group::GroupKey>,
}

/// An item handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: ItemId,
    pub attempt: u32,
    pub envelope: Envelope,
    pub payload: Vec<u8>,
    /// When the request that proved the claim (its create, or the read that found it
    /// ours after a lost reply) was sent: the session was alive at the server after this,
    /// so the claim stands until at least this plus the session timeout.
    pub claim_proved_at: tokio::time::Instant,
}

impl Delivery {
    /// Whether the claim is still certainly held: under half the session timeout since it
    /// was proved, which leaves the other half for the answer to reach the app. A process
    /// stopped between its claim and its answer (a pause, a stalled machine) fails this,
    /// and must not hand the item out: its session may be gone and the item with another
    /// consumer, perhaps already acked there.
    pub fn claim_is_fresh(&self, session_timeout: Duration) -> bool {
        self.claim_proved_at.elapsed() < session_timeout / 2
    }
}

/// Counts by state, for `GET /queue/{name}` and the operator's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Items in the queue (ready, delayed and in flight); dead letters not included.
    pub depth: u64,
    pub ready: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub dead_lettered: u64,
}

/// A queue's groups: how many have items, and the longest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupStats {
    pub groups: u64,
    pub longest_group: Option<LongestGroup>,
}

/// The longest group of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LongestGroup {
    pub group: String,
    pub items: u64,
}

impl QueueError {
    /// A read of one of the queue's own nodes (its znode, `items/`, `dead/`) that found
    /// nothing: the queue is not provisioned (or was deleted).
    pub(crate) fn or_not_provisioned(err: zk::Error, paths: &QueuePaths) -> Self {
        match err {
            zk::Error::NoNode => QueueError::NotProvisioned(paths.base.clone()),
            err => err.into(),
        }
    }
}

pub async fn read_config(client: &zk::Client, paths: &QueuePaths) -> Result<QueueConfig, QueueError> {
    let (data, _) = client.get_data(&paths.base).await.map_err(|e| QueueError::or_not_provisioned(e, paths))?;
    Ok(QueueConfig::from_znode(&paths.base, &data)?)
}

/// Counts from ZooKeeper: the number of nodes under `items/` (three reads, however many
/// buckets, see [`items_and_buckets`]; less the buckets themselves), one stat per delayed
/// bucket, plus claims and dead letters. Receipts of enqueues in flight count as items for that moment (this
/// session's answered ones are deleted first; another session's may wait for its next
/// enqueue up to 100 ms, see `receipt`).
pub async fn stats(client: &zk::Client, paths: &QueuePaths) -> Result<QueueStats, QueueError> {
    receipt::send_left(client).await;
    let (buckets, under) = items_and_buckets(client, paths).await?;
    let now = now_ms();
    let mut stats = QueueStats { depth: (under as u64).saturating_sub(buckets.len() as u64), ..QueueStats::default() };
    for bucket in buckets {
        let Some((_, due)) = item::parse_bucket(&bucket) else { continue };
        if due > now
            && let Some(stat) = client.check_stat(&paths.bucket(&bucket)).await?
        {
            stats.delayed += stat.num_children as u64;
        }
    }
    stats.in_flight = client.check_stat(&paths.claims()).await?.map_or(0, |s| s.num_children as u64);
    stats.dead_lettered = client.check_stat(&paths.dead()).await?.map_or(0, |s| s.num_children as u64);
    // Groups: every node under `groups/` is a group or an item — or a receipt, for a
    // moment.
    if let Some(groups) = client.check_stat(&paths.groups()).await?.filter(|s| s.num_children > 0) {
        let group_nodes = groups.num_children as u64;
        let under = match client.count_descendants_number(&paths.groups()).await {
            Ok(under) => under as u64,
            Err(zk::Error::NoNode) => 0,
            Err(err) => return Err(err.into()),
        };
        stats.depth += under.saturating_sub(group_nodes);
    }
    stats.ready = stats.depth.saturating_sub(stats.delayed + stats.in_flight);
    Ok(stats)
}

/// The buckets of `items/` and the number of nodes under it, from one moment: read again
/// when a bucket was made or removed between the two reads (the next slots' buckets are
/// made in the background, see `ahead`), which would count a bucket as an item. After
/// four tries (buckets made and removed all the while), the last reads: off by a bucket
/// at most.
async fn items_and_buckets(client: &zk::Client, paths: &QueuePaths) -> Result<(Vec<String>, usize), QueueError> {
    let items = paths.items();
    let not_provisioned = |e| QueueError::or_not_provisioned(e, paths);
    let mut tries = 0;
    loop {
        tries += 1;
        let (buckets, before) = client.get_children(&items).await.map_err(not_provisioned)?;
        let under = client.count_descendants_number(&items).await.map_err(not_provisioned)?;
        let after = client.check_stat(&items).await?.ok_or_else(|| QueueError::NotProvisioned(paths.base.clone()))?;
        if after.cversion == before.cversion || tries == 4 {
            return Ok((buckets, under));
        }
    }
}

/// The groups with items, and the longest with its length (one stat per group, a few
/// hundred at a time). A group's length counts its items (and, for a moment, an enqueue's
/// receipt), not its claim; an empty group's node, kept a while (see `group`), is not
/// counted.
pub async fn group_stats(client: &zk::Client, paths: &QueuePaths) -> Result<GroupStats, QueueError> {
    receipt::send_left(client).await;
    let names = match client.list_children(&paths.groups()).await {
        Ok(names) => names,
        Err(zk::Error::NoNode) => return Ok(GroupStats::default()),
        Err(err) => return Err(err.into()),
    };
    let mut with_items = 0;
    let claimed: std::collections::HashSet<group::GroupKey> = client
        .list_children(&paths.claims())
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|c| ItemId::parse(c).ok()?.group)
        .collect();
    let mut longest: Option<(u64, group::GroupKey)> = None;
    for chunk in names.chunks(256) {
        let stats = chunk.iter().map(|name| client.check_stat(&paths.group(name)));
        for (name, stat) in chunk.iter().zip(futures::future::join_all(stats).await) {
            let (Ok(group), Some(stat)) = (group::GroupKey::from_encoded(name), stat?) else { continue };
            let items = (stat.num_children as u64).saturating_sub(u64::from(claimed.contains(&group)));
            with_items += u64::from(items > 0);
            if items > 0 && longest.as_ref().is_none_or(|(most, _)| items > *most) {
                longest = Some((items, group));
            }
        }
    }
    let longest_group = longest.map(|(items, group)| LongestGroup { group: group.key(), items });
    Ok(GroupStats { groups: with_items, longest_group })
}
