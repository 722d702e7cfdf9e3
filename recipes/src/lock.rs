//! The lock recipe: mutex, semaphore (N holders) and read/write lock on one znode.
//!
//! Each contender is an ephemeral sequential child of the lock's znode, named the way
//! Apache Curator names them, so Curator clients and Paddock exclude each other:
//!
//! ```text
//! _c_<uuid>-lock-<seq>        exclusive (Curator InterProcessMutex)
//! _c_<uuid>-__READ__<seq>     shared    (Curator InterProcessReadWriteLock, read side)
//! ```
//!
//! Contenders are ordered by sequence number (arrival order, so FIFO). Who holds:
//! - exclusive: fewer than `maxHolders` contenders ahead of it;
//! - shared (only when `maxHolders` is 1): no exclusive contender ahead of it.
//!
//! No herd: a waiter watches only the nodes whose deletion can make it a holder — its
//! predecessor (exclusive, mutex), the first exclusive contender ahead (shared), or, for
//! the one waiter next in line of a semaphore, the current holders. A semaphore waiter
//! further back watches its predecessor, and a semaphore contender that becomes a holder
//! touches its own node so its successor re-arms its watches (it is now next in line).
//!
//! Fencing token: the contender's `czxid`. Zxids are assigned by the ensemble in total
//! order and never reused — also across leader elections (the epoch is the high word) and
//! across deletion and re-creation of the lock's znode — and holders acquire in sequence
//! order, so successive holders of one lock see strictly increasing tokens.
//!
//! Connection loss while creating: the uuid in the name lets us find our node if the
//! create was applied but its reply lost, so no orphan contender blocks the lock.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{ConfigError, LockConfig};
use crate::zk;

const PROTECTED_PREFIX: &str = "_c_";
const MUTEX_NAME: &str = "lock-";
const READ_NAME: &str = "__READ__";

/// Exclusive (a writer, or a mutex/semaphore holder) or shared (a reader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Exclusive,
    Shared,
}

impl LockMode {
    fn node_name(self) -> &'static str {
        match self {
            LockMode::Exclusive => MUTEX_NAME,
            LockMode::Shared => READ_NAME,
        }
    }
}

/// What a Paddock contender stores in its znode: who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HolderInfo {
    pub pod: String,
    pub owner: String,
}

/// One contender as seen by everyone: its node, order, kind and (when read) who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContenderView {
    pub node: String,
    pub sequence: i64,
    pub mode: LockMode,
    /// None for a contender whose data is not Paddock's (a Curator client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderInfo>,
    /// Raw data as text when it is not Paddock's (Curator stores the client's IP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign: Option<String>,
}

/// Holders and waiters of a lock at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LockSnapshot {
    pub max_holders: u32,
    pub holders: Vec<ContenderView>,
    pub waiters: usize,
}

/// A held lock: the node to delete on release and the fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub lock_path: String,
    pub node_path: String,
    pub token: i64,
    pub mode: LockMode,
}

#[derive(Debug, Clone)]
pub enum Acquisition {
    Acquired(Held),
    /// Not acquired within the wait; our contender was withdrawn.
    TimedOut(LockSnapshot),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    /// The lock's znode does not exist: no DistributedLock provisions it.
    #[error("lock znode {0} does not exist")]
    NotProvisioned(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("shared mode needs a lock with maxHolders 1 (a read/write lock); {path} has maxHolders {max_holders}")]
    SharedSemaphore { path: String, max_holders: u32 },
    /// Our contender vanished while waiting: the session expired or someone deleted it.
    #[error("our contender {0} vanished while waiting (session expired?)")]
    ContenderLost(String),
    #[error("ZooKeeper: {0}")]
    ZooKeeper(#[from] zk::Error),
}

/// Parameters of one acquire.
#[derive(Debug, Clone)]
pub struct AcquireRequest<'a> {
    pub lock_path: &'a str,
    pub mode: LockMode,
    pub holder: &'a HolderInfo,
    /// How long to wait; zero tries once.
    pub wait: Duration,
    /// How the contender node is protected.
    pub acl: crate::identity::NodeAcl,
}

/// Counts watch wake-ups, so tests and metrics can show that a release wakes one waiter.
pub trait WakeObserver: Send + Sync {
    fn woken(&self);
}

impl WakeObserver for () {
    fn woken(&self) {}
}

/// Reads a lock's config; `NotProvisioned` when its znode is missing.
pub async fn read_config(client: &zk::Client, lock_path: &str) -> Result<LockConfig, LockError> {
    match client.get_data(lock_path).await {
        Ok((data, _)) => Ok(LockConfig::from_znode(lock_path, &data)?),
        Err(zk::Error::NoNode) => Err(LockError::NotProvisioned(lock_path.to_owned())),
        Err(err) => Err(err.into()),
    }
}

