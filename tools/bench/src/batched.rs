//! Batched and grouped throughput through the sidecar's HTTP API (issue 16): items
//! enqueued in batches of 500, claimed with `max=100` and acked in batches, end to end;
//! the same spread over 1,000 groups; and the cost of a claim with 10 groups against
//! 10,000. Rows that need the API of issue 16 (batch acks, groups) are reported as
//! pending, with what the sidecar answered, when it does not have it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use paddock_recipes::QueueConfig;
use paddock_testkit::{PodClient, provision};
use serde_json::{Value, json};

use super::{Bench, Figure, NS, Report};

const BATCH: usize = 500;
const MAX: usize = 100;
const CONSUMERS: usize = 4;
const GROUPS: usize = 1_000;

pub const SINGLE_ACKS: &str = "sidecar HTTP, batches of 500, max=100, single acks";
pub const BATCH_ACKS: &str = "sidecar HTTP, batches of 500, max=100, batch acks";
pub const GROUPED: &str = "sidecar HTTP, the same over 1,000 groups";

/// What the sidecar lacks of issue 16's API: None when it has it, else what it answered.
struct Missing {
    batch_ack: Option<String>,
    groups: Option<String>,
}

async fn post(pod: &PodClient, path: &str, body: &Value) -> Result<(u16, Value)> {
    let response = pod.http().post(pod.url(path)).json(body).send().await.with_context(|| format!("POST {path}"))?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

fn answered(what: &str, status: u16, body: &Value) -> String {
    let code = body["error"].as_str().unwrap_or("");
    let mut message = body["message"].as_str().map_or_else(|| body.to_string(), str::to_owned);
    if let Some((cut, _)) = message.char_indices().nth(100) {
        message.truncate(cut);
        message.push('…');
    }
    format!("{what} answered {status} {code}: {message}")
}

/// Enqueues `items` in batches of [`BATCH`]; item `i` in group `g{i % groups}` if grouped.
async fn produce(pod: &PodClient, queue: &str, items: usize, groups: Option<usize>) -> Result<()> {
    for start in (0..items).step_by(BATCH) {
        let batch: Vec<Value> = (start..items.min(start + BATCH))
            .map(|i| match groups {
                Some(g) => json!({ "payload": format!("item-{i:011}"), "group": format!("g{}", i % g) }),
                None => json!({ "payload": format!("item-{i:011}") }),
            })
            .collect();
        let (status, body) = post(pod, &format!("/queue/{queue}/batch"), &json!({ "items": batch })).await?;
        anyhow::ensure!(status == 201, "{}", answered("a batch enqueue", status, &body));
    }
    Ok(())
}

/// `GET /queue/next?max=`: the ids handed out (none after `wait`).
async fn claim(pod: &PodClient, queue: &str, max: usize, wait: &str) -> Result<Vec<String>> {
    let max = max.to_string();
    let response =
        pod.http().get(pod.url("/queue/next")).query(&[("queue", queue), ("max", &max), ("wait", wait)]).send().await?;
    match response.status().as_u16() {
        204 => Ok(Vec::new()),
        200 => {
            let body: Value = response.json().await?;
            let items = body["items"].as_array().context("items in a claim's answer")?;
            Ok(items.iter().filter_map(|i| i["id"].as_str().map(str::to_owned)).collect())
        }
        status => bail!("GET /queue/next: {status} {}", response.text().await.unwrap_or_default()),
    }
}

/// Acks `ids`, in one request or one each; how many were acked.
async fn ack(pod: &PodClient, queue: &str, ids: &[String], batch: bool) -> Result<usize> {
    if batch {
        let (status, body) = post(pod, &format!("/queue/{queue}/ack"), &json!({ "ids": ids })).await?;
        anyhow::ensure!(status == 200, "{}", answered("a batch ack", status, &body));
        return body["acked"].as_u64().map(|n| n as usize).context("acked in a batch ack's answer");
    }
    for id in ids {
        let (status, body) = pod.settle(queue, id, "ack", "").await?;
        anyhow::ensure!(status == 200, "{}", answered("an ack", status, &body));
    }
    Ok(ids.len())
}

/// Asks the sidecar for what issue 16 added, on a queue of its own left empty.
async fn probe(pod: &PodClient, queue: &str) -> Result<Missing> {
    let item = json!({ "items": [{ "payload": "probe", "group": "probe" }] });
    let (status, body) = post(pod, &format!("/queue/{queue}/batch"), &item).await?;
    let groups = (status != 201).then(|| answered("a batch item's \"group\"", status, &body));
    produce(pod, queue, 1, None).await?;
    let mut ids = Vec::new();
    while ids.len() < if groups.is_none() { 2 } else { 1 } {
        ids.extend(claim(pod, queue, MAX, "5s").await?);
    }
    let (status, body) = post(pod, &format!("/queue/{queue}/ack"), &json!({ "ids": ids })).await?;
    let batch_ack = if status == 200 && body["acked"].as_u64() == Some(ids.len() as u64) {
        None
    } else {
        ack(pod, queue, &ids, false).await?;
        Some(answered("POST /queue/{name}/ack", status, &body))
    };
    Ok(Missing { batch_ack, groups })
}

/// How long one end-to-end run took, and when its producer had enqueued everything.
struct Run {
    wall: Duration,
    produced: Duration,
    /// Claims that handed out at least one item.
    claims: usize,
}

/// One producer enqueues `items` while [`CONSUMERS`] consumers claim and ack them: the
/// time until the last was acked, and until the last was enqueued.
async fn end_to_end(pod: &PodClient, queue: &str, items: usize, groups: Option<usize>, batch: bool) -> Result<Run> {
    let acked = Arc::new(AtomicUsize::new(0));
    let claims = Arc::new(AtomicUsize::new(0));
    let done_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let start = Instant::now();
    let producer = {
        let (pod, queue) = (pod.clone(), queue.to_owned());
        tokio::spawn(async move { produce(&pod, &queue, items, groups).await.map(|()| start.elapsed()) })
    };
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let (pod, queue, acked, claims, done_at) =
            (pod.clone(), queue.to_owned(), acked.clone(), claims.clone(), done_at.clone());
        consumers.push(tokio::spawn(async move {
            while acked.load(Ordering::SeqCst) < items {
                let ids = claim(&pod, &queue, MAX, "1s").await?;
                if ids.is_empty() {
                    continue;
                }
                claims.fetch_add(1, Ordering::SeqCst);
                let n = ack(&pod, &queue, &ids, batch).await?;
                if acked.fetch_add(n, Ordering::SeqCst) + n >= items {
                    done_at.lock().unwrap().get_or_insert_with(Instant::now);
                }
            }
            anyhow::Ok(())
        }));
    }
    let produced = producer.await??;
    for c in consumers {
        c.await??;
    }
    let end = done_at.lock().unwrap().context("every item acked")?;
    Ok(Run { wall: end - start, produced, claims: claims.load(Ordering::SeqCst) })
}

