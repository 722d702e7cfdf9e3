//! Lock-delay (Chubby's and Consul's): after a holder vanished without releasing the lock
//! — its session expired, its lease elapsed, its node was deleted by someone else — nobody
//! is granted the lock until `lockDelay` after the acquirer learned of it, so the gone
//! holder's writes in flight drain first. A clean release grants at once.
//!
//! The state is in ZooKeeper, beside the contenders: a holder of a lock with a lock-delay
//! creates a persistent *held record* `<lock>/paddock-held-<its sequence>-record` before it
//! is granted, and a release deletes contender and record in one multi. A record whose
//! contender is gone is therefore a hold that ended without a release: every acquirer that
//! sees one (in the child list it reads anyway: no extra read) holds back its grant until
//! `lockDelay` after it first saw it. The one that waited it out deletes it when granted;
//! until then every newcomer — also one that arrives when nobody was waiting — sees it too.
//!
//! Invariants:
//! - A record is created only for a contender that holds, before its grant is returned,
//!   and never outlives a clean release (one multi), so a stale record always means a hold
//!   that ended without one.
//! - A stale record is deleted only by an acquirer that waited `lockDelay` since it saw it,
//!   after the contender vanished, so no grant comes sooner than `lockDelay` after that.
//! - Record names contain neither `lock-` nor `__READ__`/`__WRIT__` and do not end in the
//!   ten digits of a sequence: Curator clients (which sort children by the digits after
//!   `lock-`, the rest after them) and Paddock versions that know nothing of records never
//!   take one for a contender.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::contender::Contender;
use crate::identity::NodeAcl;
use crate::retry::while_unknown;
use crate::zk;

const RECORD_PREFIX: &str = "paddock-held-";
const RECORD_SUFFIX: &str = "-record";

/// The held record of the contender with `sequence`.
pub(super) fn record_name(sequence: i64) -> String {
    format!("{RECORD_PREFIX}{sequence:010}{RECORD_SUFFIX}")
}

/// Whether a child of a lock's znode is a held record (not a contender).
pub fn is_held_record(name: &str) -> bool {
    parse_record(name).is_some()
}

/// The sequence of the contender a child name records as a holder, if it is a record.
pub(super) fn parse_record(name: &str) -> Option<i64> {
    name.strip_prefix(RECORD_PREFIX)?.strip_suffix(RECORD_SUFFIX)?.parse().ok()
}

/// Creates our held record (persistent: a hold may last longer than any TTL), holding who
/// we are. An unknown outcome is retried for as long as the session may live; the record
/// found there after one is ours (the sequence in its name is never given out again).
pub(super) async fn create_record(
    client: &zk::Client,
    path: &str,
    data: &[u8],
    acl: &NodeAcl,
) -> Result<(), zk::Error> {
    let options = zk::CreateMode::Persistent.with_acls(acl.acls());
    while_unknown(client, "create of a held record", |_| async {
        match client.create(path, data, &options).await {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(err) => Err(err),
        }
    })
    .await
}

/// Deletes a record, best effort: one left behind only delays a later grant again.
pub(super) async fn delete_record(client: &zk::Client, path: &str) {
    match client.delete(path, None).await {
        Ok(()) | Err(zk::Error::NoNode) => {}
        Err(err) => tracing::debug!(path, error = %err, "could not delete a held record"),
    }
}

/// What one acquire knows of vanished holders: the stale records it has seen, and until
/// when its grant is held back.
#[derive(Debug)]
pub(super) struct LockDelay {
    delay: Duration,
    noticed: HashSet<String>,
    until: Option<Instant>,
}

impl LockDelay {
    pub(super) fn new(delay: Duration) -> Self {
        Self { delay, noticed: HashSet::new(), until: None }
    }

    /// Notes the records among `children` whose contender is gone: the first time one is
    /// seen, the delay runs from `now`.
    pub(super) fn observe(&mut self, children: &[String], contenders: &[Contender], now: Instant) {
        for name in children {
            let Some(sequence) = parse_record(name) else { continue };
            if contenders.iter().any(|c| c.sequence == sequence) || self.noticed.contains(name) {
                continue;
            }
            self.noticed.insert(name.clone());
            let until = now + self.delay;
            self.until = Some(self.until.map_or(until, |u| u.max(until)));
        }
    }

    /// When the delay ends, while it has not at `now`.
    pub(super) fn pending(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|until| now < *until)
    }

    /// The stale records this acquire has seen (and, once not pending, waited out).
    pub(super) fn noticed(&self) -> impl Iterator<Item = &String> {
        self.noticed.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::super::contender::sorted_contenders;
    use super::*;

    #[test]
    fn records_are_never_contenders_for_us_or_for_curator() {
        let name = record_name(7);
        assert_eq!(name, "paddock-held-0000000007-record");
        assert_eq!(parse_record(&name), Some(7));
        assert!(sorted_contenders(std::slice::from_ref(&name)).is_empty());
        for tag in ["lock-", "__READ__", "__WRIT__"] {
            assert!(!name.contains(tag), "{name} contains {tag}");
        }
        // Curator sorts a name without its lock name by the whole name: after every
        // sequence's digits, so a record never comes before a contender.
        assert!(name.as_str() > "9999999999");
        assert_eq!(parse_record("_c_x-lock-0000000007"), None);
    }

    #[test]
    fn a_stale_record_holds_back_once_from_when_it_was_first_seen() {
        let delay = Duration::from_secs(3);
        let mut state = LockDelay::new(delay);
        let start = Instant::now();
        let live = vec!["_c_a-lock-0000000001".to_owned(), record_name(1)];
        state.observe(&live, &sorted_contenders(&live), start);
        assert_eq!(state.pending(start), None, "a record whose holder is there is no delay");

        let gone = vec![record_name(1), "_c_b-lock-0000000002".to_owned()];
        state.observe(&gone, &sorted_contenders(&gone), start);
        assert_eq!(state.pending(start), Some(start + delay));
        let later = start + Duration::from_secs(2);
        state.observe(&gone, &sorted_contenders(&gone), later);
        assert_eq!(state.pending(later), Some(start + delay), "seen again: not restarted");
        assert_eq!(state.pending(start + delay), None);
        assert_eq!(state.noticed().collect::<Vec<_>>(), [&record_name(1)]);
    }
}
