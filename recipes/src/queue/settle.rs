//! Settling a claimed item: ack (gone for good), nack (ready again, now or after a delay,
//! or dead-lettered on its last attempt), and giving a claim up.
//!
//! Invariants:
//! - An item is removed only by an ack (or moved, by a delayed nack or dead-lettering),
//!   in one multi that also removes its claim: nothing is deleted before it is processed.
//! - A multi whose reply was lost is retried; a retry that finds its nodes gone tells its
//!   own earlier effect from someone else's ([`settle_gone`]), so the app hears 200 for
//!   its own ack and 409 for an item that went elsewhere.

use std::time::Duration;

use super::claim::{Candidate, Read, read_candidate};
use super::dead::{ClaimCheck, move_to_dead};
use super::enqueue::ensure_bucket;
use super::item::{Envelope, ItemId, Place, bucket_name, due_after, encode, now_ms};
use super::receipt::{self, Receipt};
use super::{QueueConfig, QueueError};
use crate::identity::NodeAcl;
use crate::layout::QueuePaths;
use crate::retry::while_unknown;
use crate::zk;

/// What a multi on a claimed item did.
enum Committed {
    Applied(Vec<zk::MultiWriteResult>),
    /// A node it removes was already gone: removed by an earlier attempt of this call
    /// whose reply was lost (`retried`), or of the caller's own earlier call, or taken by
    /// someone else. [`settle_gone`] tells which.
    Gone {
        retried: bool,
    },
}

enum Op {
    Delete(String),
    /// A receipt's create (see `receipt`), just before the items of its bucket.
    Receipt(String),
    Create(String, Vec<u8>),
    SetData(String, Vec<u8>),
}

/// Runs a multi, retrying an unknown outcome for as long as the session may live.
async fn commit_owned(client: &zk::Client, acl: NodeAcl, ops: &[Op]) -> Result<Committed, QueueError> {
    while_unknown(client, "settling an item", |this| async move {
        let mut multi = client.new_multi_writer();
        for op in ops {
            match op {
                Op::Delete(path) => multi.add_delete(path, None)?,
                Op::Receipt(path) => multi.add_create(path, b"", &Receipt::mode(acl))?,
                Op::Create(path, data) => {
                    multi.add_create(path, data, &zk::CreateMode::PersistentSequential.with_acls(acl.acls()))?
                }
                Op::SetData(path, data) => multi.add_set_data(path, data, None)?,
            }
        }
        match multi.commit().await {
            Ok(results) => Ok(Committed::Applied(results)),
            Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode, .. }) => {
                Ok(Committed::Gone { retried: this.retried })
            }
            Err(err) => Err(QueueError::ZooKeeper(err.into())),
        }
    })
    .await
}

/// The nodes an ack deletes: the claim, the item, its history.
fn ack_deletes(paths: &QueuePaths, id: &ItemId) -> Vec<String> {
    let id_text = id.to_string();
    vec![paths.claim(&id_text), id.path(paths), paths.attempts_of(&id_text)]
}

/// Acks a claimed item: it is gone with its claim and history. The caller must hold the
/// claim (same session, not given up).
pub async fn ack(client: &zk::Client, paths: &QueuePaths, id: &ItemId) -> Result<(), QueueError> {
    let item_path = id.path(paths);
    let ops: Vec<Op> = ack_deletes(paths, id).into_iter().map(Op::Delete).collect();
    match commit_owned(client, paths.acl, &ops).await? {
        Committed::Applied(_) => Ok(()),
        Committed::Gone { .. } => settle_gone(client, paths, id, &item_path).await,
    }
}

/// Most items one multi acks: keeps the request well under ZooKeeper's 1 MiB limit
/// (a grouped item's four paths are under 1 KiB).
const ACKS_PER_MULTI: usize = 250;

