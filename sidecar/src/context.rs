//! What the lock and queue services share: the pod's identity, its ZooKeeper session,
//! where its namespace's znodes live, and where events and metrics go. Both services
//! start from it.

use std::sync::Arc;

use paddock_recipes::{Layout, Name, Session};

use crate::events::EventBus;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct ServiceContext {
    /// The pod's name: the default lock owner, and the consumer named in claims.
    pub pod_name: String,
    pub namespace: Name,
    pub layout: Layout,
    pub session: Session,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
}