/// CPU time so far of the ensemble's servers, the sidecar, and this process (the HTTP
/// clients): where an end-to-end run's work went.
fn cpu(bench: &Bench) -> Result<[Duration; 3]> {
    let mut zk = Duration::ZERO;
    for i in 0..bench.ensemble.len() {
        zk += super::footprint::cpu_time(bench.ensemble.pid(i).context("a server's pid")?)?;
    }
    let sidecar = super::footprint::cpu_time(bench.sidecar.process.pid().context("the sidecar's pid")?)?;
    Ok([zk, sidecar, super::footprint::cpu_time(std::process::id())?])
}

/// What an end-to-end row's time went to, summed over its rounds.
#[derive(Default, Clone, Copy)]
struct Spent {
    wall: Duration,
    produced: Duration,
    cpu: [Duration; 3],
    requests: u64,
    claims: usize,
}

fn spent_note(spent: &Spent, items: usize) -> String {
    let per = |d: Duration| d.as_secs_f64() * 1000.0 * 1000.0 / items.max(1) as f64;
    format!(
        "{CONSUMERS} consumers, producer alongside (done at {:.0} % of the time); \
         CPU ms per 1,000 items: ZooKeeper {:.0}, sidecar {:.0}, client {:.0}; \
         {:.2} ZooKeeper requests per item; {:.0} items per claim",
        100.0 * spent.produced.as_secs_f64() / spent.wall.as_secs_f64().max(1e-9),
        per(spent.cpu[0]),
        per(spent.cpu[1]),
        per(spent.cpu[2]),
        spent.requests as f64 / items.max(1) as f64,
        items as f64 / spent.claims.max(1) as f64,
    )
}

fn pending(group: &str, name: &str, why: &Option<String>) -> Option<Figure> {
    why.as_ref().map(|why| Figure::pending(group, name, why))
}