/// Acks claimed items in as few multis as it can, with an answer per item: an item whose
/// claim is gone (or that went elsewhere) fails alone, and the rest is sent again
/// without it. A multi whose reply was lost is settled item by item by [`ack`], which
/// tells its own applied ack from someone else's.
pub async fn ack_many(client: &zk::Client, paths: &QueuePaths, ids: &[ItemId]) -> Vec<Result<(), QueueError>> {
    let mut results: Vec<Option<Result<(), QueueError>>> = ids.iter().map(|_| None).collect();
    for (chunk_index, chunk) in ids.chunks(ACKS_PER_MULTI).enumerate() {
        let offset = chunk_index * ACKS_PER_MULTI;
        let mut pending: Vec<usize> = (0..chunk.len()).collect();
        while !pending.is_empty() {
            let acking: Vec<&ItemId> = pending.iter().map(|&index| &chunk[index]).collect();
            let outcome = commit_acks(client, paths, &acking).await;
            match outcome {
                Ok(()) => {
                    pending.drain(..).for_each(|index| results[offset + index] = Some(Ok(())));
                }
                Err(zk::MultiWriteError::OperationFailed { index: op, .. }) => {
                    // The item whose deletes hold operation `op`.
                    let mut first_op = 0;
                    let position = acking
                        .iter()
                        .position(|id| {
                            first_op += ack_deletes(paths, id).len();
                            op < first_op
                        })
                        .unwrap_or(0);
                    let failed = pending.remove(position);
                    results[offset + failed] = Some(ack(client, paths, &chunk[failed]).await);
                }
                // Unknown outcome, or another failure: each item on its own.
                Err(_) => {
                    let acks = pending.iter().map(|&index| ack(client, paths, &chunk[index]));
                    let acked = futures::future::join_all(acks).await;
                    for (index, result) in pending.drain(..).zip(acked) {
                        results[offset + index] = Some(result);
                    }
                }
            }
        }
    }
    results.into_iter().map(|r| r.expect("every item answered")).collect()
}

/// One multi of the acks of `ids`.
async fn commit_acks(client: &zk::Client, paths: &QueuePaths, ids: &[&ItemId]) -> Result<(), zk::MultiWriteError> {
    let mut multi = client.new_multi_writer();
    for path in ids.iter().flat_map(|id| ack_deletes(paths, id)) {
        multi.add_delete(&path, None).map_err(|source| zk::MultiWriteError::RequestFailed { source })?;
    }
    multi.commit().await.map(drop)
}

/// After a multi on a claimed item found a node gone: `Ok` when the item is gone because
/// an earlier attempt of this consumer's own ack or nack was applied (its reply lost, the
/// caller retried), an error that says where the item went otherwise.
async fn settle_gone(client: &zk::Client, paths: &QueuePaths, id: &ItemId, item_path: &str) -> Result<(), QueueError> {
    let id_text = id.to_string();
    if client.check_stat(&paths.dead_item(&id_text)).await?.is_some() {
        return Err(QueueError::DeadLettered(id_text));
    }
    if client.check_stat(item_path).await?.is_some() {
        // The item is there but our claim is not: it is not ours to settle.
        return Err(QueueError::ClaimLost(id_text));
    }
    Ok(())
}

