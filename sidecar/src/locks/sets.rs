//! Several locks at once: all of a set or none.
//!
//! A set is acquired one lock at a time in name order. Every set request takes its locks
//! in that same global order, so two of them never wait on each other (no cycle of
//! waits); a single-lock acquire is a set of one. When one lock of the set stays busy for
//! the rest of the wait, or fails, the locks already granted by this request are given
//! back, also when the caller goes away midway.

use std::time::Duration;

use paddock_recipes::Name;
use paddock_recipes::lock::{LockMode, LockSnapshot};
use tokio::time::Instant;

use super::{AcquireOutcome, Grant, LockService, LockServiceError};

pub enum SetOutcome {
    /// Every lock of the set, in name order.
    Acquired(Vec<Grant>),
    /// `name` stayed busy; none of the set is held by this request.
    Busy { name: Name, snapshot: LockSnapshot },
}

impl LockService {
    pub async fn acquire_set(
        &self,
        mut names: Vec<Name>,
        owner: String,
        mode: LockMode,
        wait: Duration,
        ttl: Option<Duration>,
    ) -> Result<SetOutcome, (Name, LockServiceError)> {
        names.sort();
        names.dedup();
        let deadline = Instant::now() + wait;
        let mut granted = GiveBack { service: self.clone(), owner: owner.clone(), names: Vec::new() };
        let mut grants = Vec::with_capacity(names.len());
        for name in names.iter().cloned() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acquire(name.clone(), owner.clone(), mode, left, ttl).await {
                Ok(AcquireOutcome::Acquired(grant)) => {
                    // A lock this owner held before the request stays held whatever happens.
                    if !grant.reentrant {
                        granted.names.push(name);
                    }
                    grants.push(grant);
                }
                // Given back before answering: a retry by the same owner must not find them
                // still held (it would be granted them reentrantly, then lose them).
                Ok(AcquireOutcome::Busy(snapshot)) => {
                    granted.give_back().await;
                    return Ok(SetOutcome::Busy { name, snapshot });
                }
                Err(e) => {
                    granted.give_back().await;
                    return Err((name, e));
                }
            }
        }
        // The earlier locks' grants may be old by now: each is proved to stand, or the set
        // is given back.
        for name in names {
            if let Err(e) = self.confirm_still_held(&name, &owner).await {
                granted.give_back().await;
                return Err((name, e));
            }
        }
        granted.names.clear();
        Ok(SetOutcome::Acquired(grants))
    }

    /// Releases each of `names` held by `owner`: per lock, its token or why not.
    pub async fn release_set(&self, names: Vec<Name>, owner: String) -> Vec<(Name, Result<i64, LockServiceError>)> {
        let mut results = Vec::with_capacity(names.len());
        for name in names {
            let result = self.release(name.clone(), owner.clone()).await;
            results.push((name, result));
        }
        results
    }
}

/// The locks a set request was granted so far; released when it is dropped armed (the
/// request failed, found a lock busy, or its caller went away).
struct GiveBack {
    service: LockService,
    owner: String,
    names: Vec<Name>,
}

impl GiveBack {
    async fn give_back(&mut self) {
        let names = std::mem::take(&mut self.names);
        report(self.service.release_set(names, self.owner.clone()).await);
    }
}

fn report(results: Vec<(Name, Result<i64, LockServiceError>)>) {
    for (name, result) in results {
        if let Err(e) = result {
            tracing::warn!(lock = %name, error = %e, "giving back a lock of an unfinished set");
        }
    }
}

impl Drop for GiveBack {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let (service, owner, names) = (self.service.clone(), self.owner.clone(), std::mem::take(&mut self.names));
        tokio::spawn(async move { report(service.release_set(names, owner).await) });
    }
}
