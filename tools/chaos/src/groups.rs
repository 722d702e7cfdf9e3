//! The grouped workload (ordered groups, issue 16), through the sidecars' HTTP API only.
//!
//! A producer enqueues numbered items into the groups of the queue `ordered`
//! (`tools/chaos/groups.yaml`): batches of two consecutive items for each of four groups
//! (`POST /queue/ordered/batch`, `"group"` per item), each item with an idempotency key,
//! and a batch is sent again until it is confirmed — also by the producer started after
//! its pod was killed — so that each group's items are in the queue once each, in their
//! order. The payload says the group and the item's number in it. Consumers on every
//! `default` pod take one item or a `max=4` answer, process each (failing every tenth on
//! its first attempt: a nack, which must leave it at the head of its group), and ack
//! (one by one, or the answer's items in one batched ack), writing down every delivery:
//! when `GET /queue/next` answered, when processing ended, when the ack or nack was sent
//! and how it ended. `group_checks` judges the ledger.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use paddock_testkit::client::PodClient;
use rand::RngExt as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::Broken;
use super::workloads::{AckOutcome, PodHandle, Running, Workloads, jitter};

pub const GROUPED_QUEUE: &str = "ordered";
/// Groups the producer cycles through, four a batch.
pub const GROUPS: u32 = 12;
const GROUPS_PER_BATCH: u32 = 4;
const ITEMS_PER_GROUP_IN_BATCH: u64 = 2;

/// One item of a group, as its payload says: `grp-{group}-{seq}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupItem {
    pub group: u32,
    pub seq: u64,
}

impl GroupItem {
    pub fn payload(self) -> String {
        format!("grp-{}-{}", self.group, self.seq)
    }

    pub fn parse(payload: &[u8]) -> Option<Self> {
        let (group, seq) = std::str::from_utf8(payload).ok()?.strip_prefix("grp-")?.split_once('-')?;
        Some(Self { group: group.parse().ok()?, seq: seq.parse().ok()? })
    }

    /// The group key the queue sees.
    pub fn key(self) -> String {
        format!("customer-{}", self.group)
    }

    /// Items the consumers fail on their first attempt (a nack): every tenth.
    fn fails_first(self) -> bool {
        self.seq % 10 == 7
    }
}

/// One delivery of a grouped item.
#[derive(Debug, Clone)]
pub struct GroupDelivery {
    pub item: GroupItem,
    pub pod: String,
    pub id: String,
    pub attempt: u32,
    /// The group the sidecar said the item is of (`Paddock-Group`, or the answer's field).
    pub said_group: Option<String>,
    /// When `GET /queue/next` answered.
    pub delivered: Instant,
    /// When the consumer had processed it (never, for an item failed on purpose or a
    /// consumer killed first).
    pub processed: Option<Instant>,
    /// When its ack or nack was first sent.
    pub settle_sent: Option<Instant>,
    pub outcome: AckOutcome,
}

/// What the grouped producer and consumers write down.
#[derive(Debug, Default)]
pub struct GroupLedger {
    /// Per group, the next item number to enqueue.
    next_seq: HashMap<u32, u64>,
    batches: u64,
    /// The batch being sent until it is confirmed; a producer started after its pod was
    /// killed sends it again first.
    pending: Option<Vec<GroupItem>>,
    /// Items whose enqueue was confirmed (one sent at the end whose outcome stayed unknown
    /// may be in the queue too: the last of its group).
    pub confirmed: BTreeSet<GroupItem>,
    pub deliveries: Vec<GroupDelivery>,
    /// Enqueues and batched acks the queue refused (a 4xx): how many, and the first answers.
    pub refused: u64,
    pub refusals: Vec<String>,
}

impl GroupLedger {
    /// Counts a refused request, keeping the first few distinct answers.
    fn refusal(&mut self, answer: String) {
        self.refused += 1;
        if self.refusals.len() < 3 && !self.refusals.contains(&answer) {
            self.refusals.push(answer);
        }
    }

    /// The batch to send: the one not yet confirmed, else the next two items of the next
    /// four groups, interleaved (each group's items in their order).
    fn batch(&mut self) -> Vec<GroupItem> {
        if let Some(pending) = &self.pending {
            return pending.clone();
        }
        let first = (self.batches * u64::from(GROUPS_PER_BATCH)) as u32 % GROUPS;
        self.batches += 1;
        let groups: Vec<u32> = (0..GROUPS_PER_BATCH).map(|g| (first + g) % GROUPS).collect();
        let mut items = Vec::new();
        for _ in 0..ITEMS_PER_GROUP_IN_BATCH {
            for group in &groups {
                let seq = self.next_seq.entry(*group).or_default();
                items.push(GroupItem { group: *group, seq: *seq });
                *seq += 1;
            }
        }
        self.pending = Some(items.clone());
        items
    }
}

/// Counts of the grouped workload.
#[derive(Debug, Default)]
pub struct GroupCounts {
    pub enqueued: AtomicU64,
    pub uncertain: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub batched_acks: AtomicU64,
}

