//! The grouped workload's checkers (see `groups`), from its ledger, the faults and the
//! grouped queue's dead letters:
//!
//! - `group-order`: per group, the deliveries in the order `GET /queue/next` answered them
//!   never skip ahead (past an item that is not a dead letter) and never go back; a
//!   repeat is of the current head only, and never after an ack of it was confirmed. And
//!   first-time processing runs in enqueue order: an item is processed only after every
//!   earlier one (or it is a dead letter), and processed again only while it is the last
//!   one processed (its ack was lost). A step back by a pod a fault hit (paused, killed,
//!   cut off) between its delivery and that step is a zombie's, counted, not a violation.
//! - `group-exclusive`: per group, never two deliveries in flight at once. In flight from
//!   the answer of `GET /queue/next` (surely claimed) until the ack or nack was first sent
//!   (surely still held: its answer may arrive after the next item went out), for acks and
//!   nacks that were confirmed; and until the item was handed out again, if it was (the
//!   claim was lost by then, and a later ack may answer 200 for an item already gone).
//!
//! And nothing lost: every item whose enqueue was confirmed was processed or is a dead
//! letter.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Broken;
use super::faults::Fault;
use super::groups::{GroupDelivery, GroupItem};
use super::report::Report;
use super::workloads::{AckOutcome, Workloads};

/// The grouped workload's verdict, into the report.
pub fn check_groups(
    workloads: &Workloads,
    faults: &[Fault],
    dead: &BTreeSet<GroupItem>,
    started: Instant,
    report: &mut Report,
) {
    let ledger = workloads.groups.lock().unwrap();
    if ledger.refused > 0 {
        report.violations.push(format!(
            "groups: the queue refused {} grouped enqueue batches or batched acks, e.g. {}",
            ledger.refused,
            ledger.refusals.join("; ")
        ));
    }
    if workloads.broken != Some(Broken::ProducersDropGroups) {
        let wrong: Vec<&GroupDelivery> =
            ledger.deliveries.iter().filter(|d| d.said_group.as_deref() != Some(d.item.key().as_str())).collect();
        for d in wrong.iter().take(5) {
            report.violations.push(format!(
                "groups: {} handed out to {} with group {:?}, enqueued to {}",
                d.item.payload(),
                d.pod,
                d.said_group,
                d.item.key()
            ));
        }
    }
    let processed: BTreeSet<GroupItem> =
        ledger.deliveries.iter().filter(|d| d.processed.is_some()).map(|d| d.item).collect();
    let lost: Vec<String> = ledger
        .confirmed
        .iter()
        .filter(|item| !processed.contains(item) && !dead.contains(item))
        .map(|item| item.payload())
        .collect();
    if !lost.is_empty() {
        report.violations.push(format!(
            "groups: {} items confirmed but neither processed nor dead letters: {}{}",
            lost.len(),
            lost[..lost.len().min(10)].join(", "),
            if lost.len() > 10 { ", ..." } else { "" }
        ));
    }
    let order = group_order(&ledger.deliveries, faults, dead, started);
    let exclusive = group_exclusive(&ledger.deliveries, started);
    let groups = ledger.deliveries.iter().map(|d| d.item.group).collect::<BTreeSet<_>>().len();
    if order.violations.is_empty() {
        report.checks.push(format!(
            "group-order: {groups} groups, {} items processed for the first time in enqueue order; {} deliveries and {} processings repeated the head; {} steps back by zombies of a pod fault",
            processed.len(),
            order.repeated_deliveries,
            order.repeated_processings,
            order.excused
        ));
    }
    report.violations.extend(truncated(order.violations, "group-order"));
    if exclusive.violations.is_empty() {
        report.checks.push(format!(
            "group-exclusive: {} in-flight intervals of confirmed acks and nacks, never two of one group at once",
            exclusive.intervals
        ));
    }
    report.violations.extend(truncated(exclusive.violations, "group-exclusive"));

    let c = &workloads.group_counts;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    report.operations.extend([
        ("grouped items enqueued (confirmed, in batches)".to_owned(), load(&c.enqueued)),
        ("grouped enqueue batches of unknown outcome (sent again)".to_owned(), load(&c.uncertain)),
        ("grouped deliveries".to_owned(), load(&c.delivered)),
        ("grouped items processed".to_owned(), processed.len() as u64),
        ("grouped acks confirmed".to_owned(), load(&c.acked)),
        ("grouped batched acks".to_owned(), load(&c.batched_acks)),
        ("grouped nacks confirmed (first attempts failed on purpose)".to_owned(), load(&c.nacked)),
    ]);
}

/// At most 10 of a checker's violations, and how many more.
fn truncated(mut violations: Vec<String>, checker: &str) -> Vec<String> {
    if violations.len() > 10 {
        let more = violations.len() - 10;
        violations.truncate(10);
        violations.push(format!("{checker}: {more} more"));
    }
    violations
}

#[derive(Debug, Default)]
struct Order {
    violations: Vec<String>,
    repeated_deliveries: u64,
    repeated_processings: u64,
    excused: u64,
}

/// A fault that ended a session of `pod` between `from` and `to`.
fn pod_fault<'a>(faults: &'a [Fault], pod: &str, from: Instant, to: Instant) -> Option<&'a Fault> {
    faults.iter().find(|f| f.kind.hits_a_pod() && f.pod.as_deref() == Some(pod) && f.start <= to && f.end >= from)
}

