//! Creating the znodes of locks and queues. The operator provisions with these functions
//! and so do tests and the local run; the sidecar never does (a missing path means no
//! DistributedLock / WorkQueue exists, which the sidecar reports as such).

use crate::config::{LockConfig, QueueConfig, to_znode};
use crate::layout::Layout;
use crate::names::Name;
use crate::zk;

/// Creates (or updates the config of) a lock's znode, with its parents.
pub async fn ensure_lock(
    client: &zk::Client,
    layout: &Layout,
    namespace: &Name,
    name: &Name,
    config: &LockConfig,
    acls: zk::Acls<'_>,
) -> Result<String, zk::Error> {
    let path = layout.lock(namespace, name);
    ensure_node(client, &path, &to_znode(config), acls).await?;
    Ok(path)
}

/// Creates (or updates the config of) a queue's znode and its `items`, `claims`,
/// `attempts` and `dead` children.
pub async fn ensure_queue(
    client: &zk::Client,
    layout: &Layout,
    namespace: &Name,
    name: &Name,
    config: &QueueConfig,
    acls: zk::Acls<'_>,
) -> Result<String, zk::Error> {
    let paths = layout.queue(namespace, name);
    ensure_node(client, &paths.base, &to_znode(config), acls).await?;
    for child in [paths.items(), paths.claims(), paths.attempts(), paths.dead()] {
        ensure_node(client, &child, b"", acls).await?;
    }
    Ok(paths.base)
}

/// Creates `path` with `data` (parents too) or sets its data when it exists.
async fn ensure_node(client: &zk::Client, path: &str, data: &[u8], acls: zk::Acls<'_>) -> Result<(), zk::Error> {
    let options = zk::CreateMode::Persistent.with_acls(acls);
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
    {
        client.mkdir(parent, &options).await?;
    }
    match client.create(path, data, &options).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NodeExists) => client.set_data(path, data, None).await.map(drop),
        Err(err) => Err(err),
    }
}
