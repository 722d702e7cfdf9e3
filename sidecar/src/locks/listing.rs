//! This pod's locks as `GET /status` lists them: every (lock, owner) held, waited for or
//! lost, from the table alone (known also while ZooKeeper is away).

use paddock_recipes::lock::LockMode;
use serde::Serialize;

use super::{Entry, LockService, millis_left};
use crate::events::LossReason;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedLock {
    pub name: String,
    pub owner: String,
    /// `held`, `waiting` or `lost`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acquired_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_reason: Option<LossReason>,
}

impl LockService {
    /// Every entry of this pod, by lock and owner.
    pub fn owned(&self) -> Vec<OwnedLock> {
        let table = self.inner.table.lock().expect("not poisoned");
        let mut owned: Vec<OwnedLock> = table
            .iter()
            .map(|((name, owner), entry)| {
                let mut row = OwnedLock {
                    name: name.to_string(),
                    owner: owner.clone(),
                    state: "waiting",
                    token: None,
                    mode: None,
                    acquired_at: None,
                    expires_in_ms: None,
                    lost_reason: None,
                };
                match entry {
                    Entry::Waiting => {}
                    Entry::Held(held) => {
                        row.state = "held";
                        row.token = Some(held.held.token);
                        row.mode = Some(held.held.mode);
                        row.acquired_at = Some(held.acquired_at.clone());
                        row.expires_in_ms = held.expires_at.map(millis_left);
                    }
                    Entry::Lost(lost) => {
                        row.state = "lost";
                        row.token = Some(lost.token);
                        row.lost_reason = Some(lost.reason);
                    }
                }
                row
            })
            .collect();
        owned.sort_by(|a, b| (&a.name, &a.owner).cmp(&(&b.name, &b.owner)));
        owned
    }
}