/// Acquires the lock at `request.lock_path`, waiting up to `request.wait`.
///
/// If the returned future is dropped midway (the caller went away), the contender is
/// deleted in the background so it cannot block the lock.
pub async fn acquire(
    client: &zk::Client,
    config: &LockConfig,
    request: &AcquireRequest<'_>,
    observer: &dyn WakeObserver,
) -> Result<Acquisition, LockError> {
    if request.mode == LockMode::Shared && config.max_holders != 1 {
        return Err(LockError::SharedSemaphore { path: request.lock_path.to_owned(), max_holders: config.max_holders });
    }
    let deadline = Instant::now() + request.wait;
    let data = serde_json::to_vec(request.holder).expect("holder info serializes");
    let (node_path, token) = create_contender(client, request, &data).await?;
    let mut guard = WithdrawOnDrop { client: client.clone(), node_path: Some(node_path.clone()) };
    let node_name = node_path.rsplit('/').next().expect("node path has a name").to_owned();

    loop {
        let children = match client.list_children(request.lock_path).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => {
                guard.disarm();
                return Err(LockError::NotProvisioned(request.lock_path.to_owned()));
            }
            Err(err) => return Err(err.into()),
        };
        let contenders = sorted_contenders(&children);
        let Some(index) = contenders.iter().position(|c| c.name == node_name) else {
            guard.disarm();
            return Err(LockError::ContenderLost(node_path));
        };
        match decide(&contenders, index, config.max_holders) {
            Decision::Holds => {
                if config.max_holders > 1 {
                    // Wake our successor: it may now be next in line and must watch the
                    // holders. Until this is done the contender is not handed out: an
                    // error withdraws it, so no holder is left that nobody knows of.
                    if let Err(err) = touch(client, &node_path, &data).await {
                        guard.withdraw().await;
                        return Err(err.into());
                    }
                }
                guard.disarm();
                return Ok(Acquisition::Acquired(Held {
                    lock_path: request.lock_path.to_owned(),
                    node_path,
                    token,
                    mode: request.mode,
                }));
            }
            Decision::Wait(targets) => {
                if Instant::now() >= deadline {
                    guard.withdraw().await;
                    let snapshot = snapshot(client, request.lock_path, config.max_holders).await?;
                    return Ok(Acquisition::TimedOut(snapshot));
                }
                let mut watchers = Vec::with_capacity(targets.len());
                let mut gone = false;
                for target in targets {
                    let path = format!("{}/{}", request.lock_path, contenders[target].name);
                    let Some(watcher) = watch_contender(client, &path).await? else {
                        gone = true;
                        break;
                    };
                    watchers.push(Box::pin(watcher.changed()));
                }
                if gone {
                    continue;
                }
                let any_change = futures::future::select_all(watchers);
                if tokio::time::timeout_at(deadline, any_change).await.is_ok() {
                    observer.woken();
                }
            }
        }
    }
}

