//! What re-reconciles a resource besides the periodic requeue and ZooKeeper session
//! changes: its own changes, and changes of its znodes.
//!
//! - A resource's own changes count only when they are changes of its spec or lifecycle
//!   (generation, deletion, finalizers): the operator's own status writes do not
//!   re-trigger it ([`spec_or_lifecycle`]).
//! - One persistent recursive watch on Paddock's ZooKeeper subtree ([`zookeeper`]) maps
//!   each change to the resource whose znodes changed, and only when it can change the
//!   status or the desired znodes ([`trigger`]): contenders, items, claims and dead
//!   letters coming and going, not delivery histories or contenders' data. The watch is
//!   set again on every new session.
//! - ZooKeeper's triggers are throttled with a leading edge ([`crate::throttle`]): at most
//!   one reconcile per resource per [`STATUS_INTERVAL`], the latest state reflected
//!   within it.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use paddock_recipes::{Session, zk};
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::crd::{DistributedLock, WorkQueue};

/// At most one ZooKeeper-triggered reconcile per resource this often.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// What of a resource's own changes needs a reconcile: its spec (generation) and its
/// lifecycle (deletion, finalizers) — not its status, which the operator writes itself.
pub fn spec_or_lifecycle<K: Resource>(obj: &K) -> Option<u64> {
    let meta = obj.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (meta.generation, meta.deletion_timestamp.is_some(), &meta.finalizers).hash(&mut hasher);
    Some(hasher.finish())
}

/// The resource a znode change below the root belongs to, if the change can matter to its
/// status or its znodes: the resource's own znode, and nodes coming and going below it —
/// contenders; items, claims and dead letters — but not data changes below it (contenders'
/// holder info, items' envelopes) nor delivery histories (`attempts/<item>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Lock(String, String),
    Queue(String, String),
}

/// The trigger of a change of the znode `rest` below the root, if any.
pub fn trigger(rest: &str, event: zk::EventType) -> Option<Trigger> {
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let comes_or_goes = matches!(event, zk::EventType::NodeCreated | zk::EventType::NodeDeleted);
    match parts.as_slice() {
        [ns, "locks", name] => Some(Trigger::Lock((*ns).into(), (*name).into())),
        // Contenders; not lock-delay's held records, which come and go with holders.
        [ns, "locks", name, child] if comes_or_goes && !paddock_recipes::lock::is_held_record(child) => {
            Some(Trigger::Lock((*ns).into(), (*name).into()))
        }
        [ns, "queues", name] => Some(Trigger::Queue((*ns).into(), (*name).into())),
        [ns, "queues", name, "attempts"] if comes_or_goes => Some(Trigger::Queue((*ns).into(), (*name).into())),
        [ns, "queues", name, "items" | "claims" | "dead", ..] if comes_or_goes => {
            Some(Trigger::Queue((*ns).into(), (*name).into()))
        }
        _ => None,
    }
}

/// Where the triggers go.
struct Senders {
    locks: UnboundedSender<ObjectRef<DistributedLock>>,
    queues: UnboundedSender<ObjectRef<WorkQueue>>,
}

/// Znode changes below the root, as the resources they belong to, throttled.
pub fn zookeeper(
    session: Session,
    root: String,
) -> (impl futures::Stream<Item = ObjectRef<DistributedLock>>, impl futures::Stream<Item = ObjectRef<WorkQueue>>) {
    let (locks, locks_rx) = tokio::sync::mpsc::unbounded_channel();
    let (queues, queues_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(watch(session, root, Senders { locks, queues }));
    (
        UnboundedReceiverStream::new(crate::throttle::throttled(locks_rx, STATUS_INTERVAL)),
        UnboundedReceiverStream::new(crate::throttle::throttled(queues_rx, STATUS_INTERVAL)),
    )
}

/// Watches the subtree for good: on every connected session, until it ends.
async fn watch(session: Session, root: String, to: Senders) {
    loop {
        let Ok(current) = session.wait_connected(Duration::from_secs(5)).await else { continue };
        let mut watcher = match current.client.watch(&root, zk::AddWatchMode::PersistentRecursive).await {
            Ok(w) => w,
            Err(err) => {
                tracing::warn!(error = %err, root, "could not watch Paddock's subtree");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let event = watcher.changed().await;
            if event.event_type == zk::EventType::Session {
                if event.session_state.is_terminated() {
                    break;
                }
                continue;
            }
            let rest = event.path.strip_prefix(&root).unwrap_or_default();
            match trigger(rest, event.event_type) {
                Some(Trigger::Lock(ns, name)) => {
                    let _ = to.locks.send(ObjectRef::new(&name).within(&ns));
                }
                Some(Trigger::Queue(ns, name)) => {
                    let _ = to.queues.send(ObjectRef::new(&name).within(&ns));
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_that_matter_to_status_trigger() {
        use zk::EventType::{NodeCreated, NodeDataChanged, NodeDeleted};
        let lock = Some(Trigger::Lock("shop".into(), "orders".into()));
        let queue = Some(Trigger::Queue("shop".into(), "jobs".into()));
        assert_eq!(trigger("/shop/locks/orders", NodeDataChanged), lock, "its config");
        assert_eq!(trigger("/shop/locks/orders/_c_1-lock-0000000001", NodeCreated), lock);
        assert_eq!(trigger("/shop/locks/orders/_c_1-lock-0000000001", NodeDataChanged), None);
        assert_eq!(trigger("/shop/locks/orders/paddock-held-0000000001-record", NodeCreated), None);
        assert_eq!(trigger("/shop/queues/jobs/items/b9-1/item-0000000001", NodeCreated), queue);
        assert_eq!(trigger("/shop/queues/jobs/claims/b9-1.0000000001", NodeDeleted), queue);
        assert_eq!(trigger("/shop/queues/jobs/dead/b9-1.0000000001", NodeCreated), queue);
        assert_eq!(trigger("/shop/queues/jobs/attempts/b9-1.0000000001", NodeCreated), None, "history");
        assert_eq!(trigger("/shop/queues/jobs/attempts/b9-1.0000000001", NodeDataChanged), None);
        assert_eq!(trigger("/shop/queues/jobs/items/b9-1/item-0000000001", NodeDataChanged), None);
        assert_eq!(trigger("/shop/queues/jobs/attempts", NodeDeleted), queue, "its znodes must be put back");
        assert_eq!(trigger("/shop", NodeCreated), None);
    }
}
