//! The status this replica last wrote, per object: what the status is now, as far as this
//! replica knows, while its cache may not have seen that write yet.
//!
//! The controller reads objects from a watch-fed cache, and the watch lags the writes. A
//! reconcile right after this replica's own status write (a failure's `Ready=False`, then
//! ZooKeeper back a few milliseconds later) would compare its outcome with the status from
//! before that write, find them equal and write nothing, leaving `Ready=False` until the
//! next trigger: status changes do not reconcile (`triggers::spec_or_lifecycle`), so up to
//! five minutes. So a status is left unwritten only when the cache and this record both
//! hold it already, and the Ready condition's previous state (for `lastTransitionTime`)
//! is taken from this record when there is one.
//!
//! Invariants: a record is the status as the API server answered this replica's write;
//! records are dropped when the replica stops leading (another may write meanwhile) and
//! when the object's cleanup is done.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Default)]
pub struct LastWritten {
    statuses: Mutex<HashMap<String, serde_json::Value>>,
}

impl LastWritten {
    /// The status this replica last wrote for `key` (None: none recorded, or it no longer
    /// parses as the kind's status).
    pub fn get<S: DeserializeOwned>(&self, key: &str) -> Option<S> {
        let statuses = self.statuses.lock().expect("not poisoned");
        serde_json::from_value(statuses.get(key)?.clone()).ok()
    }

    /// Records the status the API server answered a write of `key` with.
    pub fn record<S: Serialize>(&self, key: String, status: Option<&S>) {
        let mut statuses = self.statuses.lock().expect("not poisoned");
        match status.map(serde_json::to_value) {
            Some(Ok(value)) => statuses.insert(key, value),
            _ => statuses.remove(&key),
        };
    }

    pub fn forget(&self, key: &str) {
        self.statuses.lock().expect("not poisoned").remove(key);
    }

    pub fn forget_all(&self) {
        self.statuses.lock().expect("not poisoned").clear();
    }
}

/// Whether writing a status changes nothing: the cache holds it already (`cached_holds`),
/// and so does `recorded` (what [`LastWritten::get`] gave), if there is a record.
pub fn unchanged<S>(cached_holds: bool, recorded: Option<&S>, holds: impl Fn(&S) -> bool) -> bool {
    cached_holds && recorded.is_none_or(holds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_held_only_when_the_cache_and_the_record_both_hold_it() {
        let written = LastWritten::default();
        let is = |want: &'static str| move |s: &String| s == want;
        let holds = |cached_holds: bool, want: &'static str| {
            unchanged(cached_holds, written.get::<String>("a").as_ref(), is(want))
        };
        assert!(holds(true, "ready"), "no record: the cache decides");
        assert!(!holds(false, "ready"));
        written.record("a".into(), Some(&"failed".to_owned()));
        assert!(!holds(true, "ready"), "the cache has not seen the write of failed");
        assert!(holds(true, "failed"));
        assert_eq!(written.get::<String>("a").as_deref(), Some("failed"));
        written.forget_all();
        assert!(holds(true, "ready"));
    }
}
