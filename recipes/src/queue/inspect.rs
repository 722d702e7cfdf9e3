//! Looking at a queue and clearing it, for the people who run it: peek (what is waiting,
//! in delivery order, without claiming anything; grouped items after the others, group
//! by group), purge (every item nobody holds, in groups too), and purge of the dead letters.
//!
//! Invariants:
//! - Peek only reads: a consumer meanwhile still gets every item.
//! - Purge never takes an item someone holds: each item's delete is a multi that also
//!   creates and deletes `claims/<id>` (so it fails while anyone holds it), and removes
//!   the item's history only as it was read (or asserts there is none), so no history is
//!   orphaned and no claim's ack is refused because of a purge.

use super::QueueError;
use super::claim::{Candidate, Read, read_candidate};
use super::group::GroupKey;
use super::item::{ItemId, Place, now_ms, parse_bucket};
use crate::layout::QueuePaths;
use crate::retry::while_unknown;
use crate::zk;

/// An item as peek shows it.
#[derive(Debug, Clone)]
pub struct Peeked {
    pub id: ItemId,
    pub priority: u8,
    pub due_ms: u64,
    pub enqueued_at_ms: u64,
    /// Deliveries so far (the next one is `attempts + 1`).
    pub attempts: u32,
    pub content_type: Option<String>,
    pub size: usize,
    pub payload: Option<Vec<u8>>,
    /// The item's group, if any.
    pub group: Option<String>,
}

/// The buckets of a queue in delivery order: the ready ones by priority (highest first)
/// then due time, as their names sort; then the delayed ones by due time.
async fn buckets_in_order(client: &zk::Client, paths: &QueuePaths) -> Result<Vec<String>, QueueError> {
    let mut buckets =
        client.list_children(&paths.items()).await.map_err(|e| QueueError::or_not_provisioned(e, paths))?;
    let now = now_ms();
    buckets.retain(|b| parse_bucket(b).is_some());
    let (mut ready, mut delayed): (Vec<String>, Vec<String>) =
        buckets.into_iter().partition(|b| parse_bucket(b).is_some_and(|(_, due)| due <= now));
    ready.sort();
    delayed.sort_by_key(|b| parse_bucket(b).map(|(priority, due)| (due, u8::MAX - priority)));
    ready.append(&mut delayed);
    Ok(ready)
}

/// Where a queue's items are, in the order peek shows them: the buckets in delivery
/// order, then the groups (each one in its own order).
async fn places_in_order(client: &zk::Client, paths: &QueuePaths) -> Result<Vec<Place>, QueueError> {
    let mut places: Vec<Place> = buckets_in_order(client, paths).await?.into_iter().map(Place::Bucket).collect();
    let mut groups: Vec<GroupKey> = match client.list_children(&paths.groups()).await {
        Ok(names) => names.iter().filter_map(|name| GroupKey::from_encoded(name).ok()).collect(),
        Err(zk::Error::NoNode) => Vec::new(),
        Err(err) => return Err(err.into()),
    };
    groups.sort_by_key(GroupKey::key);
    places.extend(groups.into_iter().map(Place::Group));
    Ok(places)
}

/// The items of one place, in order (receipts, claims and foreign nodes left out).
async fn items_of(client: &zk::Client, paths: &QueuePaths, place: &Place) -> Result<Vec<ItemId>, QueueError> {
    let nodes = match client.list_children(&place.dir(paths)).await {
        Ok(nodes) => nodes,
        Err(zk::Error::NoNode) => return Ok(Vec::new()), // removed meanwhile
        Err(err) => return Err(err.into()),
    };
    let mut ids: Vec<ItemId> = nodes.iter().filter_map(|node| place.id_of_node(node)).collect();
    ids.sort_by_key(ItemId::seq_number);
    Ok(ids)
}

