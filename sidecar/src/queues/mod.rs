//! This pod's side of the work queues: enqueue, hand out items (long-poll over a
//! watch-fed view), ack, nack, the visibility timeout, and giving back what the app has
//! not acked when the session ends or the sidecar stops.
//!
//! Invariants:
//! - A delivery is ours while its claim is: same session generation, visibility timeout
//!   not passed. Ack and nack of anything else are refused (409), so an app learns that
//!   its item was (or may be) redelivered elsewhere.
//! - The visibility timeout is enforced here, by the sidecar that holds the claim: it
//!   deletes its own claim, so the item is ready for others without any central reaper
//!   (`visibility`, which also extends it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_recipes::queue::item::{ItemId, MAX_PAYLOAD_BYTES, now_ms};
use paddock_recipes::queue::view::{ConsumerObserver, Next, QueueView};
use paddock_recipes::queue::{self, Delivery, Enqueued, NewItem, QueueError, QueueStats};
use paddock_recipes::session::{Current, SessionError};
use paddock_recipes::{Name, QueueConfig, SessionEvent, zk};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config_cache::{CacheError, ConfigCache};
use crate::context::ServiceContext;
use crate::events::{Event, now};
use crate::metrics::{Metrics, queue_label};

mod inspect;
mod settle;
mod visibility;

use self::visibility::{Held, enforce_visibility};

#[derive(Debug, thiserror::Error)]
pub enum QueueServiceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("payload of {size} bytes is over the limit of {limit} bytes for queue {queue}")]
    PayloadTooLarge { queue: Name, size: usize, limit: usize },
    #[error("item {id} of queue {queue} is not held by this pod")]
    NotHeld { queue: Name, id: String },
    #[error("the sidecar is shutting down")]
    ShuttingDown,
    #[error("a visibility of {asked:?} is over queue {queue}'s maxVisibility of {limit:?}")]
    VisibilityTooLong { queue: Name, asked: Duration, limit: Duration },
    #[error("ZooKeeper: {0}")]
    ZooKeeper(#[from] zk::Error),
}

/// An item handed to the app.
#[derive(Debug, Clone)]
pub struct Handed {
    pub queue: Name,
    pub delivery: Delivery,
}

#[derive(Clone)]
pub struct QueueService {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: ServiceContext,
    views: Mutex<HashMap<Name, QueueView>>,
    configs: ConfigCache<QueueConfig>,
    /// Deliveries this pod holds.
    held: Mutex<HashMap<(Name, ItemId), Held>>,
    shutdown: CancellationToken,
}

struct Observer<'a>(&'a Metrics, &'a Name);

impl ConsumerObserver for Observer<'_> {
    fn reads(&self, count: u64) {
        self.0.queue_zk_reads.inc_by(count);
    }

    fn dead_lettered(&self) {
        self.0.queue_dead_lettered.get_or_create(&queue_label(self.1.as_str())).inc();
    }
}

/// The view's reads, counted into the same metric.
struct ViewObserver(Arc<Metrics>);

impl ConsumerObserver for ViewObserver {
    fn reads(&self, count: u64) {
        self.0.queue_zk_reads.inc_by(count);
    }
}

