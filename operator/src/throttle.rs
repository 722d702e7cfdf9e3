//! A per-key throttle with a leading edge, for the reconciles ZooKeeper changes trigger.
//!
//! The first change of a quiet key goes through at once. Changes within `interval` of the
//! last one let through are folded into a single trailing one at the end of the interval;
//! a reconcile reads the state when it runs, so the trailing one reflects every change
//! folded into it. So a key is let through at most once per interval, and a change is
//! never more than one interval away from a reconcile that sees it — also under steady
//! traffic, which a debounce (pushed back by every change) never lets through.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Throttle<K> {
    interval: Duration,
    /// When each key was last let through.
    last: HashMap<K, Instant>,
    /// Keys with a trailing pass scheduled, and when.
    pending: HashMap<K, Instant>,
}

impl<K: Eq + Hash + Clone> Throttle<K> {
    pub fn new(interval: Duration) -> Self {
        Self { interval, last: HashMap::new(), pending: HashMap::new() }
    }

    /// A change of `key` at `now`: true to let it through now; false when a trailing pass
    /// covers it.
    pub fn change(&mut self, key: K, now: Instant) -> bool {
        if self.pending.contains_key(&key) {
            return false;
        }
        match self.last.get(&key) {
            Some(&last) if now < last + self.interval => {
                self.pending.insert(key, last + self.interval);
                false
            }
            _ => {
                self.forget_quiet(now);
                self.last.insert(key, now);
                true
            }
        }
    }

    /// When the next trailing pass is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().min().copied()
    }

    /// The keys whose trailing pass is due at `now` (each counts as let through now).
    pub fn due(&mut self, now: Instant) -> Vec<K> {
        let due: Vec<K> = self.pending.iter().filter(|(_, at)| **at <= now).map(|(k, _)| k.clone()).collect();
        for key in &due {
            self.pending.remove(key);
            self.last.insert(key.clone(), now);
        }
        due
    }

    /// Drops keys quiet for an interval (they would go through at once anyway), so the
    /// map holds only the busy ones.
    fn forget_quiet(&mut self, now: Instant) {
        if self.last.len() > 256 {
            let interval = self.interval;
            self.last.retain(|_, last| now < *last + interval);
        }
    }
}

/// Runs `input` through a [`Throttle`] on a task of its own; ends when `input` does.
pub fn throttled<K>(mut input: mpsc::UnboundedReceiver<K>, interval: Duration) -> mpsc::UnboundedReceiver<K>
where
    K: Eq + Hash + Clone + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut throttle = Throttle::new(interval);
        loop {
            let next_due = throttle.next_due();
            tokio::select! {
                change = input.recv() => match change {
                    Some(key) => {
                        if throttle.change(key.clone(), Instant::now()) && tx.send(key).is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    for key in throttle.due(Instant::now()) {
                        if tx.send(key).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn a_burst_goes_through_at_once_and_once_more_at_the_end_of_the_interval() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut out = throttled(rx, 200 * MS);
        for _ in 0..20 {
            tx.send("busy").unwrap();
        }
        let first = tokio::time::timeout(100 * MS, out.recv()).await;
        assert_eq!(first.unwrap(), Some("busy"), "the leading edge does not wait");
        assert!(out.try_recv().is_err(), "the rest of the burst is folded");
        let trailing = tokio::time::timeout(2000 * MS, out.recv()).await;
        assert_eq!(trailing.unwrap(), Some("busy"), "one trailing pass covers the burst");
        drop(tx);
        assert_eq!(out.recv().await, None, "and nothing more");
    }

    #[test]
    fn keys_are_throttled_apart_and_a_quiet_key_goes_through_at_once() {
        let mut throttle = Throttle::new(500 * MS);
        let t0 = Instant::now();
        assert!(throttle.change("a", t0));
        assert!(throttle.change("b", t0), "another key is not held back by a");
        assert!(!throttle.change("a", t0 + 100 * MS));
        assert!(!throttle.change("a", t0 + 200 * MS), "folded into the one trailing pass");
        assert_eq!(throttle.next_due(), Some(t0 + 500 * MS));
        assert!(throttle.due(t0 + 499 * MS).is_empty());
        assert_eq!(throttle.due(t0 + 500 * MS), ["a"]);
        assert_eq!(throttle.next_due(), None);
        assert!(throttle.change("a", t0 + 1000 * MS), "quiet for an interval: at once again");
    }
}
