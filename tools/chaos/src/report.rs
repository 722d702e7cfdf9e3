//! The checkers: from the store's history, the gauges and the queue's ledger to the
//! verdict a run prints.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::durability::Durability;
use super::faults::{Fault, FaultKind};
use super::workloads::{AckOutcome, Delivery, ItemRef, Workloads};

#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub duration: Duration,
    pub operations: Vec<(String, u64)>,
    pub faults: Vec<(f64, String)>,
    pub fault_counts: BTreeMap<String, usize>,
    pub violations: Vec<String>,
    pub lost: Vec<u64>,
    /// Items found in the dead letters, and the dead letters by reason.
    pub dead_lettered: u64,
    pub dead_letter_reasons: BTreeMap<String, u64>,
    pub duplicates: BTreeMap<String, u64>,
    /// Deliveries again after a confirmed nack: retries the consumer asked for.
    pub redelivered_after_nack: u64,
    /// Each workload's longest time without a success, with when it started and ended
    /// (seconds into the run), longest first.
    pub longest_unavailability: Vec<(String, Duration, f64)>,
    pub checks: Vec<String>,
    /// ZooKeeper's own durability under the same faults.
    pub durability: Durability,
}

impl Report {
    pub fn duplicate_count(&self) -> u64 {
        self.duplicates.values().sum()
    }

