//! Ordered groups, batched claims and batched acks (issue 16) through the sidecar's HTTP
//! API, against a real 3-node ensemble: items of one group go out one at a time in
//! enqueue order, across every consumer of every sidecar, a sidecar SIGKILLed midway.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{eventually, sidecar};
use paddock_recipes::QueueConfig;
use paddock_testkit::{Ensemble, PodClient};
use serde_json::{Value, json};
use tokio::time::Instant;

const NS: &str = "team-g";
const SESSION: Duration = Duration::from_secs(10);

async fn setup(queues: &[(&str, QueueConfig)]) -> Ensemble {
    common::ensemble_with_queues(NS, queues).await
}

fn config(max_attempts: u32, visibility: Duration) -> QueueConfig {
    QueueConfig { max_attempts, visibility_timeout: visibility, ..QueueConfig::default() }
}

/// An item as `GET /queue/next` hands it out, with the group it says it belongs to.
#[derive(Debug, Clone)]
struct Handed {
    id: String,
    attempt: u32,
    group: Option<String>,
    payload: String,
}

/// `GET /queue/next`: without `max` one item (raw payload, `Paddock-*` headers), with it
/// the JSON list. Empty on 204; an error on anything else (a sidecar restarting, a 503).
async fn next(pod: &PodClient, queue: &str, max: Option<usize>, wait: &str) -> anyhow::Result<Vec<Handed>> {
    let mut query = vec![("queue", queue.to_owned()), ("wait", wait.to_owned())];
    if let Some(max) = max {
        query.push(("max", max.to_string()));
    }
    let response = pod.http().get(pod.url("/queue/next")).query(&query).send().await?;
    match (response.status().as_u16(), max) {
        (204, _) => Ok(Vec::new()),
        (200, None) => {
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let id = header("paddock-item-id").context("Paddock-Item-Id")?;
            let attempt = header("paddock-attempt").context("Paddock-Attempt")?.parse()?;
            let group = header("paddock-group").map(|g| percent_decoded(&g));
            let payload = String::from_utf8(response.bytes().await?.to_vec())?;
            Ok(vec![Handed { id, attempt, group, payload }])
        }
        (200, Some(_)) => {
            let body: Value = response.json().await?;
            let items = body["items"].as_array().with_context(|| format!("no items in {body}"))?;
            items
                .iter()
                .map(|item| {
                    let payload = BASE64.decode(item["payloadBase64"].as_str().context("payloadBase64")?)?;
                    Ok(Handed {
                        id: item["id"].as_str().context("id")?.to_owned(),
                        attempt: item["attempt"].as_u64().context("attempt")? as u32,
                        group: item["group"].as_str().map(str::to_owned),
                        payload: String::from_utf8(payload)?,
                    })
                })
                .collect()
        }
        (status, _) => anyhow::bail!("GET /queue/next: {status} {}", response.text().await.unwrap_or_default()),
    }
}

/// A `Paddock-Group` header's key: `%XX` stands for a byte that is not visible ASCII (or `%`).
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                key.push(byte);
                i += 3;
            }
            (byte, _) => {
                key.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&key).into_owned()
}

/// One item from a single `GET /queue/next`, which must come within `wait`.
async fn next_one(pod: &PodClient, queue: &str, wait: &str) -> Handed {
    let mut items = next(pod, queue, None, wait).await.unwrap();
    assert_eq!(items.len(), 1, "one item within {wait}: {items:?}");
    items.remove(0)
}

