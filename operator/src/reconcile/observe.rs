//! Status from ZooKeeper: a lock's holders and waiters, a queue's counts. The operator's
//! session must carry the namespace's credentials to read what its sidecars created.

use paddock_recipes::layout::QueuePaths;
use paddock_recipes::lock::{self, LockError};
use paddock_recipes::queue::{self, QueueError, QueueStats};
use paddock_recipes::zk;

use crate::crd::Holder;

pub async fn lock(client: &zk::Client, path: &str, max_holders: u32) -> Result<(Vec<Holder>, u32), LockError> {
    let snapshot = lock::snapshot(client, path, max_holders).await?;
    let mut holders = Vec::with_capacity(snapshot.holders.len());
    for contender in snapshot.holders {
        let (pod, owner) = match (contender.holder, contender.foreign) {
            (Some(h), _) => (h.pod, h.owner),
            (None, data) => ("(not Paddock)".to_owned(), data.unwrap_or_default()),
        };
        // The fencing token is the contender's czxid; since when: its creation time.
        let (token, since) = match client.check_stat(&format!("{path}/{}", contender.node)).await? {
            Some(stat) => (stat.czxid, Some(rfc3339(stat.ctime))),
            None => continue, // released meanwhile
        };
        holders.push(Holder { pod, owner, token, since });
    }
    Ok((holders, snapshot.waiters as u32))
}

fn rfc3339(epoch_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(epoch_ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

pub async fn queue(client: &zk::Client, paths: &QueuePaths) -> Result<QueueStats, QueueError> {
    queue::stats(client, paths).await
}