    /// No violation, no item lost, and no write that ZooKeeper confirmed lost either.
    pub fn clean(&self) -> bool {
        self.violations.is_empty() && self.lost.is_empty() && self.durability.writes_lost() == 0
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

/// At most one leader at a time, as the election's log saw the leaders' writes.
pub fn check_election(workloads: &Workloads, report: &mut Report) {
    report.violations.extend(workloads.leaders.violations());
    let (writes, terms, _) = workloads.leaders.counts();
    report.checks.push(format!("election: {terms} terms, {writes} leader writes accepted, tokens never went down"));
}

/// A dead letter as `GET /queue/{name}/dead` shows it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    /// The item it was, when the payload is one of ours.
    pub item: Option<ItemRef>,
    pub reason: String,
    pub attempts: u64,
    /// (pod, outcome) of every delivery.
    pub deliveries: Vec<(String, String)>,
}

impl DeadLetter {
    /// From one entry of the API's answer (the text `payload`, else `payloadBase64`).
    pub fn from_api(letter: &serde_json::Value) -> Option<Self> {
        use base64::Engine as _;
        let payload = match letter["payload"].as_str() {
            Some(text) => text.as_bytes().to_vec(),
            None => base64::engine::general_purpose::STANDARD.decode(letter["payloadBase64"].as_str()?).ok()?,
        };
        let deliveries = letter["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| (d["pod"].as_str().unwrap_or("?").to_owned(), d["outcome"].as_str().unwrap_or("?").to_owned()))
            .collect();
        Some(Self {
            id: letter["id"].as_str()?.to_owned(),
            item: ItemRef::parse(&payload),
            reason: letter["reason"].as_str().unwrap_or("").to_owned(),
            attempts: letter["attempts"].as_u64().unwrap_or(0),
            deliveries,
        })
    }
}

/// Lost items, and duplicates with their cause, from the queue's ledger and dead letters.
///
/// Deliveries are grouped by copy (an item number and the enqueue try that left it, as
/// the payload says): one copy delivered again after a confirmed ack is a violation; a
/// second copy of an item exists only because the producer tried again after an answer
/// that left the outcome unknown, and is counted as a duplicate of that cause (a copy of
/// a try answered 201 while another try also left one is a violation: two copies of one
/// confirmed enqueue).
pub fn check_queue(workloads: &Workloads, faults: &[Fault], dead: &[DeadLetter], report: &mut Report) {
    let ledger = workloads.ledger.lock().unwrap();
    let dead_items: std::collections::HashSet<u64> = dead.iter().filter_map(|d| d.item.map(|i| i.number)).collect();
    report.dead_lettered = dead.len() as u64;
    for letter in dead {
        let reason = letter.reason.split(':').next().unwrap_or("").trim().to_owned();
        *report.dead_letter_reasons.entry(reason).or_default() += 1;
    }
    for (item, confirmed) in &ledger.enqueued {
        if *confirmed && !ledger.processed.contains_key(item) && !dead_items.contains(item) {
            report.lost.push(*item);
        }
    }
    let mut by_copy: HashMap<(u64, u32), Vec<&Delivery>> = HashMap::new();
    for delivery in &ledger.deliveries {
        by_copy.entry((delivery.item, delivery.copy)).or_default().push(delivery);
    }
    // A copy whose ack was confirmed is gone: it cannot also be a dead letter.
    for letter in dead {
        let Some(item) = letter.item else { continue };
        let acked = by_copy
            .get(&(item.number, item.copy))
            .and_then(|ds| ds.iter().find(|d| matches!(d.ack, AckOutcome::Acked(_))).copied());
        if let Some(acked) = acked {
            report.violations.push(format!(
                "queue: item-{}: dead-lettered ({}) although {}'s ack of attempt {} was confirmed",
                item.number, letter.reason, acked.pod, acked.attempt
            ));
        }
    }
    let mut copies: HashMap<u64, Vec<u32>> = HashMap::new();
    for (number, copy) in by_copy.keys() {
        copies.entry(*number).or_default().push(*copy);
    }
    for letter in dead.iter().filter_map(|d| d.item) {
        let known = copies.entry(letter.number).or_default();
        if !known.contains(&letter.copy) {
            known.push(letter.copy);
        }
    }
    let mut keyed_twice = 0;
    for (number, mut tries) in copies {
        tries.sort();
        for pair in tries.windows(2) {
            let [first, second] = [pair[0], pair[1]];
            let answered = |copy: u32| ledger.tries.get(&(number, copy)).copied();
            if ledger.keyed.contains(&number) {
                keyed_twice += 1;
                report.violations.push(format!(
                    "queue: item-{number}: two copies of an item sent with an idempotency key (enqueue tries {first} and {second}): a key must store one"
                ));
            } else if answered(first) == Some(true) {
                report.violations.push(format!(
                    "queue: item-{number}: two copies, of enqueue try {first} (answered 201) and of try {second}: the producer only tries again after an unknown outcome"
                ));
            } else {
                *report
                    .duplicates
                    .entry(
                        "item enqueued twice: tried again after an answer that left the outcome unknown (503 or none)"
                            .to_owned(),
                    )
                    .or_default() += 1;
            }
        }
    }
    if !ledger.keyed.is_empty() && keyed_twice == 0 {
        report.checks.push(format!(
            "idempotency keys: {} items sent with a key (every 20th sent again after its 201), none stored twice",
            ledger.keyed.len()
        ));
    }
    // Enqueues answered without a 201 whose copy was in the queue all the same.
    let unknown_but_applied = by_copy
        .keys()
        .copied()
        .chain(dead.iter().filter_map(|d| d.item).map(|i| (i.number, i.copy)))
        .filter(|key| ledger.tries.get(key) == Some(&false))
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    report.operations.push(("enqueues answered 503 or unanswered whose item was enqueued".into(), unknown_but_applied));
    for deliveries in by_copy.values_mut() {
        deliveries.sort_by_key(|d| d.at);
        for index in 1..deliveries.len() {
            let later = deliveries[index];
            // Once any consumer heard its ack confirmed, the item must never come again.
            let confirmed =
                deliveries[..index].iter().find(|d| matches!(d.ack, AckOutcome::Acked(at) if at < later.at));
            if let Some(acked) = confirmed {
                let AckOutcome::Acked(acked_at) = acked.ack else { unreachable!("matched as acked") };
                report.violations.push(format!(
                    "queue: item-{}: delivered again to {} (attempt {}, id {}) {} ms after {}'s ack of attempt {} (id {}) was confirmed",
                    later.item,
                    later.pod,
                    later.attempt,
                    later.id,
                    later.at.duration_since(acked_at).as_millis(),
                    acked.pod,
                    acked.attempt,
                    acked.id
                ));
                continue;
            }
            if deliveries[index - 1].ack == AckOutcome::Nacked {
                report.redelivered_after_nack += 1;
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
            FaultKind::CutOffSidecar => "consumer pod cut off from ZooKeeper past its session".to_owned(),
            _ => "consumer pod paused past its session".to_owned(),
        });
    }
    let fault = faults.iter().find(during).map(|f| format!(" ({:?})", f.kind)).unwrap_or_default();
    match earlier.ack {
        AckOutcome::Nacked => Ok("delivered again after the consumer's nack".to_owned()),
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
    let mut operations = vec![
        ("lock increments accepted".into(), load(&c.increments)),
        ("stale writes rejected by the store".into(), load(&c.stale_rejected)),
        ("lock requests failed (unavailable)".into(), load(&c.lock_errors)),
        ("items enqueued (confirmed)".into(), load(&c.enqueued)),
        ("enqueue tries with unknown outcome".into(), load(&c.enqueue_uncertain)),
        ("enqueues tried again after an unknown outcome".into(), load(&c.enqueue_retries)),
        ("keyed enqueues answered as duplicates of an earlier try".into(), load(&c.enqueue_deduplicated)),
        ("deliveries".into(), load(&c.delivered)),
        ("acks confirmed".into(), load(&c.acked)),
        ("nacks confirmed (items failed on purpose)".into(), load(&c.nacked)),
        ("items to fail enqueued (confirmed)".into(), load(&c.poison_enqueued)),
        ("semaphore holds".into(), load(&c.semaphore_holds)),
        ("read holds".into(), load(&c.reads)),
        ("write holds".into(), load(&c.writes)),
    ];
    let (leader_writes, terms, stale_leader_writes) = workloads.leaders.counts();
    operations.push(("leader terms".into(), terms));
    operations.push(("leader writes accepted".into(), leader_writes));
    operations.push(("deposed leaders' writes rejected by the log".into(), stale_leader_writes));
    operations.append(&mut report.operations);
    report.operations = operations;
    let mut checked: BTreeMap<(String, &str), usize> = BTreeMap::new();
    for fault in faults {
        report.faults.push(((fault.start - started).as_secs_f64(), format!("{:?} on {}", fault.kind, fault.target)));
        *report.fault_counts.entry(format!("{:?}", fault.kind)).or_default() += 1;
        report.violations.extend(fault.violations.iter().cloned());
        for check in &fault.checks {
            *checked.entry((format!("{:?}", fault.kind), check.as_str())).or_default() += 1;
        }
    }
    for ((kind, check), times) in checked {
        let of = report.fault_counts[&kind];
        report.checks.push(format!("{kind}: {check} ({times} of {of})"));
    }
    report.longest_unavailability = workloads
        .availability
        .longest()
        .into_iter()
        .map(|(workload, gap, ended)| (workload.to_owned(), gap, (ended - started).as_secs_f64()))
        .collect();
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
        let d = &self.durability;
        writeln!(
            f,
            "ZooKeeper durability (a plain client's writes): {} creates and {} deletes confirmed, {} of unknown outcome; confirmed writes lost: {}",
            d.creates_confirmed,
            d.deletes_confirmed,
            d.unknown,
            d.writes_lost()
        )?;
        for (what, writes) in [("create", &d.lost_creates), ("delete", &d.undone_deletes)] {
            for run in runs(writes).iter().take(10) {
                let ((first, at), (last, _)) = (run[0], run[run.len() - 1]);
                writeln!(
                    f,
                    "  - {} confirmed {what}s undone: nodes {first} to {last}, confirmed from {at:.1} s",
                    run.len()
                )?;
            }
        }
        if d.undone_on_purpose > 0 {
            writeln!(f, "  (broken variant: {} writes undone on purpose)", d.undone_on_purpose)?;
        }
        writeln!(f, "items lost: {}", self.lost.len())?;
        if !self.lost.is_empty() {
            let shown: Vec<String> = self.lost.iter().take(10).map(|i| format!("item-{i}")).collect();
            writeln!(f, "  {}{}", shown.join(", "), if self.lost.len() > 10 { ", ..." } else { "" })?;
        }
        writeln!(f, "items dead-lettered (kept with their history): {}", self.dead_lettered)?;
        for (reason, count) in &self.dead_letter_reasons {
            writeln!(f, "  {count:>8}  {reason}")?;
        }
        if self.redelivered_after_nack > 0 {
            writeln!(f, "deliveries again after a nack (retries, not duplicates): {}", self.redelivered_after_nack)?;
        }
        writeln!(f, "duplicates: {}", self.duplicate_count())?;
        for (cause, count) in &self.duplicates {
            writeln!(f, "  {count:>8}  {cause}")?;
        }
        if let Some((workload, gap, _)) = self.longest_unavailability.first() {
            writeln!(f, "longest unavailability: {:.1} s ({workload})", gap.as_secs_f64())?;
        }
        for (workload, gap, ended) in &self.longest_unavailability {
            let gap = gap.as_secs_f64();
            writeln!(f, "  {workload}: {gap:.1} s without a success, from {:.1} s to {ended:.1} s", ended - gap)?;
        }
        for check in &self.checks {
            writeln!(f, "check: {check}")?;
        }
        Ok(())
    }
}

/// Writes numbered close together (a gap of at most 5), as one rollback loses them.
fn runs(writes: &[(u64, f64)]) -> Vec<&[(u64, f64)]> {
    writes.chunk_by(|a, b| b.0 - a.0 <= 5).collect()
}
