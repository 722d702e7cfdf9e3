//! The state every handler shares.

use std::sync::Arc;

use paddock_recipes::Session;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::locks::LockService;
use crate::metrics::Metrics;
use crate::queues::QueueService;

#[derive(Clone)]
pub struct AppState {
    pub session: Session,
    pub locks: LockService,
    pub queues: QueueService,
    /// The queue `GET /queue/next` serves when the request names none (PADDOCK_QUEUE).
    pub default_queue: Option<paddock_recipes::Name>,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM: event streams and long-polls end so the server can drain.
    pub shutdown: CancellationToken,
    /// What `/readyz` last answered (its changes are logged, not every probe).
    pub readiness: Arc<crate::api::health::Readiness>,
}
