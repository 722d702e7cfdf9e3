//! The finalizer's step: remove a resource's znodes. Locks always go (their contenders
//! with them: holders learn `lost`); a queue goes only when it holds nothing or its
//! policy says Delete — nothing is lost by deleting a resource by mistake. Idempotent:
//! already gone is success.

use paddock_recipes::layout::QueuePaths;
use paddock_recipes::provision::delete_tree;
use paddock_recipes::queue::{self, QueueError};
use paddock_recipes::zk;

use crate::crd::DeletionPolicy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    Deleted,
    /// Kept because it still holds items or dead letters (say so in an Event).
    Kept {
        depth: u64,
        dead_lettered: u64,
    },
}

pub async fn lock(client: &zk::Client, path: &str) -> Result<Cleanup, zk::Error> {
    delete_tree(client, path).await?;
    Ok(Cleanup::Deleted)
}

pub async fn queue(client: &zk::Client, paths: &QueuePaths, policy: DeletionPolicy) -> Result<Cleanup, QueueError> {
    let stats = match queue::stats(client, paths).await {
        Ok(stats) => stats,
        Err(QueueError::NotProvisioned(_)) => return Ok(Cleanup::Deleted),
        Err(err) => return Err(err),
    };
    if policy == DeletionPolicy::Retain && (stats.depth > 0 || stats.dead_lettered > 0) {
        return Ok(Cleanup::Kept { depth: stats.depth, dead_lettered: stats.dead_lettered });
    }
    delete_tree(client, &paths.base).await?;
    Ok(Cleanup::Deleted)
}
