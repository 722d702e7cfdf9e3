//! Putting items into the queue: enqueue (one multi per call, all or none), and the
//! look-up that resolves an enqueue whose reply was lost.
//!
//! Invariants:
//! - One `Ok` is one stored item (or batch), also across lost replies: the call's first
//!   place (bucket or group), and every bucket it writes to, gets a [`Receipt`] in the
//!   same multi, just before its items, which tells after an unknown outcome whether the
//!   multi was applied and gives the items' ids (see `receipt`). The other groups' items
//!   are then found by the multi's transaction (see [`Receipts`]).
//! - Consumers list only `item-` children, so receipts are not items to them (nor to
//!   older sidecars); a bucket's child count (`stats`) includes the receipts of enqueues
//!   in flight.

use std::sync::atomic::{AtomicBool, Ordering};

use super::ahead;
use super::item::{Envelope, ItemId, Place, bucket_name, due_after, encode, now_ms};
use super::receipt::{self, Receipt, made_in_transaction};
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
        group: item.group.as_ref().map(|g| g.key()),
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

/// Creates what items of `place` are made in, unless it exists: a bucket (above), or a
/// group: a persistent node under `groups/` (which a queue provisioned by an operator
/// older than groups gets from its first grouped enqueue), removed like a bucket by the
/// views once empty for [`super::view::BUCKET_KEEP`] (see `group`).
pub(super) async fn ensure_place(client: &zk::Client, paths: &QueuePaths, place: &Place) -> Result<(), QueueError> {
    match place {
        Place::Bucket(bucket) => ensure_bucket(client, paths, bucket).await,
        Place::Group(group) => {
            ensure_child(client, paths, &paths.groups()).await?;
            ensure_child(client, paths, &paths.group(group.encoded())).await
        }
    }
}

/// Creates the places of a call that do not exist: they are looked for together
/// (pipelined reads) and the missing ones created together, so that a batch over many
/// new groups costs two round trips, not one create per place.
async fn ensure_places(client: &zk::Client, paths: &QueuePaths, places: &[Placed]) -> Result<(), QueueError> {
    if places.iter().any(|p| matches!(p.place, Place::Group(_))) && exists(client, &paths.groups()).await?.is_none() {
        ensure_child(client, paths, &paths.groups()).await?;
    }
    let dirs: Vec<String> = places.iter().map(|p| p.place.dir(paths)).collect();
    let found = futures::future::join_all(dirs.iter().map(|dir| exists(client, dir))).await;
    let mut missing = Vec::new();
    for (dir, stat) in dirs.iter().zip(found) {
        if stat?.is_none() {
            missing.push(dir);
        }
    }
    for made in futures::future::join_all(missing.into_iter().map(|dir| ensure_child(client, paths, dir))).await {
        made?;
    }
    Ok(())
}

/// A node's stat, if it exists; retried when the connection drops under the read.
async fn exists(client: &zk::Client, path: &str) -> Result<Option<zk::Stat>, zk::Error> {
    while_unknown(client, "looking for a place", |_| client.check_stat(path)).await
}

/// Creates a persistent node of the queue unless it exists; retried when the connection
/// drops under the create (a create applied before finds the node there).
async fn ensure_child(client: &zk::Client, paths: &QueuePaths, path: &str) -> Result<(), QueueError> {
    let open = zk::CreateMode::Persistent.with_acls(paths.acl.acls());
    match while_unknown(client, "making a place", |_| client.create(path, b"", &open)).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(zk::Error::NoNode) => Err(QueueError::NotProvisioned(paths.base.clone())),
        Err(err) => Err(err.into()),
    }
}

/// Which places of a call get a receipt.
///
/// A receipt costs two writes (its create, and its delete once the call is answered), so a
/// batch over 500 groups with one per place wrote 1,000 more. A receipt in the first place
/// tells whether the multi was applied (all or none); in a bucket it also gives its items'
/// ids, which could otherwise not be told: a bucket's items are consumed in any order. A
/// group's are consumed from its head only, so those the call made there and that are still
/// there are its last ones, found by the multi's transaction id (`czxid`), and give the
/// others' ids. Only when every one of them was consumed before the lost reply was looked
/// into are their ids unknown (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Receipts {
    /// The first place and every bucket.
    FirstPlaceAndBuckets,
    /// Every place: an idempotency record names its item by the receipt in the item's
    /// place (`dedup`).
    EachPlace,
}

