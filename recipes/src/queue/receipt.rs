//! Receipts: how a write that creates items (an enqueue, a delayed nack's move, a requeue)
//! is told apart, after its reply was lost, from one that was never applied.
//!
//! A sequential item's name cannot be known before it is created, and a look for the item
//! itself cannot tell "never created" from "created, then taken and acked by a fast
//! consumer". So the multi that creates a bucket's items first creates, in that bucket,
//! an *ephemeral* sequential receipt `receipt-<call id>-<seq>` of this session. After an
//! unknown outcome the receipt is looked for by name: there, the multi was applied (it is
//! one transaction) and the items' ids are the receipt's next sequence numbers; not
//! there, it was not. (An enqueue over several groups puts one only in its first place:
//! see `enqueue::Receipts`.) Its owner deletes it once the outcome is known — in the multi of its
//! session's next enqueue when one comes soon, so that a steady producer's enqueue is one
//! write — and one whose delete fails dies with the session. Consumers (of every version)
//! list only `item-` children.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::QueueError;
use super::item::{ItemId, Place};
use crate::identity::NodeAcl;
use crate::layout::QueuePaths;
use crate::retry::{while_unknown, while_unknown_until};
use crate::zk;

/// The receipts of one call: one name, used in each bucket the call writes to.
#[derive(Debug, Clone)]
pub(super) struct Receipt {
    prefix: String,
}

/// What a call's multi made in one place (a bucket or a group).
#[derive(Debug, Clone)]
pub(super) struct Receipted {
    /// The receipt's path, to delete.
    pub receipt: String,
    /// The sequence number of the first item after the receipt (the call's other items
    /// in the place follow it).
    pub first_seq: u64,
}

impl Receipted {
    /// The id of the `index`-th item the call made in `place`, which is of `bucket`.
    pub fn id(&self, place: &Place, bucket: &str, index: u64) -> ItemId {
        place.id(bucket, self.first_seq + index)
    }
}

/// The sequence number ending a sequential node's path.
fn seq_of(path: &str) -> Option<u64> {
    let digits = path.get(path.len().checked_sub(10)?..)?;
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
}

/// The sequence number of a created item's path.
pub(super) fn seq_of_item(path: &str) -> Result<u64, zk::Error> {
    seq_of(path).ok_or_else(|| zk::Error::UnexpectedError(format!("an item created at {path}")))
}

/// The items of `place` that transaction `czxid` made and that are still there, in order.
/// Read from the newest down, a chunk of stats at a time, until an item older than the
/// transaction: the items made after it are read, not the whole place.
pub(super) async fn made_in_transaction(
    client: &zk::Client,
    paths: &QueuePaths,
    place: &Place,
    czxid: i64,
    deadline: Instant,
) -> Result<Vec<ItemId>, QueueError> {
    let dir = place.dir(paths);
    let nodes = match while_unknown_until(deadline, "listing a place", |_| client.list_children(&dir)).await {
        Ok(nodes) => nodes,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let mut ids: Vec<ItemId> = nodes.iter().filter_map(|node| place.id_of_node(node)).collect();
    ids.sort_by_key(|id| std::cmp::Reverse(id.seq_number()));
    let mut made = Vec::new();
    'newest_first: for chunk in ids.chunks(32) {
        let stats = futures::future::join_all(chunk.iter().map(|id| {
            let path = id.path(paths);
            async move { while_unknown_until(deadline, "reading an item", |_| client.check_stat(&path)).await }
        }))
        .await;
        for (id, stat) in chunk.iter().zip(stats) {
            match stat? {
                Some(stat) if stat.czxid == czxid => made.push(id.clone()),
                Some(stat) if stat.czxid < czxid => break 'newest_first,
                _ => {}
            }
        }
    }
    made.reverse();
    Ok(made)
}

impl Receipt {
    pub fn new() -> Self {
        Self { prefix: format!("receipt-{}-", uuid::Uuid::new_v4().simple()) }
    }

