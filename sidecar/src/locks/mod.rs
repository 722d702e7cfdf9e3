//! This pod's locks: acquire, release, renew and status per (lock, owner), over the lock
//! recipe of `paddock-recipes`.
//!
//! Invariants:
//! - One entry per (lock, owner): waiting, held, or lost. A held entry names the
//!   contender node and the fencing token; re-acquiring returns the same token.
//! - A lock is never silently re-acquired: once its session expires, its TTL elapses,
//!   its node is deleted, or the connection stays lost past the session timeout, the
//!   entry turns `lost` and an event is sent; the owner must acquire again (new token).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_recipes::lock::{self, AcquireRequest, Acquisition, HolderInfo, LockError, LockMode, LockSnapshot};
use paddock_recipes::session::{Current, SessionError};
use paddock_recipes::{LockConfig, Name, zk};
use serde::Serialize;
use tokio::time::Instant;

use crate::config_cache::{CacheError, ConfigCache};
use crate::context::ServiceContext;
use crate::events::{Event, LossReason, now};
use crate::metrics::{Metrics, lock_label};

mod fresh;
mod listing;
mod loss;
mod observe;
mod sets;

pub use self::fresh::StaleGrant;
pub use self::listing::Holding;
use self::loss::{enforce_lease, ensure_holder_watch, follow_session};
pub use self::observe::View;
pub use self::sets::SetOutcome;

type Key = (Name, String);

#[derive(Debug, Clone)]
enum Entry {
    Waiting,
    Held(HeldLock),
    Lost(LostLock),
}

#[derive(Debug, Clone)]
struct HeldLock {
    held: lock::Held,
    generation: u64,
    acquired_at: String,
    /// When it was granted, for the hold-time metrics.
    since: Instant,
    ttl: Option<Duration>,
    expires_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct LostLock {
    token: i64,
    reason: LossReason,
    at: String,
    /// A node we could not delete when we declared the lock lost (we were disconnected);
    /// deleted once the connection is back, if the session survived.
    orphan: Option<String>,
}

/// What the caller gets for a held lock.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    pub name: String,
    pub owner: String,
    pub pod: String,
    pub token: i64,
    pub mode: LockMode,
    pub acquired_at: String,
    #[serde(skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Milliseconds left on the lease, when there is a ttl.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// True when this owner already held the lock (same token).
    pub reentrant: bool,
}

#[derive(Debug)]
pub enum AcquireOutcome {
    Acquired(Grant),
    Busy(LockSnapshot),
}

/// The state of a lock for one owner, plus who holds it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub name: String,
    pub owner: String,
    /// This owner's part: `free` (neither holds nor waits), `held`, `waiting` or `lost`.
    #[serde(flatten)]
    pub holding: Holding,
    /// Set when ZooKeeper is unreachable: why holders and waiters are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<String>,
    #[serde(flatten)]
    pub snapshot: Option<LockSnapshot>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockServiceError {
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("owner {owner} is already waiting for lock {name}")]
    AlreadyWaiting { name: Name, owner: String },
    #[error("owner {owner} holds lock {name} shared and asked for it exclusive")]
    HeldShared { name: Name, owner: String },
    #[error("lock {name} is not held by owner {owner}")]
    NotHeld { name: Name, owner: String },
    #[error("lock {name} was lost ({}) before this request; acquire it again", reason.as_str())]
    Lost { name: Name, owner: String, token: i64, reason: LossReason },
    /// A grant decided too long before it could be answered (see `fresh`); not acquired.
    #[error("the grant of lock {name} to owner {owner} was decided {decided_ago:?} ago and {why}")]
    StaleGrant { name: Name, owner: String, decided_ago: Duration, why: StaleGrant },
    #[error("ZooKeeper: {0}")]
    ZooKeeper(#[from] zk::Error),
}

impl LockServiceError {
    /// ZooKeeper could not be asked (no session, connection lost): not the caller's fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            LockServiceError::Session(_) => true,
            LockServiceError::ZooKeeper(e) | LockServiceError::Lock(LockError::ZooKeeper(e)) => {
                paddock_recipes::retry::unavailable(e)
            }
            _ => false,
        }
    }
}