fn by_group(deliveries: &[GroupDelivery]) -> BTreeMap<u32, Vec<&GroupDelivery>> {
    let mut groups: BTreeMap<u32, Vec<&GroupDelivery>> = BTreeMap::new();
    for d in deliveries {
        groups.entry(d.item.group).or_default().push(d);
    }
    groups
}

fn group_order(deliveries: &[GroupDelivery], faults: &[Fault], dead: &BTreeSet<GroupItem>, t0: Instant) -> Order {
    let mut order = Order::default();
    let secs = |at: Instant| at.duration_since(t0).as_secs_f64();
    for (group, mut ds) in by_group(deliveries) {
        let not_dead = |from: u64, to: u64| -> Vec<u64> {
            (from..to).filter(|seq| !dead.contains(&GroupItem { group, seq: *seq })).collect()
        };
        ds.sort_by_key(|d| d.delivered);
        let mut acked: HashMap<u64, Instant> = HashMap::new();
        for d in &ds {
            if let AckOutcome::Acked(at) = d.outcome {
                let first = acked.entry(d.item.seq).or_insert(at);
                *first = (*first).min(at);
            }
        }
        let mut head: Option<(u64, Instant)> = None;
        for d in &ds {
            let (seq, next) = (d.item.seq, head.map_or(0, |(h, _)| h + 1));
            let what = format!(
                "group {group}: item {seq} handed out to {} (attempt {}) at {:.1} s",
                d.pod,
                d.attempt,
                secs(d.delivered)
            );
            if seq >= next {
                let skipped = not_dead(next, seq);
                if !skipped.is_empty() {
                    order.violations.push(format!("group-order: {what} before items {skipped:?}: it skipped ahead"));
                }
                head = Some((seq, d.delivered));
            } else if head.is_some_and(|(h, _)| h == seq) {
                order.repeated_deliveries += 1;
                if acked.get(&seq).is_some_and(|at| *at < d.delivered) {
                    order.violations.push(format!("group-order: {what} again after its ack was confirmed"));
                }
            } else if let Some((h, at)) = head {
                if pod_fault(faults, &d.pod, at, d.delivered).is_some() {
                    order.excused += 1;
                } else {
                    order.violations.push(format!("group-order: {what} after item {h}: it went back"));
                }
            }
        }
        let mut processed: Vec<(Instant, &GroupDelivery)> =
            ds.iter().filter_map(|d| d.processed.map(|at| (at, *d))).collect();
        processed.sort_by_key(|(at, _)| *at);
        let mut done: Option<u64> = None;
        for (at, d) in processed {
            let (seq, next) = (d.item.seq, done.map_or(0, |x| x + 1));
            let what = format!("group {group}: item {seq} processed by {} at {:.1} s", d.pod, secs(at));
            if seq >= next {
                let skipped = not_dead(next, seq);
                if !skipped.is_empty() {
                    order.violations.push(format!("group-order: {what} before items {skipped:?} were"));
                }
                done = Some(seq);
            } else if done == Some(seq) {
                order.repeated_processings += 1;
            } else if pod_fault(faults, &d.pod, d.delivered, at).is_some() {
                order.excused += 1;
            } else {
                order.violations.push(format!("group-order: {what}, after item {done:?} was: it went back"));
            }
        }
    }
    order
}

#[derive(Debug, Default)]
struct Exclusive {
    violations: Vec<String>,
    intervals: usize,
}

fn group_exclusive(deliveries: &[GroupDelivery], t0: Instant) -> Exclusive {
    let mut exclusive = Exclusive::default();
    let secs = |at: Instant| at.duration_since(t0).as_secs_f64();
    // When each item was handed out, to cut a delivery's interval at the next one.
    let mut handed: HashMap<GroupItem, Vec<Instant>> = HashMap::new();
    for d in deliveries {
        handed.entry(d.item).or_default().push(d.delivered);
    }
    for (group, ds) in by_group(deliveries) {
        let mut spans: Vec<(Instant, Instant, &GroupDelivery)> = ds
            .iter()
            .filter(|d| matches!(d.outcome, AckOutcome::Acked(_) | AckOutcome::Nacked))
            .filter_map(|d| {
                let again = handed[&d.item].iter().filter(|at| **at > d.delivered).min().copied();
                let end = d.settle_sent?.min(again.unwrap_or(d.settle_sent?));
                Some((d.delivered, end, *d))
            })
            .collect();
        exclusive.intervals += spans.len();
        spans.sort_by_key(|(start, _, _)| *start);
        let mut latest: Option<(Instant, &GroupDelivery)> = None;
        for (start, end, d) in spans {
            if let Some((until, other)) = latest
                && start < until
            {
                exclusive.violations.push(format!(
                    "group-exclusive: group {group}: item {} handed to {} at {:.3} s while item {} (handed to {} at {:.3} s) was in flight until {:.3} s: two items of one group at once",
                    d.item.seq,
                    d.pod,
                    secs(start),
                    other.item.seq,
                    other.pod,
                    secs(other.delivered),
                    secs(until)
                ));
            }
            if latest.is_none_or(|(until, _)| end > until) {
                latest = Some((end, d));
            }
        }
    }
    exclusive
}
