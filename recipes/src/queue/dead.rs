//! Dead letters: moving an item to `dead/<id>` with its history, reading them, and
//! putting one back into the queue.
//!
//! Invariants:
//! - Dead-lettering never takes a held item: a consumer that is not the holder moves an
//!   item in a multi that also creates and deletes `claims/<id>`, which fails while
//!   anyone holds it ([`ClaimCheck::NoneHeld`]).
//! - A move whose reply was lost is told apart from someone else's by what is there
//!   after the retry: the dead letter (ours), or the requeue's receipt.

use super::enqueue::ensure_place;
use super::group::GroupKey;
use super::item::{DeadLetter, Envelope, ItemId, Place, bucket_name, decode_dead, encode, encode_dead, now_ms};
use super::receipt::{self, Receipt};
use super::{Candidate, QueueError};
use crate::layout::QueuePaths;
use crate::retry::{Try, while_unknown};
use crate::zk;

/// Whose claim a dead-lettering transaction accounts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimCheck {
    /// The caller holds the claim (a nack on the last attempt): it goes with the item.
    Ours,
    /// Nobody may hold one: the multi creates and deletes `claims/<id>`, so it fails with
    /// `NodeExists` while any consumer holds the item, whatever the caller's view says.
    NoneHeld,
}

/// Moves an item with its history to `dead/<id>` in one multi, which also settles the
/// claim as `claim` says. With our claim, nobody else moves the item, so a lost reply is
/// retried; without one, the outcome is the caller's to see in the queue.
pub(super) async fn move_to_dead(
    client: &zk::Client,
    paths: &QueuePaths,
    item: &Candidate,
    reason: &str,
    claim: ClaimCheck,
) -> Result<(), QueueError> {
    let letter = DeadLetter {
        envelope: Envelope { carried: None, ..item.envelope.clone() },
        attempts: item.attempts.clone(),
        dead_at_ms: now_ms(),
        reason: reason.to_owned(),
    };
    let data = encode_dead(&letter, &item.payload);
    let id_text = item.id.to_string();
    let attempt = |this: Try| {
        let (data, id_text) = (&data, &id_text);
        async move {
            let mut multi = client.new_multi_writer();
            multi.add_delete(&item.path, Some(item.version))?;
            if let Some(version) = item.attempts_version {
                multi.add_delete(&paths.attempts_of(id_text), Some(version))?;
            }
            let claim_path = paths.claim(id_text);
            match claim {
                ClaimCheck::Ours => multi.add_delete(&claim_path, None)?,
                ClaimCheck::NoneHeld => {
                    let open = zk::CreateMode::Persistent.with_acls(paths.acl.acls());
                    multi.add_create(&claim_path, b"", &open)?;
                    multi.add_delete(&claim_path, None)?;
                }
            }
            let dead = zk::CreateMode::Persistent.with_acls(paths.acl.acls());
            multi.add_create(&paths.dead_item(id_text), data, &dead)?;
            match multi.commit().await {
                Ok(_) => Ok(()),
                // A retry that finds the item gone and the dead letter there finds its own
                // first attempt applied.
                Err(zk::MultiWriteError::OperationFailed {
                    source: zk::Error::NoNode | zk::Error::NodeExists, ..
                }) if this.retried && client.check_stat(&paths.dead_item(id_text)).await?.is_some() => Ok(()),
                Err(err) => Err(QueueError::ZooKeeper(err.into())),
            }
        }
    };
    match claim {
        ClaimCheck::Ours => while_unknown(client, "dead-lettering", attempt).await,
        ClaimCheck::NoneHeld => attempt(Try { retried: false, deadline: tokio::time::Instant::now() }).await,
    }
}

/// A dead letter as stored: its id, what it was and went through, and its payload.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: String,
    pub letter: DeadLetter,
    pub payload: Vec<u8>,
}

fn parse_dead_letter(id: &str, data: &[u8]) -> Option<StoredDeadLetter> {
    let (letter, payload) = decode_dead(data)?;
    Some(StoredDeadLetter { id: id.to_owned(), letter, payload: payload.to_vec() })
}