/// One enqueue call, ready to be sent: its items' stored data, by the place they go to.
pub(super) struct Prepared {
    /// This call's receipt (its name, the same in each place that gets one).
    pub receipt: Receipt,
    /// Which of its places get it.
    receipts: Receipts,
    pub places: Vec<Placed>,
    /// Items in the caller's order: (place, position in it).
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

/// The items of one call that go to one place, in the caller's order: (bucket, data).
pub(super) struct Placed {
    pub place: Place,
    pub items: Vec<(String, Vec<u8>)>,
}

impl Prepared {
    pub fn new(items: &[NewItem], receipts: Receipts) -> Self {
        let now = now_ms();
        let mut places: Vec<Placed> = Vec::new();
        let mut order = Vec::with_capacity(items.len());
        for item in items {
            let envelope = envelope_for(item, now);
            let bucket = bucket_name(item.priority, envelope.due_ms);
            let data = encode(&envelope, &item.payload);
            let place = match &item.group {
                Some(group) => Place::Group(group.clone()),
                None => Place::Bucket(bucket.clone()),
            };
            let index = match places.iter().position(|p| p.place == place) {
                Some(index) => index,
                None => {
                    places.push(Placed { place, items: Vec::new() });
                    places.len() - 1
                }
            };
            order.push((index, places[index].items.len()));
            places[index].items.push((bucket, data));
        }
        Self { receipt: Receipt::new(), receipts, places, order, also: Vec::new() }
    }

    /// Whether the place at `index` gets the call's receipt.
    fn receipted(&self, index: usize) -> bool {
        index == 0 || self.receipts == Receipts::EachPlace || matches!(self.places[index].place, Place::Bucket(_))
    }

    /// The operations of its multi, less the receipts' deletes carried along.
    pub fn ops(&self) -> usize {
        let receipts = (0..self.places.len()).filter(|&i| self.receipted(i)).count();
        receipts + self.places.iter().map(|p| p.items.len()).sum::<usize>() + self.also.len()
    }

