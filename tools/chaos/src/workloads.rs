//! What the pods' apps do during a run, through their sidecars' HTTP API only, and what
//! they write down for the checkers:
//!
//! - counter: increment a counter kept in a token-checking store under the `orders` lock;
//! - queue: producers enqueue numbered items to `jobs` (retrying an enqueue whose outcome
//!   is unknown, as an app would: the payload says which try it was, so two copies of one
//!   item are told apart), consumers process then ack; keyed producers send each item
//!   with an idempotency key and retry on every failure until it is confirmed, and must
//!   never leave two copies;
//! - semaphore: hold a slot of `pool` (3 holders), counting who is inside;
//! - read/write: readers share `config`, writers hold it alone;
//! - election: candidates for `leader` write terms to a token-checking log (`election`);
//! - groups: a producer enqueues numbered items into ordered groups, consumers on every
//!   `default` pod process and ack them (`groups`).
//!
//! A pod's tasks wait at `checkpoint` while the pod is paused (its app is stopped with its
//! sidecar) and are aborted when it is killed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use paddock_testkit::client::{Acquire, PodClient};
use paddock_testkit::fenced::{FencedCounter, Write};
use rand::RngExt as _;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Broken;

/// What a pod's tasks get: its API and whether it is paused.
#[derive(Debug, Clone)]
pub struct PodHandle {
    pub name: String,
    pub client: PodClient,
    pub paused: watch::Receiver<bool>,
}

impl PodHandle {
    /// Waits while the pod is paused (its app does nothing, like its sidecar).
    pub(crate) async fn checkpoint(&mut self) {
        let _ = self.paused.wait_for(|paused| !*paused).await;
    }
}

/// The roles a pod's app plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Counter,
    Producer,
    /// A producer whose items carry an idempotency key, retried until confirmed.
    KeyedProducer,
    Consumer,
    Semaphore,
    Reader,
    Writer,
    /// A candidate for the `leader` lock (`election`).
    Candidate,
    /// Enqueues items into ordered groups (`groups`).
    GroupProducer,
    /// Processes the grouped items (`groups`).
    GroupConsumer,
}

/// How one delivery's ack ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// Not acked (yet): the consumer died or is still processing.
    Pending,
    Acked(Instant),
    /// 409/404: the claim was lost before the ack (session expired, visibility timeout).
    ClaimLost,
    /// The consumer failed the item and its nack was confirmed: it comes again, or goes
    /// to the dead letters after `maxAttempts` deliveries.
    Nacked,
    /// No answer within the retries.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub item: u64,
    /// Which enqueue try of the item this copy came from (see [`ItemRef`]).
    pub copy: u32,
    /// The item id the sidecar handed out.
    pub id: String,
    pub pod: String,
    pub attempt: u32,
    pub at: Instant,
    pub ack: AckOutcome,
}

/// The queue's ledger: what was enqueued (for sure or maybe), delivered, processed.
#[derive(Debug, Default)]
pub struct QueueLedger {
    /// Item number -> whether an enqueue of it was confirmed (201) or every try's outcome
    /// is unknown.
    pub enqueued: BTreeMap<u64, bool>,
    /// Each enqueue try (item number, try) -> whether it was confirmed.
    pub tries: HashMap<(u64, u32), bool>,
    /// Items sent with an idempotency key: a second copy of one is a violation.
    pub keyed: std::collections::HashSet<u64>,
    pub deliveries: Vec<Delivery>,
    pub processed: HashMap<u64, u32>,
}

/// Counts holders inside a section and the times a limit was broken.
#[derive(Debug, Default)]
pub struct Gauge {
    state: Mutex<GaugeState>,
}

#[derive(Debug, Default)]
struct GaugeState {
    readers: u32,
    writers: u32,
    max_seen: u32,
    violations: Vec<String>,
}

/// Leaves the section when dropped (also when the task is aborted: a killed pod's app).
pub struct Inside<'a> {
    gauge: &'a Gauge,
    writer: bool,
}

