//! Prometheus metrics, served at `/metrics`. The names here are the ones the README lists.
//!
//! Counters and histograms count as things happen; the gauges of what is there now (locks
//! held and for how long, what a queue's view holds, the session) are set from the
//! services' own state when Prometheus scrapes (see `api::metrics`), without a read of
//! ZooKeeper. Labels are lock and queue names only (never owners or item ids), so the
//! number of series is bounded by the resources the pod uses.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A gauge of seconds.
pub type Seconds = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Histogram buckets of lock hold times: 10 ms to about 1.5 hours.
fn hold_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    pub queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabel {
    pub lock: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionEventLabel {
    /// `established`, `suspended`, `reconnected` or `expired`.
    pub event: String,
}

/// A config key this version does not know, in a lock's or a queue's config.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnknownFieldLabel {
    /// `lock` or `queue`.
    pub kind: String,
    pub field: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub lock_acquires: Counter,
    pub lock_timeouts: Counter,
    pub lock_releases: Counter,
    pub lock_losses: Family<ReasonLabel, Counter>,
    pub lock_wait_seconds: Histogram,
    pub locks_held: Gauge,
    pub lock_wakeups: Counter,
    pub lock_observer_reads: Counter,
    /// Acquires due a lock that a lock-delay held back (once each).
    pub lock_delays: Counter,
    /// Per lock: grants not handed out because they no longer stood after a stall.
    pub lock_grants_stale: Family<LockLabel, Counter>,
    /// Per lock: how long the longest current hold of this pod has lasted.
    pub lock_held_seconds: Family<LockLabel, Seconds>,
    /// Per lock: how long holds lasted, observed at release or loss.
    pub lock_hold_seconds: Family<LockLabel, Histogram, fn() -> Histogram>,
    pub queue_enqueued: Family<QueueLabel, Counter>,
    pub queue_delivered: Family<QueueLabel, Counter>,
    pub queue_acked: Family<QueueLabel, Counter>,
    pub queue_nacked: Family<QueueLabel, Counter>,
    pub queue_redelivered: Family<QueueLabel, Counter>,
    pub queue_dead_lettered: Family<QueueLabel, Counter>,
    pub queue_claims_stale: Family<QueueLabel, Counter>,
    pub queue_extended: Family<QueueLabel, Counter>,
    pub queue_duplicates: Family<QueueLabel, Counter>,
    pub queue_purged: Family<QueueLabel, Counter>,
    pub queue_visibility_timeouts: Family<QueueLabel, Counter>,
    pub queue_wait_seconds: Histogram,
    pub queue_zk_reads: Counter,
    pub queue_ready_items: Family<QueueLabel, Gauge>,
    pub queue_in_flight_items: Family<QueueLabel, Gauge>,
    pub queue_delayed_items: Family<QueueLabel, Gauge>,
    pub queue_dead_letters: Family<QueueLabel, Gauge>,
    pub queue_oldest_ready_age_seconds: Family<QueueLabel, Seconds>,
    pub zookeeper_connected: Gauge,
    pub zookeeper_session_events: Family<SessionEventLabel, Counter>,
    pub config_unknown_fields: Family<UnknownFieldLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("paddock");
        let m = Self {
            lock_acquires: Counter::default(),
            lock_timeouts: Counter::default(),
            lock_releases: Counter::default(),
            lock_losses: Family::default(),
            lock_wait_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 20)),
            locks_held: Gauge::default(),
            lock_wakeups: Counter::default(),
            lock_observer_reads: Counter::default(),
            lock_delays: Counter::default(),
            lock_grants_stale: Family::default(),
            lock_held_seconds: Family::default(),
            lock_hold_seconds: Family::new_with_constructor(hold_buckets),
            queue_enqueued: Family::default(),
            queue_delivered: Family::default(),
            queue_acked: Family::default(),
            queue_nacked: Family::default(),
            queue_redelivered: Family::default(),
            queue_dead_lettered: Family::default(),
            queue_claims_stale: Family::default(),
            queue_extended: Family::default(),
            queue_duplicates: Family::default(),
            queue_purged: Family::default(),
            queue_visibility_timeouts: Family::default(),
            queue_wait_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 20)),
            queue_zk_reads: Counter::default(),
            queue_ready_items: Family::default(),
            queue_in_flight_items: Family::default(),
            queue_delayed_items: Family::default(),
            queue_dead_letters: Family::default(),
            queue_oldest_ready_age_seconds: Family::default(),
            zookeeper_connected: Gauge::default(),
            zookeeper_session_events: Family::default(),
            config_unknown_fields: Family::default(),
            registry: Registry::default(),
        };
        m.register_locks(&mut registry);
        m.register_queues_and_session(&mut registry);
        // Every loss reason shows from the start, at zero, so dashboards and alerts see it.
        for reason in ["session-expired", "connection-lost", "ttl-elapsed", "node-deleted"] {
            m.lock_losses.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc_by(0);
        }
        for event in ["established", "suspended", "reconnected", "expired"] {
            m.zookeeper_session_events.get_or_create(&SessionEventLabel { event: event.to_owned() }).inc_by(0);
        }
        Self { registry, ..m }
    }

    fn register_locks(&self, registry: &mut Registry) {
        registry.register("lock_acquires", "Locks acquired", self.lock_acquires.clone());
        registry.register("lock_timeouts", "Acquires that timed out (409)", self.lock_timeouts.clone());
        registry.register("lock_releases", "Locks released", self.lock_releases.clone());
        registry.register("lock_losses", "Locks lost, by reason", self.lock_losses.clone());
        registry.register("lock_wait_seconds", "Time from acquire request to outcome", self.lock_wait_seconds.clone());
        registry.register("locks_held", "Locks held by this pod now", self.locks_held.clone());
        registry.register("lock_wakeups", "Watch wake-ups of waiting acquires", self.lock_wakeups.clone());
        registry.register(
            "lock_observer_reads",
            "ZooKeeper reads made to keep observed locks' holders up to date (none while nothing changes)",
            self.lock_observer_reads.clone(),
        );
        registry.register(
            "lock_delays",
            "Acquires due a lock that its lock-delay held back, after a holder vanished without releasing",
            self.lock_delays.clone(),
        );
        registry.register(
            "lock_grants_stale",
            "Grants not handed out: decided over half a session before the answer (the sidecar stopped or starved), \
             their contender then gone or not readable",
            self.lock_grants_stale.clone(),
        );
        registry.register(
            "lock_held_seconds",
            "How long the longest current hold of each lock by this pod has lasted",
            self.lock_held_seconds.clone(),
        );
        registry.register(
            "lock_hold_seconds",
            "How long holds lasted, at release or loss",
            self.lock_hold_seconds.clone(),
        );
    }

    fn register_queues_and_session(&self, registry: &mut Registry) {
        registry.register("queue_enqueued", "Items enqueued", self.queue_enqueued.clone());
        registry.register("queue_delivered", "Items handed to the app", self.queue_delivered.clone());
        registry.register("queue_acked", "Items acked", self.queue_acked.clone());
        registry.register("queue_nacked", "Items nacked", self.queue_nacked.clone());
        registry.register("queue_redelivered", "Deliveries with attempt > 1", self.queue_redelivered.clone());
        registry.register("queue_dead_lettered", "Items moved to dead-letter", self.queue_dead_lettered.clone());
        registry.register(
            "queue_claims_stale",
            "Claims not handed out because the sidecar was stopped or starved for half a session after making them",
            self.queue_claims_stale.clone(),
        );
        registry.register("queue_extended", "Claims extended by the app", self.queue_extended.clone());
        registry.register(
            "queue_duplicates",
            "Enqueues not stored because their idempotency key was seen within the deduplication window",
            self.queue_duplicates.clone(),
        );
        registry.register("queue_purged", "Items removed by a purge of the queue", self.queue_purged.clone());
        registry.register(
            "queue_visibility_timeouts",
            "Claims given back because the app neither acked nor extended them in time",
            self.queue_visibility_timeouts.clone(),
        );
        registry.register("queue_wait_seconds", "Time from enqueue to delivery", self.queue_wait_seconds.clone());
        registry.register(
            "queue_zookeeper_reads",
            "ZooKeeper reads made by queue consumers",
            self.queue_zk_reads.clone(),
        );
        registry.register(
            "queue_ready_items",
            "Ready items (due, not claimed) in the buckets this pod's consumers have reached",
            self.queue_ready_items.clone(),
        );
        registry.register(
            "queue_in_flight_items",
            "Items claimed by any consumer of the queue",
            self.queue_in_flight_items.clone(),
        );
        registry.register("queue_delayed_items", "Items of the queue not due yet", self.queue_delayed_items.clone());
        registry.register("queue_dead_letters", "Dead letters of the queue", self.queue_dead_letters.clone());
        registry.register(
            "queue_oldest_ready_age_seconds",
            "How long the earliest ready item has been due (0 when none is ready)",
            self.queue_oldest_ready_age_seconds.clone(),
        );
        registry.register(
            "zookeeper_connected",
            "1 while the ZooKeeper session is connected, else 0",
            self.zookeeper_connected.clone(),
        );
        registry.register(
            "zookeeper_session_events",
            "Changes of the ZooKeeper session: established, suspended, reconnected, expired",
            self.zookeeper_session_events.clone(),
        );
        registry.register(
            "config_unknown_fields",
            "Keys of lock and queue configs this sidecar does not know and ignored (a newer operator's), per config read",
            self.config_unknown_fields.clone(),
        );
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

impl Metrics {
    /// Counts and logs the keys a config read ignored. Called when a config is read from
    /// its znode (once per change, not per request).
    pub fn unknown_config_fields(&self, kind: &str, path: &str, fields: &[String]) {
        if fields.is_empty() {
            return;
        }
        tracing::info!(
            kind,
            path,
            ?fields,
            "config has keys this sidecar does not know (a newer operator?); ignoring them"
        );
        for field in fields {
            self.config_unknown_fields
                .get_or_create(&UnknownFieldLabel { kind: kind.to_owned(), field: field.clone() })
                .inc();
        }
    }
}

pub fn queue_label(queue: &str) -> QueueLabel {
    QueueLabel { queue: queue.to_owned() }
}

pub fn lock_label(lock: &str) -> LockLabel {
    LockLabel { lock: lock.to_owned() }
}

impl Metrics {
    /// Counts the session's changes, for as long as the session lives.
    pub fn follow_session(self: &std::sync::Arc<Self>, session: &paddock_recipes::Session) {
        use paddock_recipes::session::SessionEvent;
        let mut events = session.subscribe();
        let metrics = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(SessionEvent::Established { .. }) => "established",
                    Ok(SessionEvent::Suspended { .. }) => "suspended",
                    Ok(SessionEvent::Reconnected { .. }) => "reconnected",
                    Ok(SessionEvent::Expired { .. }) => "expired",
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(metrics) = metrics.upgrade() else { return };
                metrics.zookeeper_session_events.get_or_create(&SessionEventLabel { event: event.to_owned() }).inc();
            }
        });
    }
}
