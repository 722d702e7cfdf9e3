//! Taking the next item: the view proposes, an atomic claim decides.
//!
//! [`claim_next`] walks the view in queue order and runs, per candidate, the steps below,
//! each with an outcome of its own type: [`read_candidate`] (found, gone, foreign),
//! dead-lettering when it is past `maxAttempts`, and [`try_claim`] (claimed, lost the
//! race, gone, unknown — the last resolved by [`resolve_unknown`]).
//!
//! Invariants:
//! - A claim is one multi: the item is unchanged since read (version check), the
//!   ephemeral `claims/<id>` is created, and the attempt is counted in `attempts/<id>`.
//!   So at most one live consumer holds an item, and every delivery counts.
//! - A claim whose reply was lost is delivered only if the claim node is found to be
//!   this session's; never is an item left claimed by a live session nobody knows of.

use std::collections::HashSet;

use super::dead::{ClaimCheck, move_to_dead};
use super::item::{Attempts, Envelope, ItemId, decode, now_ms};
use super::view::{self, ConsumerObserver, Next, QueueView};
use super::{Delivery, QueueError};
use crate::config::QueueConfig;
use crate::layout::QueuePaths;
use crate::retry::while_unknown;
use crate::zk;

/// An item as read for a claim or a nack: one multi-read of the item and its history.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: ItemId,
    pub path: String,
    pub version: i32,
    pub envelope: Envelope,
    pub payload: Vec<u8>,
    pub attempts: Attempts,
    /// None when `attempts/<id>` does not exist yet (never delivered since enqueue/move).
    pub attempts_version: Option<i32>,
}

/// What reading a candidate found.
#[derive(Debug)]
pub enum Read {
    Found(Box<Candidate>),
    /// Acked or moved since the view listed it.
    Gone,
    /// Data that is not a Paddock item.
    Foreign,
}

/// Reads an item and its history in one multi-read.
pub async fn read_candidate(client: &zk::Client, paths: &QueuePaths, id: &ItemId) -> Result<Read, QueueError> {
    let mut reads = read_candidates(client, paths, std::slice::from_ref(id)).await?;
    Ok(reads.pop().unwrap_or(Read::Gone))
}

/// Most candidates read in one multi-read: its answer holds their payloads (up to
/// [`super::item::MAX_PAYLOAD_BYTES`] each), so a chunk's answer stays within tens of MB.
pub(super) const READ_CHUNK: usize = 32;

/// Reads items and their histories, many to a multi-read: one request per
/// [`READ_CHUNK`] candidates (the chunks go out together), not one each. In `ids`' order.
pub async fn read_candidates(client: &zk::Client, paths: &QueuePaths, ids: &[ItemId]) -> Result<Vec<Read>, QueueError> {
    let chunks = ids.chunks(READ_CHUNK).map(|chunk| async move {
        // A read is retried when the connection drops under it (the session moving to
        // another server): it changes nothing.
        let results = while_unknown(client, "reading candidates", |_| async {
            let mut reader = client.new_multi_reader();
            for id in chunk {
                reader.add_get_data(&id.path(paths))?;
                reader.add_get_data(&paths.attempts_of(&id.to_string()))?;
            }
            reader.commit().await
        })
        .await?;
        let mut results = results.into_iter();
        Ok::<_, QueueError>(
            chunk.iter().map(|id| read_of(id, paths, results.next(), results.next())).collect::<Vec<_>>(),
        )
    });
    let mut reads = Vec::with_capacity(ids.len());
    for chunk in futures::future::join_all(chunks).await {
        reads.extend(chunk?);
    }
    Ok(reads)
}

/// A candidate from its item's and its history's reads.
fn read_of(
    id: &ItemId,
    paths: &QueuePaths,
    item: Option<zk::MultiReadResult>,
    history: Option<zk::MultiReadResult>,
) -> Read {
    let (data, stat) = match item {
        Some(zk::MultiReadResult::Data { data, stat }) => (data, stat),
        _ => return Read::Gone,
    };
    let Some((envelope, payload)) = decode(&data) else { return Read::Foreign };
    let (attempts, attempts_version) = match history {
        Some(zk::MultiReadResult::Data { data, stat }) => {
            (serde_json::from_slice::<Attempts>(&data).unwrap_or_default(), Some(stat.version))
        }
        // A moved item carries its history until its first delivery under the new id.
        _ => (envelope.carried.clone().unwrap_or_default(), None),
    };
    Read::Found(Box::new(Candidate {
        id: id.clone(),
        path: id.path(paths),
        version: stat.version,
        payload: payload.to_vec(),
        envelope,
        attempts,
        attempts_version,
    }))
}