/// How long a status waits for ZooKeeper's part (holders and waiters) before it answers
/// with what is known locally.
const STATUS_REMOTE_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct LockService {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: ServiceContext,
    table: Mutex<HashMap<Key, Entry>>,
    /// Bumped on every connection state change, so a stale "suspended too long" timer
    /// knows it is stale.
    connection_epoch: AtomicU64,
    configs: ConfigCache<LockConfig>,
    /// Lock paths this process watches, with the session generation of the watch.
    watched_locks: Mutex<HashMap<String, u64>>,
    observers: observe::Observers,
}

struct MetricWake<'a>(&'a Metrics);

impl lock::WakeObserver for MetricWake<'_> {
    fn woken(&self) {
        self.0.lock_wakeups.inc();
    }

    fn delayed(&self) {
        self.0.lock_delays.inc();
    }
}

impl LockService {
    pub fn new(ctx: ServiceContext) -> Self {
        let inner = Arc::new(Inner {
            ctx,
            table: Mutex::new(HashMap::new()),
            connection_epoch: AtomicU64::new(0),
            configs: ConfigCache::default(),
            watched_locks: Mutex::default(),
            observers: observe::Observers::default(),
        });
        tokio::spawn(follow_session(inner.clone()));
        Self { inner }
    }

    pub fn namespace(&self) -> &Name {
        &self.inner.ctx.namespace
    }

    pub fn pod(&self) -> &str {
        &self.inner.ctx.pod_name
    }

    /// The lock's config, cached until its znode changes.
    pub(crate) async fn config(&self, current: &Current, lock_path: &str) -> Result<LockConfig, LockServiceError> {
        let metrics = &self.inner.ctx.metrics;
        let parse = |path: &str, data: &[u8]| {
            LockConfig::parse_znode(path, data).map(|parsed| {
                metrics.unknown_config_fields("lock", path, &parsed.unknown_fields);
                parsed.config
            })
        };
        match self.inner.configs.get(current, lock_path, parse).await {
            Ok(config) => Ok(config),
            Err(CacheError::NoNode) => Err(LockError::NotProvisioned(lock_path.to_owned()).into()),
            Err(CacheError::Invalid(e)) => Err(LockError::Config(e).into()),
            Err(CacheError::ZooKeeper(e)) => Err(e.into()),
        }
    }

    pub fn lock_path(&self, name: &Name) -> String {
        self.inner.ctx.layout.lock(&self.inner.ctx.namespace, name)
    }

    pub async fn acquire(
        &self,
        name: Name,
        owner: String,
        mode: LockMode,
        wait: Duration,
        ttl: Option<Duration>,
    ) -> Result<AcquireOutcome, LockServiceError> {
        let inner = &self.inner;
        let key = (name.clone(), owner.clone());
        let reentrant = {
            let mut table = inner.table.lock().expect("not poisoned");
            match table.get(&key) {
                // A shared hold cannot be upgraded in place (two readers upgrading would
                // wait on each other forever); an exclusive hold covers a shared ask.
                Some(Entry::Held(held)) if held.held.mode == LockMode::Shared && mode == LockMode::Exclusive => {
                    return Err(LockServiceError::HeldShared { name, owner });
                }
                Some(Entry::Held(_)) => true,
                Some(Entry::Waiting) => return Err(LockServiceError::AlreadyWaiting { name, owner }),
                Some(Entry::Lost(_)) | None => {
                    table.insert(key.clone(), Entry::Waiting);
                    false
                }
            }
        };
        if reentrant {
            // Same token; a ttl given now (or the lease's own) restarts the lease.
            return self.renew(name, owner, ttl).map(AcquireOutcome::Acquired);
        }
        let mut waiting = ClearWaiting { inner, key: Some(key.clone()) };

        let started = Instant::now();
        let current = inner.ctx.current().await?;
        let lock_path = self.lock_path(&name);
        let config = self.config(&current, &lock_path).await?;
        let holder = HolderInfo { pod: inner.ctx.pod_name.clone(), owner: owner.clone() };
        let acl = inner.ctx.layout.node_acl();
        let request = AcquireRequest { lock_path: &lock_path, mode, holder: &holder, wait, acl };
        let outcome = lock::acquire(&current.client, &config, &request, &MetricWake(&inner.ctx.metrics)).await?;
        inner.ctx.metrics.lock_wait_seconds.observe(started.elapsed().as_secs_f64());

        match outcome {
            Acquisition::TimedOut(snapshot) => {
                inner.ctx.metrics.lock_timeouts.inc();
                Ok(AcquireOutcome::Busy(snapshot))
            }
            Acquisition::Acquired(held) => {
                let held = self.confirm_fresh(&name, &owner, held, &current.client).await?;
                waiting.key = None;
                let ttl = ttl.or(config.default_ttl);
                let expires_at = ttl.map(|t| Instant::now() + t);
                let entry = HeldLock {
                    held,
                    generation: current.generation,
                    acquired_at: now(),
                    since: Instant::now(),
                    ttl,
                    expires_at,
                };
                Ok(AcquireOutcome::Acquired(self.record_grant(key, entry, lock_path, current)))
            }
        }
    }

