//! Queue rates (enqueue single and in batches of 100; dequeue+ack with 1 and 8 consumers),
//! long-poll wake-up, and the cost curve with depth.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use paddock_recipes::layout::QueuePaths;
use paddock_recipes::queue::{self, NewItem, view::QueueView};
use paddock_recipes::{Layout, Name, QueueConfig, Session, SessionOptions, zk};
use paddock_testkit::{PodClient, provision};

use super::limit::parallel;
use super::{Bench, Figure, NS, Report};

pub(crate) fn paths(queue: &str) -> QueuePaths {
    Layout::new("/paddock").unwrap().queue(&Name::new("ns", NS).unwrap(), &Name::new("q", queue).unwrap())
}

fn items(n: usize) -> Vec<NewItem> {
    (0..n)
        .map(|i| NewItem {
            payload: format!("item-{i:011}").into_bytes(),
            content_type: None,
            priority: 0,
            delay: Duration::ZERO,
            group: None,
        })
        .collect()
}

pub async fn rates(bench: &Bench, report: &mut Report) -> Result<()> {
    let admin = bench.admin().await?;
    let n = bench.sizes.queue_items;
    for q in ["http", "lib"] {
        provision::queue(&admin, NS, q, QueueConfig::default()).await?;
    }

    // Unmeasured first enqueues, so that the first figure does not pay for a cold
    // ensemble (its JIT) and cold connections more than the peers' later ones.
    for _ in 0..100 {
        let (status, body) = bench.pod.enqueue("http", "sixteen-bytes-xx").await?;
        anyhow::ensure!(status == 201, "enqueue: {status} {body}");
    }
    let client = Arc::new(zk::Client::connect(&bench.ensemble.connect_string()).await?);
    for _ in 0..100 {
        queue::enqueue(&client, &paths("lib"), &items(1)).await?;
    }

    // Enqueue, one item per request.
    let pod = bench.pod.clone();
    let (lat, wall) = parallel(1, n, move |_| {
        let pod = pod.clone();
        async move {
            let (status, body) = pod.enqueue("http", "sixteen-bytes-xx").await?;
            anyhow::ensure!(status == 201, "enqueue: {status} {body}");
            Ok(())
        }
    })
    .await?;
    report.push(Figure::from_latencies("enqueue", "paddock sidecar HTTP, single", lat, wall));
    let c = client.clone();
    let (lat, wall) = parallel(1, n, move |_| {
        let c = c.clone();
        async move {
            queue::enqueue(&c, &paths("lib"), &items(1)).await?;
            Ok(())
        }
    })
    .await?;
    report.push(Figure::from_latencies("enqueue", "paddock library, single", lat, wall));

    // Enqueue in batches of 100 (one transaction each).
    let batches = (n / 100).max(1);
    let pod = bench.pod.clone();
    let start = Instant::now();
    for _ in 0..batches {
        let payloads: Vec<String> = (0..100).map(|i| format!("item-{i:011}")).collect();
        let (status, body) = pod.enqueue_batch("http", &payloads).await?;
        anyhow::ensure!(status == 201, "batch: {status} {body}");
    }
    report.push(Figure::rate_only("enqueue", "paddock sidecar HTTP, batches of 100", batches * 100, start.elapsed()));
    let start = Instant::now();
    for _ in 0..batches {
        queue::enqueue(&client, &paths("lib"), &items(100)).await?;
    }
    report.push(Figure::rate_only("enqueue", "paddock library, batches of 100", batches * 100, start.elapsed()));

    // Dequeue + ack: drain what was enqueued, with 1 and then 8 consumers.
    for consumers in [1usize, 8] {
        let take = if consumers == 1 { n } else { batches * 100 };
        let (count, wall) = drain_http(&bench.pod, "http", take, consumers).await?;
        report.push(Figure::rate_only(
            "dequeue+ack",
            &format!("paddock sidecar HTTP, {consumers} consumer(s)"),
            count,
            wall,
        ));
        let (count, wall) = drain_library(bench, "lib", take, consumers).await?;
        report.push(Figure::rate_only(
            "dequeue+ack",
            &format!("paddock library, {consumers} consumer(s)"),
            count,
            wall,
        ));
    }

    if let Some(peers) = &bench.peers {
        let connect = bench.ensemble.connect_string();
        let ns = n.to_string();
        for peer in ["curator", "kazoo"] {
            let f = peers.run(peer, &connect, &["queue-put", &ns, "1"]).await?;
            report.push(f.named("enqueue", &format!("{peer}, single")));
            let f = peers.run(peer, &connect, &["queue-put", &ns, "100"]).await?;
            let note = if peer == "curator" { "putMulti: 100 items in ONE znode" } else { "put_all: one transaction" };
            report.push(f.named("enqueue", &format!("{peer}, batches of 100")).note(note));
            for consumers in [1usize, 8] {
                let f = peers.run(peer, &connect, &["queue-take", &ns, &consumers.to_string()]).await?;
                let note =
                    if peer == "curator" { "DistributedQueue with lockPath" } else { "LockingQueue get+consume" };
                report.push(f.named("dequeue+ack", &format!("{peer}, {consumers} consumer(s)")).note(note));
            }
        }
        // kazoo's plain Queue: get() takes and deletes in one step (at most once).
        let f = peers.run("kazoo", &connect, &["queue-take-plain", &ns, "1"]).await?;
        report.push(f.named("dequeue", "kazoo Queue, 1 consumer(s)").note("Queue.get: get+delete, at most once"));
        // Each process here picks its server at random (a write through a follower takes a
        // hop more): the goal's comparison is the anatomy's (`enqueue`), on one server.
        report.ratio(
            "paddock single enqueue (HTTP) / curator put",
            ("enqueue", "paddock sidecar HTTP, single"),
            ("enqueue", "curator, single"),
            false,
            "servers at random; goal: enqueue parts",
        );
        report.ratio(
            "paddock batched enqueue (HTTP) / curator put",
            ("enqueue", "paddock sidecar HTTP, batches of 100"),
            ("enqueue", "curator, single"),
            false,
            ">= 10",
        );
        for peer in ["curator", "kazoo"] {
            report.ratio(
                &format!("paddock dequeue+ack (HTTP, 8 consumers) / {peer} (8 consumers)"),
                ("dequeue+ack", "paddock sidecar HTTP, 8 consumer(s)"),
                ("dequeue+ack", &format!("{peer}, 8 consumer(s)")),
                false,
                ">= 3",
            );
        }
    }
    Ok(())
}

