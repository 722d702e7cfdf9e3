//! Putting items into the queue: enqueue (one multi per call, all or none), and the
//! look-up that resolves an enqueue whose reply was lost.
//!
//! Invariants:
//! - One `Ok` is one stored item (or batch), also across lost replies. Each bucket the
//!   call writes to gets, in the same multi and just before its items, an *ephemeral*
//!   sequential receipt `receipt-<call id>-<seq>` of this session: after an unknown
//!   outcome, the receipt tells whether the multi was applied even when a consumer has
//!   already taken and acked the items (a look for the items themselves would then find
//!   nothing and store them twice), and its sequence number gives the items' ids (the
//!   next numbers of that bucket, as one multi is one transaction).
//! - A receipt lives until the call's outcome is known, then its delete is sent before
//!   the call returns (its reply awaited in the background); one whose delete fails dies
//!   with the session. Consumers list only `item-`
//!   children, so receipts are not items to them (nor to older sidecars); a bucket's
//!   child count (`stats`) includes the receipts of enqueues in flight.

use super::item::{Envelope, ItemId, bucket_name, decode, encode, new_create_id, now_ms};
use super::{NewItem, QueueError};
use crate::layout::QueuePaths;
use crate::retry::{outcome_unknown, while_unknown, while_unknown_until};
use crate::zk;

pub(super) fn envelope_for(item: &NewItem, now: u64) -> Envelope {
    Envelope {
        enqueued_at_ms: now,
        content_type: item.content_type.clone(),
        priority: item.priority,
        due_ms: now + item.delay.as_millis() as u64,
        original_id: None,
        carried: None,
        create_id: new_create_id(),
    }
}

/// Creates a bucket: a persistent node, removed by the consumers' views only once its
/// due-time slot is [`super::view::BUCKET_KEEP`] in the past and it is empty. Not a
/// container node: the server would remove it as soon as it is empty, and the next
/// enqueue in the same slot would make it again with its sequence numbers starting
/// over, giving the ids of items already consumed to new ones (see `item`).
pub(super) async fn ensure_bucket(client: &zk::Client, paths: &QueuePaths, bucket: &str) -> Result<(), QueueError> {
    match client.create(&paths.bucket(bucket), b"", &zk::CreateMode::Persistent.with_acls(paths.acl.acls())).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(zk::Error::NoNode) => Err(QueueError::NotProvisioned(paths.base.clone())),
        Err(err) => Err(err.into()),
    }
}

/// One enqueue call, ready to be sent: its items' stored data, grouped by bucket.
struct Prepared {
    /// Names this call's receipts (one per bucket).
    call_id: String,
    groups: Vec<Group>,
    /// Items in the caller's order: (group, position in it).
    order: Vec<(usize, usize)>,
}

/// The items of one call that go to one bucket, in the caller's order.
struct Group {
    bucket: String,
    data: Vec<Vec<u8>>,
}

impl Prepared {
    fn new(items: &[NewItem]) -> Self {
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
        let call_id = new_create_id().expect("a create id");
        Self { call_id, groups, order }
    }

    fn receipt_prefix(&self) -> String {
        format!("receipt-{}-", self.call_id)
    }

    /// The items' ids in the caller's order, from each group's first item id.
    fn ids(&self, created: &[Created]) -> Vec<ItemId> {
        self.order.iter().map(|&(group, index)| created[group].first.plus(index as u64)).collect()
    }
}

/// What the multi made in one group's bucket.
struct Created {
    /// The receipt's path.
    receipt: String,
    /// The id of the group's first item (the others follow it).
    first: ItemId,
}

/// Enqueues items in one multi (all or none). Returns their ids in order.
///
/// A multi whose reply was lost is looked for by its receipts once the connection is
/// back: found, the ids are returned; not there, it is sent again.
pub async fn enqueue(client: &zk::Client, paths: &QueuePaths, items: &[NewItem]) -> Result<Vec<ItemId>, QueueError> {
    let prepared = Prepared::new(items);
    let mut missing_buckets = 0;
    let created = loop {
        let created = while_unknown(client, "enqueue", |attempt| {
            let prepared = &prepared;
            async move {
                if attempt.retried
                    && let Some(created) = find_receipts(client, paths, prepared, attempt.deadline).await?
                {
                    return Ok(created);
                }
                create_all(client, paths, prepared).await.map_err(QueueError::from)
            }
        })
        .await;
        match created {
            Err(QueueError::ZooKeeper(zk::Error::NoNode)) if missing_buckets < 2 => {
                missing_buckets += 1;
                for group in &prepared.groups {
                    ensure_bucket(client, paths, &group.bucket).await?;
                }
            }
            Err(QueueError::ZooKeeper(zk::Error::NoNode)) => {
                return Err(QueueError::NotProvisioned(paths.base.clone()));
            }
            Ok(created) => break created,
            Err(err) => return Err(err),
        }
    };
    let ids = prepared.ids(&created);
    delete_receipts(client, created.into_iter().map(|c| c.receipt).collect());
    Ok(ids)
}