    /// Enters a new hold in the table, tells the app and the metrics, and starts
    /// watching for its loss (and its lease, if it has one).
    fn record_grant(&self, key: Key, entry: HeldLock, lock_path: String, current: Current) -> Grant {
        let inner = &self.inner;
        let (name, owner) = &key;
        let grant = inner.grant(name, owner, &entry, false);
        let (node_path, leased) = (entry.held.node_path.clone(), entry.ttl.is_some());
        inner.table.lock().expect("not poisoned").insert(key.clone(), Entry::Held(entry));
        inner.ctx.metrics.lock_acquires.inc();
        inner.ctx.metrics.locks_held.inc();
        inner.ctx.events.publish(Event::LockAcquired {
            name: name.to_string(),
            owner: owner.clone(),
            token: grant.token,
            at: grant.acquired_at.clone(),
        });
        tokio::spawn(ensure_holder_watch(inner.clone(), lock_path, node_path, current.client, current.generation));
        if leased {
            tokio::spawn(enforce_lease(inner.clone(), key, grant.token));
        }
        grant
    }

    pub async fn release(&self, name: Name, owner: String) -> Result<i64, LockServiceError> {
        let inner = &self.inner;
        let key = (name.clone(), owner.clone());
        let entry = inner.table.lock().expect("not poisoned").remove(&key);
        match entry {
            Some(Entry::Held(held)) => {
                // The entry is gone before the node is, so our own delete is not taken for a loss.
                let put_back = |held: HeldLock| {
                    inner.table.lock().expect("not poisoned").insert(key.clone(), Entry::Held(held));
                };
                let client = match inner.ctx.current().await {
                    Ok(current) => current.client,
                    Err(err) => {
                        put_back(held);
                        return Err(err.into());
                    }
                };
                let token = held.held.token;
                match lock::release(&client, &held.held).await {
                    Ok(deleted) => {
                        inner.ctx.metrics.locks_held.dec();
                        inner.observe_hold(&name, &held);
                        if !deleted {
                            inner.count_loss(LossReason::NodeDeleted);
                            return Err(LockServiceError::Lost { name, owner, token, reason: LossReason::NodeDeleted });
                        }
                        inner.ctx.metrics.lock_releases.inc();
                        inner.ctx.events.publish(Event::LockReleased {
                            name: name.to_string(),
                            owner,
                            token,
                            at: now(),
                        });
                        Ok(token)
                    }
                    Err(err) => {
                        put_back(held);
                        Err(err.into())
                    }
                }
            }
            Some(Entry::Lost(lost)) => {
                Err(LockServiceError::Lost { name, owner, token: lost.token, reason: lost.reason })
            }
            Some(Entry::Waiting) => {
                inner.table.lock().expect("not poisoned").insert(key, Entry::Waiting);
                Err(LockServiceError::NotHeld { name, owner })
            }
            None => Err(LockServiceError::NotHeld { name, owner }),
        }
    }

    /// Extends a lease by `ttl` (or the lease's own ttl) from now.
    pub fn renew(&self, name: Name, owner: String, ttl: Option<Duration>) -> Result<Grant, LockServiceError> {
        let key = (name.clone(), owner.clone());
        let mut table = self.inner.table.lock().expect("not poisoned");
        match table.get_mut(&key) {
            Some(Entry::Held(held)) => {
                let had_lease = held.expires_at.is_some();
                if let Some(ttl) = ttl.or(held.ttl) {
                    held.ttl = Some(ttl);
                    held.expires_at = Some(Instant::now() + ttl);
                }
                let grant = self.inner.grant(&name, &owner, held, true);
                drop(table);
                if !had_lease && grant.ttl.is_some() {
                    tokio::spawn(enforce_lease(self.inner.clone(), key, grant.token));
                }
                Ok(grant)
            }
            Some(Entry::Lost(lost)) => {
                Err(LockServiceError::Lost { name, owner, token: lost.token, reason: lost.reason })
            }
            Some(Entry::Waiting) | None => Err(LockServiceError::NotHeld { name, owner }),
        }
    }