/// Up to `limit` items that wait (ready or delayed, not in flight), in delivery order.
pub async fn peek(
    client: &zk::Client,
    paths: &QueuePaths,
    limit: usize,
    with_payload: bool,
) -> Result<Vec<Peeked>, QueueError> {
    let claims = client.list_children(&paths.claims()).await.map_err(|e| QueueError::or_not_provisioned(e, paths))?;
    let claimed: std::collections::HashSet<String> = claims.into_iter().collect();
    let mut peeked = Vec::new();
    for place in places_in_order(client, paths).await? {
        for id in items_of(client, paths, &place).await? {
            if peeked.len() >= limit {
                return Ok(peeked);
            }
            if claimed.contains(&id.to_string()) {
                continue;
            }
            let Read::Found(item) = read_candidate(client, paths, &id).await? else { continue };
            let Candidate { envelope, payload, attempts, .. } = *item;
            peeked.push(Peeked {
                id,
                priority: envelope.priority,
                due_ms: envelope.due_ms,
                enqueued_at_ms: envelope.enqueued_at_ms,
                attempts: attempts.attempt,
                content_type: envelope.content_type,
                group: envelope.group,
                size: payload.len(),
                payload: with_payload.then_some(payload),
            });
        }
    }
    Ok(peeked)
}

/// What a purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Items removed.
    pub removed: u64,
    /// Items left because a consumer held them (or took them meanwhile).
    pub in_flight: u64,
}

/// Removes every item that nobody holds; items in flight are left to their consumers.
pub async fn purge(client: &zk::Client, paths: &QueuePaths) -> Result<Purged, QueueError> {
    let mut purged = Purged::default();
    for place in places_in_order(client, paths).await? {
        for id in items_of(client, paths, &place).await? {
            let Read::Found(item) = read_candidate(client, paths, &id).await? else { continue };
            match remove_unheld(client, paths, &item).await? {
                Removal::Removed => purged.removed += 1,
                Removal::Held => purged.in_flight += 1,
                Removal::Gone => {}
            }
        }
    }
    Ok(purged)
}

enum Removal {
    Removed,
    /// Held by a consumer, or delivered since it was read.
    Held,
    /// Acked or moved by its consumer meanwhile.
    Gone,
}

/// Deletes an item and its history unless someone holds it.
async fn remove_unheld(client: &zk::Client, paths: &QueuePaths, item: &Candidate) -> Result<Removal, QueueError> {
    let id = item.id.to_string();
    let open = zk::CreateMode::Persistent.with_acls(paths.acl.acls());
    while_unknown(client, "purging an item", |this| {
        let (id, open) = (&id, &open);
        async move {
            let mut multi = client.new_multi_writer();
            multi.add_delete(&item.path, Some(item.version))?;
            multi.add_create(&paths.claim(id), b"", open)?;
            multi.add_delete(&paths.claim(id), None)?;
            let attempts = paths.attempts_of(id);
            match item.attempts_version {
                Some(version) => multi.add_delete(&attempts, Some(version))?,
                None => {
                    multi.add_create(&attempts, b"", open)?;
                    multi.add_delete(&attempts, None)?;
                }
            }
            match multi.commit().await {
                Ok(_) => Ok(Removal::Removed),
                // Gone: our own first try (its reply lost) or an ack meanwhile; after a
                // lost reply it is counted as ours.
                Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode, .. })
                    if client.check_stat(&item.path).await?.is_none() =>
                {
                    Ok(if this.retried { Removal::Removed } else { Removal::Gone })
                }
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::NodeExists | zk::Error::BadVersion | zk::Error::NoNode,
                    ..
                }) => Ok(Removal::Held),
                Err(err) => Err(QueueError::ZooKeeper(err.into())),
            }
        }
    })
    .await
}

/// Removes every dead letter; answers how many.
pub async fn purge_dead(client: &zk::Client, paths: &QueuePaths) -> Result<u64, QueueError> {
    let ids = client.list_children(&paths.dead()).await.map_err(|e| QueueError::or_not_provisioned(e, paths))?;
    let mut removed = 0;
    for id in ids {
        let dead = paths.dead_item(&id);
        match while_unknown(client, "purging a dead letter", |_| client.delete(&dead, None)).await {
            Ok(()) => removed += 1,
            Err(zk::Error::NoNode) => {} // requeued or purged meanwhile
            Err(err) => return Err(err.into()),
        }
    }
    Ok(removed)
}