/// What one claim multi did.
#[derive(Debug)]
pub enum ClaimOutcome {
    Claimed(Delivery),
    /// Another consumer holds the item, or its history moved on since it was read.
    LostRace,
    /// Acked or moved since it was read.
    Gone,
    /// The reply was lost: the claim may have been applied (see [`resolve_unknown`]);
    /// the delivery it would be.
    Unknown {
        delivery: Delivery,
        error: zk::Error,
    },
}

/// A candidate with this delivery counted: what its claim writes, and the delivery it
/// makes.
pub(super) struct Prepared {
    path: String,
    version: i32,
    claim: Vec<u8>,
    history: Vec<u8>,
    attempts_version: Option<i32>,
    pub delivery: Delivery,
}

impl Prepared {
    pub fn new(candidate: Candidate, pod: &str) -> Self {
        let Candidate { id, path, version, envelope, payload, mut attempts, attempts_version } = candidate;
        let now = now_ms();
        attempts.record(pod, now);
        let claim = serde_json::to_vec(&serde_json::json!({ "pod": pod, "attempt": attempts.attempt, "atMs": now }))
            .expect("claim serializes");
        let history = serde_json::to_vec(&attempts).expect("attempts serialize");
        let delivery =
            Delivery { id, attempt: attempts.attempt, envelope, payload, claim_proved_at: tokio::time::Instant::now() };
        Self { path, version, claim, history, attempts_version, delivery }
    }

    /// Adds the claim's writes to `multi`: the item is unchanged (version), `claims/<id>`
    /// made, the attempt counted. Returns how many.
    pub fn add_to(&self, multi: &mut zk::MultiWriter<'_>, paths: &QueuePaths) -> Result<usize, zk::Error> {
        let id = self.delivery.id.to_string();
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(paths.acl.acls());
        multi.add_check_version(&self.path, self.version)?;
        multi.add_create(&paths.claim(&id), &self.claim, &ephemeral)?;
        match self.attempts_version {
            Some(version) => multi.add_set_data(&paths.attempts_of(&id), &self.history, Some(version))?,
            None => multi.add_create(
                &paths.attempts_of(&id),
                &self.history,
                &zk::CreateMode::Persistent.with_acls(paths.acl.acls()),
            )?,
        }
        Ok(3)
    }
}

/// Claims `candidate` for `pod`: one multi (see the module's invariants).
pub async fn try_claim(
    client: &zk::Client,
    paths: &QueuePaths,
    candidate: Candidate,
    pod: &str,
) -> Result<ClaimOutcome, QueueError> {
    let mut prepared = Prepared::new(candidate, pod);
    let mut multi = client.new_multi_writer();
    prepared.add_to(&mut multi, paths)?;
    prepared.delivery.claim_proved_at = tokio::time::Instant::now();
    let delivery = prepared.delivery;
    match multi.commit().await {
        Ok(_) => Ok(ClaimOutcome::Claimed(delivery)),
        Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NoNode, .. }) => Ok(ClaimOutcome::Gone),
        Err(zk::MultiWriteError::OperationFailed { source: zk::Error::NodeExists | zk::Error::BadVersion, .. }) => {
            Ok(ClaimOutcome::LostRace)
        }
        Err(zk::MultiWriteError::RequestFailed { source }) if crate::retry::outcome_unknown(&source) => {
            Ok(ClaimOutcome::Unknown { delivery, error: source })
        }
        Err(err) => Err(zk::Error::from(err).into()),
    }
}

/// After a claim whose reply was lost: waits for the connection (for as long as the
/// session may live), then tells whether the claim node exists and is this session's.
/// If it is, the delivery, its claim proved by that read; if not, the claim's error
/// (the claim was not applied, or the session is gone).
pub async fn resolve_unknown(
    client: &zk::Client,
    paths: &QueuePaths,
    mut delivery: Delivery,
    err: zk::Error,
) -> Result<Delivery, QueueError> {
    let claim_path = paths.claim(&delivery.id.to_string());
    let found = while_unknown(client, "checking a claim", |_| async {
        let sent_at = tokio::time::Instant::now();
        client.sync(&claim_path).await?;
        let stat = client.check_stat(&claim_path).await?;
        Ok::<_, zk::Error>(stat.is_some_and(|s| s.ephemeral_owner == client.session_id().0).then_some(sent_at))
    })
    .await?;
    match found {
        Some(proved_at) => {
            delivery.claim_proved_at = proved_at;
            Ok(delivery)
        }
        None => Err(err.into()),
    }
}

