//! What happened to this pod's locks, claims and session, for `GET /events`.

use serde::Serialize;
use tokio::sync::broadcast;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Event {
    #[serde(rename = "lock.acquired")]
    LockAcquired { name: String, owner: String, token: i64, at: String },
    #[serde(rename = "lock.released")]
    LockReleased { name: String, owner: String, token: i64, at: String },
    /// The lock is no longer held; `reason` says why. Stop using its token.
    #[serde(rename = "lock.lost")]
    LockLost { name: String, owner: String, token: i64, reason: LossReason, at: String },
    #[serde(rename = "session")]
    Session { state: &'static str, generation: u64, at: String },
    /// A queue item this pod held is no longer its own: `visibility-timeout` or
    /// `session-expired`. Its ack will be refused; it may be redelivered elsewhere.
    #[serde(rename = "queue.claim-lost")]
    ClaimLost { queue: String, id: String, reason: &'static str, at: String },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::LockAcquired { .. } => "lock.acquired",
            Event::LockReleased { .. } => "lock.released",
            Event::LockLost { .. } => "lock.lost",
            Event::Session { .. } => "session",
            Event::ClaimLost { .. } => "queue.claim-lost",
        }
    }
}

/// Why a lock was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossReason {
    /// The ZooKeeper session ended; the ensemble deleted the contender.
    SessionExpired,
    /// Disconnected for longer than the session timeout: the ensemble has (or will have)
    /// expired the session, so another pod may hold the lock now.
    ConnectionLost,
    /// Not renewed within its `ttl`.
    TtlElapsed,
    /// The contender node was deleted by someone else (e.g. the DistributedLock was deleted).
    NodeDeleted,
}

impl LossReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::SessionExpired => "session-expired",
            LossReason::ConnectionLost => "connection-lost",
            LossReason::TtlElapsed => "ttl-elapsed",
            LossReason::NodeDeleted => "node-deleted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new() -> Self {
        Self { sender: broadcast::channel(4096).0 }
    }

    pub fn publish(&self, event: Event) {
        tracing::info!(event = event.kind(), details = ?event, "event");
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