/// `POST /queue/{queue}?group=KEY` and more of the query (`delay`): status and body.
async fn enqueue_to(pod: &PodClient, queue: &str, group: &str, payload: &str, more: &[(&str, &str)]) -> (u16, Value) {
    let mut query = vec![("group", group)];
    query.extend_from_slice(more);
    let url = pod.url(&format!("/queue/{queue}"));
    let response = pod.http().post(url).query(&query).body(payload.to_owned()).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `POST /queue/{queue}/batch` of (group, payload); no group for an ungrouped item.
async fn enqueue_batch(pod: &PodClient, queue: &str, items: &[(Option<String>, String)]) -> (u16, Value) {
    let items: Vec<Value> = items
        .iter()
        .map(|(group, payload)| match group {
            Some(group) => json!({ "payload": payload, "group": group }),
            None => json!({ "payload": payload }),
        })
        .collect();
    let url = pod.url(&format!("/queue/{queue}/batch"));
    let response = pod.http().post(url).json(&json!({ "items": items })).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `POST /queue/{queue}/ack` with `{"ids": [...]}`: status and body.
async fn ack_batch(pod: &PodClient, queue: &str, ids: &[String]) -> anyhow::Result<(u16, Value)> {
    let url = pod.url(&format!("/queue/{queue}/ack"));
    let response = pod.http().post(url).json(&json!({ "ids": ids })).send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// The outcome of each id of a batched ack's answer.
fn outcomes(body: &Value) -> HashMap<String, String> {
    let results = body["results"].as_array().into_iter().flatten();
    results.filter_map(|r| Some((r["id"].as_str()?.to_owned(), r["outcome"].as_str()?.to_owned()))).collect()
}

const QUEUE: &str = "ordered";
const GROUPS: u32 = 200;
const PER_GROUP: u64 = 50;
const UNGROUPED: u64 = 500;
const CONSUMERS: usize = 8;

fn group_key(group: u32) -> String {
    format!("customer-{group}")
}

/// How a consumer's ack ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    /// Answered `acked` (200, or `"acked"` in a batch's results), at this instant.
    Acked(Instant),
    Refused,
    /// No answer: the sidecar died.
    Unanswered,
}

/// One delivery, as the consumer saw it.
#[derive(Debug, Clone)]
struct Delivery {
    /// The group and the item's number in it, as the payload says; None for an ungrouped
    /// item (whose number is then `seq`).
    group: Option<u32>,
    seq: u64,
    consumer: usize,
    pod: usize,
    attempt: u32,
    /// When `GET /queue/next` answered.
    delivered: Instant,
    /// When the consumer had processed it.
    processed: Instant,
    /// When its ack (the first try) was sent.
    ack_sent: Instant,
    ack: Ack,
}

#[derive(Default)]
struct Ledger {
    deliveries: Vec<Delivery>,
    /// Answers that broke the API's promises on the spot (a missing group, two items of
    /// one group in one answer).
    problems: Vec<String>,
    /// The largest `max` answer seen.
    largest_answer: usize,
}

/// A small xorshift for processing times (no dependency for it).
struct Jitter(u64);

impl Jitter {
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(low + self.0 % (high - low))
    }
}

/// (group, seq) from a payload `g{group}/{seq}`, (None, n) from `u/{n}`.
fn parse(payload: &str) -> Option<(Option<u32>, u64)> {
    if let Some(rest) = payload.strip_prefix('g') {
        let (group, seq) = rest.split_once('/')?;
        return Some((Some(group.parse().ok()?), seq.parse().ok()?));
    }
    Some((None, payload.strip_prefix("u/")?.parse().ok()?))
}

async fn ack_one(pod: &PodClient, id: &str) -> Ack {
    for _ in 0..100 {
        match pod.settle(QUEUE, id, "ack", "").await {
            Ok((200, _)) => return Ack::Acked(Instant::now()),
            Ok((503, _)) => tokio::time::sleep(Duration::from_millis(100)).await, // ZooKeeper electing
            Ok(_) => return Ack::Refused,
            Err(_) => return Ack::Unanswered,
        }
    }
    Ack::Unanswered
}

async fn ack_many(pod: &PodClient, ids: &[String]) -> Vec<Ack> {
    for _ in 0..100 {
        match ack_batch(pod, QUEUE, ids).await {
            Ok((200, body)) => {
                let now = Instant::now();
                let outcomes = outcomes(&body);
                let acked = |id: &String| outcomes.get(id).is_some_and(|o| o == "acked");
                return ids.iter().map(|id| if acked(id) { Ack::Acked(now) } else { Ack::Refused }).collect();
            }
            Ok((503, _)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => return vec![Ack::Refused; ids.len()],
            Err(_) => return vec![Ack::Unanswered; ids.len()],
        }
    }
    vec![Ack::Unanswered; ids.len()]
}

/// Checks what an answer says of each item's group against its payload.
fn check_answer(handed: &[Handed], problems: &mut Vec<String>) {
    let mut groups = HashSet::new();
    for item in handed {
        let expected = match parse(&item.payload) {
            Some((group, _)) => group.map(group_key),
            None => {
                problems.push(format!("a payload not ours: {item:?}"));
                continue;
            }
        };
        if item.group != expected {
            problems.push(format!("item {} handed out with group {:?}, enqueued to {expected:?}", item.id, item.group));
        }
        if let Some(group) = &item.group
            && !groups.insert(group.clone())
        {
            problems.push(format!("two items of group {group} in one answer: {handed:?}"));
        }
    }
}

/// A consumer: `GET /queue/next` (single, or `max` of 8 or 4), processes each item for 1
/// to 40 ms, acks (one by one, or the whole answer in one batched ack).
async fn consume(consumer: usize, pod_index: usize, pod: PodClient, ledger: Arc<Mutex<Ledger>>, acked: Arc<AtomicU64>) {
    let mut jitter = Jitter(0x9e37_79b9_7f4a_7c15 ^ (consumer as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let (max, batched) = match consumer % 4 {
        0 => (Some(8), true),
        1 => (None, false),
        2 => (Some(4), false),
        _ => (None, true),
    };
    loop {
        let handed = match next(&pod, QUEUE, max, "1s").await {
            Ok(handed) => handed,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await; // the sidecar restarting
                continue;
            }
        };
        let delivered = Instant::now();
        {
            let mut ledger = ledger.lock().unwrap();
            check_answer(&handed, &mut ledger.problems);
            ledger.largest_answer = ledger.largest_answer.max(handed.len());
        }
        let mut done = Vec::new();
        for item in handed {
            tokio::time::sleep(jitter.millis(1, 40)).await; // processing
            let processed = Instant::now();
            if batched {
                done.push((item, processed));
                continue;
            }
            let ack_sent = Instant::now();
            let ack = ack_one(&pod, &item.id).await;
            record(&ledger, &acked, consumer, pod_index, &item, delivered, processed, ack_sent, ack);
        }
        if !done.is_empty() {
            let ack_sent = Instant::now();
            let ids: Vec<String> = done.iter().map(|(item, _)| item.id.clone()).collect();
            let acks = ack_many(&pod, &ids).await;
            for ((item, processed), ack) in done.iter().zip(acks) {
                record(&ledger, &acked, consumer, pod_index, item, delivered, *processed, ack_sent, ack);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    ledger: &Mutex<Ledger>,
    acked: &AtomicU64,
    consumer: usize,
    pod: usize,
    item: &Handed,
    delivered: Instant,
    processed: Instant,
    ack_sent: Instant,
    ack: Ack,
) {
    let Some((group, seq)) = parse(&item.payload) else { return };
    if matches!(ack, Ack::Acked(_)) {
        acked.fetch_add(1, Ordering::SeqCst);
    }
    let delivery = Delivery { group, seq, consumer, pod, attempt: item.attempt, delivered, processed, ack_sent, ack };
    ledger.lock().unwrap().deliveries.push(delivery);
}

/// Every item of 200 groups x 50 (enqueued round-robin over the groups, in batches, with
/// ungrouped items between), plus the ungrouped ones.
fn workload() -> Vec<(Option<String>, String)> {
    let mut items = Vec::new();
    let mut ungrouped = 0;
    for seq in 0..PER_GROUP {
        for group in 0..GROUPS {
            items.push((Some(group_key(group)), format!("g{group}/{seq}")));
            if items.len() % 21 == 20 && ungrouped < UNGROUPED {
                items.push((None, format!("u/{ungrouped}")));
                ungrouped += 1;
            }
        }
    }
    items.extend((ungrouped..UNGROUPED).map(|n| (None, format!("u/{n}"))));
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_groups_keep_their_order_across_eight_consumers_and_a_sidecar_kill() {
    let ensemble = setup(&[(QUEUE, config(20, Duration::from_secs(60)))]).await;
    // Short, so that the killed sidecar's claims come back soon.
    let short = Duration::from_secs(4);
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, short).await;
    let (mut b, pod_b) = sidecar(&ensemble, "pod-b", NS, short).await;
    let (_c, pod_c) = sidecar(&ensemble, "pod-c", NS, short).await;
    let pods = [pod_a.clone(), pod_b.clone(), pod_c.clone()];
    let started = Instant::now();

    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let acked = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::new();
    for consumer in 0..CONSUMERS {
        let pod = consumer % pods.len();
        let task = consume(consumer, pod, pods[pod].clone(), ledger.clone(), acked.clone());
        consumers.push(tokio::spawn(task));
    }
    let items = workload();
    // Enqueued while the consumers work, through pod-a and pod-c (pod-b is killed meanwhile).
    let mut producer = Some(tokio::spawn({
        let (items, producers) = (items.clone(), [pod_a.clone(), pod_c.clone()]);
        async move {
            for (n, batch) in items.chunks(500).enumerate() {
                let (status, body) = enqueue_batch(&producers[n % 2], QUEUE, batch).await;
                assert_eq!(status, 201, "batch {n} of grouped items: {body}");
            }
            started.elapsed()
        }
    }));
    let four_thousand = || async { acked.load(Ordering::SeqCst) >= 4_000 };
    eventually(Duration::from_secs(300), "4,000 items acked, or the producer done", || async {
        four_thousand().await || producer.as_ref().is_some_and(|p| p.is_finished())
    })
    .await;
    let mut enqueued = None;
    if !four_thousand().await {
        // The producer ended first: how (a failed enqueue fails the test here), then the acks.
        enqueued = Some(producer.take().expect("not awaited yet").await.unwrap());
        eventually(Duration::from_secs(300), "4,000 items acked", four_thousand).await;
    }
    b.process.kill(); // SIGKILL: its claims live on until its session expires
    let (killed_at, acked_at_kill) = (Instant::now(), acked.load(Ordering::SeqCst));
    b.restart().await.unwrap();
    let restarted_at = Instant::now();
    let enqueued = match enqueued {
        Some(enqueued) => enqueued,
        None => producer.take().expect("not awaited yet").await.unwrap(),
    };
    eventually(Duration::from_secs(600), "the queue drained", || async {
        pod_a.queue_stats(QUEUE).await.is_ok_and(|s| s["depth"] == 0 && s["inFlight"] == 0)
    })
    .await;
    for consumer in consumers {
        consumer.abort();
        let _ = consumer.await;
    }
    let stats = pod_a.queue_stats(QUEUE).await.unwrap();
    assert_eq!(stats["deadLettered"].as_u64(), Some(0), "{stats}");

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.problems.is_empty(), "answers: {:?}", &ledger.problems[..ledger.problems.len().min(10)]);
    let order = check_order(&ledger.deliveries);
    assert!(order.is_empty(), "order within groups (a): {:?}", &order[..order.len().min(10)]);
    let (overlaps, intervals) = check_exclusive(&ledger.deliveries, 1, killed_at, started);
    assert!(
        overlaps.is_empty(),
        "one item of a group in flight at a time (b): {:?}",
        &overlaps[..overlaps.len().min(10)]
    );
    let lost = check_nothing_lost(&ledger.deliveries, 1, restarted_at);
    assert!(lost.is_empty(), "nothing lost (c): {:?}", &lost[..lost.len().min(10)]);

    let redelivered = ledger.deliveries.iter().filter(|d| d.attempt > 1).count();
    println!(
        "{} items ({GROUPS} groups x {PER_GROUP} and {UNGROUPED} ungrouped) enqueued in {:.1} s, drained in {:.1} s \
         by {CONSUMERS} consumers on 3 sidecars (pod-b SIGKILLed at {:.1} s, {acked_at_kill} acked, and restarted): \
         {} deliveries, {redelivered} redeliveries, {intervals} in-flight intervals checked, largest answer of max {}",
        items.len(),
        enqueued.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        killed_at.duration_since(started).as_secs_f64(),
        ledger.deliveries.len(),
        ledger.largest_answer
    );
    // Drained: no group has items.
    assert_eq!((stats["groups"].as_u64(), &stats["longestGroup"]), (Some(0), &Value::Null), "{stats}");
}

/// (a): per group, deliveries in the order they were handed out never skip ahead and
/// never go back (a redelivery repeats the head, with a higher attempt, and only before
/// an ack of it was confirmed), and first-time processing runs in enqueue order.
fn check_order(deliveries: &[Delivery]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_group: BTreeMap<u32, Vec<&Delivery>> = BTreeMap::new();
    for d in deliveries {
        if let Some(group) = d.group {
            by_group.entry(group).or_default().push(d);
        }
    }
    for (group, mut ds) in by_group {
        ds.sort_by_key(|d| d.delivered);
        let mut acked: HashMap<u64, Instant> = HashMap::new();
        for d in &ds {
            if let Ack::Acked(at) = d.ack {
                let first = acked.entry(d.seq).or_insert(at);
                *first = (*first).min(at);
            }
        }
        let mut head: Option<(u64, u32)> = None;
        for d in &ds {
            let what = format!("group {group}: item {} (attempt {}) to consumer {}", d.seq, d.attempt, d.consumer);
            match head {
                None if d.seq == 0 => head = Some((0, d.attempt)),
                Some((seq, _)) if d.seq == seq + 1 => head = Some((d.seq, d.attempt)),
                Some((seq, attempt)) if d.seq == seq => {
                    if d.attempt <= attempt {
                        problems.push(format!("{what}: handed out again without a higher attempt than {attempt}"));
                    }
                    if acked.get(&seq).is_some_and(|at| *at < d.delivered) {
                        problems.push(format!("{what}: handed out again after its ack was confirmed"));
                    }
                    head = Some((seq, d.attempt));
                }
                _ => problems.push(format!("{what}: handed out after item {:?}: out of order", head.map(|h| h.0))),
            }
        }
        ds.sort_by_key(|d| d.processed);
        let mut seen = HashSet::new();
        let first_times: Vec<u64> = ds.iter().map(|d| d.seq).filter(|seq| seen.insert(*seq)).collect();
        if first_times != (0..PER_GROUP).collect::<Vec<_>>() {
            problems.push(format!("group {group}: first-time processing in the order {first_times:?}"));
        }
    }
    problems
}

/// (b): per group, no two deliveries in flight at once. In flight from the answer of
/// `GET /queue/next` (surely claimed) to the sending of the ack (surely still held: its
/// answer may arrive after the next item went out), for acks answered `acked`; a delivery
/// of the killed sidecar's old process until the kill (its claim lived on after it).
fn check_exclusive(
    deliveries: &[Delivery],
    killed_pod: usize,
    killed_at: Instant,
    t0: Instant,
) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut by_group: BTreeMap<u32, Vec<(Instant, Instant, &Delivery)>> = BTreeMap::new();
    for d in deliveries {
        let end = match d.ack {
            Ack::Acked(_) => d.ack_sent,
            _ if d.pod == killed_pod && d.delivered < killed_at => d.ack_sent.min(killed_at),
            _ => continue,
        };
        if let Some(group) = d.group {
            by_group.entry(group).or_default().push((d.delivered, end, d));
        }
    }
    let intervals = by_group.values().map(Vec::len).sum();
    let ms = |at: Instant| at.duration_since(t0).as_millis();
    for (group, mut spans) in by_group {
        spans.sort_by_key(|(start, _, _)| *start);
        let mut latest: Option<(Instant, &Delivery)> = None;
        for (start, end, d) in spans {
            if let Some((until, other)) = latest
                && start < until
            {
                problems.push(format!(
                    "group {group}: item {} handed to consumer {} at {} ms while item {} (consumer {}) was in flight until {} ms",
                    d.seq,
                    d.consumer,
                    ms(start),
                    other.seq,
                    other.consumer,
                    ms(until)
                ));
            }
            if latest.is_none_or(|(until, _)| end > until) {
                latest = Some((end, d));
            }
        }
    }
    (problems, intervals)
}

/// (c): every item delivered and acked; an ack without a confirmation only of an item the
/// killed sidecar handed out before it was back.
fn check_nothing_lost(deliveries: &[Delivery], killed_pod: usize, restarted_at: Instant) -> Vec<String> {
    let mut problems = Vec::new();
    let mut acked: HashSet<(Option<u32>, u64)> = HashSet::new();
    let mut unconfirmed: HashSet<(Option<u32>, u64)> = HashSet::new();
    for d in deliveries {
        match d.ack {
            Ack::Acked(_) => {
                acked.insert((d.group, d.seq));
            }
            _ if d.pod == killed_pod && d.delivered < restarted_at => {
                unconfirmed.insert((d.group, d.seq));
            }
            ack => problems
                .push(format!("{:?}/{} (consumer {}): ack {ack:?} with no sidecar killed", d.group, d.seq, d.consumer)),
        }
    }
    let grouped = (0..GROUPS).flat_map(|g| (0..PER_GROUP).map(move |seq| (Some(g), seq)));
    for item in grouped.chain((0..UNGROUPED).map(|n| (None, n))) {
        if !acked.contains(&item) && !unconfirmed.contains(&item) {
            problems.push(format!("item {item:?} never acked"));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_item_stays_at_the_head_of_its_group_and_a_delayed_one_blocks_only_its_group() {
    let ensemble = setup(&[("heads", config(10, Duration::from_secs(300)))]).await;
    let (_a, pod) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let group = "tenant/7 ü&x=1"; // URL-encoded in the query
    let mut answers = Vec::new();
    for payload in ["a", "b", "c"] {
        let (status, body) = enqueue_to(&pod, "heads", group, payload, &[]).await;
        assert_eq!(status, 201, "{body}");
        answers.push(body);
    }
    let a = next_one(&pod, "heads", "5s").await;
    assert_eq!((a.payload.as_str(), a.attempt, a.group.as_deref()), ("a", 1, Some(group)), "{a:?}");
    assert!(next(&pod, "heads", None, "1s").await.unwrap().is_empty(), "b waits while a is held");
    let (status, body) = pod.settle("heads", &a.id, "nack", "").await.unwrap();
    assert_eq!((status, body["outcome"].as_str()), (200, Some("requeued")), "{body}");
    let again = next_one(&pod, "heads", "5s").await;
    assert_eq!((again.payload.as_str(), again.id.as_str(), again.attempt), ("a", a.id.as_str(), 2), "a again, not b");
    assert_eq!(pod.settle("heads", &again.id, "ack", "").await.unwrap().0, 200);
    for expected in ["b", "c"] {
        let item = next_one(&pod, "heads", "5s").await;
        assert_eq!((item.payload.as_str(), item.attempt), (expected, 1));
        assert_eq!(pod.settle("heads", &item.id, "ack", "").await.unwrap().0, 200);
    }

    // A delayed item at the head of "slow" holds back "slow" only.
    let enqueued = Instant::now();
    assert_eq!(enqueue_to(&pod, "heads", "slow", "x", &[("delay", "8s")]).await.0, 201);
    assert_eq!(enqueue_to(&pod, "heads", "slow", "y", &[]).await.0, 201);
    assert_eq!(enqueue_to(&pod, "heads", "fast", "z", &[]).await.0, 201);
    let z = next_one(&pod, "heads", "5s").await;
    assert_eq!((z.payload.as_str(), z.group.as_deref()), ("z", Some("fast")), "the other group flows");
    if enqueued.elapsed() < Duration::from_secs(6) {
        assert!(next(&pod, "heads", None, "1s").await.unwrap().is_empty(), "y waits behind the delayed x");
    }
    assert_eq!(pod.settle("heads", &z.id, "ack", "").await.unwrap().0, 200);
    let x = next_one(&pod, "heads", "30s").await;
    assert_eq!(x.payload, "x", "the delayed head first, then the rest of its group");
    assert!(enqueued.elapsed() >= Duration::from_secs(7), "not before its delay: {:?}", enqueued.elapsed());
    assert_eq!(pod.settle("heads", &x.id, "ack", "").await.unwrap().0, 200);
    let y = next_one(&pod, "heads", "5s").await;
    assert_eq!(y.payload, "y");
    assert_eq!(pod.settle("heads", &y.id, "ack", "").await.unwrap().0, 200);
    // The enqueue's answer names the group too.
    for body in answers {
        assert_eq!(body["group"].as_str(), Some(group), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_with_max_hands_out_one_item_per_group_and_a_batched_ack_answers_per_id() {
    let ensemble = setup(&[("batch", config(10, Duration::from_secs(300)))]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    // p: 6 items, q: 5, and 3 ungrouped, interleaved.
    let mut items = Vec::new();
    for n in 0..6 {
        items.push((Some("p".to_owned()), format!("p/{n}")));
        if n < 5 {
            items.push((Some("q".to_owned()), format!("q/{n}")));
        }
        if n < 3 {
            items.push((None, format!("u/{n}")));
        }
    }
    let (status, body) = enqueue_batch(&pod_a, "batch", &items).await;
    assert_eq!((status, body["ids"].as_array().map(Vec::len)), (201, Some(14)), "{body}");
    let stats = pod_a.queue_stats("batch").await.unwrap();
    assert_eq!(stats["groups"], 2, "p and q have items: {stats}");
    assert_eq!(stats["longestGroup"], json!({ "group": "p", "items": 6 }), "{stats}");

    // However often asked, the heads of p and q and the ungrouped items, nothing more.
    let mut handed: Vec<Handed> = Vec::new();
    for _ in 0..10 {
        let answer = next(&pod_a, "batch", Some(20), "2s").await.unwrap();
        let mut groups: Vec<&str> = answer.iter().filter_map(|h| h.group.as_deref()).collect();
        groups.sort();
        assert!(groups.windows(2).all(|w| w[0] != w[1]), "two items of one group in one answer: {answer:?}");
        handed.extend(answer);
        if handed.len() >= 5 {
            break;
        }
    }
    let mut payloads: Vec<&str> = handed.iter().map(|h| h.payload.as_str()).collect();
    payloads.sort();
    assert_eq!(payloads, ["p/0", "q/0", "u/0", "u/1", "u/2"], "{handed:?}");
    assert!(
        handed.iter().all(|h| h.group.as_deref() == h.payload.split_once('/').map(|(g, _)| g).filter(|g| *g != "u"))
    );
    // An item of group r, held by pod-b: the only one ready.
    assert_eq!(enqueue_to(&pod_a, "batch", "r", "r/0", &[]).await.0, 201);
    let held_by_b = next_one(&pod_b, "batch", "5s").await;
    assert_eq!((held_by_b.payload.as_str(), held_by_b.group.as_deref()), ("r/0", Some("r")));
    assert!(next(&pod_a, "batch", Some(20), "1s").await.unwrap().is_empty(), "p/1 and q/1 wait for their heads");
    assert!(next(&pod_b, "batch", Some(20), "1s").await.unwrap().is_empty(), "on every sidecar");

    // A batched ack: two held, one held by pod-b, one never claimed.
    let id_of = |payload: &str| handed.iter().find(|h| h.payload == payload).unwrap().id.clone();
    let never = "b9-000000000001.0000000001".to_owned();
    let ids = vec![id_of("p/0"), id_of("u/0"), held_by_b.id.clone(), never.clone()];
    let (status, body) = ack_batch(&pod_a, "batch", &ids).await.unwrap();
    assert_eq!((status, body["acked"].as_u64()), (200, Some(2)), "{body}");
    let outcomes = outcomes(&body);
    assert_eq!(outcomes.len(), 4, "one result per id: {body}");
    assert_eq!((outcomes[&ids[0]].as_str(), outcomes[&ids[1]].as_str()), ("acked", "acked"), "{body}");
    assert_eq!(outcomes[&ids[2]], "claim-lost", "pod-a does not hold pod-b's item: {body}");
    assert!(["claim-lost", "not-found"].contains(&outcomes[&never].as_str()), "{body}");
    assert_eq!(pod_b.settle("batch", &held_by_b.id, "ack", "").await.unwrap().0, 200, "pod-b's claim untouched");
    let after = next(&pod_a, "batch", Some(20), "5s").await.unwrap();
    let payloads: Vec<&str> = after.iter().map(|h| h.payload.as_str()).collect();
    assert_eq!(payloads, ["p/1"], "p's next item once p/0 was acked; q/0 still held");

    // Bad input: a JSON 400 that says what to do.
    let long = "k".repeat(129);
    let http = pod_a.http();
    let url = pod_a.url("/queue/batch");
    let too_many: Vec<String> = (0..1001).map(|n| format!("b9-000000000001.{n:010}")).collect();
    let cases = vec![
        ("a group key of 129 bytes", http.post(&url).query(&[("group", &long)]).body("x").send().await.unwrap()),
        ("an empty group key", http.post(&url).query(&[("group", "")]).body("x").send().await.unwrap()),
        (
            "a batch item's group key of 129 bytes",
            http.post(pod_a.url("/queue/batch/batch"))
                .json(&json!({ "items": [{ "payload": "x", "group": long }] }))
                .send()
                .await
                .unwrap(),
        ),
        (
            "an ack of no ids",
            http.post(pod_a.url("/queue/batch/ack")).json(&json!({ "ids": [] })).send().await.unwrap(),
        ),
        (
            "an ack of 1001 ids",
            http.post(pod_a.url("/queue/batch/ack")).json(&json!({ "ids": too_many })).send().await.unwrap(),
        ),
    ];
    for (what, response) in cases {
        assert_eq!(response.status().as_u16(), 400, "{what}");
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        let message = body["message"].as_str().unwrap_or_default();
        assert!(body["error"].is_string() && message.len() > 20, "{what}: a message a person can act on: {body}");
        if what.contains("group key") {
            assert!(message.contains("128"), "{what}: the limit is in the message: {body}");
        }
    }
    let stats = pod_a.queue_stats("batch").await.unwrap();
    // 15 enqueued, r/0, p/0 and u/0 acked.
    assert_eq!(stats["depth"], 12, "the refused requests changed nothing: {stats}");
}
