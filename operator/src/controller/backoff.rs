//! The back-off of failed reconciles: per object, 0.5 s doubling to 60 s, reset by a
//! success. ZooKeeper coming back does not wait for it: a session change re-reconciles
//! everything at once (`super::run`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Resource;

/// Consecutive failures per object (its kind, namespace and name).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// One more failure of `key`: how long to wait before the next try.
    pub fn failed(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().expect("not poisoned");
        let n = failures.entry(key).or_insert(0);
        *n = (*n + 1).min(8);
        (Duration::from_millis(500) * 2u32.pow(*n - 1)).min(Duration::from_secs(60))
    }

    /// A success of `key`: its next failure waits the least again.
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("not poisoned").remove(key);
    }
}

/// The object's key in the back-off: `kind/namespace/name`.
pub fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}/{}",
        K::kind(&()),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_minute_and_a_success_resets_it() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| backoff.failed("a".into()).as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        assert_eq!(backoff.failed("b".into()), Duration::from_millis(500), "each object its own");
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a".into()), Duration::from_millis(500));
    }
}
