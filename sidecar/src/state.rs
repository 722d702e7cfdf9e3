//! The state every handler shares.

use std::sync::Arc;

use paddock_recipes::Session;

use crate::events::EventBus;
use crate::locks::LockService;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub session: Session,
    pub locks: LockService,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
}