/// Gives a claim up without counting anything (visibility timeout, shutdown): the item
/// is ready again at once; its next delivery counts the next attempt.
pub async fn release_claim(client: &zk::Client, paths: &QueuePaths, id: &ItemId) -> Result<(), QueueError> {
    match client.delete(&paths.claim(&id.to_string()), None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// What a nack did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NackOutcome {
    /// Ready again (after `delay`). A delayed item moves to another bucket and so gets a
    /// new id (None when an earlier nack of the caller's own had moved it).
    Requeued {
        id: Option<ItemId>,
    },
    DeadLettered,
}

/// Nacks a claimed item: back to the queue after `delay` (none: the queue's retry
/// back-off for the deliveries it has had, at once without one), or to dead letters when
/// it has had `max_attempts` deliveries.
pub async fn nack(
    client: &zk::Client,
    paths: &QueuePaths,
    config: &QueueConfig,
    id: &ItemId,
    delay: Option<Duration>,
    reason: Option<&str>,
) -> Result<NackOutcome, QueueError> {
    let id_text = id.to_string();
    let mut item = match read_candidate(client, paths, id).await? {
        Read::Found(item) => item,
        Read::Gone if client.check_stat(&paths.dead_item(&id_text)).await?.is_some() => {
            return Err(QueueError::DeadLettered(id_text));
        }
        Read::Gone | Read::Foreign => return Err(QueueError::NoSuchItem(id_text)),
    };
    if let Some(last) = item.attempts.deliveries.last_mut() {
        last.outcome = Some(match reason {
            Some(r) => format!("nack: {}", r.chars().take(200).collect::<String>()),
            None => "nack".to_owned(),
        });
    }
    if item.attempts.attempt >= config.max_attempts {
        let reason = format!("nacked on attempt {} (maxAttempts {})", item.attempts.attempt, config.max_attempts);
        move_to_dead(client, paths, &item, &reason, ClaimCheck::Ours).await?;
        return Ok(NackOutcome::DeadLettered);
    }
    let delay = delay.unwrap_or_else(|| config.retry_delay(item.attempts.attempt));
    let history = serde_json::to_vec(&item.attempts).expect("attempts serialize");
    if id.group.is_some() && !delay.is_zero() {
        // A grouped item stays its group's head: the claim is kept for the delay (the
        // group waits with it), then given up; a consumer's death ends the wait early.
        let ops = [Op::SetData(paths.attempts_of(&id_text), history)];
        if let Committed::Gone { retried: false } = commit_owned(client, paths.acl, &ops).await? {
            settle_gone(client, paths, id, &item.path).await?;
        }
        let (waiting_client, waiting_paths, waiting) = (client.clone(), paths.clone(), id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(err) = release_claim(&waiting_client, &waiting_paths, &waiting).await {
                tracing::debug!(item = %waiting, error = %err, "a nacked item's claim is left to its session");
            }
        });
        return Ok(NackOutcome::Requeued { id: Some(id.clone()) });
    }
    if delay.is_zero() {
        // Same place in the queue; the history notes the nack.
        let ops = [Op::SetData(paths.attempts_of(&id_text), history), Op::Delete(paths.claim(&id_text))];
        if let Committed::Gone { retried: false } = commit_owned(client, paths.acl, &ops).await? {
            settle_gone(client, paths, id, &item.path).await?;
        }
        return Ok(NackOutcome::Requeued { id: Some(id.clone()) });
    }
    let new_id = move_delayed(client, paths, id, *item, delay).await?;
    Ok(NackOutcome::Requeued { id: new_id })
}

/// A delayed nack: the item moves to the bucket of its new due time, carrying its
/// history, in one multi with a receipt. Its new id (None when an earlier nack of the
/// caller's own had moved it).
async fn move_delayed(
    client: &zk::Client,
    paths: &QueuePaths,
    id: &ItemId,
    item: Candidate,
    delay: Duration,
) -> Result<Option<ItemId>, QueueError> {
    let id_text = id.to_string();
    let due = due_after(now_ms(), delay);
    let original_id = Some(item.envelope.original_id.clone().unwrap_or_else(|| id_text.clone()));
    let moved = Envelope { due_ms: due, original_id, carried: Some(item.attempts), ..item.envelope };
    let bucket = bucket_name(moved.priority, due);
    ensure_bucket(client, paths, &bucket).await?;
    let bucket_path = paths.bucket(&bucket);
    let receipt = Receipt::new();
    let ops = [
        Op::Delete(paths.claim(&id_text)),
        Op::Delete(item.path.clone()),
        Op::Delete(paths.attempts_of(&id_text)),
        Op::Receipt(receipt.create_in(&bucket_path)),
        Op::Create(format!("{bucket_path}/item-"), encode(&moved, &item.payload)),
    ];
    let receipted = match commit_owned(client, paths.acl, &ops).await? {
        Committed::Applied(results) => Some(Receipt::made_by(results)?),
        // Our first attempt moved it if its receipt is there (the reply, with the new id,
        // was lost); else the item went elsewhere.
        Committed::Gone { retried: true } => {
            let deadline = tokio::time::Instant::now() + client.session_timeout();
            match receipt.find(client, paths, &Place::Bucket(bucket.clone()), deadline).await? {
                Some(receipted) => Some(receipted),
                None => {
                    settle_gone(client, paths, id, &item.path).await?;
                    None
                }
            }
        }
        Committed::Gone { retried: false } => {
            settle_gone(client, paths, id, &item.path).await?;
            None
        }
    };
    Ok(receipted.map(|receipted| {
        receipt::delete(client, vec![receipted.receipt.clone()]);
        receipted.id(&Place::Bucket(bucket.clone()), &bucket, 0)
    }))
}
