//! The groups as a view holds them: every group's items by sequence, and the heads that
//! can be offered, ordered as the queue orders buckets (priority, then due time).
//!
//! Each change touches one group and updates its entry in `offered` in O(log n), so
//! finding the next head costs the same with ten groups or ten thousand, and a group
//! with a hundred thousand items costs its names in memory and nothing per claim.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::queue::group::GroupKey;
use crate::queue::item::{ItemId, Place, parse_bucket};

#[derive(Default)]
pub(super) struct Groups {
    /// Per group: its items, sequence -> bucket, and the bucket under which its head is
    /// in `offered` (None while the head is claimed).
    groups: HashMap<GroupKey, Group>,
    /// (head's bucket, group) of every group whose head is not claimed.
    offered: BTreeSet<(String, GroupKey)>,
    /// Groups seen empty, with the time (ms) from which their removal is counted: when
    /// they emptied, or the latest due time of their items if later (see `retention`).
    emptied: HashMap<GroupKey, u64>,
}

#[derive(Default)]
struct Group {
    items: BTreeMap<u64, String>,
    offered: Option<String>,
    /// The latest due time (ms) of the items it has held.
    latest_due: u64,
}

impl Groups {
    /// From a full listing: each group's item ids.
    pub fn listed(listing: Vec<(GroupKey, Vec<ItemId>)>, claimed: &HashSet<ItemId>) -> Self {
        let mut groups = Self::default();
        for (key, ids) in listing {
            groups.groups.entry(key.clone()).or_default();
            for id in ids {
                groups.add(&key, &id);
            }
            groups.refresh(&key, claimed);
        }
        groups
    }

    fn add(&mut self, key: &GroupKey, id: &ItemId) {
        let group = self.groups.entry(key.clone()).or_default();
        group.items.insert(id.seq_number(), id.bucket.clone());
        let due = parse_bucket(&id.bucket).map_or(0, |(_, due)| due);
        group.latest_due = group.latest_due.max(due);
        self.emptied.remove(key);
    }

    pub fn insert(&mut self, id: &ItemId, claimed: &HashSet<ItemId>) {
        let Some(key) = &id.group else { return };
        self.add(key, id);
        self.refresh(key, claimed);
    }

    pub fn remove(&mut self, id: &ItemId, claimed: &HashSet<ItemId>) {
        let Some(key) = &id.group else { return };
        if let Some(group) = self.groups.get_mut(key) {
            group.items.remove(&id.seq_number());
        }
        self.refresh(key, claimed);
    }

    /// After a claim of one of the group's items appeared or vanished.
    pub fn claim_changed(&mut self, id: &ItemId, claimed: &HashSet<ItemId>) {
        if let Some(key) = &id.group {
            self.refresh(key, claimed);
        }
    }

    /// Puts the group's entry in `offered` right: its head, unless claimed.
    fn refresh(&mut self, key: &GroupKey, claimed: &HashSet<ItemId>) {
        let Some(group) = self.groups.get_mut(key) else { return };
        let head = group.items.first_key_value().map(|(&seq, bucket)| Place::Group(key.clone()).id(bucket, seq));
        let offer = head.filter(|id| !claimed.contains(id)).map(|id| id.bucket);
        if offer != group.offered {
            if let Some(old) = group.offered.take() {
                self.offered.remove(&(old, key.clone()));
            }
            if let Some(new) = &offer {
                self.offered.insert((new.clone(), key.clone()));
            }
            group.offered = offer;
        }
        if group.items.is_empty() {
            let latest_due = group.latest_due;
            self.groups.remove(key);
            self.emptied.insert(key.clone(), crate::queue::item::now_ms().max(latest_due));
        }
    }

    /// Groups empty since `keep` before `now` (ms): nothing can still write to them.
    pub fn old_empty(&self, now: u64, keep: u64) -> Vec<GroupKey> {
        self.emptied.iter().filter(|(_, since)| **since + keep < now).map(|(key, _)| key.clone()).collect()
    }

    /// Forgets an empty group, removed or found not empty.
    pub fn forget_empty(&mut self, key: &GroupKey) {
        self.emptied.remove(key);
    }