    /// The receipts of a call whose name was written down (an idempotency record).
    pub fn named(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The name shared by the call's receipts, less each one's sequence number.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The receipt's create, to add to a multi just before the place's items.
    pub fn create_in(&self, dir: &str) -> String {
        format!("{dir}/{}", self.prefix)
    }

    pub fn mode(acl: NodeAcl) -> zk::CreateOptions<'static> {
        zk::CreateMode::EphemeralSequential.with_acls(acl.acls())
    }

    /// From the created paths of a multi's receipt and its first item after it.
    pub fn made(receipt: String, first_item: &str) -> Result<Receipted, zk::Error> {
        Ok(Receipted { receipt, first_seq: seq_of_item(first_item)? })
    }

    /// From the results of an applied multi that made one receipt and then the item(s)
    /// after it: the receipt and the first item.
    pub fn made_by(results: Vec<zk::MultiWriteResult>) -> Result<Receipted, zk::Error> {
        let mut created = results.into_iter().filter_map(|result| match result {
            zk::MultiWriteResult::Create { path, .. } => Some(path),
            _ => None,
        });
        match (created.next(), created.next()) {
            (Some(receipt), Some(item)) => Self::made(receipt, &item),
            other => Err(zk::Error::UnexpectedError(format!("a multi with a receipt created {other:?}"))),
        }
    }

    /// After an unknown outcome: brings the server up to date (`sync`) and looks for this
    /// call's receipt in `place`, retrying lost connections until `deadline`. Some when
    /// the multi that made it was applied.
    pub async fn find(
        &self,
        client: &zk::Client,
        paths: &QueuePaths,
        place: &Place,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Receipted>, QueueError> {
        let bucket_path = place.dir(paths);
        let seq = while_unknown_until(deadline, "looking for a receipt", |_| async {
            client.sync(&bucket_path).await?;
            match client.list_children(&bucket_path).await {
                Ok(nodes) => Ok(nodes.into_iter().find_map(|n| n.strip_prefix(&self.prefix).map(str::to_owned))),
                Err(zk::Error::NoNode) => Ok(None),
                Err(err) => Err(err),
            }
        })
        .await?;
        Ok(seq.and_then(|seq| {
            let first_seq = seq_of(&seq)? + 1;
            Some(Receipted { receipt: format!("{bucket_path}/{}{seq}", self.prefix), first_seq })
        }))
    }
}

/// How long an answered call's receipt waits for this session's next enqueue to delete
/// it in its multi, before it is deleted on its own.
const LEFT_FOR: Duration = Duration::from_millis(50);
/// Most receipt deletes one multi carries (an enqueue's, or one of their own).
const CARRIED_MAX: usize = 500;

/// Receipts of answered calls of one session, not deleted yet.
struct Left {
    /// The session's client: a session id is unique only within its ensemble, so the
    /// session is told by its client ([`zk::Client::is_clone_of`]), not by its id.
    client: zk::Client,
    receipts: Vec<(Instant, String)>,
}

/// Receipts left, per session of this process (a handful: one per ensemble the process
/// talks to, and a session's successor while the old one's receipts wait).
static LEFT: LazyLock<Mutex<Vec<Left>>> = LazyLock::new(Mutex::default);

fn left_of<'a>(all: &'a mut [Left], client: &zk::Client) -> Option<&'a mut Left> {
    all.iter_mut().find(|left| left.client.is_clone_of(client))
}

/// Removes a session's entry.
fn forget(all: &mut Vec<Left>, client: &zk::Client) {
    all.retain(|left| !left.client.is_clone_of(client));
}

/// Deletes a call's receipts once its outcome is known, without a request of their own
/// when it can: they are left for this session's next enqueue, whose multi deletes them
/// ([`take_left`]), and deleted on their own when none comes within [`LEFT_FOR`]. A
/// single enqueue is then one write, not two. Until then a bucket's child count includes
/// them; [`send_left`] deletes them at once (before a `stats`). A receipt whose delete
/// fails is left to die with the session.
pub(super) fn delete(client: &zk::Client, receipts: Vec<String>) {
    if receipts.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut all = LEFT.lock().expect("not poisoned");
    let receipts = receipts.into_iter().map(|r| (now, r));
    match left_of(&mut all, client) {
        Some(left) => left.receipts.extend(receipts),
        None => {
            // The session's first: a task deletes them until none is left.
            all.push(Left { client: client.clone(), receipts: receipts.collect() });
            tokio::spawn(delete_when_left_too_long(client.clone()));
        }
    }
}

