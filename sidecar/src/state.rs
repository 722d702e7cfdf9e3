//! The state every handler shares.

use std::sync::Arc;

use paddock_recipes::Session;
use tokio_util::sync::CancellationToken;

use crate::events::EventBus;
use crate::locks::LockService;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub session: Session,
    pub locks: LockService,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
    /// Cancelled on SIGTERM: event streams and long-polls end so the server can drain.
    pub shutdown: CancellationToken,
}