/// An item as `GET /queue/next` handed it out.
struct Handed {
    id: String,
    attempt: u32,
    group: Option<String>,
    payload: Vec<u8>,
}

/// `GET /queue/next?queue=ordered`: one item without `max`, the JSON list with it; empty
/// on 204, an error on anything else.
async fn next(client: &PodClient, max: Option<usize>) -> anyhow::Result<Vec<Handed>> {
    let mut query = vec![("queue", GROUPED_QUEUE.to_owned()), ("wait", "1s".to_owned())];
    if let Some(max) = max {
        query.push(("max", max.to_string()));
    }
    let response = client.http().get(client.url("/queue/next")).query(&query).send().await?;
    match (response.status().as_u16(), max) {
        (204, _) => Ok(Vec::new()),
        (200, None) => {
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let id = header("paddock-item-id").context("Paddock-Item-Id")?;
            let attempt = header("paddock-attempt").context("Paddock-Attempt")?.parse()?;
            let group = header("paddock-group");
            Ok(vec![Handed { id, attempt, group, payload: response.bytes().await?.to_vec() }])
        }
        (200, Some(_)) => {
            let body: Value = response.json().await?;
            let base64 = base64::engine::general_purpose::STANDARD;
            let items = body["items"].as_array().context("items")?;
            items
                .iter()
                .map(|item| {
                    Ok(Handed {
                        id: item["id"].as_str().context("id")?.to_owned(),
                        attempt: item["attempt"].as_u64().context("attempt")? as u32,
                        group: item["group"].as_str().map(str::to_owned),
                        payload: base64.decode(item["payloadBase64"].as_str().context("payloadBase64")?)?,
                    })
                })
                .collect()
        }
        (status, _) => anyhow::bail!("GET /queue/next: {status}"),
    }
}

