//! Locks observed without contending (`GET /lock/{name}/holders`, `GET /events?watch=`).
//!
//! One task per observed lock keeps a [`View`] in a watch channel: it lists the lock's
//! contenders with a one-shot ZooKeeper watch, publishes what it saw, and waits for the
//! watch; so while nothing changes it makes no reads at all. It re-lists after every
//! change, after a session expiry (the watch fires then too) and stops once nobody has
//! looked for a whole change (the next look starts it again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_recipes::Name;
use paddock_recipes::config::ConfigError;
use paddock_recipes::lock::{self, HolderCache, LockError, Observed};
use tokio::sync::watch;

use super::{Inner, LockService, LockServiceError};

/// What an observer knows of a lock.
#[derive(Debug, Clone)]
pub enum View {
    /// Not looked at yet.
    Starting,
    Ready(Arc<Observed>),
    /// No DistributedLock provisions it (its znode's path).
    NotProvisioned(String),
    /// Its config cannot be used.
    Invalid(ConfigError),
    /// Another error that retrying will not mend (e.g. no access).
    Failed(String),
    /// ZooKeeper cannot be asked now; the observer keeps trying.
    Unavailable(String),
}

#[derive(Default)]
pub(super) struct Observers {
    views: Mutex<HashMap<Name, watch::Receiver<View>>>,
}

impl LockService {
    /// The view of `name`, kept current in the background while anyone holds a receiver.
    pub fn observe(&self, name: &Name) -> watch::Receiver<View> {
        let mut views = self.inner.observers.views.lock().expect("not poisoned");
        if let Some(view) = views.get(name)
            && view.has_changed().is_ok()
        {
            return view.clone();
        }
        let (sender, view) = watch::channel(View::Starting);
        views.insert(name.clone(), view.clone());
        tokio::spawn(keep_view(self.inner.clone(), name.clone(), sender));
        view
    }
}

async fn keep_view(inner: Arc<Inner>, name: Name, sender: watch::Sender<View>) {
    let service = LockService { inner: inner.clone() };
    let lock_path = service.lock_path(&name);
    let mut cache = HolderCache::default();
    loop {
        if nobody_looks(&inner, &name, &sender) {
            return;
        }
        let current = match inner.ctx.session.client() {
            Ok(current) => current,
            Err(e) => {
                sender.send_replace(View::Unavailable(e.to_string()));
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let config = match service.config(&current, &lock_path).await {
            Ok(config) => config,
            Err(e) => {
                if fail(&inner, &name, &sender, e) {
                    return;
                }
                continue;
            }
        };
        let mut reads = 0;
        let observed = lock::observe(&current.client, &lock_path, config.max_holders, &mut cache, &mut reads).await;
        inner.ctx.metrics.lock_observer_reads.inc_by(reads);
        match observed {
            Ok((observed, watcher)) => {
                sender.send_if_modified(|view| match view {
                    View::Ready(seen) if **seen == observed => false,
                    _ => {
                        *view = View::Ready(Arc::new(observed));
                        true
                    }
                });
                watcher.changed().await;
            }
            Err(e) => {
                if fail(&inner, &name, &sender, e.into()) {
                    return;
                }
            }
        }
    }
}

/// Publishes a failure; true when the observer ends with it (the lock is not there or
/// unusable: a later look starts afresh), false when it is worth trying again.
fn fail(inner: &Inner, name: &Name, sender: &watch::Sender<View>, err: LockServiceError) -> bool {
    if err.is_unavailable() {
        sender.send_replace(View::Unavailable(err.to_string()));
        return false;
    }
    sender.send_replace(match err {
        LockServiceError::Lock(LockError::NotProvisioned(path)) => View::NotProvisioned(path),
        LockServiceError::Lock(LockError::Config(e)) => View::Invalid(e),
        other => View::Failed(other.to_string()),
    });
    forget(inner, name, sender);
    true
}

/// True (and the view forgotten) when only the table's own receiver is left. Checked and
/// forgotten under the table's lock, so a look that comes meanwhile starts a new observer.
fn nobody_looks(inner: &Inner, name: &Name, sender: &watch::Sender<View>) -> bool {
    let mut views = inner.observers.views.lock().expect("not poisoned");
    if sender.receiver_count() > 1 {
        return false;
    }
    if views.get(name).is_some_and(|view| view.same_channel(&sender.subscribe())) {
        views.remove(name);
    }
    true
}

fn forget(inner: &Inner, name: &Name, sender: &watch::Sender<View>) {
    let mut views = inner.observers.views.lock().expect("not poisoned");
    if views.get(name).is_some_and(|view| view.same_channel(&sender.subscribe())) {
        views.remove(name);
    }
}
