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

mod contender;
mod delay;
mod observe;
mod proof;

pub use self::contender::watch_contender;
use self::contender::{Decision, WithdrawOnDrop, create_contender, decide, sorted_contenders, touch};
use self::delay::LockDelay;
pub use self::delay::is_held_record;
pub use self::observe::{HolderCache, Observed, ObservedHolder, observe};
pub use self::proof::{forgo, reprove};
use crate::config::{ConfigError, LockConfig};
use crate::retry::while_unknown;
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
    /// The held record a release deletes with the contender (locks with a lock-delay).
    pub record: Option<String>,
    /// When the request whose answer proved the grant was *sent*: the listing that found
    /// our contender there and first (or a later read that found it still ours, see
    /// [`reprove`]). The send time, not the answer's: the server answered on our session
    /// after it, so the session (and our ephemeral contender) stands until at least this
    /// plus the session timeout, however long the answer took to reach us. See
    /// [`Held::is_fresh`].
    pub proved_at: Instant,
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

impl LockError {
    /// A read of the lock's znode or its children that found nothing: the lock is not
    /// provisioned (or was deleted).
    pub(crate) fn or_not_provisioned(err: zk::Error, lock_path: &str) -> Self {
        match err {
            zk::Error::NoNode => LockError::NotProvisioned(lock_path.to_owned()),
            err => err.into(),
        }
    }
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

/// Counts watch wake-ups, so tests and metrics can show that a release wakes one waiter,
/// and grants held back by a lock-delay.
pub trait WakeObserver: Send + Sync {
    fn woken(&self);
    /// An acquire that is due the lock waits for a lock-delay (once per acquire).
    fn delayed(&self) {}
}

impl WakeObserver for () {
    fn woken(&self) {}
}

/// Reads a lock's config; `NotProvisioned` when its znode is missing.
pub async fn read_config(client: &zk::Client, lock_path: &str) -> Result<LockConfig, LockError> {
    let (data, _) = client.get_data(lock_path).await.map_err(|e| LockError::or_not_provisioned(e, lock_path))?;
    Ok(LockConfig::from_znode(lock_path, &data)?)
}

/// Our contender, while an acquire runs.
struct Ours<'a> {
    request: &'a AcquireRequest<'a>,
    config: &'a LockConfig,
    node_path: String,
    token: i64,
    data: Vec<u8>,
    guard: WithdrawOnDrop,
}

/// Acquires the lock at `request.lock_path`, waiting up to `request.wait`.
///
/// If the returned future is dropped midway (the caller went away), the contender is
/// deleted in the background so it cannot block the lock. With a lock-delay, a grant
/// waits until `lockDelay` after this acquire first saw a holder's stale record
/// ([`delay`]); a wait that ends first answers busy, as any.
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
    let guard = WithdrawOnDrop { client: client.clone(), node_path: Some(node_path.clone()), record: None };
    let node_name = node_path.rsplit('/').next().expect("node path has a name").to_owned();
    let mut ours = Ours { request, config, node_path, token, data, guard };
    let mut delay = LockDelay::new(config.lock_delay());
    let mut delayed = false;

    loop {
        let (children, listed_at) = match list_contenders(client, request.lock_path).await {
            Ok(listed) => listed,
            Err(zk::Error::NoNode) => {
                ours.guard.disarm();
                return Err(LockError::NotProvisioned(request.lock_path.to_owned()));
            }
            Err(err) => return Err(err.into()),
        };
        let contenders = sorted_contenders(&children);
        let Some(index) = contenders.iter().position(|c| c.name == node_name) else {
            ours.guard.disarm();
            return Err(LockError::ContenderLost(ours.node_path));
        };
        delay.observe(&children, &contenders, Instant::now());
        let targets = match decide(&contenders, index, config.max_holders) {
            Decision::Holds => match delay.pending(Instant::now()) {
                None => return hold(client, ours, contenders[index].sequence, &delay, listed_at).await,
                Some(until) => {
                    if !std::mem::replace(&mut delayed, true) {
                        observer.delayed();
                    }
                    Err(until)
                }
            },
            Decision::Wait(targets) => Ok(targets),
        };
        if Instant::now() >= deadline {
            ours.guard.withdraw().await;
            let snapshot = snapshot(client, request.lock_path, config.max_holders).await?;
            return Ok(Acquisition::TimedOut(snapshot));
        }
        match targets {
            // Due the lock once the delay is over: nothing to watch meanwhile (only a
            // contender ahead of us leaving could change it, and that only for the better).
            Err(until) => tokio::time::sleep_until(until.min(deadline)).await,
            Ok(targets) => {
                let paths = targets.iter().map(|&t| format!("{}/{}", request.lock_path, contenders[t].name));
                wait_for_any(client, paths, deadline, observer).await?;
            }
        }
    }
}

/// The lock's children, and when the listing that found them was sent (a grant's proof
/// dates from it). A listing lost with its connection is sent again once the session is
/// back, for as long as the session may live.
async fn list_contenders(client: &zk::Client, lock_path: &str) -> Result<(Vec<String>, Instant), zk::Error> {
    while_unknown(client, "listing a lock's contenders", |_| async {
        let sent = Instant::now();
        client.list_children(lock_path).await.map(|children| (children, sent))
    })
    .await
}