    /// The offered heads in queue order that are due at `now`, passing `keep`, at most
    /// `want`; and the earliest due time of a head not due yet.
    ///
    /// Heads not due yet are passed over a priority at a time: within one priority, bucket
    /// names sort by due time, so the first head not due ends that priority's due ones.
    pub fn heads(&self, now: u64, want: usize, keep: impl Fn(&ItemId) -> bool) -> (Vec<ItemId>, Option<u64>) {
        let mut heads = Vec::new();
        let mut next_due: Option<u64> = None;
        let mut iter = self.offered.range::<(String, GroupKey), _>(..);
        while let Some((bucket, key)) = iter.next() {
            let Some((priority, due)) = parse_bucket(bucket) else { continue };
            if due > now {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                match crate::queue::item::MAX_PRIORITY.checked_sub(priority).filter(|rank| *rank < 9) {
                    // The next priority's buckets start with the next rank.
                    Some(rank) => {
                        let from = (format!("b{}-", rank + 1), GroupKey::lowest());
                        iter = self.offered.range(from..);
                        continue;
                    }
                    None => break,
                }
            }
            let Some((&seq, _)) = self.groups.get(key).and_then(|g| g.items.first_key_value()) else { continue };
            let id = Place::Group(key.clone()).id(bucket, seq);
            if keep(&id) {
                heads.push(id);
                if heads.len() == want {
                    break;
                }
            }
        }
        (heads, next_due)
    }

    /// (ready, delayed) items at `now`, less those in flight: a group whose head is not due
    /// counts as delayed, items behind a due head as ready.
    pub fn figures(&self, now: u64, claimed: &HashSet<ItemId>) -> (u64, u64, Option<u64>) {
        let (mut ready, mut delayed, mut oldest) = (0, 0, None::<u64>);
        for (key, group) in &self.groups {
            let Some((&seq, bucket)) = group.items.first_key_value() else { continue };
            let Some((_, due)) = parse_bucket(bucket) else { continue };
            let head_claimed = claimed.contains(&Place::Group(key.clone()).id(bucket, seq));
            let waiting = group.items.len() as u64 - u64::from(head_claimed);
            if due > now {
                delayed += waiting;
            } else {
                ready += waiting;
                if waiting > 0 {
                    oldest = Some(oldest.map_or(due, |o| o.min(due)));
                }
            }
        }
        (ready, delayed, oldest)
    }

    /// Groups with items, and the longest: (key, items).
    pub fn lengths(&self) -> (usize, Option<(GroupKey, usize)>) {
        let longest = self.groups.iter().max_by_key(|(_, g)| g.items.len()).map(|(k, g)| (k.clone(), g.items.len()));
        (self.groups.len(), longest)
    }

    /// Whether the group item is in the view.
    pub fn contains(&self, id: &ItemId) -> bool {
        id.group.as_ref().and_then(|key| self.groups.get(key)).is_some_and(|g| g.items.contains_key(&id.seq_number()))
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.groups.values().map(|g| g.items.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::item::bucket_name;

    fn id(group: &str, priority: u8, due: u64, seq: u64) -> ItemId {
        Place::Group(GroupKey::new(group).unwrap()).id(&bucket_name(priority, due), seq)
    }

    #[test]
    fn heads_come_by_priority_then_due_time_one_per_group_and_not_before_due() {
        let now = 1_000_000;
        let claimed = HashSet::new();
        let mut groups = Groups::default();
        // a: its head is urgent but delayed; its second item is due (it must wait).
        groups.insert(&id("a", 9, now + 5_000, 1), &claimed);
        groups.insert(&id("a", 9, now - 100, 2), &claimed);
        groups.insert(&id("b", 0, now - 500, 1), &claimed);
        groups.insert(&id("c", 5, now - 100, 7), &claimed);
        groups.insert(&id("c", 9, now - 900, 8), &claimed);
        let (heads, next_due) = groups.heads(now, 10, |_| true);
        assert_eq!(heads, [id("c", 5, now - 100, 7), id("b", 0, now - 500, 1)]);
        assert_eq!(next_due, Some(now + 5_000));
        // A claimed head is not offered, nor anything behind it.
        let claimed: HashSet<ItemId> = [id("c", 5, now - 100, 7)].into();
        groups.claim_changed(&id("c", 5, now - 100, 7), &claimed);
        assert_eq!(groups.heads(now, 10, |_| true).0, [id("b", 0, now - 500, 1)]);
        // Once it leaves, the next item of its group is the head.
        groups.remove(&id("c", 5, now - 100, 7), &claimed);
        assert_eq!(groups.heads(now, 1, |_| true).0, [id("c", 9, now - 900, 8)]);
        assert_eq!(groups.lengths(), (3, Some((GroupKey::new("a").unwrap(), 2))));
    }
}