/// End to end: single acks (what the API had before issue 16), batch acks, and grouped.
pub async fn throughput(bench: &Bench, report: &mut Report) -> Result<()> {
    let admin = bench.admin().await?;
    for q in ["e2e-probe", "e2e-single", "e2e-batch", "e2e-grouped"] {
        provision::queue(&admin, NS, q, QueueConfig::default()).await?;
    }
    let pod = &bench.pod;
    let missing = probe(pod, "e2e-probe").await?;
    let total = bench.sizes.batched_items;
    let rounds = bench.sizes.batched_rounds;
    let variants = [
        (SINGLE_ACKS, "e2e-single", None, false, None),
        (BATCH_ACKS, "e2e-batch", None, true, missing.batch_ack.clone()),
        (GROUPED, "e2e-grouped", Some(GROUPS), true, missing.batch_ack.clone().or(missing.groups.clone())),
    ];
    // The variants take turns, so the machine's load falls on all of them alike.
    let mut spent = [Spent::default(); 3];
    for _ in 0..rounds {
        for (v, (_, queue, groups, batch, why)) in variants.iter().enumerate() {
            if why.is_none() {
                super::settle().await;
                let (cpu_before, requests_before) = (cpu(bench)?, bench.packets_received().await?);
                let run = end_to_end(pod, queue, total / rounds, *groups, *batch).await?;
                spent[v].wall += run.wall;
                spent[v].produced += run.produced;
                spent[v].claims += run.claims;
                spent[v].requests += bench.packets_received().await?.saturating_sub(requests_before);
                for (s, (after, before)) in cpu(bench)?.into_iter().zip(cpu_before).enumerate() {
                    spent[v].cpu[s] += after.saturating_sub(before);
                }
            }
        }
    }
    let items = total / rounds * rounds;
    for (v, (name, _, _, _, why)) in variants.iter().enumerate() {
        let figure =
            pending("batched", name, why).unwrap_or_else(|| Figure::rate_only("batched", name, items, spent[v].wall));
        report.push(figure.note_if_empty(spent_note(&spent[v], items)));
    }
    report.goal("batched end to end through HTTP, items/s", ("batched", BATCH_ACKS), ">= 5000");
    for peer in ["curator", "kazoo"] {
        report.ratio(
            &format!("batched end to end (HTTP) / {peer} dequeue+ack (1 consumer)"),
            ("batched", BATCH_ACKS),
            ("dequeue+ack", &format!("{peer}, 1 consumer(s)")),
            false,
            ">= 10",
        );
    }
    report.ratio(
        "batched end to end: 1,000 groups / ungrouped",
        ("batched", GROUPED),
        ("batched", BATCH_ACKS),
        false,
        ">= 0.8",
    );
    claim_cost(bench, report, &missing.groups).await
}

/// A claim's cost with few groups and with many, the queue as deep: one consumer claims
/// one item at a time (and acks it) from a queue of 10 groups and one of 10,000, taking
/// turns. The figure is the claim's latency; the rate counts claim and ack.
async fn claim_cost(bench: &Bench, report: &mut Report, missing_groups: &Option<String>) -> Result<()> {
    let (few, many) = bench.sizes.claim_groups;
    let depth = bench.sizes.claim_depth;
    let names =
        [format!("claim, {few} groups of {}", depth / few), format!("claim, {many} groups of {}", depth / many)];
    if missing_groups.is_some() {
        for name in &names {
            report.push(Figure::pending("claim cost", name, missing_groups.as_ref().unwrap()));
        }
    } else {
        let admin = bench.admin().await?;
        let queues = ["claims-few", "claims-many"];
        for (queue, groups) in queues.iter().zip([few, many]) {
            provision::queue(&admin, NS, queue, QueueConfig::default()).await?;
            produce(&bench.pod, queue, depth, Some(groups)).await?;
        }
        let rounds = bench.sizes.batched_rounds;
        let per_round = (bench.sizes.claims / rounds).max(1);
        let mut latencies = [Vec::new(), Vec::new()];
        let mut walls = [Duration::ZERO; 2];
        for queue in queues {
            claim_and_ack(&bench.pod, queue).await?; // starts the view: not measured
        }
        for _ in 0..rounds {
            for (q, queue) in queues.iter().enumerate() {
                super::settle().await;
                let start = Instant::now();
                for _ in 0..per_round {
                    latencies[q].push(claim_and_ack(&bench.pod, queue).await?);
                }
                walls[q] += start.elapsed();
            }
        }
        for (q, name) in names.iter().enumerate() {
            let lat = std::mem::take(&mut latencies[q]);
            report.push(
                Figure::from_latencies("claim cost", name, lat, walls[q])
                    .note("median/p99: the claim (GET /queue/next); rate: claim + ack"),
            );
        }
    }
    report.ratio(
        &format!("claim median, {many} groups / {few} groups"),
        ("claim cost", &names[1]),
        ("claim cost", &names[0]),
        true,
        "<= 1.2",
    );
    Ok(())
}

/// One claim (timed) and its ack.
async fn claim_and_ack(pod: &PodClient, queue: &str) -> Result<Duration> {
    let t = Instant::now();
    let item = pod.next(queue, "5s").await?.with_context(|| format!("queue {queue} ran dry"))?;
    let took = t.elapsed();
    let (status, body) = pod.settle(queue, &item.id, "ack", "").await?;
    anyhow::ensure!(status == 200, "{}", answered("an ack", status, &body));
    Ok(took)
}
