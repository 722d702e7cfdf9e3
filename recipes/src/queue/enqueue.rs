//! Putting items into the queue: enqueue (one multi per call, all or none), and the
//! look-up that resolves an enqueue whose reply was lost.
//!
//! Invariants:
//! - One `Ok` is one stored item (or batch), also across lost replies: each bucket the
//!   call writes to gets a [`Receipt`] in the same multi, just before its items, which
//!   tells after an unknown outcome whether the multi was applied and gives the items'
//!   ids (see `receipt`).
//! - Consumers list only `item-` children, so receipts are not items to them (nor to
//!   older sidecars); a bucket's child count (`stats`) includes the receipts of enqueues
//!   in flight.

use super::item::{Envelope, ItemId, bucket_name, due_after, encode, now_ms};
use super::receipt::{self, Receipt, Receipted};
use super::{NewItem, QueueError};
use crate::layout::QueuePaths;
use crate::retry::while_unknown;
use crate::zk;

pub(super) fn envelope_for(item: &NewItem, now: u64) -> Envelope {
    Envelope {
        enqueued_at_ms: now,
        content_type: item.content_type.clone(),
        priority: item.priority,
        due_ms: due_after(now, item.delay),
        original_id: None,
        carried: None,
    }
}

/// Creates a bucket: a persistent node, removed by the consumers' views only once its
/// due-time slot is [`super::view::BUCKET_KEEP`] in the past and it is empty. Not a
/// container node: the server would remove it as soon as it is empty, and the next
/// enqueue in the same slot would make it again with its sequence numbers starting
/// over, giving the ids of items already consumed to new ones (see `item`).
pub(super) async fn ensure_bucket(client: &zk::Client, paths: &QueuePaths, bucket: &str) -> Result<(), QueueError> {
    ensure_child(client, paths, &paths.bucket(bucket)).await
}

/// Creates a persistent node of the queue unless it exists.
async fn ensure_child(client: &zk::Client, paths: &QueuePaths, path: &str) -> Result<(), QueueError> {
    match client.create(path, b"", &zk::CreateMode::Persistent.with_acls(paths.acl.acls())).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(zk::Error::NoNode) => Err(QueueError::NotProvisioned(paths.base.clone())),
        Err(err) => Err(err.into()),
    }
}

/// One enqueue call, ready to be sent: its items' stored data, grouped by bucket.
pub(super) struct Prepared {
    /// This call's receipt (one per bucket).
    pub receipt: Receipt,
    pub groups: Vec<Group>,
    /// Items in the caller's order: (group, position in it).
    pub order: Vec<(usize, usize)>,
    /// Other writes of the same multi, after the items (idempotency records).
    pub also: Vec<Also>,
}

/// A write sent in an enqueue's multi beside its items.
pub(super) enum Also {
    /// A persistent node that expires `ttl` after it was last written.
    CreateWithTtl {
        path: String,
        data: Vec<u8>,
        ttl: std::time::Duration,
    },
    Delete {
        path: String,
        version: i32,
    },
}

/// The items of one call that go to one bucket, in the caller's order.
pub(super) struct Group {
    pub bucket: String,
    data: Vec<Vec<u8>>,
}

impl Prepared {
    pub fn new(items: &[NewItem]) -> Self {
        let now = now_ms();
        let mut groups: Vec<Group> = Vec::new();
        let mut order = Vec::with_capacity(items.len());
        for item in items {
            let envelope = envelope_for(item, now);
            let bucket = bucket_name(item.priority, envelope.due_ms);
            let data = encode(&envelope, &item.payload);
            let group = match groups.iter().position(|g| g.bucket == bucket) {
                Some(group) => group,
                None => {
                    groups.push(Group { bucket, data: Vec::new() });
                    groups.len() - 1
                }
            };
            order.push((group, groups[group].data.len()));
            groups[group].data.push(data);
        }
        Self { receipt: Receipt::new(), groups, order, also: Vec::new() }
    }

    /// The operations of its multi, less the receipts' deletes carried along.
    pub fn ops(&self) -> usize {
        self.groups.iter().map(|g| 1 + g.data.len()).sum::<usize>() + self.also.len()
    }

    /// The items' ids in the caller's order, from each group's first item id.
    pub fn ids(&self, created: &[Receipted]) -> Vec<ItemId> {
        self.order.iter().map(|&(group, index)| created[group].first.plus(index as u64)).collect()
    }
}

/// Enqueues items in one multi (all or none). Returns their ids in order.
///
/// A multi whose reply was lost is looked for by its receipts once the connection is
/// back: found, the ids are returned; not there, it is sent again.
pub async fn enqueue(client: &zk::Client, paths: &QueuePaths, items: &[NewItem]) -> Result<Vec<ItemId>, QueueError> {
    let prepared = Prepared::new(items);
    let created = send(client, paths, &prepared).await?;
    let ids = prepared.ids(&created);
    receipt::delete(client, created.into_iter().map(|c| c.receipt).collect());
    Ok(ids)
}

