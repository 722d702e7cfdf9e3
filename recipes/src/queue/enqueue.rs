//! Putting items into the queue: enqueue (one create, or one multi for a batch), and the
//! look-up that resolves a create whose reply was lost.
//!
//! Invariants:
//! - One `Ok` is one stored item (or batch), also across lost replies: every create
//!   carries a create id in its envelope, and after an unknown outcome the item is looked
//!   for by it (after `sync`) before the create is sent again.
//! - A batch is all or none: its first item tells whether the multi landed.

use std::collections::HashSet;

use super::item::{Envelope, ItemId, bucket_name, decode, encode, new_create_id, now_ms};
use super::{NewItem, QueueError};
use crate::layout::QueuePaths;
use crate::retry::{while_unknown, while_unknown_until};
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

/// Creates a bucket (a container node: the server removes it once empty).
pub(super) async fn ensure_bucket(client: &zk::Client, paths: &QueuePaths, bucket: &str) -> Result<(), QueueError> {
    match client.create(&paths.bucket(bucket), b"", &zk::CreateMode::Container.with_acls(paths.acl.acls())).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(zk::Error::NoNode) => Err(QueueError::NotProvisioned(paths.base.clone())),
        Err(err) => Err(err.into()),
    }
}

/// An item ready to be created: its bucket, envelope and stored data.
struct Prepared {
    bucket: String,
    envelope: Envelope,
    data: Vec<u8>,
}

/// Enqueues items: one create for a single item, one multi (all or none) for several.
/// Returns their ids in order.
///
/// A create whose reply was lost is looked for by its create id once the connection is
/// back: found, its id is returned; not there, the create is sent again.
pub async fn enqueue(client: &zk::Client, paths: &QueuePaths, items: &[NewItem]) -> Result<Vec<ItemId>, QueueError> {
    let now = now_ms();
    let prepared: Vec<Prepared> = items
        .iter()
        .map(|item| {
            let envelope = envelope_for(item, now);
            let data = encode(&envelope, &item.payload);
            Prepared { bucket: bucket_name(item.priority, envelope.due_ms), envelope, data }
        })
        .collect();
    let mut missing_buckets = 0;
    loop {
        let created = while_unknown(client, "enqueue", |attempt| {
            let prepared = &prepared;
            async move {
                if attempt.retried
                    && let Some(ids) = find_batch(client, paths, prepared, attempt.deadline).await?
                {
                    return Ok(ids);
                }
                create_all(client, paths, prepared).await.map_err(QueueError::from)
            }
        })
        .await;
        match created {
            Err(QueueError::ZooKeeper(zk::Error::NoNode)) if missing_buckets < 2 => {
                missing_buckets += 1;
                let buckets: HashSet<&String> = prepared.iter().map(|p| &p.bucket).collect();
                for bucket in buckets {
                    ensure_bucket(client, paths, bucket).await?;
                }
            }
            Err(QueueError::ZooKeeper(zk::Error::NoNode)) => {
                return Err(QueueError::NotProvisioned(paths.base.clone()));
            }
            result => return result,
        }
    }
}

/// After an unknown outcome: the ids of the batch if it landed (all or none, so the
/// first item tells), None if it did not.
async fn find_batch(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &[Prepared],
    deadline: tokio::time::Instant,
) -> Result<Option<Vec<ItemId>>, QueueError> {
    let mut ids = Vec::with_capacity(prepared.len());
    for (index, item) in prepared.iter().enumerate() {
        match find_created(client, paths, &item.bucket, &item.envelope, deadline).await? {
            Some(id) => ids.push(id),
            None if index == 0 => {
                tracing::debug!("enqueue interrupted and not applied; sending it again");
                return Ok(None);
            }
            None => {
                return Err(QueueError::ZooKeeper(zk::Error::UnexpectedError(format!(
                    "item {index} of a batch is missing while the first is stored"
                ))));
            }
        }
    }
    Ok(Some(ids))
}

/// One create, or one multi of creates.
async fn create_all(client: &zk::Client, paths: &QueuePaths, prepared: &[Prepared]) -> Result<Vec<ItemId>, zk::Error> {
    let options = zk::CreateMode::PersistentSequential.with_acls(paths.acl.acls());
    let id = |bucket: &str, path: &str| ItemId {
        bucket: bucket.to_owned(),
        seq: path.rsplit("item-").next().unwrap_or_default().to_owned(),
    };
    if let [item] = prepared {
        let prefix = format!("{}/item-", paths.bucket(&item.bucket));
        let (_, seq) = client.create(&prefix, &item.data, &options).await?;
        return Ok(vec![ItemId { bucket: item.bucket.clone(), seq: seq.to_string() }]);
    }
    let mut multi = client.new_multi_writer();
    for item in prepared {
        multi.add_create(&format!("{}/item-", paths.bucket(&item.bucket)), &item.data, &options)?;
    }
    let results = multi.commit().await?;
    results
        .into_iter()
        .zip(prepared)
        .map(|(result, item)| match result {
            zk::MultiWriteResult::Create { path, .. } => Ok(id(&item.bucket, &path)),
            other => Err(zk::Error::UnexpectedError(format!("expected a create result, got {other:?}"))),
        })
        .collect()
}

/// After a create whose reply was lost: waits for the connection, brings the server up to
/// date (`sync`), and looks for the item with `envelope`'s create id in its bucket. Some
/// when the create was applied; None when it was not (and so may be sent again).
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