impl Gauge {
    /// Enters as one of at most `limit` shared holders (a semaphore slot, a reader).
    fn enter_shared(&self, limit: u32, what: &str) -> Inside<'_> {
        let mut s = self.state.lock().unwrap();
        s.readers += 1;
        if s.readers > limit || s.writers > 0 {
            let (readers, writers) = (s.readers, s.writers);
            s.violations.push(format!("{what}: {readers} shared holders and {writers} exclusive inside at once"));
        }
        s.max_seen = s.max_seen.max(s.readers);
        Inside { gauge: self, writer: false }
    }

    /// Enters as the only holder (a writer).
    fn enter_exclusive(&self, what: &str) -> Inside<'_> {
        let mut s = self.state.lock().unwrap();
        s.writers += 1;
        if s.writers > 1 || s.readers > 0 {
            let (readers, writers) = (s.readers, s.writers);
            s.violations.push(format!("{what}: a writer inside with {readers} readers and {writers} writers"));
        }
        Inside { gauge: self, writer: true }
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    pub fn max_seen(&self) -> u32 {
        self.state.lock().unwrap().max_seen
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        let mut s = self.gauge.state.lock().unwrap();
        if self.writer {
            s.writers -= 1;
        } else {
            s.readers -= 1;
        }
    }
}

/// Pods busy at something worth interrupting, counted per pod (a pod has several workers);
/// a worker leaves when its guard drops, also when its pod is killed and the task aborted.
#[derive(Debug, Default)]
pub struct Busy {
    pods: Mutex<HashMap<String, usize>>,
}

pub struct BusyGuard<'a> {
    busy: &'a Busy,
    pod: String,
}

impl Busy {
    pub(crate) fn enter(&self, pod: &str) -> BusyGuard<'_> {
        *self.pods.lock().unwrap().entry(pod.to_owned()).or_default() += 1;
        BusyGuard { busy: self, pod: pod.to_owned() }
    }

    /// One busy pod, if any.
    pub fn any(&self) -> Option<String> {
        self.pods.lock().unwrap().iter().find(|(_, n)| **n > 0).map(|(pod, _)| pod.clone())
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.busy.pods.lock().unwrap().get_mut(&self.pod) {
            *count -= 1;
        }
    }
}

/// Counts a task as running until it ends or is aborted.
pub(crate) struct Running<'a>(pub(crate) &'a AtomicU64);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Successes per workload and the longest time between two of them.
#[derive(Debug)]
pub struct Availability {
    /// Per workload: the last success, and the longest gap with when it ended.
    state: Mutex<HashMap<&'static str, (Instant, Duration, Instant)>>,
    started: Instant,
}

impl Availability {
    fn new() -> Self {
        Self { state: Mutex::default(), started: Instant::now() }
    }

    pub(crate) fn success(&self, workload: &'static str) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let (last, longest, ended) = state.entry(workload).or_insert((self.started, Duration::ZERO, self.started));
        if now - *last > *longest {
            *longest = now - *last;
            *ended = now;
        }
        *last = now;
    }

    /// The longest gap of each workload and when it ended, longest first.
    pub fn longest(&self) -> Vec<(&'static str, Duration, Instant)> {
        let mut gaps: Vec<_> =
            self.state.lock().unwrap().iter().map(|(k, (_, gap, ended))| (*k, *gap, *ended)).collect();
        gaps.sort_by_key(|(_, gap, _)| std::cmp::Reverse(*gap));
        gaps
    }
}