/// Rewrites a contender's data unchanged, which fires its successor's watch. Idempotent,
/// so connection loss is retried for as long as the session may live.
async fn touch(client: &zk::Client, node_path: &str, data: &[u8]) -> Result<(), zk::Error> {
    let deadline = Instant::now() + client.session_timeout();
    loop {
        match client.set_data(node_path, data, None).await {
            Ok(_) => return Ok(()),
            Err(err) if crate::errors::outcome_unknown(&err) && Instant::now() < deadline => {
                tracing::debug!(node_path, error = %err, "touch of a new holder interrupted; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
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

/// Releases a held lock. Connection loss is retried for as long as the session may
/// live; a node found gone after a lost reply was deleted by our own earlier attempt.
/// Otherwise already gone (session expired, lease reaper, someone else) gives `Ok(false)`.
pub async fn release(client: &zk::Client, held: &Held) -> Result<bool, zk::Error> {
    let deadline = Instant::now() + client.session_timeout();
    let mut retried = false;
    loop {
        match client.delete(&held.node_path, None).await {
            Ok(()) => return Ok(true),
            Err(zk::Error::NoNode) => return Ok(retried),
            Err(err) if crate::errors::outcome_unknown(&err) && Instant::now() < deadline => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Holders (with who they are) and the number of waiters.
pub async fn snapshot(client: &zk::Client, lock_path: &str, max_holders: u32) -> Result<LockSnapshot, LockError> {
    let children = match client.list_children(lock_path).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => return Err(LockError::NotProvisioned(lock_path.to_owned())),
        Err(err) => return Err(err.into()),
    };
    let contenders = sorted_contenders(&children);
    let holders: Vec<usize> =
        (0..contenders.len()).filter(|&i| decide(&contenders, i, max_holders) == Decision::Holds).collect();
    let mut views = Vec::with_capacity(holders.len());
    for &i in &holders {
        let c = &contenders[i];
        let data = match client.get_data(&format!("{lock_path}/{}", c.name)).await {
            Ok((data, _)) => data,
            Err(zk::Error::NoNode) => continue, // released meanwhile
            Err(err) => return Err(err.into()),
        };
        let holder = serde_json::from_slice::<HolderInfo>(&data).ok();
        let foreign = holder.is_none().then(|| String::from_utf8_lossy(&data).into_owned());
        views.push(ContenderView { node: c.name.clone(), sequence: c.sequence, mode: c.mode, holder, foreign });
    }
    Ok(LockSnapshot { max_holders, waiters: contenders.len() - holders.len(), holders: views })
}

/// Creates our contender and returns its path and fencing token (czxid).
///
/// A create whose reply was lost is found again by the uuid in its name, once the
/// connection is back (for as long as the session may live); not there, it is sent again.
/// If no answer can be had in that time, a background task deletes whatever node carries
/// our uuid once it can, so a create applied late never holds the lock for nobody.
async fn create_contender(
    client: &zk::Client,
    request: &AcquireRequest<'_>,
    data: &[u8],
) -> Result<(String, i64), LockError> {
    let lock_path = request.lock_path;
    let prefix = format!("{PROTECTED_PREFIX}{}-", uuid::Uuid::new_v4());
    let base = format!("{lock_path}/{prefix}{}", request.mode.node_name());
    let options = zk::CreateMode::EphemeralSequential.with_acls(request.acl.acls());
    let deadline = Instant::now() + client.session_timeout();
    loop {
        let err = match client.create(&base, data, &options).await {
            Ok((stat, sequence)) => return Ok((format!("{base}{sequence}"), stat.czxid)),
            Err(zk::Error::NoNode) => return Err(LockError::NotProvisioned(lock_path.to_owned())),
            Err(err) if crate::errors::outcome_unknown(&err) => err,
            Err(err) => return Err(err.into()),
        };
        tracing::debug!(lock_path, error = %err, "create of contender interrupted; looking for it");
        loop {
            if Instant::now() >= deadline {
                let (client, lock_path, prefix) = (client.clone(), lock_path.to_owned(), prefix.clone());
                tokio::spawn(async move { withdraw_by_prefix(&client, &lock_path, &prefix).await });
                return Err(err.into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            match find_by_prefix(client, lock_path, &prefix).await {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => break, // not applied: send it again
                Err(e) if crate::errors::outcome_unknown(&e) => continue,
                Err(zk::Error::NoNode) => return Err(LockError::NotProvisioned(lock_path.to_owned())),
                Err(e) => return Err(e.into()),
            }
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
struct Contender {
    name: String,
    sequence: i64,
    mode: LockMode,
}

/// Parses and orders the children of a lock's znode by sequence. Children that are not
/// sequential contenders are ignored.
fn sorted_contenders(children: &[String]) -> Vec<Contender> {
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
enum Decision {
    Holds,
    /// Indices of the contenders to watch.
    Wait(Vec<usize>),
}

/// Whether the contender at `index` holds, and if not, which contenders to watch.
fn decide(contenders: &[Contender], index: usize, max_holders: u32) -> Decision {
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

/// Deletes the contender unless disarmed — also when the acquire future is dropped.
struct WithdrawOnDrop {
    client: zk::Client,
    node_path: Option<String>,
}

impl WithdrawOnDrop {
    fn disarm(&mut self) {
        self.node_path = None;
    }

    async fn withdraw(&mut self) {
        if let Some(path) = self.node_path.take() {
            delete_contender(&self.client, &path).await;
        }
    }
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.node_path.take() {
            let client = self.client.clone();
            tokio::spawn(async move { delete_contender(&client, &path).await });
        }
    }
}

/// Deletes a contender, retrying connection loss for as long as the session may live.
async fn delete_contender(client: &zk::Client, path: &str) {
    let deadline = Instant::now() + client.session_timeout() * 2;
    loop {
        match client.delete(path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => return,
            Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => return, // gone with the session
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(path, error = %err, "withdrawing contender; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => {
                tracing::warn!(path, error = %err, "could not withdraw contender; it goes with the session");
                return;
            }
        }
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