impl QueueService {
    pub fn new(ctx: ServiceContext, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            ctx,
            views: Mutex::default(),
            configs: ConfigCache::default(),
            held: Mutex::default(),
            shutdown,
        });
        tokio::spawn(follow_session(inner.clone()));
        Self { inner }
    }

    pub fn namespace(&self) -> &Name {
        &self.inner.ctx.namespace
    }

    /// The session for a request, waiting briefly for one that is reconnecting.
    async fn current(&self) -> Result<Current, SessionError> {
        self.inner.ctx.current().await
    }

    /// The config of a queue, cached until its znode changes; 404-worthy when missing.
    pub async fn config(&self, queue: &Name) -> Result<QueueConfig, QueueServiceError> {
        let current = self.current().await?;
        let path = self.paths(queue).base;
        let metrics = &self.inner.ctx.metrics;
        let parse = |path: &str, data: &[u8]| {
            QueueConfig::parse_znode(path, data).map(|parsed| {
                metrics.unknown_config_fields("queue", path, &parsed.unknown_fields);
                parsed.config
            })
        };
        match self.inner.configs.get(&current, &path, parse).await {
            Ok(config) => Ok(config),
            Err(CacheError::NoNode) => Err(QueueError::NotProvisioned(path).into()),
            Err(CacheError::Invalid(e)) => Err(QueueError::Config(e).into()),
            Err(CacheError::ZooKeeper(e)) => Err(e.into()),
        }
    }

    /// The largest payload the queue accepts.
    pub fn payload_limit(config: &QueueConfig) -> usize {
        config.max_payload_bytes.map_or(MAX_PAYLOAD_BYTES, |l| (l as usize).min(MAX_PAYLOAD_BYTES))
    }

    fn paths(&self, queue: &Name) -> paddock_recipes::layout::QueuePaths {
        self.inner.ctx.layout.queue(&self.inner.ctx.namespace, queue)
    }

    /// Enqueues items, each with its idempotency key or none (see `queue::dedup`).
    pub async fn enqueue(
        &self,
        queue: &Name,
        items: Vec<NewItem>,
        keys: Vec<Option<String>>,
    ) -> Result<Vec<Enqueued>, QueueServiceError> {
        let config = self.config(queue).await?;
        let limit = Self::payload_limit(&config);
        if let Some(item) = items.iter().find(|i| i.payload.len() > limit) {
            return Err(QueueServiceError::PayloadTooLarge { queue: queue.clone(), size: item.payload.len(), limit });
        }
        let client = self.current().await?.client;
        let paths = self.paths(queue);
        let enqueued = if keys.iter().all(Option::is_none) {
            let ids = queue::enqueue(&client, &paths, &items).await?;
            ids.into_iter().map(|id| Enqueued { id, duplicate: false }).collect()
        } else {
            queue::enqueue_deduplicated(&client, &paths, &items, &keys, config.deduplication_window()).await?
        };
        let label = queue_label(queue.as_str());
        let duplicates = enqueued.iter().filter(|e| e.duplicate).count() as u64;
        self.inner.ctx.metrics.queue_enqueued.get_or_create(&label).inc_by(enqueued.len() as u64 - duplicates);
        self.inner.ctx.metrics.queue_duplicates.get_or_create(&label).inc_by(duplicates);
        Ok(enqueued)
    }

    fn view(&self, queue: &Name) -> QueueView {
        self.inner
            .views
            .lock()
            .expect("not poisoned")
            .entry(queue.clone())
            .or_insert_with(|| {
                QueueView::start(
                    self.inner.ctx.session.clone(),
                    self.paths(queue),
                    Arc::new(ViewObserver(self.inner.ctx.metrics.clone())),
                )
            })
            .clone()
    }

    /// Sets the per-queue gauges from the views of the queues this pod consumes.
    pub fn report_gauges(&self) {
        let now = paddock_recipes::queue::item::now_ms();
        let metrics = &self.inner.ctx.metrics;
        for (queue, view) in self.inner.views.lock().expect("not poisoned").iter() {
            let figures = view.figures(now);
            let label = queue_label(queue.as_str());
            metrics.queue_ready_items.get_or_create(&label).set(figures.ready as i64);
            metrics.queue_in_flight_items.get_or_create(&label).set(figures.in_flight as i64);
            metrics.queue_delayed_items.get_or_create(&label).set(figures.delayed as i64);
            metrics.queue_dead_letters.get_or_create(&label).set(figures.dead as i64);
            let age_ms = figures.oldest_ready_due_ms.map_or(0, |due| now.saturating_sub(due));
            metrics.queue_oldest_ready_age_seconds.get_or_create(&label).set(age_ms as f64 / 1000.0);
        }
    }

    /// Hands out up to `max` items, waiting up to `wait` for the first one.
    pub async fn next(&self, queue: &Name, wait: Duration, max: usize) -> Result<Vec<Handed>, QueueServiceError> {
        let claimed = self.claim_up_to(queue, wait, max).await?;
        Ok(self.fresh_only(claimed))
    }

    /// Keeps the deliveries whose claims are still certainly held (see
    /// [`Delivery::claim_is_fresh`]). The others were claimed before this process was
    /// stopped or starved for half a session: the session may be gone, the item with
    /// another consumer (perhaps acked there already), so the app is not given it. The
    /// claim is given back if it still stands.
    fn fresh_only(&self, claimed: Vec<Handed>) -> Vec<Handed> {
        let current = self.inner.ctx.session.client().ok();
        let (fresh, stale): (Vec<_>, Vec<_>) = claimed.into_iter().partition(|handed| {
            current.as_ref().is_some_and(|c| handed.delivery.claim_is_fresh(c.client.session_timeout()))
        });
        for Handed { queue, delivery } in stale {
            let key = (queue.clone(), delivery.id.clone());
            let Some(held) = self.inner.held.lock().expect("not poisoned").remove(&key) else { continue };
            tracing::warn!(
                queue = %queue,
                item = %delivery.id,
                claimed_ago = ?delivery.claim_proved_at.elapsed(),
                "a claim older than half the session timeout (the sidecar was stopped or starved) is not handed out"
            );
            self.inner.ctx.metrics.queue_claims_stale.get_or_create(&queue_label(queue.as_str())).inc();
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.give_back(&queue, &delivery.id, held.generation, "a stale claim").await });
        }
        fresh
    }

    async fn claim_up_to(&self, queue: &Name, wait: Duration, max: usize) -> Result<Vec<Handed>, QueueServiceError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(QueueServiceError::ShuttingDown);
        }
        let config = self.config(queue).await?;
        let view = self.view(queue);
        let deadline = Instant::now() + wait;
        // A fresh view is listed first (also for `wait=0`, up to a few seconds), so a
        // consumer is not told "empty" about a queue that has items.
        let synced_by = Instant::now() + wait.max(Duration::from_secs(5));
        while !view.is_synced() {
            let changed = view.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if view.is_synced() {
                break;
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(synced_by) => return Ok(Vec::new()),
                _ = self.inner.shutdown.cancelled() => return Err(QueueServiceError::ShuttingDown),
            }
        }
        let mut handed = Vec::new();
        loop {
            // Register interest before looking, so a change in between is not missed.
            let changed = view.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next_due = if view.is_synced() {
                if view.is_missing() {
                    return Err(QueueError::NotProvisioned(self.paths(queue).base).into());
                }
                while handed.len() < max {
                    match self.claim_some(queue, &view, &config, max - handed.len()).await {
                        Ok(items) if items.is_empty() => break,
                        Ok(items) => handed.extend(items),
                        // What is claimed is this app's to process: hand it out rather than
                        // leave it claimed, unseen, until the visibility timeout.
                        Err(err) if !handed.is_empty() => {
                            tracing::warn!(queue = %queue, claimed = handed.len(), error = %err, "claiming more items failed; handing out those claimed");
                            return Ok(handed);
                        }
                        Err(err) => return Err(err),
                    }
                }
                if !handed.is_empty() {
                    return Ok(handed);
                }
                match view.next(&HashSet::new(), 0) {
                    Next::Empty { next_due_ms } => next_due_ms,
                    Next::Item(id) => {
                        view.unreserve(&id); // became ready meanwhile: go claim it
                        continue;
                    }
                    Next::Load(_) => continue,
                }
            } else {
                None
            };
            let now = now_ms();
            let due_in = next_due.map(|d| Duration::from_millis(d.saturating_sub(now) + 1));
            let wake_at = due_in.map_or(deadline, |d| deadline.min(Instant::now() + d));
            if Instant::now() >= deadline {
                return Ok(handed);
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = self.inner.shutdown.cancelled() => return Err(QueueServiceError::ShuttingDown),
            }
        }
    }

    /// Claims up to `max` items: one by one's claim for one, a batch's multi for more.
    async fn claim_some(
        &self,
        queue: &Name,
        view: &QueueView,
        config: &QueueConfig,
        max: usize,
    ) -> Result<Vec<Handed>, QueueServiceError> {
        let current = self.current().await?;
        let observer = Observer(&self.inner.ctx.metrics, queue);
        let paths = self.paths(queue);
        let pod = &self.inner.ctx.pod_name;
        let deliveries = if max == 1 {
            queue::claim_next(&current.client, &paths, view, config, pod, &observer).await?.into_iter().collect()
        } else {
            queue::claim_batch(&current.client, &paths, view, config, pod, max, &observer).await?
        };
        Ok(deliveries.into_iter().map(|delivery| self.hold(queue, config, current.generation, delivery)).collect())
    }

    /// Keeps a claimed delivery as this pod's until acked, nacked or timed out.
    fn hold(&self, queue: &Name, config: &QueueConfig, generation: u64, delivery: Delivery) -> Handed {
        let key = (queue.clone(), delivery.id.clone());
        let held =
            Held { generation, visible_until: Instant::now() + config.visibility_timeout, attempt: delivery.attempt };
        self.inner.held.lock().expect("not poisoned").insert(key.clone(), held);
        let label = queue_label(queue.as_str());
        self.inner.ctx.metrics.queue_delivered.get_or_create(&label).inc();
        if delivery.attempt > 1 {
            self.inner.ctx.metrics.queue_redelivered.get_or_create(&label).inc();
        }
        let waited = now_ms().saturating_sub(delivery.envelope.due_ms.max(delivery.envelope.enqueued_at_ms));
        self.inner.ctx.metrics.queue_wait_seconds.observe(waited as f64 / 1000.0);
        tokio::spawn(enforce_visibility(self.inner.clone(), key, generation));
        Handed { queue: queue.clone(), delivery }
    }

    /// Takes a delivery out of `held` if this pod holds it in the current session.
    fn take_held(&self, queue: &Name, id: &ItemId) -> Result<(zk::Client, Held), QueueServiceError> {
        let key = (queue.clone(), id.clone());
        let current = self.inner.ctx.session.client()?;
        let mut held = self.inner.held.lock().expect("not poisoned");
        match held.get(&key) {
            Some(h) if h.generation == current.generation => {
                let h = *h;
                held.remove(&key);
                Ok((current.client, h))
            }
            _ => Err(QueueServiceError::NotHeld { queue: queue.clone(), id: id.to_string() }),
        }
    }

    /// Puts back a delivery whose ack or nack failed. Its visibility timer may have ended
    /// meanwhile (it found the delivery taken), so a new one watches it.
    fn put_back(&self, queue: &Name, id: &ItemId, held: Held) {
        let key = (queue.clone(), id.clone());
        self.inner.held.lock().expect("not poisoned").insert(key.clone(), held);
        tokio::spawn(enforce_visibility(self.inner.clone(), key, held.generation));
    }

    pub async fn stats(&self, queue: &Name) -> Result<(QueueStats, QueueConfig), QueueServiceError> {
        let config = self.config(queue).await?;
        let client = self.inner.ctx.session.client()?.client;
        Ok((queue::stats(&client, &self.paths(queue)).await?, config))
    }

    /// The queue's groups with items and its longest group (one read per group).
    pub async fn group_stats(&self, queue: &Name) -> Result<queue::GroupStats, QueueServiceError> {
        let client = self.inner.ctx.session.client()?.client;
        Ok(queue::group_stats(&client, &self.paths(queue)).await?)
    }

    pub async fn dead_letters(
        &self,
        queue: &Name,
        limit: usize,
    ) -> Result<Vec<queue::StoredDeadLetter>, QueueServiceError> {
        let client = self.inner.ctx.session.client()?.client;
        Ok(queue::dead_letters(&client, &self.paths(queue), limit).await?)
    }

    pub async fn dead_letter(&self, queue: &Name, dead_id: &str) -> Result<queue::StoredDeadLetter, QueueServiceError> {
        let client = self.inner.ctx.session.client()?.client;
        Ok(queue::dead_letter(&client, &self.paths(queue), dead_id).await?)
    }

    pub async fn requeue_dead(&self, queue: &Name, dead_id: &str) -> Result<ItemId, QueueServiceError> {
        let client = self.inner.ctx.session.client()?.client;
        Ok(queue::requeue_dead(&client, &self.paths(queue), dead_id).await?)
    }

    /// Gives back every item the app has not acked (SIGTERM): ready for others at once.
    pub async fn return_all(&self) {
        let held: Vec<(Name, ItemId)> = self.inner.held.lock().expect("not poisoned").drain().map(|(k, _)| k).collect();
        let Ok(current) = self.inner.ctx.session.client() else { return };
        for (queue, id) in held {
            match queue::release_claim(&current.client, &self.paths(&queue), &id).await {
                Ok(()) => tracing::info!(queue = %queue, item = %id, "returned unacked item at shutdown"),
                Err(err) => tracing::warn!(queue = %queue, item = %id, error = %err, "could not return item"),
            }
        }
    }
}