impl Workloads {
    /// Enqueues batches of grouped items, each sent until confirmed (see the module).
    pub(super) async fn group_producer(&self, pod: &mut PodHandle) {
        self.producers.fetch_add(1, Ordering::SeqCst);
        let _running = Running(&self.producers);
        while !self.stop_producing.is_cancelled() {
            pod.checkpoint().await;
            let batch = self.groups.lock().unwrap().batch();
            let items: Vec<Value> = batch
                .iter()
                .map(|item| {
                    let mut body = json!({ "payload": item.payload(), "idempotencyKey": item.payload() });
                    if self.broken != Some(Broken::ProducersDropGroups) {
                        body["group"] = json!(item.key());
                    }
                    body
                })
                .collect();
            let url = pod.client.url(&format!("/queue/{GROUPED_QUEUE}/batch"));
            let (status, text) = match pod.client.http().post(url).json(&json!({ "items": items })).send().await {
                Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
                Err(err) => (0, format!("{err:#}")),
            };
            let pause = {
                let mut ledger = self.groups.lock().unwrap();
                match status {
                    200 | 201 => {
                        ledger.pending = None;
                        ledger.confirmed.extend(batch.iter().copied());
                        self.group_counts.enqueued.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        self.availability.success("grouped enqueue");
                        Duration::from_millis(250)
                    }
                    400..=499 => {
                        // Refused: not in the queue. Counted (a violation), and tried again.
                        ledger.refusal(format!("{status} {text}"));
                        Duration::from_secs(1)
                    }
                    _ => {
                        // Outcome unknown: the same batch again (its keys make it once).
                        self.group_counts.uncertain.fetch_add(1, Ordering::Relaxed);
                        Duration::from_millis(300)
                    }
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Takes one item or a `max=4` answer, processes, acks; see the module.
    pub(super) async fn group_consumer(&self, pod: &mut PodHandle) {
        loop {
            pod.checkpoint().await;
            let batched = rand::rng().random_bool(0.5);
            let handed = match next(&pod.client, batched.then_some(4)).await {
                Ok(handed) => handed,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let delivered = Instant::now();
            let mut taken = Vec::new();
            {
                let mut ledger = self.groups.lock().unwrap();
                for h in handed {
                    let Some(item) = GroupItem::parse(&h.payload) else { continue };
                    ledger.deliveries.push(GroupDelivery {
                        item,
                        pod: pod.name.clone(),
                        id: h.id.clone(),
                        attempt: h.attempt,
                        said_group: h.group,
                        delivered,
                        processed: None,
                        settle_sent: None,
                        outcome: AckOutcome::Pending,
                    });
                    taken.push((ledger.deliveries.len() - 1, item, h.id, h.attempt));
                }
            }
            self.group_counts.delivered.fetch_add(taken.len() as u64, Ordering::Relaxed);
            if !taken.is_empty() {
                self.availability.success("grouped dequeue");
            }
            let mut to_ack = Vec::new();
            for (index, item, id, attempt) in taken {
                if item.fails_first() && attempt == 1 {
                    tokio::time::sleep(jitter(5, 20)).await;
                    self.group_settled(index, self.group_settle(pod, &id, "nack").await);
                } else if self.broken == Some(Broken::GroupAckBeforeProcessing) {
                    // Long and uneven work after the ack: the group's next item, handed
                    // to another consumer meanwhile, is often done first.
                    self.group_settled(index, self.group_settle(pod, &id, "ack").await);
                    self.group_process(pod, index, jitter(100, 800)).await;
                } else {
                    self.group_process(pod, index, jitter(5, 40)).await;
                    if batched {
                        to_ack.push((index, id));
                    } else {
                        self.group_settled(index, self.group_settle(pod, &id, "ack").await);
                    }
                }
            }
            if !to_ack.is_empty() {
                self.group_ack_batch(pod, &to_ack).await;
            }
        }
    }

    async fn group_process(&self, pod: &mut PodHandle, index: usize, took: Duration) {
        let busy = self.processing.enter(&pod.name);
        tokio::time::sleep(took).await;
        pod.checkpoint().await;
        drop(busy);
        self.groups.lock().unwrap().deliveries[index].processed = Some(Instant::now());
    }

    /// Records how a settle ended; `sent` is when it was first sent.
    fn group_settled(&self, index: usize, (sent, outcome): (Instant, AckOutcome)) {
        let mut ledger = self.groups.lock().unwrap();
        let delivery = &mut ledger.deliveries[index];
        delivery.settle_sent = Some(sent);
        delivery.outcome = outcome;
    }

    /// `POST /queue/ordered/{id}/ack` or `/nack`, asked again while the answer leaves the
    /// outcome unknown (both are idempotent for the claim's holder).
    async fn group_settle(&self, pod: &mut PodHandle, id: &str, verb: &str) -> (Instant, AckOutcome) {
        let sent = Instant::now();
        for _ in 0..60 {
            pod.checkpoint().await;
            match pod.client.settle(GROUPED_QUEUE, id, verb, "").await {
                Ok((200, _)) if verb == "ack" => {
                    self.group_counts.acked.fetch_add(1, Ordering::Relaxed);
                    return (sent, AckOutcome::Acked(Instant::now()));
                }
                Ok((200, _)) => {
                    self.group_counts.nacked.fetch_add(1, Ordering::Relaxed);
                    return (sent, AckOutcome::Nacked);
                }
                Ok((404 | 409, _)) => return (sent, AckOutcome::ClaimLost),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        (sent, AckOutcome::Unknown)
    }

    /// `POST /queue/ordered/ack` with the ids of one answer; per id `acked` or not.
    async fn group_ack_batch(&self, pod: &mut PodHandle, items: &[(usize, String)]) {
        let sent = Instant::now();
        let ids: Vec<&str> = items.iter().map(|(_, id)| id.as_str()).collect();
        let url = pod.client.url(&format!("/queue/{GROUPED_QUEUE}/ack"));
        for _ in 0..60 {
            pod.checkpoint().await;
            let answer = pod.client.http().post(&url).json(&json!({ "ids": ids })).send().await;
            let body = match answer {
                Ok(response) if response.status() == 200 => response.json::<Value>().await.ok(),
                Ok(response) if response.status().is_client_error() => {
                    // Refused as a whole: nothing acked (a violation; the items come back).
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    self.groups.lock().unwrap().refusal(format!("batched ack: {status} {text}"));
                    for (index, _) in items {
                        self.group_settled(*index, (sent, AckOutcome::ClaimLost));
                    }
                    return;
                }
                _ => None,
            };
            let Some(body) = body else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            self.group_counts.batched_acks.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let results = body["results"].as_array().cloned().unwrap_or_default();
            for (index, id) in items {
                let outcome = results.iter().find(|r| r["id"] == id.as_str()).and_then(|r| r["outcome"].as_str());
                let outcome = if outcome == Some("acked") {
                    self.group_counts.acked.fetch_add(1, Ordering::Relaxed);
                    AckOutcome::Acked(now)
                } else {
                    AckOutcome::ClaimLost
                };
                self.group_settled(*index, (sent, outcome));
            }
            return;
        }
        for (index, _) in items {
            self.group_settled(*index, (sent, AckOutcome::Unknown));
        }
    }
}

/// The items in the grouped queue's dead letters (at most the first 1000 listed).
pub async fn dead_letters(client: &PodClient) -> anyhow::Result<BTreeSet<GroupItem>> {
    let url = client.url(&format!("/queue/{GROUPED_QUEUE}/dead?limit=1000"));
    for _ in 0..60 {
        let response = client.http().get(&url).send().await?;
        if response.status() == 503 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        anyhow::ensure!(response.status().is_success(), "GET {url}: {}", response.status());
        let body: Value = response.json().await?;
        let base64 = base64::engine::general_purpose::STANDARD;
        let letters = body["items"].as_array().cloned().unwrap_or_default();
        return Ok(letters
            .iter()
            .filter_map(|l| match l["payload"].as_str() {
                Some(text) => GroupItem::parse(text.as_bytes()),
                None => GroupItem::parse(&base64.decode(l["payloadBase64"].as_str()?).ok()?),
            })
            .collect());
    }
    anyhow::bail!("GET {url}: 503 for 30 s")
}
