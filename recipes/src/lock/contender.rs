//! A lock's contenders: their Curator-compatible names, who holds and whom a waiter
//! watches ([`decide`]), and the writes on a contender — create (resolving a lost reply
//! by the uuid in its name), touch, withdraw.
//!
//! Invariants:
//! - A contender's create is never left unresolved: found again by its uuid, sent again
//!   when not applied, or, when no answer can be had in the session's time, withdrawn
//!   in the background once it can be, so a create applied late holds nothing.
//! - A waiter watches only the contenders whose deletion can make it a holder.

use std::time::Duration;

use super::{AcquireRequest, LockError, LockMode, PROTECTED_PREFIX, READ_NAME};
use crate::retry::while_unknown;
use crate::zk;

/// Rewrites a contender's data unchanged, which fires its successor's watch. Idempotent,
/// so an unknown outcome is retried for as long as the session may live.
pub(super) async fn touch(client: &zk::Client, node_path: &str, data: &[u8]) -> Result<(), zk::Error> {
    while_unknown(client, "touch of a new holder", |_| async { client.set_data(node_path, data, None).await.map(drop) })
        .await
}

/// Watches a contender for its deletion (or any change), as a waiter does; None when it
/// is already gone. The watch is a data watch set by `getData`, which ZooKeeper does not
/// set on a missing node: an `exists` watch would stay on the server for the life of the
/// session, waiting for a contender name that is never created again (Curator's lock
/// recipe avoids it the same way).
pub async fn watch_contender(client: &zk::Client, path: &str) -> Result<Option<zk::OneshotWatcher>, zk::Error> {
    match client.get_and_watch_data(path).await {
        Ok((_, _, watcher)) => Ok(Some(watcher)),
        Err(zk::Error::NoNode) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Creates our contender and returns its path and fencing token (czxid).
///
/// A create whose reply was lost is found again by the uuid in its name, once the
/// connection is back (for as long as the session may live); not there, it is sent again.
/// If no answer can be had in that time, a background task deletes whatever node carries
/// our uuid once it can, so a create applied late never holds the lock for nobody.
pub(super) async fn create_contender(
    client: &zk::Client,
    request: &AcquireRequest<'_>,
    data: &[u8],
) -> Result<(String, i64), LockError> {
    let lock_path = request.lock_path;
    let prefix = format!("{PROTECTED_PREFIX}{}-", uuid::Uuid::new_v4());
    let base = format!("{lock_path}/{prefix}{}", request.mode.node_name());
    let options = zk::CreateMode::EphemeralSequential.with_acls(request.acl.acls());
    let created = while_unknown(client, "create of a contender", |this| {
        let (base, options, prefix) = (&base, &options, &prefix);
        async move {
            if this.retried
                && let Some(found) = find_by_prefix(client, lock_path, prefix).await?
            {
                return Ok(found);
            }
            let (stat, sequence) = client.create(base, data, options).await?;
            Ok((format!("{base}{sequence}"), stat.czxid))
        }
    })
    .await;
    match created {
        Ok(found) => Ok(found),
        Err(zk::Error::NoNode) => Err(LockError::NotProvisioned(lock_path.to_owned())),
        Err(err) => {
            if crate::retry::outcome_unknown(&err) {
                // No answer in the session's time: whatever node carries our uuid is
                // deleted once it can be, so a create applied late holds nothing.
                let (client, lock_path) = (client.clone(), lock_path.to_owned());
                tokio::spawn(async move { withdraw_by_prefix(&client, &lock_path, &prefix).await });
            }
            Err(err.into())
        }
    }
}

/// Our contender, found by the uuid in its name after `sync`: its path and czxid. Were
/// there two (a create applied after we had looked and sent it again), the later one is
/// deleted and the first kept.
async fn find_by_prefix(
    client: &zk::Client,
    lock_path: &str,
    prefix: &str,
) -> Result<Option<(String, i64)>, zk::Error> {
    client.sync(lock_path).await?;
    let children = client.list_children(lock_path).await?;
    let mut ours: Vec<Contender> =
        sorted_contenders(&children).into_iter().filter(|c| c.name.starts_with(prefix)).collect();
    for extra in ours.iter().skip(1) {
        delete_contender(client, &format!("{lock_path}/{}", extra.name)).await;
    }
    let Some(first) = ours.drain(..).next() else { return Ok(None) };
    let node_path = format!("{lock_path}/{}", first.name);
    Ok(client.check_stat(&node_path).await?.map(|stat| (node_path, stat.czxid)))
}

/// Deletes every contender carrying `prefix`, as soon as ZooKeeper can be asked, for as
/// long as the session lives.
async fn withdraw_by_prefix(client: &zk::Client, lock_path: &str, prefix: &str) {
    loop {
        match client.list_children(lock_path).await {
            Ok(children) => {
                for name in children.iter().filter(|c| c.starts_with(prefix)) {
                    delete_contender(client, &format!("{lock_path}/{name}")).await;
                }
                return;
            }
            Err(zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::NoNode) => return,
            Err(err) => {
                tracing::debug!(lock_path, error = %err, "withdrawing an interrupted contender; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A contender parsed from a child name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Contender {
    pub(super) name: String,
    pub(super) sequence: i64,
    pub(super) mode: LockMode,
}

/// Parses and orders the children of a lock's znode by sequence. Children that are not
/// sequential contenders are ignored.
pub(super) fn sorted_contenders(children: &[String]) -> Vec<Contender> {
    let mut contenders: Vec<Contender> = children.iter().filter_map(|name| parse_contender(name)).collect();
    contenders.sort_by_key(|c| c.sequence);
    contenders
}

fn parse_contender(name: &str) -> Option<Contender> {
    let digits = name.bytes().rev().take_while(u8::is_ascii_digit).count();
    if digits < 10 {
        return None;
    }
    let (stem, seq) = name.split_at(name.len() - digits);
    // Everything but a reader excludes: our mutex (`lock-`), Curator's InterProcessMutex
    // (`lock-`) and Curator's write lock (`__WRIT__`).
    let mode = if stem.ends_with(READ_NAME) { LockMode::Shared } else { LockMode::Exclusive };
    Some(Contender { name: name.to_owned(), sequence: seq.parse().ok()?, mode })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    Holds,
    /// Indices of the contenders to watch.
    Wait(Vec<usize>),
}

/// Whether the contender at `index` holds, and if not, which contenders to watch.
pub(super) fn decide(contenders: &[Contender], index: usize, max_holders: u32) -> Decision {
    let max = max_holders.max(1) as usize;
    match contenders[index].mode {
        LockMode::Shared => match contenders[..index].iter().position(|c| c.mode == LockMode::Exclusive) {
            None => Decision::Holds,
            Some(first_writer) => Decision::Wait(vec![first_writer]),
        },
        LockMode::Exclusive if index < max => Decision::Holds,
        LockMode::Exclusive if max == 1 || index > max => Decision::Wait(vec![index - 1]),
        // Next in line of a semaphore: any holder leaving lets us in.
        LockMode::Exclusive => Decision::Wait((0..index).collect()),
    }
}

/// Deletes the contender unless disarmed — also when the acquire future is dropped — and
/// first its held record, if one was made before the grant was handed out (a contender
/// never granted leaves nothing that delays the next).
pub(super) struct WithdrawOnDrop {
    pub(super) client: zk::Client,
    pub(super) node_path: Option<String>,
    pub(super) record: Option<String>,
}

impl WithdrawOnDrop {
    pub(super) fn disarm(&mut self) {
        self.node_path = None;
        self.record = None;
    }

    pub(super) async fn withdraw(&mut self) {
        withdraw(&self.client, self.record.take(), self.node_path.take()).await;
    }
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        if self.node_path.is_some() || self.record.is_some() {
            let (client, record, node_path) = (self.client.clone(), self.record.take(), self.node_path.take());
            tokio::spawn(async move { withdraw(&client, record, node_path).await });
        }
    }
}

pub(super) async fn withdraw(client: &zk::Client, record: Option<String>, node_path: Option<String>) {
    for path in record.iter().chain(node_path.iter()) {
        delete_contender(client, path).await;
    }
}

/// Deletes a contender, retrying an unknown outcome for as long as the session may live.
pub(super) async fn delete_contender(client: &zk::Client, path: &str) {
    let deleted = while_unknown(client, "withdrawing a contender", |_| async {
        match client.delete(path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
            Err(err) => Err(err),
        }
    })
    .await;
    match deleted {
        Ok(()) | Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => {} // or gone with the session
        Err(err) => tracing::warn!(path, error = %err, "could not withdraw contender; it goes with the session"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(seq: i64, mode: LockMode) -> Contender {
        let name = match mode {
            LockMode::Exclusive => format!("_c_x-lock-{seq:010}"),
            LockMode::Shared => format!("_c_x-__READ__{seq:010}"),
        };
        Contender { name, sequence: seq, mode }
    }

    #[test]
    fn parses_curator_names_and_orders_by_sequence_not_by_name() {
        let children = vec![
            "_c_b-lock-0000000003".to_owned(),
            "_c_a-__READ__0000000001".to_owned(),
            "_c_z-__WRIT__0000000002".to_owned(),
            "not-a-contender".to_owned(),
        ];
        let sorted = sorted_contenders(&children);
        assert_eq!(sorted.iter().map(|c| c.sequence).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(sorted[0].mode, LockMode::Shared);
        assert_eq!(sorted[1].mode, LockMode::Exclusive, "a Curator write lock excludes");
    }

    #[test]
    fn mutex_waiters_watch_only_their_predecessor() {
        let cs: Vec<_> = (0..4).map(|i| c(i, LockMode::Exclusive)).collect();
        assert_eq!(decide(&cs, 0, 1), Decision::Holds);
        for i in 1..4 {
            assert_eq!(decide(&cs, i, 1), Decision::Wait(vec![i - 1]));
        }
    }

    #[test]
    fn semaphore_admits_max_holders_and_next_in_line_watches_them() {
        let cs: Vec<_> = (0..6).map(|i| c(i, LockMode::Exclusive)).collect();
        for i in 0..3 {
            assert_eq!(decide(&cs, i, 3), Decision::Holds);
        }
        assert_eq!(decide(&cs, 3, 3), Decision::Wait(vec![0, 1, 2]));
        assert_eq!(decide(&cs, 4, 3), Decision::Wait(vec![3]));
        assert_eq!(decide(&cs, 5, 3), Decision::Wait(vec![4]));
    }

    #[test]
    fn readers_share_until_a_writer_and_wait_on_the_first_writer_ahead() {
        use LockMode::*;
        let cs = vec![c(0, Shared), c(1, Shared), c(2, Exclusive), c(3, Shared), c(4, Exclusive)];
        assert_eq!(decide(&cs, 0, 1), Decision::Holds);
        assert_eq!(decide(&cs, 1, 1), Decision::Holds);
        assert_eq!(decide(&cs, 2, 1), Decision::Wait(vec![1]), "a writer waits for everyone ahead");
        assert_eq!(decide(&cs, 3, 1), Decision::Wait(vec![2]), "a reader behind a writer waits for it (FIFO)");
        assert_eq!(decide(&cs, 4, 1), Decision::Wait(vec![3]));
    }
}