impl Inner {
    /// Deletes this pod's claim on an item if the session that made it (`generation`) is
    /// still the current one; with another session, the claim went with the old one.
    async fn give_back(&self, queue: &Name, id: &ItemId, generation: u64, what: &str) {
        let Ok(current) = self.ctx.session.client() else { return };
        if current.generation != generation {
            return;
        }
        let paths = self.ctx.layout.queue(&self.ctx.namespace, queue);
        if let Err(err) = queue::release_claim(&current.client, &paths, id).await {
            tracing::warn!(queue = %queue, item = %id, error = %err, "could not give back {what}");
        }
    }
}

/// When the session ends, every claim it held is gone: tell the app.
async fn follow_session(inner: Arc<Inner>) {
    let mut events = inner.ctx.session.subscribe();
    loop {
        match events.recv().await {
            Ok(SessionEvent::Expired { generation, .. }) => {
                let lost: Vec<(Name, ItemId)> = {
                    let mut held = inner.held.lock().expect("not poisoned");
                    let lost =
                        held.iter().filter(|(_, h)| h.generation <= generation).map(|(k, _)| k.clone()).collect();
                    held.retain(|_, h| h.generation > generation);
                    lost
                };
                for (queue, id) in lost {
                    inner.ctx.events.publish(Event::ClaimLost {
                        queue: queue.to_string(),
                        id: id.to_string(),
                        reason: "session-expired",
                        at: now(),
                    });
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
