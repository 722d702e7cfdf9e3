//! Who this sidecar is and what it shares: the pod's identity, its ZooKeeper session,
//! where its namespace's znodes live, and where events and metrics go. The lock and
//! queue services both start from it.

use std::sync::Arc;

use paddock_recipes::{Layout, Name, Session};

use crate::events::EventBus;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Pod {
    /// The pod's name: the default lock owner, and the consumer named in claims.
    pub name: String,
    pub namespace: Name,
    pub layout: Layout,
    pub session: Session,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
}
