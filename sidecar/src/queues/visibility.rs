//! The visibility timeout of this pod's claims, and extending it.
//!
//! Every delivery the app holds has a deadline ([`Held::visible_until`]). A timer per
//! delivery sleeps until it, looks again (an extend may have moved it), and when it has
//! passed gives the claim back: ready for others at once, or after the queue's retry
//! back-off when it has one. An extend moves the deadline after checking in ZooKeeper
//! that the claim is still this session's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use paddock_recipes::Name;
use paddock_recipes::queue::item::ItemId;
use paddock_recipes::queue::{self, QueueError};
use tokio::time::Instant;

use super::{Inner, QueueService, QueueServiceError};
use crate::events::{Event, now};
use crate::metrics::queue_label;

/// A delivery this pod holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    /// The session generation that claimed it.
    pub generation: u64,
    /// When the visibility timeout gives it back (an extend moves it).
    pub visible_until: Instant,
    /// Deliveries of the item so far, this one included.
    pub attempt: u32,
}

impl QueueService {
    /// Keeps this pod's claim on an item until now + `visibility`; answers that time.
    pub async fn extend(
        &self,
        queue: &Name,
        id: &ItemId,
        visibility: Duration,
    ) -> Result<SystemTime, QueueServiceError> {
        let config = self.config(queue).await?;
        let limit = config.max_visibility();
        if visibility > limit {
            return Err(QueueServiceError::VisibilityTooLong { queue: queue.clone(), asked: visibility, limit });
        }
        let current = self.inner.ctx.session.client()?;
        let key = (queue.clone(), id.clone());
        let ours = |held: &Held| held.generation == current.generation;
        let not_held = || QueueServiceError::NotHeld { queue: queue.clone(), id: id.to_string() };
        if !self.inner.held.lock().expect("not poisoned").get(&key).is_some_and(ours) {
            return Err(not_held());
        }
        // Only this sidecar deletes its claims, but a claim is this session's in
        // ZooKeeper, not in this table: look there before promising more time.
        let claim = self.paths(queue).claim(&id.to_string());
        let stat = current.client.check_stat(&claim).await?;
        if stat.is_none_or(|s| s.ephemeral_owner != current.client.session_id().0) {
            let mut held = self.inner.held.lock().expect("not poisoned");
            if held.get(&key).is_some_and(ours) {
                held.remove(&key);
            }
            return Err(QueueError::ClaimLost(id.to_string()).into());
        }
        let until = Instant::now() + visibility;
        let sooner = match self.inner.held.lock().expect("not poisoned").get_mut(&key) {
            Some(held) if ours(held) => until < std::mem::replace(&mut held.visible_until, until),
            _ => return Err(not_held()),
        };
        if sooner {
            // The running timer sleeps until the later deadline: one more wakes at this one.
            tokio::spawn(enforce_visibility(self.inner.clone(), key, current.generation));
        }
        self.inner.ctx.metrics.queue_extended.get_or_create(&queue_label(queue.as_str())).inc();
        Ok(SystemTime::now() + visibility)
    }
}

/// Gives up a claim the app kept past its visibility deadline (which extends move), unless
/// it was settled or its session ended first.
pub(super) async fn enforce_visibility(inner: Arc<Inner>, key: (Name, ItemId), generation: u64) {
    let held = loop {
        let until = {
            let mut table = inner.held.lock().expect("not poisoned");
            match table.get(&key) {
                Some(held) if held.generation == generation && held.visible_until <= Instant::now() => {
                    break table.remove(&key).expect("just seen");
                }
                Some(held) if held.generation == generation => held.visible_until,
                _ => return,
            }
        };
        tokio::time::sleep_until(until).await;
    };
    let (queue, id) = key;
    inner.ctx.metrics.queue_visibility_timeouts.get_or_create(&queue_label(queue.as_str())).inc();
    inner.time_out(&queue, &id, held).await;
    inner.ctx.events.publish(Event::ClaimLost {
        queue: queue.to_string(),
        id: id.to_string(),
        reason: "visibility-timeout",
        at: now(),
    });
}

impl Inner {
    /// A timed-out claim goes back: after the queue's retry back-off when it has one (a
    /// nack whose history says why), at once otherwise, and also on the last attempt,
    /// whose next claim dead-letters it.
    async fn time_out(self: &Arc<Self>, queue: &Name, id: &ItemId, held: Held) {
        let service = QueueService { inner: self.clone() };
        let backing_off = match service.config(queue).await {
            Ok(config) if config.retry.is_some() && held.attempt < config.max_attempts => Some(config),
            _ => None,
        };
        let current = self.ctx.session.client().ok().filter(|c| c.generation == held.generation);
        if let (Some(config), Some(current)) = (backing_off, current) {
            let paths = self.ctx.layout.queue(&self.ctx.namespace, queue);
            match queue::nack(&current.client, &paths, &config, id, None, Some("visibility timeout")).await {
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(queue = %queue, item = %id, error = %err, "could not delay a timed-out item; giving it back at once")
                }
            }
        }
        self.give_back(queue, id, held.generation, "a timed-out claim").await;
    }
}

/// An item this pod holds, as `GET /status` lists it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    pub queue: String,
    pub id: String,
    pub attempt: u32,
    /// Until the visibility timeout gives it back, unless extended.
    pub visible_for_ms: u64,
}

impl QueueService {
    /// The items this pod's app holds now, oldest deadline first.
    pub fn in_flight(&self) -> Vec<InFlight> {
        let now = Instant::now();
        let held = self.inner.held.lock().expect("not poisoned");
        let mut items: Vec<InFlight> = held
            .iter()
            .map(|((queue, id), held)| InFlight {
                queue: queue.to_string(),
                id: id.to_string(),
                attempt: held.attempt,
                visible_for_ms: held.visible_until.saturating_duration_since(now).as_millis() as u64,
            })
            .collect();
        items.sort_by_key(|item| item.visible_for_ms);
        items
    }
}
