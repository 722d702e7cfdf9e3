//! A grant is handed to the app only while it certainly stands
//! ([`lock::Held::is_fresh`]). One decided more than half the session timeout ago — the
//! sidecar was stopped or starved between the listing that decided it and its answer —
//! is first proved again by a read of its contender. If the contender is gone (the
//! session expired meanwhile, and another pod may hold the lock now) or cannot be read,
//! the app is told it did not acquire the lock, and what is left of the grant is given up.
//! The queue's claims keep the same rule (`QueueService::fresh_only`).

use std::time::Duration;

use paddock_recipes::{Name, lock, zk};

use super::{Entry, LockService, LockServiceError};
use crate::metrics::lock_label;

/// Why a stale grant was not handed out.
#[derive(Debug, thiserror::Error)]
pub enum StaleGrant {
    #[error("its contender is gone (the ZooKeeper session expired meanwhile; another pod may hold the lock now)")]
    Gone,
    #[error("whether its contender still stands could not be checked ({0})")]
    Unconfirmed(zk::Error),
}

impl LockService {
    /// `held` if it is fresh, or once a read has proved it again; otherwise the error the
    /// app gets, the grant given up in the background, counted and logged.
    pub(super) async fn confirm_fresh(
        &self,
        name: &Name,
        owner: &str,
        mut held: lock::Held,
        client: &zk::Client,
    ) -> Result<lock::Held, LockServiceError> {
        let timeout = client.session_timeout();
        let decided_at = held.proved_at;
        // Again if the read itself was stalled past half the session: fresh when answered.
        while !held.is_fresh(timeout) {
            let stale = match lock::reprove(client, &mut held).await {
                Ok(true) => {
                    tracing::info!(
                        lock = %name,
                        owner,
                        token = held.token,
                        decided_ago = %humantime::format_duration(round_ms(decided_at.elapsed())),
                        "a grant decided over half the session timeout ago was proved again: its contender is still ours"
                    );
                    continue;
                }
                Ok(false) => StaleGrant::Gone,
                Err(err) => StaleGrant::Unconfirmed(err),
            };
            let decided_ago = round_ms(decided_at.elapsed());
            tracing::warn!(
                lock = %name,
                owner,
                token = held.token,
                node = held.node_path,
                decided_ago = %humantime::format_duration(decided_ago),
                session_timeout = %humantime::format_duration(timeout),
                why = %stale,
                "a lock grant decided over half the session timeout ago (the sidecar was stopped or starved) no longer stands; not handed out"
            );
            self.inner.ctx.metrics.lock_grants_stale.get_or_create(&lock_label(name.as_str())).inc();
            let client = client.clone();
            tokio::spawn(async move { lock::forgo(&client, &held).await });
            return Err(LockServiceError::StaleGrant {
                name: name.clone(),
                owner: owner.to_owned(),
                decided_ago,
                why: stale,
            });
        }
        Ok(held)
    }
}

impl LockService {
    /// Before a set is answered: `name`, granted earlier in the request, is still held by
    /// this session and certainly stands. Waiting for the set's later locks can outlast
    /// half a session, and a session that expired meanwhile takes the earlier locks with
    /// it while the later ones are granted on the next session.
    pub(super) async fn confirm_still_held(&self, name: &Name, owner: &str) -> Result<(), LockServiceError> {
        let current = self.inner.ctx.current().await?;
        let key = (name.clone(), owner.to_owned());
        let entry = self.inner.table.lock().expect("not poisoned").get(&key).cloned();
        let held = match entry {
            Some(Entry::Held(held)) if held.generation == current.generation => held.held,
            _ => {
                return Err(LockServiceError::StaleGrant {
                    name: name.clone(),
                    owner: owner.to_owned(),
                    decided_ago: Duration::ZERO,
                    why: StaleGrant::Gone,
                });
            }
        };
        let proved = self.confirm_fresh(name, owner, held, &current.client).await?;
        if let Some(Entry::Held(entry)) = self.inner.table.lock().expect("not poisoned").get_mut(&key) {
            entry.held.proved_at = proved.proved_at;
        }
        Ok(())
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
