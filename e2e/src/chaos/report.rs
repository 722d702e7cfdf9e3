//! The checkers: from the store's history, the gauges and the queue's ledger to the
//! verdict a run prints.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::faults::{Fault, FaultKind};
use super::workloads::{AckOutcome, Delivery, Workloads};

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub duration: Duration,
    pub operations: Vec<(String, u64)>,
    pub faults: Vec<(f64, String)>,
    pub fault_counts: BTreeMap<String, usize>,
    pub violations: Vec<String>,
    pub lost: Vec<u64>,
    pub dead_lettered: u64,
    pub duplicates: BTreeMap<String, u64>,
    pub longest_unavailability: Option<(String, Duration)>,
    pub checks: Vec<String>,
}

impl Report {
    pub fn duplicate_count(&self) -> u64 {
        self.duplicates.values().sum()
    }
}

/// Lost updates and overlaps from the store's history: every accepted write must be one
/// more than the write before it (a read-modify-write that saw the latest value).
pub fn check_counter(workloads: &Workloads, report: &mut Report) {
    let history = workloads.store.history();
    let mut previous = 0;
    let mut bad = 0;
    for (token, value) in &history {
        if *value != previous + 1 {
            bad += 1;
            if bad <= 5 {
                report.violations.push(format!(
                    "counter: a write of {value} with token {token} followed {previous}: a lost update (two holders overlapped)"
                ));
            }
        }
        previous = *value;
    }
    if bad > 5 {
        report.violations.push(format!("counter: {} more lost updates", bad - 5));
    }
    let accepted = history.len() as u64;
    if workloads.store.value() != accepted {
        report
            .violations
            .push(format!("counter: {accepted} increments accepted but the counter reads {}", workloads.store.value()));
    }
}

/// Semaphore and read/write invariants, as the gauges saw them.
pub fn check_gauges(workloads: &Workloads, report: &mut Report) {
    report.violations.extend(workloads.semaphore.violations());
    report.violations.extend(workloads.rw.violations());
    report
        .checks
        .push(format!("semaphore pool: at most {} holders seen at once (limit 3)", workloads.semaphore.max_seen()));
}

/// Lost items, and duplicates with their cause, from the queue's ledger.
pub fn check_queue(workloads: &Workloads, faults: &[Fault], dead_lettered: &[u64], report: &mut Report) {
    let ledger = workloads.ledger.lock().unwrap();
    report.dead_lettered = dead_lettered.len() as u64;
    for (item, confirmed) in &ledger.enqueued {
        if *confirmed && !ledger.processed.contains_key(item) && !dead_lettered.contains(item) {
            report.lost.push(*item);
        }
    }
    let mut by_item: HashMap<u64, Vec<&Delivery>> = HashMap::new();
    for delivery in &ledger.deliveries {
        by_item.entry(delivery.item).or_default().push(delivery);
    }
    for deliveries in by_item.values_mut() {
        deliveries.sort_by_key(|d| d.at);
        for index in 1..deliveries.len() {
            let later = deliveries[index];
            // Once any consumer heard its ack confirmed, the item must never come again.
            let confirmed =
                deliveries[..index].iter().find(|d| matches!(d.ack, AckOutcome::Acked(at) if at < later.at));
            if let Some(acked) = confirmed {
                report.violations.push(format!(
                    "queue: item-{}: delivered again (attempt {}) after {}'s ack of attempt {} was confirmed",
                    later.item, later.attempt, acked.pod, acked.attempt
                ));
                continue;
            }
            match duplicate_cause(deliveries[index - 1], later, faults) {
                Ok(cause) => *report.duplicates.entry(cause).or_default() += 1,
                Err(violation) => report.violations.push(format!("queue: item-{}: {violation}", later.item)),
            }
        }
    }
}

