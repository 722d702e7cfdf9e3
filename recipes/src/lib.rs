//! Paddock's ZooKeeper side and nothing else (no HTTP, no Kubernetes): the session, the
//! znode layout and name rules, the lock and queue recipes, and the config the operator
//! writes and the sidecar reads.

pub mod config;
pub mod identity;
pub mod layout;
pub mod names;
pub mod retry;
pub mod session;
pub mod tls;

pub use config::{LockConfig, QueueConfig, RetryPolicy};
pub use layout::Layout;
pub use names::Name;
pub use session::{Session, SessionEvent, SessionOptions};
pub use zookeeper_client as zk;
pub mod lock;
pub mod provision;
pub mod queue;