/// After an unknown outcome: what the multi made if it was applied (all or none, so the
/// first group's receipt tells), None if it was not.
async fn find_receipts(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
    deadline: tokio::time::Instant,
) -> Result<Option<Vec<Created>>, QueueError> {
    let prefix = prepared.receipt_prefix();
    let mut found = Vec::with_capacity(prepared.groups.len());
    for (index, group) in prepared.groups.iter().enumerate() {
        let bucket_path = paths.bucket(&group.bucket);
        let receipt = while_unknown_until(deadline, "looking for an enqueue's receipt", |_| async {
            client.sync(&bucket_path).await?;
            match client.list_children(&bucket_path).await {
                Ok(nodes) => Ok(nodes.into_iter().find_map(|n| n.strip_prefix(&prefix).map(str::to_owned))),
                Err(zk::Error::NoNode) => Ok(None),
                Err(err) => Err(err),
            }
        })
        .await?;
        match receipt.and_then(|seq| Some((ItemId::parse(&format!("{}.{seq}", group.bucket)).ok()?, seq))) {
            Some((id, seq)) => {
                found.push(Created { receipt: format!("{bucket_path}/{prefix}{seq}"), first: id.plus(1) })
            }
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

/// The multi: per group, its receipt, then its items.
async fn create_all(client: &zk::Client, paths: &QueuePaths, prepared: &Prepared) -> Result<Vec<Created>, zk::Error> {
    let items = zk::CreateMode::PersistentSequential.with_acls(paths.acl.acls());
    let receipts = zk::CreateMode::EphemeralSequential.with_acls(paths.acl.acls());
    let mut multi = client.new_multi_writer();
    for group in &prepared.groups {
        let bucket = paths.bucket(&group.bucket);
        multi.add_create(&format!("{bucket}/{}", prepared.receipt_prefix()), b"", &receipts)?;
        for data in &group.data {
            multi.add_create(&format!("{bucket}/item-"), data, &items)?;
        }
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
        let first = first
            .rsplit('/')
            .next()
            .and_then(|node| ItemId::from_node(&group.bucket, node))
            .ok_or_else(|| zk::Error::UnexpectedError(format!("an item created at {first}")))?;
        created.push(Created { receipt, first });
    }
    Ok(created)
}

/// Deletes a call's receipts once its outcome is known. The deletes are sent before the
/// call returns, so this session's next request (a `stats`, say) comes after them, but
/// their replies are awaited in the background: no round trip is added to an enqueue.
/// A receipt whose delete fails is left to die with the session; until then a bucket's
/// child count includes it.
fn delete_receipts(client: &zk::Client, receipts: Vec<String>) {
    let sent: Vec<_> = receipts.iter().map(|receipt| client.delete(receipt, None)).collect();
    let client = client.clone();
    tokio::spawn(async move {
        for (receipt, delete) in receipts.iter().zip(sent) {
            let result = match delete.await {
                Err(err) if outcome_unknown(&err) => {
                    while_unknown(&client, "deleting an enqueue receipt", |_| client.delete(receipt, None)).await
                }
                result => result,
            };
            match result {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(err) => tracing::debug!(receipt, error = %err, "an enqueue receipt is left to its session"),
            }
        }
    });
}

/// After a create whose reply was lost: waits for the connection, brings the server up to
/// date (`sync`), and looks for the item with `envelope`'s create id in its bucket. Some
/// when the create was applied and the item is still there; None when it was not, or
/// when a consumer has taken and acked it since. So it decides nothing about sending
/// again: the moves that use it (a delayed nack, a requeue) know from their multi's
/// other effects whether it was applied, and only want the new id.
pub(super) async fn find_created(
    client: &zk::Client,
    paths: &QueuePaths,
    bucket: &str,
    envelope: &Envelope,
    deadline: tokio::time::Instant,
) -> Result<Option<ItemId>, QueueError> {
    let Some(create_id) = envelope.create_id.as_deref() else { return Ok(None) };
    let bucket_path = paths.bucket(bucket);
    let found = while_unknown_until(deadline, "looking for a created item", |_| {
        look_for(client, bucket, &bucket_path, create_id)
    })
    .await;
    Ok(found?)
}

async fn look_for(
    client: &zk::Client,
    bucket: &str,
    bucket_path: &str,
    create_id: &str,
) -> Result<Option<ItemId>, zk::Error> {
    client.sync(bucket_path).await?;
    let mut nodes = match client.list_children(bucket_path).await {
        Ok(nodes) => nodes,
        Err(zk::Error::NoNode) => return Ok(None),
        Err(err) => return Err(err),
    };
    // Newest first: the lost create is among the last of its bucket. One read at a time,
    // as items may be up to a megabyte each.
    nodes.retain(|node| node.starts_with("item-"));
    nodes.sort_unstable_by(|a, b| b.cmp(a));
    for node in nodes {
        let data = match client.get_data(&format!("{bucket_path}/{node}")).await {
            Ok((data, _)) => data,
            Err(zk::Error::NoNode) => continue,
            Err(err) => return Err(err),
        };
        if decode(&data).is_some_and(|(e, _)| e.create_id.as_deref() == Some(create_id)) {
            return Ok(ItemId::from_node(bucket, &node));
        }
    }
    Ok(None)
}