    /// The items' ids in the caller's order, from each place's first sequence number.
    pub fn ids(&self, made: &Made) -> Vec<Option<ItemId>> {
        self.order
            .iter()
            .map(|&(index, position)| {
                let placed = &self.places[index];
                let first = made.first_seqs[index]?;
                Some(placed.place.id(&placed.items[position].0, first + position as u64))
            })
            .collect()
    }
}

/// What a call's multi made: per place, the sequence number of its first item there (None
/// only after a lost reply, see [`Receipts`]); and its receipts, to delete once the call
/// is answered.
pub(super) struct Made {
    pub first_seqs: Vec<Option<u64>>,
    pub receipts: Vec<String>,
}

/// Enqueues items in one multi (all or none). Returns their ids in order: `None` for a
/// grouped item whose id could not be known because its multi's reply was lost and it was
/// consumed (with every other item of the call in its group) before the multi was found
/// applied (see [`Receipts`]).
///
/// A multi whose reply was lost is looked for by its receipts once the connection is
/// back: found, the ids are returned; not there, it is sent again.
pub async fn enqueue(
    client: &zk::Client,
    paths: &QueuePaths,
    items: &[NewItem],
) -> Result<Vec<Option<ItemId>>, QueueError> {
    let prepared = Prepared::new(items, Receipts::FirstPlaceAndBuckets);
    let made = send(client, paths, &prepared).await?;
    let ids = prepared.ids(&made);
    receipt::delete(client, made.receipts);
    Ok(ids)
}

/// Sends a prepared call's multi until its outcome is known (making missing buckets);
/// what it made, per place. The caller deletes the receipts.
///
/// The multi also deletes receipts this session left from earlier calls
/// (`receipt::take_left`): those its multi did not delete go back. Once sent, the next
/// slots' buckets are made ahead (`ahead`).
pub(super) async fn send(client: &zk::Client, paths: &QueuePaths, prepared: &Prepared) -> Result<Made, QueueError> {
    let mut carried = receipt::take_left(client);
    let result = send_carrying(client, paths, prepared, &mut carried).await;
    match &result {
        Ok(_) => {
            let now = now_ms();
            for placed in &prepared.places {
                if let Place::Bucket(bucket) = &placed.place {
                    ahead::make_next(client, paths, bucket, now);
                }
            }
        }
        Err(_) => receipt::delete(client, carried),
    }
    result
}

async fn send_carrying(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
    carried: &mut Vec<String>,
) -> Result<Made, QueueError> {
    let mut missing_places = 0;
    loop {
        let carried_gone = AtomicBool::new(false);
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
                        carried_gone.store(index >= prepared.ops(), Ordering::Relaxed);
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
            // An empty group can be removed between its create and ours: try again.
            Err(QueueError::ZooKeeper(zk::Error::NoNode)) if missing_places < 3 => {
                missing_places += 1;
                ensure_places(client, paths, &prepared.places).await?;
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
/// first place's receipt tells), None if it was not. A place without a receipt (a group)
/// has its items found by the multi's transaction, the first receipt's `czxid`.
async fn find_receipts(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
    deadline: tokio::time::Instant,
) -> Result<Option<Made>, QueueError> {
    let mut made = Made { first_seqs: Vec::with_capacity(prepared.places.len()), receipts: Vec::new() };
    let mut czxid = None;
    for (index, placed) in prepared.places.iter().enumerate() {
        if !prepared.receipted(index) {
            let czxid = match czxid {
                Some(czxid) => czxid,
                None => *czxid.insert(transaction_of(client, &made.receipts[0], deadline).await?),
            };
            let ids = made_in_transaction(client, paths, &placed.place, czxid, deadline).await?;
            made.first_seqs.push(first_of_last(&ids, placed.items.len()));
            continue;
        }
        match prepared.receipt.find(client, paths, &placed.place, deadline).await? {
            Some(receipted) => {
                made.first_seqs.push(Some(receipted.first_seq));
                made.receipts.push(receipted.receipt);
            }
            None if index == 0 => {
                tracing::debug!("enqueue interrupted and not applied; sending it again");
                return Ok(None);
            }
            None => {
                return Err(QueueError::ZooKeeper(zk::Error::UnexpectedError(format!(
                    "the receipt in {} of a batch is missing while the first is there",
                    placed.place.dir(paths)
                ))));
            }
        }
    }
    tracing::debug!("enqueue interrupted but applied: found by its receipt");
    Ok(Some(made))
}

/// The transaction that made a receipt of this session (which only its session deletes).
async fn transaction_of(client: &zk::Client, receipt: &str, deadline: tokio::time::Instant) -> Result<i64, QueueError> {
    let stat = crate::retry::while_unknown_until(deadline, "reading a receipt", |_| client.check_stat(receipt)).await?;
    let stat =
        stat.ok_or_else(|| zk::Error::UnexpectedError(format!("the receipt {receipt} went while it was read")))?;
    Ok(stat.czxid)
}

/// The first sequence number of the `count` items a call made in a group, from `found`,
/// those of them still there, in order. A group's items leave from its head only, so these
/// are the call's last ones, one after another; None when none is left, or they are not
/// one after another (a purge took some from among them).
fn first_of_last(found: &[ItemId], count: usize) -> Option<u64> {
    let (first, last) = (found.first()?.seq_number(), found.last()?.seq_number());
    let consecutive = last - first + 1 == found.len() as u64;
    first.checked_sub(count.checked_sub(found.len())? as u64).filter(|_| consecutive)
}

/// The multi: per place, its receipt (see [`Receipts`]), then its items; then the other
/// writes; then the deletes of receipts `carried` along.
async fn create_all(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
    carried: &[String],
) -> Result<Made, zk::MultiWriteError> {
    let items = zk::CreateMode::PersistentSequential.with_acls(paths.acl.acls());
    let receipts = Receipt::mode(paths.acl);
    let mut multi = client.new_multi_writer();
    for (index, placed) in prepared.places.iter().enumerate() {
        let dir = placed.place.dir(paths);
        if prepared.receipted(index) {
            multi.add_create(&prepared.receipt.create_in(&dir), b"", &receipts)?;
        }
        for (bucket, data) in &placed.items {
            multi.add_create(&format!("{dir}/{}", placed.place.item_prefix(bucket)), data, &items)?;
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
    let mut made = Made { first_seqs: Vec::with_capacity(prepared.places.len()), receipts: Vec::new() };
    for (index, placed) in prepared.places.iter().enumerate() {
        if prepared.receipted(index) {
            made.receipts.push(path_of(results.next())?);
        }
        let first = path_of(results.next())?;
        for _ in 1..placed.items.len() {
            path_of(results.next())?;
        }
        made.first_seqs.push(Some(receipt::seq_of_item(&first)?));
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::group::GroupKey;

    fn ids(seqs: &[u64]) -> Vec<ItemId> {
        let place = Place::Group(GroupKey::new("g").unwrap());
        seqs.iter().map(|&seq| place.id(&bucket_name(0, 1_000), seq)).collect()
    }

    #[test]
    fn a_group_s_remaining_items_of_a_call_tell_its_first_sequence_number() {
        // The call made 40..=43; its head side was consumed.
        assert_eq!(first_of_last(&ids(&[40, 41, 42, 43]), 4), Some(40));
        assert_eq!(first_of_last(&ids(&[42, 43]), 4), Some(40));
        assert_eq!(first_of_last(&ids(&[43]), 4), Some(40));
        // Nothing left tells it; nor items with a gap, nor more than the call made.
        assert_eq!(first_of_last(&ids(&[]), 4), None);
        assert_eq!(first_of_last(&ids(&[41, 43]), 4), None);
        assert_eq!(first_of_last(&ids(&[40, 41, 42]), 2), None);
        assert_eq!(first_of_last(&ids(&[1, 2]), 5), None);
    }
}