/// Dead letters, oldest first, up to `limit`, with their payloads.
pub async fn dead_letters(
    client: &zk::Client,
    paths: &QueuePaths,
    limit: usize,
) -> Result<Vec<StoredDeadLetter>, QueueError> {
    let mut ids = client.list_children(&paths.dead()).await.map_err(|e| QueueError::or_not_provisioned(e, paths))?;
    ids.sort();
    let mut letters = Vec::new();
    for id in ids.into_iter().take(limit) {
        match client.get_data(&paths.dead_item(&id)).await {
            Ok((data, _)) => match parse_dead_letter(&id, &data) {
                Some(letter) => letters.push(letter),
                None => tracing::warn!(dead = %id, "not a Paddock dead letter; skipping it"),
            },
            Err(zk::Error::NoNode) => {} // requeued meanwhile
            Err(err) => return Err(err.into()),
        }
    }
    Ok(letters)
}

/// One dead letter with its payload.
pub async fn dead_letter(client: &zk::Client, paths: &QueuePaths, id: &str) -> Result<StoredDeadLetter, QueueError> {
    match client.get_data(&paths.dead_item(id)).await {
        Ok((data, _)) => parse_dead_letter(id, &data).ok_or_else(|| QueueError::NoSuchDeadLetter(id.to_owned())),
        Err(zk::Error::NoNode) => match client.check_stat(&paths.base).await? {
            Some(_) => Err(QueueError::NoSuchDeadLetter(id.to_owned())),
            None => Err(QueueError::NotProvisioned(paths.base.clone())),
        },
        Err(err) => Err(err.into()),
    }
}

/// Moves a dead letter back into the queue (ready now, attempts reset). Returns its new id.
///
/// A reply lost after the move was applied is resolved here: the dead letter is gone and
/// the move's [`Receipt`] is in its bucket (also when a consumer has already taken and
/// acked the item); if the move was not applied, it is sent again.
pub async fn requeue_dead(client: &zk::Client, paths: &QueuePaths, dead_id: &str) -> Result<ItemId, QueueError> {
    // Set once a move was sent and its outcome is unknown: its place, bucket and receipt.
    let sent: std::sync::Mutex<Option<(Place, String, Receipt)>> = std::sync::Mutex::new(None);
    let no_such = || QueueError::NoSuchDeadLetter(dead_id.to_owned());
    let moved = while_unknown(client, "requeueing a dead letter", |this| {
        let sent = &sent;
        async move {
            let read = match client.get_data(&paths.dead_item(dead_id)).await {
                Ok(found) => Some(found),
                Err(zk::Error::NoNode) => None,
                Err(err) => return Err(err.into()),
            };
            let Some((data, stat)) = read else {
                let looked_for = sent.lock().expect("not poisoned").clone();
                return match looked_for {
                    Some((place, bucket, receipt)) => {
                        let found = receipt.find(client, paths, &place, this.deadline).await?.ok_or_else(no_such)?;
                        Ok((found, place, bucket))
                    }
                    None => Err(no_such()),
                };
            };
            let letter = parse_dead_letter(dead_id, &data).ok_or_else(no_such)?;
            let now = now_ms();
            let original_id = Some(letter.letter.envelope.original_id.clone().unwrap_or_else(|| dead_id.to_owned()));
            let envelope = Envelope { due_ms: now, original_id, carried: None, ..letter.letter.envelope };
            let bucket = bucket_name(envelope.priority, now);
            // A grouped item goes back to the end of its group.
            let place = match envelope.group.as_deref().map(GroupKey::new) {
                Some(Ok(group)) => Place::Group(group),
                _ => Place::Bucket(bucket.clone()),
            };
            ensure_place(client, paths, &place).await?;
            let dir = place.dir(paths);
            let receipt = Receipt::new();
            let mut multi = client.new_multi_writer();
            multi.add_delete(&paths.dead_item(dead_id), Some(stat.version))?;
            multi.add_create(&receipt.create_in(&dir), b"", &Receipt::mode(paths.acl))?;
            multi.add_create(
                &format!("{dir}/{}", place.item_prefix(&bucket)),
                &encode(&envelope, &letter.payload),
                &zk::CreateMode::PersistentSequential.with_acls(paths.acl.acls()),
            )?;
            // If the reply is lost, the next try's read tells: the letter still there (same
            // version) was not moved; gone, the receipt is looked for.
            *sent.lock().expect("not poisoned") = Some((place.clone(), bucket.clone(), receipt));
            let results = multi.commit().await.map_err(zk::Error::from)?;
            Ok((Receipt::made_by(results)?, place, bucket))
        }
    })
    .await?;
    let (moved, place, bucket) = moved;
    receipt::delete(client, vec![moved.receipt.clone()]);
    Ok(moved.id(&place, &bucket, 0))
}