/// Deletes this session's receipts left longer than [`LEFT_FOR`], until none is left
/// (then its entry goes, and the session's next receipt starts another task).
async fn delete_when_left_too_long(client: zk::Client) {
    // Cancelled (its runtime shut down), the task takes the session's entry with it: a
    // later receipt then starts a new task, and the entry's client clone is let go.
    struct Cancelled(Option<zk::Client>);
    impl Drop for Cancelled {
        fn drop(&mut self) {
            if let Some(client) = self.0.take() {
                forget(&mut LEFT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), &client);
            }
        }
    }
    let mut cancelled = Cancelled(Some(client.clone()));
    loop {
        let oldest = {
            let mut all = LEFT.lock().expect("not poisoned");
            let Some(left) = left_of(&mut all, &client) else {
                cancelled.0 = None;
                return;
            };
            let now = Instant::now();
            let due = left.receipts.iter().take_while(|(at, _)| now.duration_since(*at) >= LEFT_FOR).count();
            let overdue: Vec<String> = left.receipts.drain(..due).map(|(_, r)| r).collect();
            let oldest = left.receipts.first().map(|(at, _)| *at);
            if oldest.is_none() {
                forget(&mut all, &client);
            }
            drop(all);
            delete_now(&client, overdue);
            oldest
        };
        match oldest {
            Some(at) => tokio::time::sleep_until(at + LEFT_FOR).await,
            // The entry went with its last receipt (under the lock, above).
            None => {
                cancelled.0 = None;
                return;
            }
        }
    }
}

/// Takes some of this session's left receipts, for an enqueue's multi to delete. The
/// caller gives back to [`delete`] those its multi did not delete.
pub(super) fn take_left(client: &zk::Client) -> Vec<String> {
    let mut all = LEFT.lock().expect("not poisoned");
    let Some(left) = left_of(&mut all, client) else { return Vec::new() };
    let n = left.receipts.len().min(CARRIED_MAX);
    left.receipts.drain(..n).map(|(_, r)| r).collect()
}

/// Deletes this session's left receipts now: a request sent after this returns (a
/// `stats`) finds them gone.
pub(super) async fn send_left(client: &zk::Client) {
    let receipts: Vec<String> = {
        let mut all = LEFT.lock().expect("not poisoned");
        let Some(left) = left_of(&mut all, client) else { return };
        left.receipts.drain(..).map(|(_, r)| r).collect()
    };
    delete_all(client, receipts).await;
}

/// Deletes receipts with requests of their own, in the background.
pub(super) fn delete_now(client: &zk::Client, receipts: Vec<String>) {
    if receipts.is_empty() {
        return;
    }
    let client = client.clone();
    tokio::spawn(async move { delete_all(&client, receipts).await });
}

/// Deletes receipts, many in one multi (one request, not one each: a batch over many
/// groups leaves a receipt per group); each on its own when that multi fails (one of them
/// is gone already) or its outcome is unknown.
async fn delete_all(client: &zk::Client, receipts: Vec<String>) {
    for chunk in receipts.chunks(CARRIED_MAX) {
        if chunk.len() > 1 {
            let mut multi = client.new_multi_writer();
            let added = chunk.iter().try_for_each(|receipt| multi.add_delete(receipt, None));
            match added {
                Ok(()) => match multi.commit().await {
                    Ok(_) => continue,
                    Err(err) => tracing::debug!(error = %err, "receipts' multi delete failed; one at a time"),
                },
                Err(err) => tracing::debug!(error = %err, "receipts' multi delete not built; one at a time"),
            }
        }
        for receipt in chunk {
            match while_unknown(client, "deleting a receipt", |_| client.delete(receipt, None)).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(err) => tracing::debug!(receipt, error = %err, "a receipt is left to its session"),
            }
        }
    }
}