/// Claims the next ready item for `pod`, or None when nothing is ready. Items past
/// `max_attempts` deliveries are dead-lettered on the way.
pub async fn claim_next(
    client: &zk::Client,
    paths: &QueuePaths,
    view: &QueueView,
    config: &QueueConfig,
    pod: &str,
    observer: &dyn ConsumerObserver,
) -> Result<Option<Delivery>, QueueError> {
    let mut skip = HashSet::new();
    // Strict queue order until we lose a race; then a random pick near the head.
    let mut pick = 0usize;
    while let Some(id) = next_in_view(client, paths, view, &skip, pick, observer).await? {
        let _reservation = Reservation { view, id: id.clone() };
        let read = read_candidate(client, paths, &id).await?;
        observer.reads(1);
        let candidate = match read {
            Read::Found(candidate) => candidate,
            Read::Gone => {
                view.forget(&id);
                continue;
            }
            Read::Foreign => {
                tracing::warn!(item = %id, "not a Paddock item; skipping it");
                skip.insert(id);
                continue;
            }
        };
        if candidate.attempts.attempt >= config.max_attempts {
            dead_letter_exhausted(client, paths, view, &candidate, config, observer).await;
            skip.insert(id);
            continue;
        }
        match try_claim(client, paths, *candidate, pod).await? {
            ClaimOutcome::Claimed(delivery) => {
                view.mark_claimed(&id);
                return Ok(Some(delivery));
            }
            ClaimOutcome::Gone => view.forget(&id),
            ClaimOutcome::LostRace => {
                view.mark_claimed(&id);
                skip.insert(id);
                pick = 1 + (uuid::Uuid::new_v4().as_u128() % view::PICK_WINDOW as u128) as usize;
            }
            ClaimOutcome::Unknown { delivery, error } => match resolve_unknown(client, paths, delivery, error).await {
                Ok(delivery) => {
                    view.mark_claimed(&id);
                    return Ok(Some(delivery));
                }
                // Not applied, and the session is back: the item is there to claim again.
                Err(_) if client.state() == zk::SessionState::SyncConnected => {}
                Err(err) => return Err(err),
            },
        }
    }
    Ok(None)
}

/// The next candidate in the view, loading the buckets it reaches; None when nothing is
/// ready.
pub(super) async fn next_in_view(
    client: &zk::Client,
    paths: &QueuePaths,
    view: &QueueView,
    skip: &HashSet<ItemId>,
    pick: usize,
    observer: &dyn ConsumerObserver,
) -> Result<Option<ItemId>, QueueError> {
    loop {
        match view.next(skip, pick) {
            Next::Item(id) => return Ok(Some(id)),
            Next::Empty { .. } => return Ok(None),
            Next::Load(bucket) => {
                view.loading(&bucket);
                let listed =
                    while_unknown(client, "listing a bucket", |_| client.list_children(&paths.bucket(&bucket)));
                let nodes = match listed.await {
                    Ok(nodes) => Some(nodes),
                    Err(zk::Error::NoNode) => None,
                    Err(err) => return Err(err.into()),
                };
                observer.reads(1);
                view.loaded(&bucket, nodes);
            }
        }
    }
}

/// Moves an item delivered `maxAttempts` times to the dead letters, unless someone holds
/// it on its last attempt (then it is theirs to ack, nack or lose).
pub(super) async fn dead_letter_exhausted(
    client: &zk::Client,
    paths: &QueuePaths,
    view: &QueueView,
    candidate: &Candidate,
    config: &QueueConfig,
    observer: &dyn ConsumerObserver,
) {
    let id = &candidate.id;
    let reason =
        format!("delivered {} times without an ack (maxAttempts {})", candidate.attempts.attempt, config.max_attempts);
    match move_to_dead(client, paths, candidate, &reason, ClaimCheck::NoneHeld).await {
        Ok(()) => {
            view.forget(id);
            observer.dead_lettered();
            tracing::info!(item = %id, reason, "dead-lettered");
        }
        Err(QueueError::ZooKeeper(zk::Error::NodeExists)) => view.mark_claimed(id),
        Err(err) => tracing::debug!(item = %id, error = %err, "not dead-lettered; skipping it"),
    }
}

/// Holds an item reserved in the view while this consumer tries to claim it.
pub(super) struct Reservation<'a> {
    pub view: &'a QueueView,
    pub id: ItemId,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.view.unreserve(&self.id);
    }
}
