//! The queue API through the sidecar's HTTP interface, against a real 3-node ensemble.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{assert_json_errors, eventually, oversized, sidecar};
use paddock_recipes::QueueConfig;
use paddock_testkit::{Ensemble, provision};
use serde_json::Value;

const NS: &str = "team-q";
const SESSION: Duration = Duration::from_secs(10);

async fn setup(queues: &[(&str, QueueConfig)]) -> Ensemble {
    common::ensemble_with_queues(NS, queues).await
}

fn config(max_attempts: u32, visibility: Duration) -> QueueConfig {
    QueueConfig { max_attempts, visibility_timeout: visibility, ..QueueConfig::default() }
}

/// What happened to each item, by its number.
#[derive(Default)]
struct Ledger {
    deliveries: HashMap<u64, u32>,
    acks: HashMap<u64, u32>,
    refused_acks: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_items_survive_a_sidecar_kill_and_a_leader_kill() {
    const ITEMS: u64 = 10_000;
    let mut ensemble = setup(&[("work", config(20, Duration::from_secs(60)))]).await;
    // Short enough that a killed sidecar's claims come back soon, long enough that a
    // leader election does not expire the sessions of live sidecars.
    let short = Duration::from_secs(4);
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, short).await;
    let (b, pod_b) = sidecar(&ensemble, "pod-b", NS, short).await;
    let b = Arc::new(tokio::sync::Mutex::new(b));