/// `consumers` HTTP consumers take and ack `count` items; returns (count, wall time).
async fn drain_http(pod: &PodClient, queue: &str, count: usize, consumers: usize) -> Result<(usize, Duration)> {
    let taken = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let (pod, taken, queue) = (pod.clone(), taken.clone(), queue.to_owned());
        tasks.push(tokio::spawn(async move {
            while taken.load(Ordering::SeqCst) < count {
                let Some(item) = pod.next(&queue, "1s").await? else { continue };
                let (status, body) = pod.settle(&queue, &item.id, "ack", "").await?;
                anyhow::ensure!(status == 200, "ack: {status} {body}");
                taken.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((taken.load(Ordering::SeqCst), start.elapsed()))
}

/// A consumer through the library: its own session and watch-fed view.
struct LibConsumer {
    client: zk::Client,
    view: QueueView,
    _session: Session,
}

async fn lib_consumer(connect: &str, queue: &str) -> Result<LibConsumer> {
    let session = Session::start(SessionOptions {
        connect: connect.to_owned(),
        session_timeout: Duration::from_secs(10),
        digest_auth: None,
        tls: None,
    });
    let client = session.wait_connected(Duration::from_secs(30)).await?.client;
    let view = QueueView::start(session.clone(), paths(queue), Arc::new(()));
    while !view.is_synced() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(LibConsumer { client, view, _session: session })
}

async fn drain_library(bench: &Bench, queue: &str, count: usize, consumers: usize) -> Result<(usize, Duration)> {
    let mut handles = Vec::new();
    for _ in 0..consumers {
        handles.push(lib_consumer(&bench.ensemble.connect_string(), queue).await?);
    }
    let taken = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, consumer) in handles.into_iter().enumerate() {
        let (taken, queue) = (taken.clone(), queue.to_owned());
        tasks.push(tokio::spawn(async move {
            let config = QueueConfig::default();
            let paths = paths(&queue);
            while taken.load(Ordering::SeqCst) < count {
                let claimed =
                    queue::claim_next(&consumer.client, &paths, &consumer.view, &config, &format!("c{i}"), &()).await?;
                let Some(delivery) = claimed else {
                    tokio::select! {
                        _ = consumer.view.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    continue;
                };
                queue::ack(&consumer.client, &paths, &delivery.id).await?;
                taken.fetch_add(1, Ordering::SeqCst);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((taken.load(Ordering::SeqCst), start.elapsed()))
}

/// Enqueue-to-receipt latency of a waiting long-poll (producer and consumer on different
/// sessions: the library enqueues, the sidecar's consumer waits).
pub async fn wakeup(bench: &Bench, report: &mut Report) -> Result<()> {
    let admin = bench.admin().await?;
    provision::queue(&admin, NS, "wake", QueueConfig::default()).await?;
    let producer = zk::Client::connect(&bench.ensemble.connect_string()).await?;
    let mut latencies = Vec::new();
    let start = Instant::now();
    let _ = bench.pod.next("wake", "0s").await?; // starts the view
    for _ in 0..bench.sizes.wakeups {
        let pod = bench.pod.clone();
        let waiting = tokio::spawn(async move { pod.next("wake", "30s").await });
        tokio::time::sleep(Duration::from_millis(50)).await; // the consumer is waiting
        let sent = Instant::now();
        queue::enqueue(&producer, &paths("wake"), &items(1)).await?;
        let Some(item) = waiting.await?? else { bail!("long-poll returned nothing") };
        latencies.push(sent.elapsed());
        let (status, _) = bench.pod.settle("wake", &item.id, "ack", "").await?;
        anyhow::ensure!(status == 200);
    }
    report.push(
        Figure::from_latencies("long-poll", "enqueue to receipt, paddock sidecar", latencies, start.elapsed())
            .note("rate is not meaningful here"),
    );
    Ok(())
}

/// Enqueue and dequeue+ack rates at growing depths: the cost curve.
pub async fn depth(bench: &Bench, report: &mut Report) -> Result<()> {
    let admin = bench.admin().await?;
    provision::queue(&admin, NS, "deep", QueueConfig::default()).await?;
    let probe = 2_000.min(bench.sizes.depths[0]);
    let mut filled = 0usize;
    for &depth in &bench.sizes.depths {
        let fill_start = Instant::now();
        while filled < depth {
            let batch = 1_000.min(depth - filled);
            queue::enqueue(&admin, &paths("deep"), &items(batch)).await?;
            filled += batch;
        }
        eprintln!("  filled to {depth} items in {:.1} s", fill_start.elapsed().as_secs_f64());
        let start = Instant::now();
        for _ in 0..probe {
            queue::enqueue(&admin, &paths("deep"), &items(1)).await?;
        }
        report.push(Figure::rate_only("depth", &format!("enqueue (single) at depth {depth}"), probe, start.elapsed()));
        let (count, wall) = drain_library(bench, "deep", probe, 4).await?;
        report.push(Figure::rate_only(
            "depth",
            &format!("dequeue+ack (library, 4 consumers) at depth {depth}"),
            count,
            wall,
        ));
        let buckets = admin.list_children(&paths("deep").items()).await?;
        let mut largest = 0usize;
        for b in &buckets {
            largest =
                largest.max(admin.list_children(&paths("deep").bucket(b)).await?.iter().map(|n| n.len() + 4).sum());
        }
        report.push(Figure::value(
            "depth",
            &format!("largest child list at depth {depth}"),
            largest as f64,
            &format!("bytes ({} buckets; jute.maxbuffer 1048575)", buckets.len()),
        ));
    }
    let (first, last) = (bench.sizes.depths[0], *bench.sizes.depths.last().unwrap());
    for what in ["enqueue (single)", "dequeue+ack (library, 4 consumers)"] {
        report.ratio(
            &format!("{what}: rate at depth {last} / at depth {first}"),
            ("depth", &format!("{what} at depth {last}")),
            ("depth", &format!("{what} at depth {first}")),
            false,
            ">= 0.8",
        );
    }
    Ok(())
}
