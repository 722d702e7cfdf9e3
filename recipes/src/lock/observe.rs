//! Looking at a lock without contending: who holds it, how many wait, and a watch that
//! fires at the next change. What an observer (a replica that wants to know its leader)
//! keeps up to date at the cost of one child listing per change, plus one read of each
//! new holder's node; nothing while nothing changes.

use std::collections::HashMap;

use serde::Serialize;

use super::contender::{Decision, decide, sorted_contenders};
use super::{HolderInfo, LockError, LockMode};
use crate::zk;

/// A lock as seen at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    /// Changes whenever a contender comes or goes: the zxid of the lock node's last
    /// child change (never reused, also when the lock is deleted and made again).
    pub version: i64,
    pub max_holders: u32,
    /// In line order: for a mutex the first (and only) one leads.
    pub holders: Vec<ObservedHolder>,
    pub waiters: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedHolder {
    pub node: String,
    /// Who it is; `None` for a contender that is not Paddock's (Curator's).
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub holder: Option<HolderInfo>,
    /// Its fencing token (the node's czxid).
    pub token: i64,
    pub mode: LockMode,
    /// When it joined the line (the node's creation), ms since the epoch.
    pub queued_at_ms: i64,
}

/// What was read of contender nodes: their names are unique (a uuid and a sequence), so
/// a node is read once for as long as it lives.
#[derive(Debug, Default)]
pub struct HolderCache {
    nodes: HashMap<String, ObservedHolder>,
}

/// The lock now, and a watch that fires at its next child change (or its deletion, or
/// the session's end); `reads` counts the requests made.
pub async fn observe(
    client: &zk::Client,
    lock_path: &str,
    max_holders: u32,
    cache: &mut HolderCache,
    reads: &mut u64,
) -> Result<(Observed, zk::OneshotWatcher), LockError> {
    *reads += 1;
    let (children, stat, watcher) =
        client.get_and_watch_children(lock_path).await.map_err(|e| LockError::or_not_provisioned(e, lock_path))?;
    let contenders = sorted_contenders(&children);
    cache.nodes.retain(|node, _| contenders.iter().any(|c| &c.name == node));
    let mut holders = Vec::new();
    let mut waiters = 0;
    for (index, contender) in contenders.iter().enumerate() {
        if decide(&contenders, index, max_holders) != Decision::Holds {
            waiters += 1;
            continue;
        }
        if let Some(known) = cache.nodes.get(&contender.name) {
            holders.push(known.clone());
            continue;
        }
        *reads += 1;
        let (data, node_stat) = match client.get_data(&format!("{lock_path}/{}", contender.name)).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => continue, // gone since the listing: the watch has fired
            Err(err) => return Err(err.into()),
        };
        let holder = ObservedHolder {
            node: contender.name.clone(),
            holder: serde_json::from_slice::<HolderInfo>(&data).ok(),
            token: node_stat.czxid,
            mode: contender.mode,
            queued_at_ms: node_stat.ctime,
        };
        cache.nodes.insert(contender.name.clone(), holder.clone());
        holders.push(holder);
    }
    Ok((Observed { version: stat.pzxid, max_holders, holders, waiters }, watcher))
}
