//! One owner's part in a lock, as the table has it (known also while ZooKeeper is away):
//! [`Holding`], which `GET /lock/{name}` and `GET /status` both show; and every (lock,
//! owner) of this pod held, waited for or lost, for `GET /status`.

use paddock_recipes::lock::LockMode;
use serde::Serialize;

use super::{Entry, LockService, millis_left};
use crate::events::LossReason;

/// An owner's state in a lock, and what goes with it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    /// `free` (neither holds nor waits), `held`, `waiting` or `lost`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_reason: Option<LossReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

impl Holding {
    pub(super) fn of(entry: Option<&Entry>) -> Self {
        let mut holding = Holding { state: "free", token: None, lost_reason: None, lost_at: None, expires_in_ms: None };
        match entry {
            None => {}
            Some(Entry::Waiting) => holding.state = "waiting",
            Some(Entry::Held(held)) => {
                holding.state = "held";
                holding.token = Some(held.held.token);
                holding.expires_in_ms = held.expires_at.map(millis_left);
            }
            Some(Entry::Lost(lost)) => {
                holding.state = "lost";
                holding.token = Some(lost.token);
                holding.lost_reason = Some(lost.reason);
                holding.lost_at = Some(lost.at.clone());
            }
        }
        holding
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedLock {
    pub name: String,
    pub owner: String,
    #[serde(flatten)]
    pub holding: Holding,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquired_at: Option<String>,
}

impl LockService {
    /// Every entry of this pod, by lock and owner.
    pub fn owned(&self) -> Vec<OwnedLock> {
        let table = self.inner.table.lock().expect("not poisoned");
        let mut owned: Vec<OwnedLock> = table
            .iter()
            .map(|((name, owner), entry)| {
                let held = match entry {
                    Entry::Held(held) => Some(held),
                    _ => None,
                };
                OwnedLock {
                    name: name.to_string(),
                    owner: owner.clone(),
                    holding: Holding::of(Some(entry)),
                    mode: held.map(|h| h.held.mode),
                    acquired_at: held.map(|h| h.acquired_at.clone()),
                }
            })
            .collect();
        owned.sort_by(|a, b| (&a.name, &a.owner).cmp(&(&b.name, &b.owner)));
        owned
    }
}