/// Counts of operations.
#[derive(Debug, Default)]
pub struct Counts {
    pub increments: AtomicU64,
    pub stale_rejected: AtomicU64,
    pub lock_errors: AtomicU64,
    pub enqueued: AtomicU64,
    pub enqueue_uncertain: AtomicU64,
    pub enqueue_retries: AtomicU64,
    /// Keyed enqueues answered 200, a duplicate of a try whose answer was lost.
    pub enqueue_deduplicated: AtomicU64,
    pub poison_enqueued: AtomicU64,
    pub nacked: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub semaphore_holds: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

/// Everything the apps share and the checkers read.
pub struct Workloads {
    pub broken: Option<Broken>,
    pub store: FencedCounter,
    pub ledger: Mutex<QueueLedger>,
    pub semaphore: Gauge,
    /// What elected leaders wrote, with their tokens.
    pub leaders: super::election::LeaderLog,
    /// The grouped workload's ledger and counts.
    pub groups: Mutex<super::groups::GroupLedger>,
    pub group_counts: super::groups::GroupCounts,
    pub rw: Gauge,
    pub counts: Counts,
    pub availability: Availability,
    /// Pods whose counter client has read the value and not yet written it back: the
    /// nemesis pauses one of these (a pause mid-section is the one fencing exists for).
    pub mid_section: Busy,
    /// Pods whose consumer is processing an item: the nemesis kills one of these.
    pub processing: Busy,
    /// Pods whose candidate leads and is mid-term: the nemesis pauses one of these by turns
    /// with a `mid_section` one (`pauses` counts the turns).
    pub leading: Busy,
    pub pauses: AtomicU64,
    /// Producer tasks running: the drain waits until none is (an enqueue in flight at the
    /// end would otherwise land after the queue looked empty).
    pub producers: AtomicU64,
    next_item: AtomicU64,
    /// Stops the producers and lock clients; consumers go on to drain.
    pub stop_producing: CancellationToken,
}

pub const COUNTER_LOCK: &str = "orders";
pub const QUEUE: &str = "jobs";
pub const SEMAPHORE_LOCK: &str = "pool";
pub const SEMAPHORE_HOLDERS: u32 = 3;
pub const RW_LOCK: &str = "config";

impl Workloads {
    pub fn new(broken: Option<Broken>) -> Self {
        let store = match broken {
            Some(Broken::NoFencing) => FencedCounter::without_fencing(),
            _ => FencedCounter::new(),
        };
        Self {
            broken,
            store,
            ledger: Mutex::default(),
            semaphore: Gauge::default(),
            leaders: super::election::LeaderLog::new(broken),
            groups: Mutex::default(),
            group_counts: super::groups::GroupCounts::default(),
            rw: Gauge::default(),
            counts: Counts::default(),
            availability: Availability::new(),
            mid_section: Busy::default(),
            processing: Busy::default(),
            leading: Busy::default(),
            pauses: AtomicU64::new(0),
            producers: AtomicU64::new(0),
            next_item: AtomicU64::new(0),
            stop_producing: CancellationToken::new(),
        }
    }

    /// Runs one task of `role` for `pod` until stopped (or aborted with its pod).
    pub async fn run(&self, role: Role, mut pod: PodHandle, worker: usize) {
        let owner = format!("{}-w{worker}", pod.name);
        match role {
            Role::Counter => self.counter(&mut pod, &owner).await,
            Role::Producer => self.producer(&mut pod, false).await,
            Role::KeyedProducer => self.producer(&mut pod, true).await,
            Role::Consumer => self.consumer(&mut pod).await,
            Role::Semaphore => self.holder(&mut pod, &owner, SEMAPHORE_LOCK, "exclusive", true).await,
            Role::Reader => self.holder(&mut pod, &owner, RW_LOCK, "shared", false).await,
            Role::Writer => self.holder(&mut pod, &owner, RW_LOCK, "exclusive", false).await,
            Role::Candidate => self.candidate(&mut pod, &owner).await,
            Role::GroupProducer => self.group_producer(&mut pod).await,
            Role::GroupConsumer => self.group_consumer(&mut pod).await,
        }
    }