    for chunk in (0..ITEMS).collect::<Vec<_>>().chunks(500) {
        let payloads: Vec<String> = chunk.iter().map(u64::to_string).collect();
        let (status, body) = pod_a.enqueue_batch("work", &payloads).await.unwrap();
        assert_eq!(status, 201, "{body}");
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acked = Arc::new(AtomicU64::new(0));
    // Items whose ack did not get a 200: the consumer's sidecar died between delivery and
    // ack (the ack could not be sent), or the claim died with its session (409). Only these
    // may come twice, and only these may have been acked without the consumer hearing it
    // (an ack applied just before the session was lost).
    let consumer_died: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut consumers = Vec::new();
    for i in 0..4 {
        let pod = if i % 2 == 1 { pod_b.clone() } else { pod_a.clone() };
        let (ledger, acked, consumer_died, done) = (ledger.clone(), acked.clone(), consumer_died.clone(), done.clone());
        consumers.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let item = match pod.next("work", "1s").await {
                    Ok(Some(item)) => item,
                    Ok(None) => continue,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await; // sidecar down or ZooKeeper electing
                        continue;
                    }
                };
                let n: u64 = String::from_utf8(item.payload.clone()).unwrap().parse().unwrap();
                *ledger.lock().unwrap().deliveries.entry(n).or_default() += 1;
                tokio::time::sleep(Duration::from_micros(n % 500)).await; // "processing"
                loop {
                    match pod.settle("work", &item.id, "ack", "").await {
                        Ok((200, _)) => {
                            *ledger.lock().unwrap().acks.entry(n).or_default() += 1;
                            acked.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Ok((409, _)) => {
                            ledger.lock().unwrap().refused_acks += 1;
                            consumer_died.lock().unwrap().insert(n);
                            break;
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(_) => {
                            // The sidecar died with the claim; the item comes back.
                            consumer_died.lock().unwrap().insert(n);
                            break;
                        }
                    }
                }
            }
        }));
    }

    eventually(Duration::from_secs(120), "2,000 items acked", || async { acked.load(Ordering::SeqCst) >= 2_000 }).await;
    {
        let mut b = b.lock().await;
        b.restart().await.unwrap(); // SIGKILL, then start again: its claims die with its session
    }
    eventually(Duration::from_secs(120), "5,000 items acked", || async { acked.load(Ordering::SeqCst) >= 5_000 }).await;
    let leader = ensemble.leader().await.unwrap();
    ensemble.kill(leader);
    ensemble.wait_for_leader(Duration::from_secs(30)).await.unwrap();
    // The queue is empty once every item has been acked in ZooKeeper (an ack is the only
    // way out of a queue without dead letters).
    eventually(Duration::from_secs(300), "the queue drained", || async {
        pod_a.queue_stats("work").await.is_ok_and(|s| s["depth"] == 0 && s["inFlight"] == 0)
    })
    .await;
    done.store(true, Ordering::SeqCst);
    for c in consumers {
        c.await.unwrap();
    }

    let stats = pod_a.queue_stats("work").await.unwrap();
    assert_eq!(stats["deadLettered"].as_u64(), Some(0), "nothing left by dead-lettering: {stats}");
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let consumer_died = consumer_died.lock().unwrap().clone();
    let never_delivered: Vec<u64> = (0..ITEMS).filter(|n| !ledger.deliveries.contains_key(n)).collect();
    assert!(never_delivered.is_empty(), "items lost: {never_delivered:?}");
    let twice: Vec<u64> = (0..ITEMS).filter(|n| ledger.acks.get(n).copied().unwrap_or(0) > 1).collect();
    assert!(twice.is_empty(), "items acked successfully more than once: {twice:?}");
    let unheard: Vec<u64> = (0..ITEMS).filter(|n| !ledger.acks.contains_key(n)).collect();
    let unexplained: Vec<&u64> = unheard.iter().filter(|n| !consumer_died.contains(n)).collect();
    assert!(unexplained.is_empty(), "acked without a 200 although the consumer lived: {unexplained:?}");
    let duplicates: Vec<u64> = (0..ITEMS).filter(|n| ledger.deliveries[n] > 1).collect();
    let unexplained: Vec<&u64> = duplicates.iter().filter(|n| !consumer_died.contains(n)).collect();
    println!(
        "10,000 items: {} deliveries, {} duplicates (cause: the consumer's sidecar or session died), \
         {} acks refused, {} acks applied without the consumer hearing it",
        ledger.deliveries.values().sum::<u32>(),
        duplicates.len(),
        ledger.refused_acks,
        unheard.len()
    );
    assert!(unexplained.is_empty(), "duplicates whose consumer did not die: {unexplained:?}");
    assert_eq!(acked.load(Ordering::SeqCst) as usize + unheard.len(), ITEMS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_held_past_the_visibility_timeout_goes_to_another_consumer() {
    let ensemble = setup(&[("slow", config(5, Duration::from_secs(1)))]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let mut events = pod_a.events().await.unwrap();
    pod_a.enqueue("slow", "job-1").await.unwrap();

    let first = pod_a.next("slow", "5s").await.unwrap().expect("an item");
    assert_eq!(first.attempt, 1);
    // pod-a's app never acks; after the timeout pod-b gets the same item, second attempt.
    let second = pod_b.next("slow", "30s").await.unwrap().expect("redelivered");
    assert_eq!((second.id.as_str(), second.attempt, second.payload.as_slice()), (first.id.as_str(), 2, &b"job-1"[..]));
    let (status, body) = pod_a.settle("slow", &first.id, "ack", "").await.unwrap();
    assert_eq!((status, body["error"].as_str()), (409, Some("claim-lost")), "{body}");
    let (kind, data) = events.recv().await.unwrap();
    assert_eq!(kind, "queue.claim-lost", "{data}");
    assert_eq!((data["id"].as_str(), data["reason"].as_str()), (Some(first.id.as_str()), Some("visibility-timeout")));
    assert_eq!(pod_b.settle("slow", &second.id, "ack", "").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_unacked_items_back_at_once() {
    let ensemble = setup(&[("jobs", config(5, Duration::from_secs(300)))]).await;
    // A long session: only the explicit return can free the item within pod-b's wait.
    let (mut a, pod_a) = sidecar(&ensemble, "pod-a", NS, Duration::from_secs(60)).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    pod_a.enqueue("jobs", "x").await.unwrap();
    let held = pod_a.next("jobs", "5s").await.unwrap().expect("an item");
    let waiting = tokio::spawn({
        let pod_b = pod_b.clone();
        async move { pod_b.next("jobs", "20s").await.unwrap() }
    });
    let exit = a.process.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(exit.success());
    let item = waiting.await.unwrap().expect("pod-b gets the returned item");
    assert_eq!((item.id, item.attempt), (held.id, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_past_max_attempts_dead_letter_and_a_dead_letter_can_be_requeued() {
    let ensemble = setup(&[("flaky", config(2, Duration::from_secs(300)))]).await;
    let (_a, pod) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    pod.enqueue("flaky", "poison").await.unwrap();

    let first = pod.next("flaky", "5s").await.unwrap().unwrap();
    let (status, body) = pod.settle("flaky", &first.id, "nack", "reason=boom").await.unwrap();
    assert_eq!((status, body["outcome"].as_str()), (200, Some("requeued")), "{body}");
    let second = pod.next("flaky", "5s").await.unwrap().unwrap();
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
    let (status, body) = pod.settle("flaky", &second.id, "nack", "").await.unwrap();
    assert_eq!((status, body["outcome"].as_str()), (200, Some("dead-lettered")), "{body}");
    assert!(pod.next("flaky", "0s").await.unwrap().is_none(), "a dead letter is not delivered");

    let dead: Value = pod.http().get(pod.url("/queue/flaky/dead")).send().await.unwrap().json().await.unwrap();
    let letter = &dead["items"][0];
    assert_eq!(letter["id"], first.id.as_str());
    assert_eq!(letter["attempts"], 2, "{letter}");
    assert_eq!(letter["deliveries"][0]["outcome"], "nack: boom", "{letter}");
    // What an operator of the queue needs: the item itself, who had it and when, and why.
    assert_eq!((letter["payload"].as_str(), letter["payloadBase64"].as_str()), (Some("poison"), Some("cG9pc29u")));
    assert_eq!(letter["payloadBytes"], 6, "{letter}");
    let pods: Vec<&str> = letter["deliveries"].as_array().unwrap().iter().filter_map(|d| d["pod"].as_str()).collect();
    assert_eq!(pods, ["pod-a", "pod-a"], "{letter}");
    assert!(letter["deliveries"][1]["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{letter}");
    assert!(letter["reason"].as_str().unwrap().contains("maxAttempts 2"), "{letter}");
    let one = pod.http().get(pod.url(&format!("/queue/flaky/dead/{}", first.id))).send().await.unwrap();
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.unwrap();
    assert_eq!((one["id"].as_str(), one["payload"].as_str()), (Some(first.id.as_str()), Some("poison")), "{one}");
    let listed: Value =
        pod.http().get(pod.url("/queue/flaky/dead?payload=false")).send().await.unwrap().json().await.unwrap();
    assert!(listed["items"][0].get("payloadBase64").is_none(), "{listed}");
    let stats = pod.queue_stats("flaky").await.unwrap();
    assert_eq!((stats["depth"].as_u64(), stats["deadLettered"].as_u64()), (Some(0), Some(1)));

    let requeued = pod.http().post(pod.url(&format!("/queue/flaky/dead/{}/requeue", first.id))).send().await.unwrap();
    assert_eq!(requeued.status(), 200);
    let again = pod.next("flaky", "5s").await.unwrap().expect("requeued item");
    assert_eq!((again.attempt, again.payload.as_slice()), (1, &b"poison"[..]));
    assert_eq!(pod.settle("flaky", &again.id, "ack", "").await.unwrap().0, 200);

    // A delayed nack: invisible for the delay, then delivered again.
    pod.enqueue("flaky", "later").await.unwrap();
    let item = pod.next("flaky", "5s").await.unwrap().unwrap();
    let (status, body) = pod.settle("flaky", &item.id, "nack", "delay=3s").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(pod.next("flaky", "0s").await.unwrap().is_none(), "not before its delay");
    let stats = pod.queue_stats("flaky").await.unwrap();
    assert_eq!(stats["delayed"].as_u64(), Some(1), "{stats}");
    let back = pod.next("flaky", "30s").await.unwrap().expect("due again");
    assert_eq!((back.attempt, back.payload.as_slice()), (2, &b"later"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_woken_by_an_enqueue_without_reading_zookeeper_meanwhile() {
    let ensemble = setup(&[("events", config(5, Duration::from_secs(300)))]).await;
    let (_a, consumer) = sidecar(&ensemble, "consumer", NS, SESSION).await;
    let (_b, producer) = sidecar(&ensemble, "producer", NS, SESSION).await;
    assert!(consumer.next("events", "0s").await.unwrap().is_none()); // starts the view
    let reads = || async { consumer.metric("paddock_queue_zookeeper_reads_total").await.unwrap() };
    let before = reads().await;

    let waiting = tokio::spawn({
        let consumer = consumer.clone();
        async move { consumer.next("events", "60s").await.unwrap() }
    });
    tokio::time::sleep(Duration::from_secs(2)).await; // the consumer waits
    assert_eq!(reads().await, before, "no ZooKeeper reads while waiting: no poll loop");
    assert!(!waiting.is_finished());

    producer.enqueue("events", "wake up").await.unwrap();
    let item = waiting.await.unwrap().expect("woken by the enqueue");
    assert_eq!(item.payload, b"wake up");
    // One read to claim it: the item and its history together. Its bucket, made while the
    // view followed the queue, is known without a listing.
    assert_eq!(reads().await - before, 1.0);
}

/// The operator rewriting a queue's config must not blind its consumers. ZooKeeper 3.8
/// keeps one watch mode per path and session (ZOOKEEPER-4466): the config cache once used
/// a data watch on the queue's znode, which replaced the view's recursive watch there and,
/// once a config write fired it, left the view seeing no new item. Found by the fault suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_keep_seeing_new_items_after_the_queue_config_is_rewritten() {
    let ensemble = setup(&[("rewritten", config(5, Duration::from_secs(300)))]).await;
    let (_a, pod) = sidecar(&ensemble, "consumer", NS, SESSION).await;
    assert_eq!(pod.enqueue("rewritten", "first").await.unwrap().0, 201);
    let first = pod.next("rewritten", "5s").await.unwrap().expect("the first item");
    assert_eq!(pod.settle("rewritten", &first.id, "ack", "").await.unwrap().0, 200);

    // The operator writes the config again (a change, so every watch on the znode fires).
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let path = format!("/paddock/{NS}/queues/rewritten");
    let changed = config(6, Duration::from_secs(300));
    admin.set_data(&path, &serde_json::to_vec(&changed).unwrap(), None).await.unwrap();
    eventually(Duration::from_secs(10), "the sidecar sees the new config", || async {
        pod.queue_stats("rewritten").await.is_ok_and(|_| true)
            && pod.http().get(pod.url("/queue/rewritten")).send().await.unwrap().json::<Value>().await.unwrap()
                ["config"]["maxAttempts"]
                == 6
    })
    .await;

    // Items enqueued after the write (in new buckets) still reach the consumer.
    for n in 0..3 {
        assert_eq!(pod.enqueue("rewritten", format!("after-{n}")).await.unwrap().0, 201);
        tokio::time::sleep(Duration::from_millis(150)).await; // a new 100 ms bucket each
    }
    for _ in 0..3 {
        let item = pod.next("rewritten", "5s").await.unwrap().expect("an item enqueued after the config write");
        assert_eq!(pod.settle("rewritten", &item.id, "ack", "").await.unwrap().0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx_and_loses_nothing() {
    let small = QueueConfig { max_payload_bytes: Some(1000), ..QueueConfig::default() };
    let ensemble = setup(&[("q", small)]).await;
    let (mut a, pod) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (status, body) = pod.enqueue("q", "keep me").await.unwrap();
    assert_eq!(status, 201, "{body}");
    let http = pod.http();
    let batch = |body: &'static str| {
        http.post(pod.url("/queue/q/batch")).header("content-type", "application/json").body(body).send()
    };
    let too_many = format!("{{\"items\":[{}]}}", vec!["{\"payload\":\"x\"}"; 1001].join(","));
    let cases: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        ("bad queue name", http.post(pod.url("/queue/Bad_Name")).body("x").send().await.unwrap(), 400, "invalid-name"),
        ("unknown queue", http.post(pod.url("/queue/nope")).body("x").send().await.unwrap(), 404, "queue-not-found"),
        (
            "oversize payload",
            http.post(pod.url("/queue/q")).body(vec![7u8; 1001]).send().await.unwrap(),
            413,
            "payload-too-large",
        ),
        ("body over the sidecar limit", oversized(&pod.url("/queue/q/batch")).await, 413, "payload-too-large"),
        (
            "bad priority",
            http.post(pod.url("/queue/q?priority=10")).body("x").send().await.unwrap(),
            400,
            "bad-request",
        ),
        (
            "bad delay",
            http.post(pod.url("/queue/q?delay=tomorrow")).body("x").send().await.unwrap(),
            400,
            "invalid-duration",
        ),
        ("malformed batch", batch("{\"items\":[").await.unwrap(), 400, "invalid-json"),
        ("batch of nothing", batch("{\"items\":[]}").await.unwrap(), 400, "bad-request"),
        (
            "batch item with both payloads",
            batch("{\"items\":[{\"payload\":\"a\",\"payloadBase64\":\"YQ==\"}]}").await.unwrap(),
            400,
            "bad-request",
        ),
        ("batch bad base64", batch("{\"items\":[{\"payloadBase64\":\"!!\"}]}").await.unwrap(), 400, "bad-request"),
        ("batch unknown field", batch("{\"items\":[{\"body\":\"a\"}]}").await.unwrap(), 422, "invalid-json"),
        (
            "batch too large",
            http.post(pod.url("/queue/q/batch"))
                .header("content-type", "application/json")
                .body(too_many)
                .send()
                .await
                .unwrap(),
            400,
            "bad-request",
        ),
        ("next without a queue", http.get(pod.url("/queue/next")).send().await.unwrap(), 400, "bad-request"),
        (
            "next bad wait",
            http.get(pod.url("/queue/next?queue=q&wait=-1s")).send().await.unwrap(),
            400,
            "invalid-duration",
        ),
        ("next bad max", http.get(pod.url("/queue/next?queue=q&max=0")).send().await.unwrap(), 400, "bad-request"),
        ("bad item id", http.post(pod.url("/queue/q/..%2F..%2Fx/ack")).send().await.unwrap(), 400, "invalid-item-id"),
        (
            "ack of an item not held",
            http.post(pod.url("/queue/q/b9-000000000001.0000000001/ack")).send().await.unwrap(),
            409,
            "claim-lost",
        ),
        (
            "nack bad delay",
            http.post(pod.url("/queue/q/b9-000000000001.0000000001/nack?delay=x")).send().await.unwrap(),
            400,
            "invalid-duration",
        ),
        (
            "requeue unknown dead letter",
            http.post(pod.url("/queue/q/dead/b9-000000000001.0000000001/requeue")).send().await.unwrap(),
            404,
            "dead-letter-not-found",
        ),
    ];
    assert_json_errors(cases).await;
    let oversize: Value =
        http.post(pod.url("/queue/q")).body(vec![7u8; 1001]).send().await.unwrap().json().await.unwrap();
    assert!(oversize["message"].as_str().unwrap().contains("1000 bytes"), "the limit is in the message: {oversize}");
    assert!(!a.process.has_exited(), "no panic");
    let stats = pod.queue_stats("q").await.unwrap();
    assert_eq!(stats["depth"].as_u64(), Some(1), "only the valid item is queued, and it is still there: {stats}");
    let item = pod.next("q", "5s").await.unwrap().unwrap();
    assert_eq!(item.payload, b"keep me");
}

/// The scenario that found items dead-lettered mid-processing: `maxAttempts: 1`, 8
/// consumers on 2 sidecars, no failure of any kind (it dead-lettered 35 of 600 items,
/// whose acks then answered 200). Now: no dead letter, every item acked once with a 200,
/// no claim left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_one_with_eight_consumers_on_two_sidecars_dead_letters_nothing() {
    const ITEMS: usize = 600;
    let ensemble = setup(&[("once", config(1, Duration::from_secs(60)))]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let acks: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let refused: Arc<Mutex<Vec<(u64, u16, Value)>>> = Arc::default();
    let mut consumers = Vec::new();
    for c in 0..8 {
        let pod = if c % 2 == 0 { pod_a.clone() } else { pod_b.clone() };
        let (acks, refused) = (acks.clone(), refused.clone());
        consumers.push(tokio::spawn(async move {
            let mut idle = 0;
            while idle < 3 {
                let Some(item) = pod.next("once", "1s").await.unwrap() else {
                    idle += 1;
                    continue;
                };
                idle = 0;
                let n: u64 = String::from_utf8(item.payload).unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(1 + n % 4)).await; // processing
                let (status, body) = pod.settle("once", &item.id, "ack", "").await.unwrap();
                if status == 200 {
                    *acks.lock().unwrap().entry(n).or_default() += 1;
                } else {
                    refused.lock().unwrap().push((n, status, body));
                }
            }
        }));
    }
    for start in (0..ITEMS).step_by(20) {
        let payloads: Vec<String> = (start..start + 20).map(|n| n.to_string()).collect();
        assert_eq!(pod_a.enqueue_batch("once", &payloads).await.unwrap().0, 201);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }
    let stats = pod_a.queue_stats("once").await.unwrap();
    let refused = refused.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    assert_eq!(stats["deadLettered"], 0, "dead-lettered while held: {stats}");
    assert!(refused.is_empty(), "acks refused: {:?}", &refused[..refused.len().min(3)]);
    assert_eq!(acks.len(), ITEMS, "every item acked");
    assert!(acks.values().all(|n| *n == 1), "every item acked once");
    assert_eq!((stats["depth"].as_u64(), stats["inFlight"].as_u64()), (Some(0), Some(0)), "no claim left: {stats}");
}