/// Why `later` delivered the item again after `earlier` (whose ack, if confirmed, came
/// after `later`), or the violation if nothing explains it.
fn duplicate_cause(earlier: &Delivery, later: &Delivery, faults: &[Fault]) -> Result<String, String> {
    let during = |f: &&Fault| f.start <= later.at && f.end >= earlier.at;
    if let Some(fault) =
        faults.iter().filter(during).find(|f| f.kind.hits_a_pod() && f.pod.as_deref() == Some(&earlier.pod))
    {
        return Ok(match fault.kind {
            FaultKind::KillSidecar => "consumer pod killed before its ack".to_owned(),
            _ => "consumer pod paused past its session".to_owned(),
        });
    }
    let fault = faults.iter().find(during).map(|f| format!(" ({:?})", f.kind)).unwrap_or_default();
    match earlier.ack {
        AckOutcome::ClaimLost => Ok(format!("claim lost before the ack{fault}")),
        AckOutcome::Unknown => Ok("ack unanswered (outcome unknown)".to_owned()),
        // Confirmed after the redelivery: acks are idempotent, so this is the earlier
        // consumer's retry finding the item gone (the later consumer acked first), or a
        // claim a fault took away. Anything else is two live claims at once.
        AckOutcome::Acked(at) => {
            let later_acked_first = matches!(later.ack, AckOutcome::Acked(later_at) if later_at <= at);
            if later_acked_first || !fault.is_empty() {
                Ok(format!("claim lost before the ack{fault}"))
            } else {
                Err(format!("delivered to {} while {}'s claim still held, with no fault", later.pod, earlier.pod))
            }
        }
        AckOutcome::Pending => {
            Err(format!("delivered again to {} while {} still held it, with no fault", later.pod, earlier.pod))
        }
    }
}

/// Counts and the longest gap between successes.
pub fn summarize(workloads: &Workloads, faults: &[Fault], started: Instant, report: &mut Report) {
    let c = &workloads.counts;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    report.operations = vec![
        ("lock increments accepted".into(), load(&c.increments)),
        ("stale writes rejected by the store".into(), load(&c.stale_rejected)),
        ("lock requests failed (unavailable)".into(), load(&c.lock_errors)),
        ("items enqueued (confirmed)".into(), load(&c.enqueued)),
        ("enqueues with unknown outcome".into(), load(&c.enqueue_uncertain)),
        ("deliveries".into(), load(&c.delivered)),
        ("acks confirmed".into(), load(&c.acked)),
        ("semaphore holds".into(), load(&c.semaphore_holds)),
        ("read holds".into(), load(&c.reads)),
        ("write holds".into(), load(&c.writes)),
    ];
    for fault in faults {
        report.faults.push(((fault.start - started).as_secs_f64(), format!("{:?} on {}", fault.kind, fault.target)));
        *report.fault_counts.entry(format!("{:?}", fault.kind)).or_default() += 1;
    }
    report.longest_unavailability =
        workloads.availability.longest().into_iter().next().map(|(workload, gap)| (workload.to_owned(), gap));
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== Paddock fault run: seed {}, {:.0} s ==", self.seed, self.duration.as_secs_f64())?;
        writeln!(f, "operations:")?;
        for (what, count) in &self.operations {
            writeln!(f, "  {count:>8}  {what}")?;
        }
        writeln!(f, "faults injected: {}", self.faults.len())?;
        for (kind, count) in &self.fault_counts {
            writeln!(f, "  {count:>8}  {kind}")?;
        }
        writeln!(f, "violations: {}", self.violations.len())?;
        for violation in &self.violations {
            writeln!(f, "  - {violation}")?;
        }
        writeln!(f, "items lost: {}", self.lost.len())?;
        if !self.lost.is_empty() {
            let shown: Vec<String> = self.lost.iter().take(10).map(|i| format!("item-{i}")).collect();
            writeln!(f, "  {}{}", shown.join(", "), if self.lost.len() > 10 { ", ..." } else { "" })?;
        }
        writeln!(f, "items dead-lettered (kept with their history): {}", self.dead_lettered)?;
        writeln!(f, "duplicates: {}", self.duplicate_count())?;
        for (cause, count) in &self.duplicates {
            writeln!(f, "  {count:>8}  {cause}")?;
        }
        if let Some((workload, gap)) = &self.longest_unavailability {
            writeln!(f, "longest unavailability: {:.1} s ({workload})", gap.as_secs_f64())?;
        }
        for check in &self.checks {
            writeln!(f, "check: {check}")?;
        }
        Ok(())
    }
}