    async fn counter(&self, pod: &mut PodHandle, owner: &str) {
        while !self.stop_producing.is_cancelled() {
            pod.checkpoint().await;
            match pod.client.acquire(COUNTER_LOCK, owner, "2s").await {
                Ok(Acquire::Acquired { token, .. }) => {
                    let value = self.store.read();
                    let busy = self.mid_section.enter(&pod.name);
                    tokio::time::sleep(jitter(20, 60)).await;
                    pod.checkpoint().await;
                    drop(busy);
                    match self.store.write(token, value + 1) {
                        Write::Accepted => {
                            self.counts.increments.fetch_add(1, Ordering::Relaxed);
                            self.availability.success("lock");
                        }
                        // The lock was lost (a pause past the session): the store refused.
                        Write::Stale { .. } => {
                            self.counts.stale_rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    release(pod, COUNTER_LOCK, owner).await;
                }
                Ok(Acquire::Busy(_)) => {}
                Ok(Acquire::Failed { .. }) | Err(_) => {
                    self.counts.lock_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // An acquire whose answer left the outcome unknown may have left this owner a
        // place: give it up, so that what is left afterwards is the sidecar's doing.
        release(pod, COUNTER_LOCK, owner).await;
    }

    /// Enqueues numbered items. Any answer but a confirmation (a 503, no answer at all)
    /// leaves the outcome unknown: the item may be in the queue. A plain producer tries
    /// again a few times, as an app would; a keyed one sends the item's idempotency key
    /// and tries until it is confirmed (201, or 200 for a duplicate of an earlier try).
    async fn producer(&self, pod: &mut PodHandle, keyed: bool) {
        self.producers.fetch_add(1, Ordering::SeqCst);
        let _running = Running(&self.producers);
        while !self.stop_producing.is_cancelled() {
            pod.checkpoint().await;
            let number = self.next_item.fetch_add(1, Ordering::Relaxed);
            if keyed {
                self.ledger.lock().unwrap().keyed.insert(number);
            }
            let mut copy = 0;
            // Every 20th keyed item is sent once more after its confirmation, as if that
            // answer had been lost: the second send must be a duplicate.
            let mut resend = keyed && number.is_multiple_of(20);
            let mut counted = false;
            loop {
                copy += 1;
                if copy > 1 {
                    self.counts.enqueue_retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    pod.checkpoint().await;
                }
                let item = ItemRef { number, copy };
                let key = (keyed && self.broken != Some(Broken::DropIdempotencyKeys)).then(|| format!("item-{number}"));
                let answer = pod.client.enqueue_keyed(QUEUE, item.payload(), key.as_deref()).await;
                let deduplicated = matches!(&answer, Ok((200, body)) if body["duplicate"] == true);
                let confirmed = matches!(answer, Ok((201, _))) || deduplicated;
                {
                    let mut ledger = self.ledger.lock().unwrap();
                    ledger.tries.insert((number, copy), confirmed && !deduplicated);
                    *ledger.enqueued.entry(number).or_default() |= confirmed;
                }
                if confirmed {
                    if !std::mem::replace(&mut counted, true) {
                        self.counts.enqueued.fetch_add(1, Ordering::Relaxed);
                        if item.poison() && self.broken == Some(Broken::FailSomeItems) {
                            self.counts.poison_enqueued.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if deduplicated {
                        self.counts.enqueue_deduplicated.fetch_add(1, Ordering::Relaxed);
                    }
                    self.availability.success("enqueue");
                    if std::mem::take(&mut resend) {
                        continue;
                    }
                    break;
                }
                self.counts.enqueue_uncertain.fetch_add(1, Ordering::Relaxed);
                if self.stop_producing.is_cancelled() || (!keyed && copy >= ENQUEUE_TRIES) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    async fn consumer(&self, pod: &mut PodHandle) {
        loop {
            pod.checkpoint().await;
            let item = match pod.client.next(QUEUE, "1s").await {
                Ok(Some(item)) => item,
                Ok(None) => continue,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(item_ref) = ItemRef::parse(&item.payload) else {
                continue;
            };
            let number = item_ref.number;
            self.counts.delivered.fetch_add(1, Ordering::Relaxed);
            self.availability.success("dequeue");
            let delivery = {
                let mut ledger = self.ledger.lock().unwrap();
                ledger.deliveries.push(Delivery {
                    item: number,
                    copy: item_ref.copy,
                    id: item.id.clone(),
                    pod: pod.name.clone(),
                    attempt: item.attempt,
                    at: Instant::now(),
                    ack: AckOutcome::Pending,
                });
                ledger.deliveries.len() - 1
            };
            if self.broken == Some(Broken::FailSomeItems) && item_ref.poison() {
                // Processing fails every time: the consumer gives it back.
                tokio::time::sleep(jitter(5, 20)).await;
                let outcome = self.nack(pod, &item.id).await;
                self.ledger.lock().unwrap().deliveries[delivery].ack = outcome;
            } else if self.broken == Some(Broken::AckBeforeProcessing) {
                let outcome = self.ack(pod, &item.id).await;
                self.ledger.lock().unwrap().deliveries[delivery].ack = outcome;
                self.process(pod, number, jitter(150, 300)).await;
            } else {
                self.process(pod, number, jitter(5, 40)).await;
                let outcome = self.ack(pod, &item.id).await;
                self.ledger.lock().unwrap().deliveries[delivery].ack = outcome;
            }
        }
    }

    /// The app's work on one item; it counts once it is done.
    async fn process(&self, pod: &mut PodHandle, item: u64, took: Duration) {
        let busy = self.processing.enter(&pod.name);
        tokio::time::sleep(took).await;
        pod.checkpoint().await;
        drop(busy);
        *self.ledger.lock().unwrap().processed.entry(item).or_default() += 1;
    }

    /// Acks, retrying while the answer is unknown (acks are idempotent).
    async fn ack(&self, pod: &mut PodHandle, id: &str) -> AckOutcome {
        for _ in 0..60 {
            pod.checkpoint().await;
            match pod.client.settle(QUEUE, id, "ack", "").await {
                Ok((200 | 204, _)) => {
                    self.counts.acked.fetch_add(1, Ordering::Relaxed);
                    return AckOutcome::Acked(Instant::now());
                }
                Ok((404 | 409, _)) => return AckOutcome::ClaimLost,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        AckOutcome::Unknown
    }

    /// Gives an item back, retrying while the answer is unknown.
    async fn nack(&self, pod: &mut PodHandle, id: &str) -> AckOutcome {
        for _ in 0..60 {
            pod.checkpoint().await;
            match pod.client.settle(QUEUE, id, "nack", "reason=processing-failed").await {
                Ok((200 | 204, _)) => {
                    self.counts.nacked.fetch_add(1, Ordering::Relaxed);
                    return AckOutcome::Nacked;
                }
                Ok((404 | 409, _)) => return AckOutcome::ClaimLost,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        AckOutcome::Unknown
    }

    /// Semaphore slots and read/write holds, checked by a gauge.
    async fn holder(&self, pod: &mut PodHandle, owner: &str, lock: &str, mode: &str, semaphore: bool) {
        while !self.stop_producing.is_cancelled() {
            pod.checkpoint().await;
            let body = json!({ "name": lock, "owner": owner, "wait": "2s", "mode": mode });
            match pod.client.acquire_with(body).await {
                Ok(Acquire::Acquired { .. }) => {
                    {
                        let _inside = match (semaphore, mode) {
                            (true, _) => self.semaphore.enter_shared(SEMAPHORE_HOLDERS, "semaphore pool"),
                            (false, "shared") => self.rw.enter_shared(u32::MAX, "read/write lock config"),
                            (false, _) => self.rw.enter_exclusive("read/write lock config"),
                        };
                        tokio::time::sleep(jitter(10, 40)).await;
                    }
                    let counter = match (semaphore, mode) {
                        (true, _) => &self.counts.semaphore_holds,
                        (false, "shared") => &self.counts.reads,
                        (false, _) => &self.counts.writes,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.availability.success(if semaphore { "semaphore" } else { "read/write" });
                    release(pod, lock, owner).await;
                }
                Ok(Acquire::Busy(_)) => {}
                Ok(Acquire::Failed { .. }) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        release(pod, lock, owner).await;
    }
}

/// Releases a lock, asking again while the answer leaves the outcome unknown (a 503 or
/// none; releases are idempotent): 200 released, 404 not held, 409 lost are all final.
pub(crate) async fn release(pod: &mut PodHandle, lock: &str, owner: &str) {
    for _ in 0..40 {
        pod.checkpoint().await;
        match pod.client.release(lock, owner).await {
            Ok((200 | 404 | 409, _)) => return,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A random duration between `low` and `high` milliseconds.
pub(crate) fn jitter(low: u64, high: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(low..high))
}

/// How often a producer tries one item while the answers leave its outcome unknown.
pub const ENQUEUE_TRIES: u32 = 3;

/// What a payload says: the item number and which enqueue try it came from, so a copy
/// left by a try whose answer was lost is told from a redelivery of one copy. Written
/// and read here only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ItemRef {
    pub number: u64,
    pub copy: u32,
}

impl ItemRef {
    pub fn payload(self) -> String {
        format!("item-{}.{}", self.number, self.copy)
    }

    /// The item a payload carries, if it is one of ours.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let (number, copy) = std::str::from_utf8(payload).ok()?.strip_prefix("item-")?.split_once('.')?;
        Some(Self { number: number.parse().ok()?, copy: copy.parse().ok()? })
    }

    /// Whether consumers of [`Broken::FailSomeItems`] fail it (every tenth item).
    pub fn poison(self) -> bool {
        self.number.is_multiple_of(10)
    }
}
