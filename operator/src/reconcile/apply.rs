//! Apply a desired znode: create it with its parents, or put its data and ACL right.
//! Idempotent; with observe and cleanup, the only steps that read or write znodes (the
//! identity step only authenticates the session).

use paddock_recipes::provision::{ensure_lock, ensure_queue, ensure_root};
use paddock_recipes::{Layout, LockConfig, Name, QueueConfig, zk};

use super::build::Desired;

/// A failed apply: ZooKeeper's error and the subtree it came from (Paddock's root, or the
/// resource's znode and what is below it).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct ApplyError {
    pub path: String,
    #[source]
    pub source: zk::Error,
}

fn at(path: &str) -> impl FnOnce(zk::Error) -> ApplyError + '_ {
    move |source| ApplyError { path: path.to_owned(), source }
}

/// Ensures a lock's znode as `desired` says.
pub async fn lock(
    client: &zk::Client,
    layout: &Layout,
    ns: &Name,
    name: &Name,
    desired: &Desired,
) -> Result<(), ApplyError> {
    let config = LockConfig::from_znode(&desired.path, &desired.data).expect("built from a validated spec");
    ensure_root(client, layout, zk::Acls::new(&desired.root_acl)).await.map_err(at(layout.root()))?;
    ensure_lock(client, layout, ns, name, &config, zk::Acls::new(&desired.acl)).await.map_err(at(&desired.path))?;
    Ok(())
}

/// Ensures a queue's znode and its children as `desired` says.
pub async fn queue(
    client: &zk::Client,
    layout: &Layout,
    ns: &Name,
    name: &Name,
    desired: &Desired,
) -> Result<(), ApplyError> {
    let config = QueueConfig::from_znode(&desired.path, &desired.data).expect("built from a validated spec");
    ensure_root(client, layout, zk::Acls::new(&desired.root_acl)).await.map_err(at(layout.root()))?;
    ensure_queue(client, layout, ns, name, &config, zk::Acls::new(&desired.acl)).await.map_err(at(&desired.path))?;
    Ok(())
}