    /// This owner's state, which is known locally even while ZooKeeper is unreachable
    /// (an app must learn `lost` then too), plus the holders and waiters when reachable.
    pub async fn status(&self, name: Name, owner: String) -> Result<Status, LockServiceError> {
        let remote = async {
            let current = self.inner.ctx.current().await?;
            let lock_path = self.lock_path(&name);
            let config = self.config(&current, &lock_path).await?;
            Ok::<_, LockServiceError>(lock::snapshot(&current.client, &lock_path, config.max_holders).await?)
        };
        // ZooKeeper's part waits for a reconnecting session and reads again after a lost
        // connection, but never holds back the local part: an app polls this to learn of a
        // loss, also while its pod is cut off from ZooKeeper.
        let (snapshot, zookeeper) = match tokio::time::timeout(STATUS_REMOTE_WAIT, remote).await {
            Ok(Ok(snapshot)) => (Some(snapshot), None),
            Ok(Err(err)) if err.is_unavailable() => (None, Some(format!("{err}; holders and waiters unknown"))),
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                let waited = humantime::format_duration(STATUS_REMOTE_WAIT);
                (None, Some(format!("ZooKeeper did not answer within {waited}; holders and waiters unknown")))
            }
        };
        let entry = self.inner.table.lock().expect("not poisoned").get(&(name.clone(), owner.clone())).cloned();
        let holding = Holding::of(entry.as_ref());
        let status = Status { name: name.to_string(), owner, holding, zookeeper, snapshot };
        Ok(status)
    }

    /// Sets the per-lock gauge of the longest current hold (locks not held have none).
    pub fn report_gauges(&self) {
        let mut longest: HashMap<String, f64> = HashMap::new();
        for entry in self.inner.table.lock().expect("not poisoned").iter() {
            if let ((name, _), Entry::Held(held)) = entry {
                let seconds = held.since.elapsed().as_secs_f64();
                let value = longest.entry(name.to_string()).or_default();
                *value = value.max(seconds);
            }
        }
        let gauges = &self.inner.ctx.metrics.lock_held_seconds;
        gauges.clear();
        for (name, seconds) in longest {
            gauges.get_or_create(&lock_label(&name)).set(seconds);
        }
    }

    /// Releases every held lock (SIGTERM).
    pub async fn release_all(&self) {
        let held: Vec<Key> = self
            .inner
            .table
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Held(_)))
            .map(|(k, _)| k.clone())
            .collect();
        for (name, owner) in held {
            match self.release(name.clone(), owner.clone()).await {
                Ok(token) => tracing::info!(lock = %name, owner, token, "released at shutdown"),
                Err(err) => tracing::warn!(lock = %name, owner, error = %err, "could not release at shutdown"),
            }
        }
    }
}

fn millis_left(deadline: Instant) -> u64 {
    deadline.saturating_duration_since(Instant::now()).as_millis() as u64
}

impl Inner {
    fn grant(&self, name: &Name, owner: &str, held: &HeldLock, reentrant: bool) -> Grant {
        Grant {
            name: name.to_string(),
            owner: owner.to_owned(),
            pod: self.ctx.pod_name.clone(),
            token: held.held.token,
            mode: held.held.mode,
            acquired_at: held.acquired_at.clone(),
            ttl: held.ttl,
            expires_in_ms: held.expires_at.map(millis_left),
            reentrant,
        }
    }
}

/// Removes a `waiting` entry when an acquire ends without a grant (or its caller left).
struct ClearWaiting<'a> {
    inner: &'a Inner,
    key: Option<Key>,
}

impl Drop for ClearWaiting<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut table = self.inner.table.lock().expect("not poisoned");
            if matches!(table.get(&key), Some(Entry::Waiting)) {
                table.remove(&key);
            }
        }
    }
}
