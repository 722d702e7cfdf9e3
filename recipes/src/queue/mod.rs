//! The work queue recipe: at-least-once delivery over ZooKeeper.
//!
//! ```text
//! <queue>                         config (JSON)
//!     items/<bucket>/item-<seq>   persistent sequential; envelope + payload (immutable)
//!     claims/<id>                 ephemeral, owned by the consuming session
//!     attempts/<id>               persistent; delivery count and history of an item
//!     dead/<id>                   dead-lettered item with its history
//! ```
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
//!   not by the caller: creates of items carry a create id in their envelope and are
//!   looked for after `sync`; multis on a claimed item are retried, and a retry that
//!   finds its nodes gone tells its own earlier effect from someone else's.

pub mod item;
pub mod view;

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use self::item::{Attempts, DeadLetter, Envelope, ItemId, bucket_name, decode, encode, new_create_id, now_ms};
use self::view::{Next, QueueView};
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
#[derive(Debug, Clone)]
pub struct NewItem {
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub priority: u8,
    pub delay: Duration,
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

pub async fn read_config(client: &zk::Client, paths: &QueuePaths) -> Result<QueueConfig, QueueError> {
    match client.get_data(&paths.base).await {
        Ok((data, _)) => Ok(QueueConfig::from_znode(&paths.base, &data)?),
        Err(zk::Error::NoNode) => Err(QueueError::NotProvisioned(paths.base.clone())),
        Err(err) => Err(err.into()),
    }
}

fn envelope_for(item: &NewItem, now: u64) -> Envelope {
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
async fn ensure_bucket(client: &zk::Client, paths: &QueuePaths, bucket: &str) -> Result<(), QueueError> {
    match client.create(&paths.bucket(bucket), b"", &zk::CreateMode::Container.with_acls(paths.acl.acls())).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(zk::Error::NoNode) => Err(QueueError::NotProvisioned(paths.base.clone())),
        Err(err) => Err(err.into()),
    }
}

/// Enqueues items: one create for a single item, one multi (all or none) for several.
/// Returns their ids in order.
///
/// A create whose reply was lost is looked for by its create id once the connection is
/// back: found, its id is returned; not there, the create is sent again. So one `Ok` is
/// one stored item (or batch), also across lost replies.
pub async fn enqueue(client: &zk::Client, paths: &QueuePaths, items: &[NewItem]) -> Result<Vec<ItemId>, QueueError> {
    let now = now_ms();
    let prepared: Vec<(String, Envelope, Vec<u8>)> = items
        .iter()
        .map(|item| {
            let envelope = envelope_for(item, now);
            let data = encode(&envelope, &item.payload);
            (bucket_name(item.priority, envelope.due_ms), envelope, data)
        })
        .collect();
    let options = zk::CreateMode::PersistentSequential.with_acls(paths.acl.acls());
    let deadline = tokio::time::Instant::now() + client.session_timeout();
    let mut missing_buckets = 0;
    loop {
        let result = if let [(bucket, _, data)] = prepared.as_slice() {
            let prefix = format!("{}/item-", paths.bucket(bucket));
            client.create(&prefix, data, &options).await.map(|(_, seq)| vec![(bucket.clone(), seq.to_string())])
        } else {
            let mut multi = client.new_multi_writer();
            for (bucket, _, data) in &prepared {
                multi.add_create(&format!("{}/item-", paths.bucket(bucket)), data, &options)?;
            }
            multi.commit().await.map_err(zk::Error::from).and_then(|results| {
                results
                    .into_iter()
                    .zip(&prepared)
                    .map(|(r, (bucket, _, _))| match r {
                        zk::MultiWriteResult::Create { path, .. } => {
                            let seq = path.rsplit("item-").next().unwrap_or_default().to_owned();
                            Ok((bucket.clone(), seq))
                        }
                        other => Err(zk::Error::UnexpectedError(format!("expected a create result, got {other:?}"))),
                    })
                    .collect()
            })
        };
        match result {
            Ok(created) => {
                return Ok(created.into_iter().map(|(bucket, seq)| ItemId { bucket, seq }).collect());
            }
            Err(zk::Error::NoNode) if missing_buckets < 2 => {
                missing_buckets += 1;
                let buckets: HashSet<&String> = prepared.iter().map(|(b, _, _)| b).collect();
                for bucket in buckets {
                    ensure_bucket(client, paths, bucket).await?;
                }
            }
            Err(zk::Error::NoNode) => return Err(QueueError::NotProvisioned(paths.base.clone())),
            Err(err) if crate::errors::outcome_unknown(&err) && tokio::time::Instant::now() < deadline => {
                // All or none: the first item tells whether the create (or multi) landed.
                let (bucket, envelope, _) = &prepared[0];
                let Some(first) = find_created(client, paths, bucket, envelope, deadline).await? else {
                    tracing::debug!(error = %err, "enqueue interrupted and not applied; sending it again");
                    continue;
                };
                if prepared.len() == 1 {
                    return Ok(vec![first]);
                }
                let mut ids = Vec::with_capacity(prepared.len());
                for (bucket, envelope, _) in &prepared {
                    match find_created(client, paths, bucket, envelope, deadline).await? {
                        Some(id) => ids.push(id),
                        None => return Err(err.into()), // cannot be: a multi is all or none
                    }
                }
                return Ok(ids);
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// After a create whose reply was lost: waits for the connection, brings the server up to
/// date (`sync`), and looks for the item with `envelope`'s create id in its bucket. Some
/// when the create was applied; None when it was not (and so may be sent again).
async fn find_created(
    client: &zk::Client,
    paths: &QueuePaths,
    bucket: &str,
    envelope: &Envelope,
    deadline: tokio::time::Instant,
) -> Result<Option<ItemId>, QueueError> {
    let Some(create_id) = envelope.create_id.as_deref() else { return Ok(None) };
    let bucket_path = paths.bucket(bucket);
    loop {
        let found = async {
            client.sync(&bucket_path).await?;
            let mut nodes = match client.list_children(&bucket_path).await {
                Ok(nodes) => nodes,
                Err(zk::Error::NoNode) => return Ok(None),
                Err(err) => return Err(err),
            };
            // Newest first: the lost create is among the last of its bucket. One read at
            // a time, as items may be up to a megabyte each.
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
        };
        match found.await {
            Ok(found) => return Ok(found),
            Err(err) if crate::errors::outcome_unknown(&err) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// An item as read for a claim or a nack: one multi-read of the item and its history.
struct ReadItem {
    id: ItemId,
    path: String,
    version: i32,
    envelope: Envelope,
    payload: Vec<u8>,
    attempts: Attempts,
    /// None when `attempts/<id>` does not exist yet (never delivered since enqueue/move).
    attempts_version: Option<i32>,
}

enum Read {
    Found(Box<ReadItem>),
    Gone,
    /// Data that is not a Paddock item.
    Foreign,
}

async fn read_item(client: &zk::Client, paths: &QueuePaths, id: &ItemId) -> Result<Read, QueueError> {
    let path = format!("{}/{}", paths.bucket(&id.bucket), id.node_name());
    let mut reader = client.new_multi_reader();
    reader.add_get_data(&path)?;
    reader.add_get_data(&paths.attempts_of(&id.to_string()))?;
    let mut results = reader.commit().await?.into_iter();
    let (data, stat) = match results.next() {
        Some(zk::MultiReadResult::Data { data, stat }) => (data, stat),
        _ => return Ok(Read::Gone),
    };
    let Some((envelope, payload)) = decode(&data) else { return Ok(Read::Foreign) };
    let (attempts, attempts_version) = match results.next() {
        Some(zk::MultiReadResult::Data { data, stat }) => {
            (serde_json::from_slice::<Attempts>(&data).unwrap_or_default(), Some(stat.version))
        }
        // A moved item carries its history until its first delivery under the new id.
        _ => (envelope.carried.clone().unwrap_or_default(), None),
    };
    Ok(Read::Found(Box::new(ReadItem {
        id: id.clone(),
        path,
        version: stat.version,
        payload: payload.to_vec(),
        envelope,
        attempts,
        attempts_version,
    })))
}

/// Claims the next ready item for `pod`, or None when nothing is ready. Items past
/// `max_attempts` deliveries are dead-lettered on the way.
pub async fn claim_next(
    client: &zk::Client,
    paths: &QueuePaths,
    view: &QueueView,
    config: &QueueConfig,
    pod: &str,
    observer: &dyn view::ConsumerObserver,
) -> Result<Option<Delivery>, QueueError> {
    let mut skip = HashSet::new();
    // Strict queue order until we lose a race; then a random pick near the head.
    let mut pick = 0usize;
    loop {
        let id = match view.next(&skip, pick) {
            Next::Item(id) => id,
            Next::Load(bucket) => {
                view.loading(&bucket);
                let nodes = match client.list_children(&paths.bucket(&bucket)).await {
                    Ok(nodes) => Some(nodes),
                    Err(zk::Error::NoNode) => None,
                    Err(err) => return Err(err.into()),
                };
                observer.reads(1);
                view.loaded(&bucket, nodes);
                continue;
            }
            Next::Empty { .. } => return Ok(None),
        };
        let _reservation = Reservation { view, id: id.clone() };
        let read = read_item(client, paths, &id).await?;
        observer.reads(1);
        let mut item = match read {
            Read::Found(item) => item,
            Read::Gone => {
                view.forget(&id); // acked or moved meanwhile
                continue;
            }
            Read::Foreign => {
                tracing::warn!(item = %id, "not a Paddock item; skipping it");
                skip.insert(id);
                continue;
            }
        };
        if item.attempts.attempt >= config.max_attempts {
            let reason = format!(
                "delivered {} times without an ack (maxAttempts {})",
                item.attempts.attempt, config.max_attempts
            );
            match move_to_dead(client, paths, &item, &reason, ClaimCheck::NoneHeld).await {
                Ok(()) => {
                    view.forget(&id);
                    observer.dead_lettered();
                    tracing::info!(item = %id, reason, "dead-lettered");
                }
                Err(QueueError::ZooKeeper(zk::Error::NodeExists)) => {
                    // Someone holds it on its last attempt: theirs to ack, nack or lose.
                    view.mark_claimed(&id);
                    skip.insert(id);
                }
                Err(err) => {
                    tracing::debug!(item = %id, error = %err, "not dead-lettered; skipping it");
                    skip.insert(id);
                }
            }
            continue;
        }

        let now = now_ms();
        item.attempts.record(pod, now);
        let claim =
            serde_json::to_vec(&serde_json::json!({ "pod": pod, "attempt": item.attempts.attempt, "atMs": now }))
                .expect("claim serializes");
        let history = serde_json::to_vec(&item.attempts).expect("attempts serialize");
        let attempts_path = paths.attempts_of(&id.to_string());
        let mut multi = client.new_multi_writer();
        multi.add_check_version(&item.path, item.version)?;
        multi.add_create(
            &paths.claim(&id.to_string()),
            &claim,
            &zk::CreateMode::Ephemeral.with_acls(paths.acl.acls()),
        )?;
        match item.attempts_version {
            Some(version) => multi.add_set_data(&attempts_path, &history, Some(version))?,
            None => {
                multi.add_create(&attempts_path, &history, &zk::CreateMode::Persistent.with_acls(paths.acl.acls()))?
            }
        }
        let delivered = |item: Box<ReadItem>, claim_proved_at| Delivery {
            id: item.id,
            attempt: item.attempts.attempt,
            envelope: item.envelope,
            payload: item.payload,
            claim_proved_at,
        };
        let sent_at = tokio::time::Instant::now();
        match multi.commit().await {
            Ok(_) => {
                view.mark_claimed(&id);
                return Ok(Some(delivered(item, sent_at)));
            }
            Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode, .. }) => view.forget(&id),
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::NodeExists | zk::Error::BadVersion, ..
            }) => {
                // Another consumer won this item (or its history moved on): next one.
                view.mark_claimed(&id);
                skip.insert(id);
                pick = 1 + (uuid::Uuid::new_v4().as_u128() % view::PICK_WINDOW as u128) as usize;
            }
            Err(zk::MultiWriteError::RequestFailed { source }) if crate::errors::outcome_unknown(&source) => {
                // The claim may have been applied: if it is ours, deliver; never leave an
                // item claimed by a live session that nobody knows of.
                if let Some(proved_at) = claim_is_ours(client, &paths.claim(&id.to_string())).await? {
                    view.mark_claimed(&id);
                    return Ok(Some(delivered(item, proved_at)));
                }
                return Err(source.into());
            }
            Err(err) => return Err(zk::Error::from(err).into()),
        }
    }
}

/// Holds an item reserved in the view while this consumer tries to claim it.
struct Reservation<'a> {
    view: &'a QueueView,
    id: ItemId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.view.unreserve(&self.id);
    }
}

/// After a claim whose reply was lost: waits for the connection, then tells whether the
/// claim node exists and belongs to this session, and if so when the read that found it
/// was sent (see [`Delivery::claim_proved_at`]).
async fn claim_is_ours(client: &zk::Client, claim_path: &str) -> Result<Option<tokio::time::Instant>, QueueError> {
    let deadline = tokio::time::Instant::now() + client.session_timeout();
    loop {
        let sent_at = tokio::time::Instant::now();
        let checked = async {
            client.sync(claim_path).await?;
            client.check_stat(claim_path).await
        };
        match checked.await {
            Ok(stat) => {
                return Ok(stat.is_some_and(|s| s.ephemeral_owner == client.session_id().0).then_some(sent_at));
            }
            Err(err) if crate::errors::outcome_unknown(&err) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Whose claim a dead-lettering transaction accounts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimCheck {
    /// The caller holds the claim (a nack on the last attempt): it goes with the item.
    Ours,
    /// Nobody may hold one: the multi creates and deletes `claims/<id>`, so it fails with
    /// `NodeExists` while any consumer holds the item, whatever the caller's view says.
    NoneHeld,
}

/// Moves an item with its history to `dead/<id>` in one multi, which also settles the
/// claim as `claim` says.
async fn move_to_dead(
    client: &zk::Client,
    paths: &QueuePaths,
    item: &ReadItem,
    reason: &str,
    claim: ClaimCheck,
) -> Result<(), QueueError> {
    let letter = DeadLetter {
        envelope: Envelope { carried: None, create_id: None, ..item.envelope.clone() },
        attempts: item.attempts.clone(),
        dead_at_ms: now_ms(),
        reason: reason.to_owned(),
    };
    let mut data = serde_json::to_vec(&letter).expect("dead letter serializes");
    data.push(b'\n');
    data.extend_from_slice(&item.payload);
    let id_text = item.id.to_string();
    let deadline = tokio::time::Instant::now() + client.session_timeout();
    let mut retried = false;
    loop {
        let mut multi = client.new_multi_writer();
        multi.add_delete(&item.path, Some(item.version))?;
        if let Some(version) = item.attempts_version {
            multi.add_delete(&paths.attempts_of(&id_text), Some(version))?;
        }
        match claim {
            ClaimCheck::Ours => multi.add_delete(&paths.claim(&id_text), None)?,
            ClaimCheck::NoneHeld => {
                let open = zk::CreateMode::Persistent.with_acls(paths.acl.acls());
                multi.add_create(&paths.claim(&id_text), b"", &open)?;
                multi.add_delete(&paths.claim(&id_text), None)?;
            }
        }
        let dead = zk::CreateMode::Persistent.with_acls(paths.acl.acls());
        multi.add_create(&paths.dead_item(&id_text), &data, &dead)?;
        match multi.commit().await {
            Ok(_) => return Ok(()),
            // With our claim, nobody else moves the item: a retry that finds it gone and
            // the dead letter there finds our own first attempt applied.
            Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode | zk::Error::NodeExists, .. })
                if retried && client.check_stat(&paths.dead_item(&id_text)).await?.is_some() =>
            {
                return Ok(());
            }
            Err(zk::MultiWriteError::RequestFailed { source })
                if claim == ClaimCheck::Ours
                    && crate::errors::outcome_unknown(&source)
                    && tokio::time::Instant::now() < deadline =>
            {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(zk::Error::from(err).into()),
        }
    }
}

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

/// Runs a multi, retrying connection loss for as long as the session may live.
async fn commit_owned(client: &zk::Client, acl: crate::identity::NodeAcl, ops: &[Op]) -> Result<Committed, QueueError> {
    let deadline = tokio::time::Instant::now() + client.session_timeout();
    let mut retried = false;
    loop {
        let mut multi = client.new_multi_writer();
        for op in ops {
            match op {
                Op::Delete(path) => multi.add_delete(path, None)?,
                Op::Create(path, data) => {
                    multi.add_create(path, data, &zk::CreateMode::PersistentSequential.with_acls(acl.acls()))?
                }
                Op::SetData(path, data) => multi.add_set_data(path, data, None)?,
            }
        }
        match multi.commit().await {
            Ok(results) => return Ok(Committed::Applied(results)),
            Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode, .. }) => {
                return Ok(Committed::Gone { retried });
            }
            Err(zk::MultiWriteError::RequestFailed { source })
                if crate::errors::outcome_unknown(&source) && tokio::time::Instant::now() < deadline =>
            {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(zk::Error::from(err).into()),
        }
    }
}

enum Op {
    Delete(String),
    Create(String, Vec<u8>),
    SetData(String, Vec<u8>),
}

/// Acks a claimed item: it is gone with its claim and history. The caller must hold the
/// claim (same session, not given up).
pub async fn ack(client: &zk::Client, paths: &QueuePaths, id: &ItemId) -> Result<(), QueueError> {
    let id_text = id.to_string();
    let item_path = format!("{}/{}", paths.bucket(&id.bucket), id.node_name());
    let result = commit_owned(
        client,
        paths.acl,
        &[Op::Delete(paths.claim(&id_text)), Op::Delete(item_path.clone()), Op::Delete(paths.attempts_of(&id_text))],
    )
    .await;
    match result? {
        Committed::Applied(_) => Ok(()),
        Committed::Gone { .. } => settle_gone(client, paths, id, &item_path).await,
    }
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
    /// new id (None in the rare case that a lost reply hid it).
    Requeued {
        id: Option<ItemId>,
    },
    DeadLettered,
}

/// Nacks a claimed item: back to the queue after `delay`, or to dead letters when it has
/// had `max_attempts` deliveries.
pub async fn nack(
    client: &zk::Client,
    paths: &QueuePaths,
    config: &QueueConfig,
    id: &ItemId,
    delay: Duration,
    reason: Option<&str>,
) -> Result<NackOutcome, QueueError> {
    let id_text = id.to_string();
    let mut item = match read_item(client, paths, id).await? {
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
    if delay.is_zero() {
        // Same place in the queue; the history notes the nack.
        let history = serde_json::to_vec(&item.attempts).expect("attempts serialize");
        let committed = commit_owned(
            client,
            paths.acl,
            &[Op::SetData(paths.attempts_of(&id_text), history), Op::Delete(paths.claim(&id_text))],
        )
        .await?;
        if let Committed::Gone { retried: false } = committed {
            settle_gone(client, paths, id, &item.path).await?;
        }
        return Ok(NackOutcome::Requeued { id: Some(id.clone()) });
    }
    // Delayed: the item moves to the bucket of its new due time, carrying its history.
    let due = now_ms() + delay.as_millis() as u64;
    let original_id = Some(item.envelope.original_id.clone().unwrap_or_else(|| id_text.clone()));
    let moved = Envelope {
        due_ms: due,
        original_id,
        carried: Some(item.attempts),
        create_id: new_create_id(),
        ..item.envelope
    };
    let bucket = bucket_name(moved.priority, due);
    ensure_bucket(client, paths, &bucket).await?;
    let item_path = item.path.clone();
    let results = match commit_owned(
        client,
        paths.acl,
        &[
            Op::Delete(paths.claim(&id_text)),
            Op::Delete(item.path),
            Op::Delete(paths.attempts_of(&id_text)),
            Op::Create(format!("{}/item-", paths.bucket(&bucket)), encode(&moved, &item.payload)),
        ],
    )
    .await?
    {
        Committed::Applied(results) => results,
        // Our first attempt moved it; its reply, with the new id, was lost.
        Committed::Gone { retried: true } => {
            let deadline = tokio::time::Instant::now() + client.session_timeout();
            let new_id = find_created(client, paths, &bucket, &moved, deadline).await?;
            return Ok(NackOutcome::Requeued { id: new_id });
        }
        Committed::Gone { retried: false } => {
            settle_gone(client, paths, id, &item_path).await?;
            Vec::new()
        }
    };
    let new_id = results.into_iter().find_map(|r| match r {
        zk::MultiWriteResult::Create { path, .. } => {
            path.rsplit("item-").next().map(|seq| ItemId { bucket: bucket.clone(), seq: seq.to_owned() })
        }
        _ => None,
    });
    Ok(NackOutcome::Requeued { id: new_id })
}

/// A dead letter as stored: its id, what it was and went through, and its payload.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: String,
    pub letter: DeadLetter,
    pub payload: Vec<u8>,
}

fn parse_dead_letter(id: &str, data: &[u8]) -> Option<StoredDeadLetter> {
    let newline = data.iter().position(|b| *b == b'\n')?;
    let letter = serde_json::from_slice::<DeadLetter>(&data[..newline]).ok()?;
    Some(StoredDeadLetter { id: id.to_owned(), letter, payload: data[newline + 1..].to_vec() })
}

/// Dead letters, oldest first, up to `limit`, with their payloads.
pub async fn dead_letters(
    client: &zk::Client,
    paths: &QueuePaths,
    limit: usize,
) -> Result<Vec<StoredDeadLetter>, QueueError> {
    let mut ids = match client.list_children(&paths.dead()).await {
        Ok(ids) => ids,
        Err(zk::Error::NoNode) => return Err(QueueError::NotProvisioned(paths.base.clone())),
        Err(err) => return Err(err.into()),
    };
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
/// the item with this move's create id is in its bucket; if the move was not applied, it
/// is sent again.
pub async fn requeue_dead(client: &zk::Client, paths: &QueuePaths, dead_id: &str) -> Result<ItemId, QueueError> {
    let deadline = tokio::time::Instant::now() + client.session_timeout();
    // Set once a move was sent and its outcome is unknown: (bucket, envelope) to look for.
    let mut sent: Option<(String, Envelope)> = None;
    loop {
        let read = match client.get_data(&paths.dead_item(dead_id)).await {
            Ok(found) => Some(found),
            Err(zk::Error::NoNode) => None,
            Err(err)
                if crate::errors::outcome_unknown(&err) && sent.is_some() && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        let Some((data, stat)) = read else {
            return match &sent {
                Some((bucket, envelope)) => find_created(client, paths, bucket, envelope, deadline)
                    .await?
                    .ok_or_else(|| QueueError::NoSuchDeadLetter(dead_id.to_owned())),
                None => Err(QueueError::NoSuchDeadLetter(dead_id.to_owned())),
            };
        };
        let letter =
            parse_dead_letter(dead_id, &data).ok_or_else(|| QueueError::NoSuchDeadLetter(dead_id.to_owned()))?;
        let now = now_ms();
        let original_id = Some(letter.letter.envelope.original_id.clone().unwrap_or_else(|| dead_id.to_owned()));
        let envelope =
            Envelope { due_ms: now, original_id, carried: None, create_id: new_create_id(), ..letter.letter.envelope };
        let bucket = bucket_name(envelope.priority, now);
        ensure_bucket(client, paths, &bucket).await?;
        let mut multi = client.new_multi_writer();
        multi.add_delete(&paths.dead_item(dead_id), Some(stat.version))?;
        multi.add_create(
            &format!("{}/item-", paths.bucket(&bucket)),
            &encode(&envelope, &letter.payload),
            &zk::CreateMode::PersistentSequential.with_acls(paths.acl.acls()),
        )?;
        match multi.commit().await {
            Ok(results) => {
                let seq = results
                    .into_iter()
                    .find_map(|r| match r {
                        zk::MultiWriteResult::Create { path, .. } => path.rsplit("item-").next().map(str::to_owned),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Ok(ItemId { bucket, seq });
            }
            Err(zk::MultiWriteError::RequestFailed { source })
                if crate::errors::outcome_unknown(&source) && tokio::time::Instant::now() < deadline =>
            {
                // The next read tells: the letter still there (same version) was not moved.
                sent = Some((bucket, envelope));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(zk::Error::from(err).into()),
        }
    }
}

/// Counts from ZooKeeper: one stat per bucket, plus claims and dead letters.
pub async fn stats(client: &zk::Client, paths: &QueuePaths) -> Result<QueueStats, QueueError> {
    let buckets = match client.list_children(&paths.items()).await {
        Ok(b) => b,
        Err(zk::Error::NoNode) => return Err(QueueError::NotProvisioned(paths.base.clone())),
        Err(err) => return Err(err.into()),
    };
    let now = now_ms();
    let mut stats = QueueStats::default();
    for bucket in buckets {
        let Some((_, due)) = item::parse_bucket(&bucket) else { continue };
        if let Some(stat) = client.check_stat(&paths.bucket(&bucket)).await? {
            let n = stat.num_children as u64;
            stats.depth += n;
            if due > now {
                stats.delayed += n;
            }
        }
    }
    stats.in_flight = client.check_stat(&paths.claims()).await?.map_or(0, |s| s.num_children as u64);
    stats.dead_lettered = client.check_stat(&paths.dead()).await?.map_or(0, |s| s.num_children as u64);
    stats.ready = stats.depth.saturating_sub(stats.delayed + stats.in_flight);
    Ok(stats)
}