/// Sends a prepared call's multi until its outcome is known (making missing buckets);
/// what it made, per group. The caller deletes the receipts.
///
/// The multi also deletes receipts this session left from earlier calls
/// (`receipt::take_left`): those its multi did not delete go back.
pub(super) async fn send(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
) -> Result<Vec<Receipted>, QueueError> {
    let mut carried = receipt::take_left(client);
    let result = send_carrying(client, paths, prepared, &mut carried).await;
    if result.is_err() {
        receipt::delete(client, carried);
    }
    result
}

async fn send_carrying(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
    carried: &mut Vec<String>,
) -> Result<Vec<Receipted>, QueueError> {
    let mut missing_buckets = 0;
    loop {
        let carried_gone = std::sync::atomic::AtomicBool::new(false);
        let created = while_unknown(client, "enqueue", |attempt| {
            let (carried, carried_gone) = (&*carried, &carried_gone);
            async move {
                if attempt.retried
                    && let Some(created) = find_receipts(client, paths, prepared, attempt.deadline).await?
                {
                    return Ok(created);
                }
                create_all(client, paths, prepared, carried).await.map_err(|err| match err {
                    zk::MultiWriteError::OperationFailed { index, source } => {
                        carried_gone.store(index >= prepared.ops(), std::sync::atomic::Ordering::Relaxed);
                        QueueError::from(source)
                    }
                    zk::MultiWriteError::RequestFailed { source } => QueueError::from(source),
                })
            }
        })
        .await;
        match created {
            // A receipt carried along was gone (the multi did nothing): without them.
            Err(_) if carried_gone.into_inner() => receipt::delete_now(client, std::mem::take(carried)),
            Err(QueueError::ZooKeeper(zk::Error::NoNode)) if missing_buckets < 2 => {
                missing_buckets += 1;
                for group in &prepared.groups {
                    ensure_bucket(client, paths, &group.bucket).await?;
                }
                // `keys/` is provisioned with a queue since the version that has keys; a
                // queue provisioned before gets it from its first deduplicated enqueue.
                if !prepared.also.is_empty() {
                    ensure_child(client, paths, &paths.keys()).await?;
                }
            }
            Err(QueueError::ZooKeeper(zk::Error::NoNode)) => {
                return Err(QueueError::NotProvisioned(paths.base.clone()));
            }
            result => return result,
        }
    }
}

/// After an unknown outcome: what the multi made if it was applied (all or none, so the
/// first group's receipt tells), None if it was not.
async fn find_receipts(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
    deadline: tokio::time::Instant,
) -> Result<Option<Vec<Receipted>>, QueueError> {
    let mut found = Vec::with_capacity(prepared.groups.len());
    for (index, group) in prepared.groups.iter().enumerate() {
        match prepared.receipt.find(client, paths, &group.bucket, deadline).await? {
            Some(receipted) => found.push(receipted),
            None if index == 0 => {
                tracing::debug!("enqueue interrupted and not applied; sending it again");
                return Ok(None);
            }
            None => {
                return Err(QueueError::ZooKeeper(zk::Error::UnexpectedError(format!(
                    "the receipt of bucket {} of a batch is missing while the first is there",
                    group.bucket
                ))));
            }
        }
    }
    tracing::debug!("enqueue interrupted but applied: found by its receipt");
    Ok(Some(found))
}

/// The multi: per group, its receipt, then its items; then the other writes; then the
/// deletes of receipts `carried` along.
async fn create_all(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
    carried: &[String],
) -> Result<Vec<Receipted>, zk::MultiWriteError> {
    let items = zk::CreateMode::PersistentSequential.with_acls(paths.acl.acls());
    let receipts = Receipt::mode(paths.acl);
    let mut multi = client.new_multi_writer();
    for group in &prepared.groups {
        let bucket = paths.bucket(&group.bucket);
        multi.add_create(&prepared.receipt.create_in(&bucket), b"", &receipts)?;
        for data in &group.data {
            multi.add_create(&format!("{bucket}/item-"), data, &items)?;
        }
    }
    for also in &prepared.also {
        match also {
            Also::CreateWithTtl { path, data, ttl } => {
                multi.add_create(path, data, &zk::CreateMode::Persistent.with_acls(paths.acl.acls()).with_ttl(*ttl))?
            }
            Also::Delete { path, version } => multi.add_delete(path, Some(*version))?,
        }
    }
    for receipt in carried {
        multi.add_delete(receipt, None)?;
    }
    let mut results = multi.commit().await?.into_iter();
    let path_of = |result: Option<zk::MultiWriteResult>| match result {
        Some(zk::MultiWriteResult::Create { path, .. }) => Ok(path),
        other => Err(zk::Error::UnexpectedError(format!("expected a create result, got {other:?}"))),
    };
    let mut created = Vec::with_capacity(prepared.groups.len());
    for group in &prepared.groups {
        let receipt = path_of(results.next())?;
        let first = path_of(results.next())?;
        for _ in 1..group.data.len() {
            path_of(results.next())?;
        }
        created.push(Receipt::made(&group.bucket, receipt, &first)?);
    }
    Ok(created)
}
