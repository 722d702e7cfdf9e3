//! Creating the znodes of locks and queues. The operator provisions with these functions
//! and so do tests and the local run; the sidecar never does (a missing path means no
//! DistributedLock / WorkQueue exists, which the sidecar reports as such).

use crate::config::{LockConfig, QueueConfig, to_znode};
use crate::layout::Layout;
use crate::names::Name;
use crate::zk;

/// Creates Paddock's root (e.g. `/paddock`) with `acls` unless it exists. The operator
/// does this first with its own identity alone: ACLs are per node, and the namespaces'
/// subtrees below must not inherit who created the root.
pub async fn ensure_root(client: &zk::Client, layout: &Layout, acls: zk::Acls<'_>) -> Result<(), zk::Error> {
    match client.create(layout.root(), b"", &zk::CreateMode::Persistent.with_acls(acls)).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(zk::Error::NoNode) => client.mkdir(layout.root(), &zk::CreateMode::Persistent.with_acls(acls)).await,
        Err(err) => Err(err),
    }
}

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
    for child in [paths.items(), paths.claims(), paths.attempts(), paths.dead(), paths.keys(), paths.groups()] {
        ensure_node(client, &child, b"", acls).await?;
    }
    Ok(paths.base)
}

/// Creates `path` with `data` (parents too) or, when it exists, sets its data and ACL —
/// so an ACL that drifted (or a namespace's new identity) is put right.
async fn ensure_node(client: &zk::Client, path: &str, data: &[u8], acls: zk::Acls<'_>) -> Result<(), zk::Error> {
    let options = zk::CreateMode::Persistent.with_acls(acls);
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
    {
        client.mkdir(parent, &options).await?;
    }
    match client.create(path, data, &options).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NodeExists) => {
            let (current, stat) = client.get_acl(path).await?;
            if current.as_slice() != &*acls {
                client.set_acl(path, &acls, Some(stat.aversion)).await?;
            }
            // Only a real change is written: a write fires every watch on the node, and the
            // operator itself re-reconciles on its watch.
            let (current, stat) = client.get_data(path).await?;
            if current != data {
                client.set_data(path, data, Some(stat.version)).await?;
            }
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// Deletes `path` and everything below it. Already gone is success, so it is idempotent;
/// nodes that appear meanwhile (a contender, an item) are deleted on the next pass.
pub async fn delete_tree(client: &zk::Client, path: &str) -> Result<(), zk::Error> {
    loop {
        let children = match client.list_children(path).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => return Ok(()),
            Err(err) => return Err(err),
        };
        for child in children {
            Box::pin(delete_tree(client, &format!("{path}/{child}"))).await?;
        }
        match client.delete(path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
            Err(zk::Error::NotEmpty) => continue,
            Err(err) => return Err(err),
        }
    }
}