/// Waits until one of the contenders at `paths` changes or goes, or the deadline; at once
/// when one is already gone.
async fn wait_for_any(
    client: &zk::Client,
    paths: impl Iterator<Item = String>,
    deadline: Instant,
    observer: &dyn WakeObserver,
) -> Result<(), LockError> {
    let mut watchers = Vec::new();
    for path in paths {
        let watched = while_unknown(client, "watching a contender", |_| watch_contender(client, &path)).await?;
        let Some(watcher) = watched else { return Ok(()) };
        watchers.push(Box::pin(watcher.changed()));
    }
    let any_change = futures::future::select_all(watchers);
    if tokio::time::timeout_at(deadline, any_change).await.is_ok() {
        observer.woken();
    }
    Ok(())
}

/// Our contender holds (and any lock-delay is over), as the listing sent at `listed_at`
/// showed: its held record when the lock has a lock-delay, the successor's wake-up of a
/// semaphore, then the grant. Until all of that is done the contender is not handed out:
/// an error withdraws it, so no holder is left that nobody knows of.
async fn hold(
    client: &zk::Client,
    mut ours: Ours<'_>,
    sequence: i64,
    delay: &LockDelay,
    listed_at: Instant,
) -> Result<Acquisition, LockError> {
    let lock_path = ours.request.lock_path;
    let record = if ours.config.lock_delay().is_zero() {
        None
    } else {
        let path = format!("{lock_path}/{}", delay::record_name(sequence));
        let created = delay::create_record(client, &path, &ours.data, &ours.request.acl).await;
        ours.guard.record = Some(path.clone());
        if let Err(err) = created {
            ours.guard.withdraw().await;
            return Err(LockError::or_not_provisioned(err, lock_path));
        }
        Some(path)
    };
    if ours.config.max_holders > 1 {
        // Wake our successor: it may now be next in line and must watch the holders.
        if let Err(err) = touch(client, &ours.node_path, &ours.data).await {
            ours.guard.withdraw().await;
            return Err(err.into());
        }
    }
    // The stale records this acquire waited out: nobody needs to wait for them again.
    for name in delay.noticed() {
        delay::delete_record(client, &format!("{lock_path}/{name}")).await;
    }
    ours.guard.disarm();
    Ok(Acquisition::Acquired(Held {
        lock_path: lock_path.to_owned(),
        node_path: ours.node_path,
        token: ours.token,
        mode: ours.request.mode,
        record,
        proved_at: listed_at,
    }))
}

/// Releases a held lock: its contender and, with a lock-delay, its held record in one
/// multi, so the next holder is granted at once. Connection loss is retried for as long
/// as the session may live; a node found gone after a lost reply was deleted by our own
/// earlier attempt. Otherwise already gone (session expired, lease reaper, someone else)
/// gives `Ok(false)`.
pub async fn release(client: &zk::Client, held: &Held) -> Result<bool, zk::Error> {
    while_unknown(client, "release", |this| async move {
        let Some(record) = &held.record else { return delete_node(client, &held.node_path, this.retried).await };
        let mut multi = client.new_multi_writer();
        multi.add_delete(&held.node_path, None)?;
        multi.add_delete(record, None)?;
        match multi.commit().await {
            Ok(_) => Ok(true),
            // Both went in one multi: ours, if a try before was applied.
            Err(zk::MultiWriteError::OperationFailed { index: 0, source: zk::Error::NoNode }) => Ok(this.retried),
            // The record alone is gone (deleted by hand): the release still is one.
            Err(zk::MultiWriteError::OperationFailed { index: 1, source: zk::Error::NoNode }) => {
                delete_node(client, &held.node_path, this.retried).await
            }
            Err(err) => Err(err.into()),
        }
    })
    .await
}

/// Deletes a held contender without releasing it: its held record stays, so the lock's
/// next grant waits the lock-delay (a lease that elapsed: its holder may still be
/// writing). Retried as [`release`] is; `Ok(false)` when it was already gone.
pub async fn abandon(client: &zk::Client, held: &Held) -> Result<bool, zk::Error> {
    while_unknown(client, "abandoning a hold", |this| delete_node(client, &held.node_path, this.retried)).await
}

/// Deletes a node: true when deleted now, or gone after a try that may have deleted it.
async fn delete_node(client: &zk::Client, path: &str, retried: bool) -> Result<bool, zk::Error> {
    match client.delete(path, None).await {
        Ok(()) => Ok(true),
        Err(zk::Error::NoNode) => Ok(retried),
        Err(err) => Err(err),
    }
}

/// Holders (with who they are) and the number of waiters.
pub async fn snapshot(client: &zk::Client, lock_path: &str, max_holders: u32) -> Result<LockSnapshot, LockError> {
    let (children, _) =
        list_contenders(client, lock_path).await.map_err(|e| LockError::or_not_provisioned(e, lock_path))?;
    let contenders = sorted_contenders(&children);
    let holders: Vec<usize> =
        (0..contenders.len()).filter(|&i| decide(&contenders, i, max_holders) == Decision::Holds).collect();
    let mut views = Vec::with_capacity(holders.len());
    for &i in &holders {
        let c = &contenders[i];
        let path = format!("{lock_path}/{}", c.name);
        let data = match while_unknown(client, "reading a holder", |_| client.get_data(&path)).await {
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
