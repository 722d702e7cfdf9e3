//! What the lock and queue services share: the pod's identity, its ZooKeeper session,
//! where its namespace's znodes live, and where events and metrics go. Both services
//! start from it.

use std::sync::Arc;
use std::time::Duration;

use paddock_recipes::session::{Current, SessionError};
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

/// How long a request waits for a session that is reconnecting: a ZooKeeper server's
/// restart moves the session to another server in about a second, and a request that
/// arrives meanwhile is answered then rather than with a 503.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(2);

impl ServiceContext {
    /// The session for a request: at once when connected, else once it is back within
    /// [`RECONNECT_GRACE`].
    pub async fn current(&self) -> Result<Current, SessionError> {
        self.session.wait_connected(RECONNECT_GRACE).await
    }
}
