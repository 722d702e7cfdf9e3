//! Claiming several items at once: the candidates are read together (a multi-read per
//! 32), and their claims go in one multi.
//!
//! A multi is all or none, so a batch that meets a claim made meanwhile by another
//! consumer fails as a whole. The failing operation names the item; it is dropped, and so
//! are the others this consumer's view has meanwhile seen claimed (ZooKeeper sends a
//! session the watch events of the transactions that beat its multi before the multi's
//! reply), and the rest is sent again. A batch never holds two items of one group: the
//! view offers only a group's head, once.

use std::collections::HashSet;

use super::claim::{
    Prepared, READ_CHUNK, Read, Reservation, dead_letter_exhausted, next_in_view, read_candidates, resolve_unknown,
};
use super::view::{ConsumerObserver, QueueView};
use super::{Delivery, QueueError};
use crate::config::QueueConfig;
use crate::layout::QueuePaths;
use crate::zk;

/// Rounds of picking candidates, and multis per round, before a batch settles for what
/// it has.
const ROUNDS: usize = 4;
const COMMITS_PER_ROUND: usize = 8;

/// Claims up to `max` ready items for `pod`, in queue order, in as few multis as the
/// races with other consumers allow. Empty when nothing is ready.
pub async fn claim_batch(
    client: &zk::Client,
    paths: &QueuePaths,
    view: &QueueView,
    config: &QueueConfig,
    pod: &str,
    max: usize,
    observer: &dyn ConsumerObserver,
) -> Result<Vec<Delivery>, QueueError> {
    let mut delivered = Vec::new();
    let mut skip = HashSet::new();
    for _ in 0..ROUNDS {
        let want = max - delivered.len();
        if want == 0 {
            break;
        }
        let mut reservations = Vec::with_capacity(want);
        while reservations.len() < want {
            match next_in_view(client, paths, view, &skip, 0, observer).await? {
                Some(id) => reservations.push(Reservation { view, id }),
                None => break,
            }
        }
        if reservations.is_empty() {
            break;
        }
        let prepared = read_all(client, paths, view, config, pod, &reservations, &mut skip, observer).await?;
        match commit(client, paths, view, prepared, &mut skip).await {
            Ok(claimed) => delivered.extend(claimed),
            // What is claimed is the caller's to hand out.
            Err(err) if !delivered.is_empty() => {
                tracing::debug!(error = %err, "a batch's claim failed; keeping what is claimed");
                break;
            }
            Err(err) => return Err(err),
        }
    }
    Ok(delivered)
}

/// Reads the reserved candidates (the reads go out together) and prepares the claims of
/// those that can be claimed; dead-letters those past `maxAttempts`.
#[allow(clippy::too_many_arguments)]
async fn read_all(
    client: &zk::Client,
    paths: &QueuePaths,
    view: &QueueView,
    config: &QueueConfig,
    pod: &str,
    reservations: &[Reservation<'_>],
    skip: &mut HashSet<super::item::ItemId>,
    observer: &dyn ConsumerObserver,
) -> Result<Vec<Prepared>, QueueError> {
    let ids: Vec<_> = reservations.iter().map(|r| r.id.clone()).collect();
    let reads = read_candidates(client, paths, &ids).await?;
    observer.reads(ids.len().div_ceil(READ_CHUNK) as u64);
    let mut prepared = Vec::with_capacity(reads.len());
    for (reservation, read) in reservations.iter().zip(reads) {
        let id = &reservation.id;
        match read {
            Read::Found(candidate) if candidate.attempts.attempt >= config.max_attempts => {
                dead_letter_exhausted(client, paths, view, &candidate, config, observer).await;
                skip.insert(id.clone());
            }
            Read::Found(candidate) => prepared.push(Prepared::new(*candidate, pod)),
            Read::Gone => view.forget(id),
            Read::Foreign => {
                tracing::warn!(item = %id, "not a Paddock item; skipping it");
                skip.insert(id.clone());
            }
        }
    }
    Ok(prepared)
}

/// Sends the claims in one multi; on a lost race drops the item it names (and those the
/// view has seen claimed since) and sends the rest again.
async fn commit(
    client: &zk::Client,
    paths: &QueuePaths,
    view: &QueueView,
    mut prepared: Vec<Prepared>,
    skip: &mut HashSet<super::item::ItemId>,
) -> Result<Vec<Delivery>, QueueError> {
    for _ in 0..COMMITS_PER_ROUND {
        if prepared.is_empty() {
            break;
        }
        let mut multi = client.new_multi_writer();
        // The first operation index of each candidate's writes.
        let mut starts = Vec::with_capacity(prepared.len());
        let mut ops = 0;
        for claim in &prepared {
            starts.push(ops);
            ops += claim.add_to(&mut multi, paths)?;
        }
        let sent_at = tokio::time::Instant::now();
        match multi.commit().await {
            Ok(_) => return Ok(claimed(view, prepared, sent_at)),
            Err(zk::MultiWriteError::OperationFailed { index, source }) => {
                let lost = starts.partition_point(|&start| start <= index).saturating_sub(1);
                let id = prepared.remove(lost).delivery.id;
                match source {
                    zk::Error::NoNode => view.forget(&id),
                    _ => view.mark_claimed(&id),
                }
                skip.insert(id);
                // Let the view apply the events that came before this reply.
                tokio::task::yield_now().await;
                prepared.retain(|claim| view.is_offered(&claim.delivery.id));
            }
            Err(zk::MultiWriteError::RequestFailed { source }) if crate::retry::outcome_unknown(&source) => {
                // All or none: the first claim tells. Not applied, with the session back:
                // the same claims are sent again (their reads still hold).
                let first = prepared[0].delivery.clone();
                match resolve_unknown(client, paths, first, source).await {
                    Ok(proved) => return Ok(claimed(view, prepared, proved.claim_proved_at)),
                    Err(_) if client.state() == zk::SessionState::SyncConnected => continue,
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(zk::Error::from(err).into()),
        }
    }
    Ok(Vec::new())
}

fn claimed(view: &QueueView, prepared: Vec<Prepared>, proved_at: tokio::time::Instant) -> Vec<Delivery> {
    prepared
        .into_iter()
        .map(|claim| {
            view.mark_claimed(&claim.delivery.id);
            Delivery { claim_proved_at: proved_at, ..claim.delivery }
        })
        .collect()
}
