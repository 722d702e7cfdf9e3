//! Queues for real jobs (issue 15), through the sidecar's HTTP API against a real 3-node
//! ensemble: extending a claim while working, back-off of retries, peek and purge.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{assert_json_errors, sidecar};
use paddock_recipes::{QueueConfig, RetryPolicy};
use paddock_testkit::{Ensemble, provision};
use serde_json::Value;
use tokio::time::Instant;

const NS: &str = "team-j";
const SESSION: Duration = Duration::from_secs(10);

async fn setup(queues: &[(&str, QueueConfig)]) -> Ensemble {
    common::ensemble_with_queues(NS, queues).await
}

/// The payloads of what waits in a queue (peek), in delivery order.
async fn waiting(pod: &paddock_testkit::PodClient, queue: &str) -> Vec<String> {
    use base64::Engine as _;
    let url = pod.url(&format!("/queue/{queue}/items?limit=1000&payload=true"));
    let listed: Value = pod.http().get(url).send().await.unwrap().json().await.unwrap();
    let items = listed["items"].as_array().unwrap();
    let decode =
        |item: &Value| base64::engine::general_purpose::STANDARD.decode(item["payloadBase64"].as_str().unwrap());
    items.iter().map(|item| String::from_utf8(decode(item).unwrap()).unwrap()).collect()
}

fn visibility(timeout: Duration) -> QueueConfig {
    QueueConfig { visibility_timeout: timeout, max_visibility: Some(Duration::from_secs(60)), ..QueueConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_extended_in_time_is_delivered_once_and_one_no_longer_extended_is_lost_within_its_timeout() {
    let ensemble = setup(&[("long", visibility(Duration::from_secs(2)))]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;

    // A job of 8 s under a 2 s visibility timeout, extended every second, while another
    // consumer waits for anything the whole time.
    pod_a.enqueue("long", "job-1").await.unwrap();
    let item = pod_a.next("long", "5s").await.unwrap().expect("an item");
    let rival = tokio::spawn({
        let pod_b = pod_b.clone();
        async move { pod_b.next("long", "10s").await.unwrap() }
    });
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, body) = pod_a.settle("long", &item.id, "extend", "visibility=2s").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let until = body["visibleUntil"].as_str().expect("visibleUntil");
        let until = humantime::parse_rfc3339(until).expect("an RFC 3339 time");
        let ahead = until.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        assert!(ahead > Duration::from_millis(1500) && ahead <= Duration::from_secs(2), "{body}");
    }
    assert_eq!(pod_a.settle("long", &item.id, "ack", "").await.unwrap().0, 200);
    assert!(rival.await.unwrap().is_none(), "an item extended in time went to nobody else");
    assert_eq!(pod_b.metric("paddock_queue_delivered_total").await.unwrap_or(0.0), 0.0);

    // A consumer that stops extending loses the item within the timeout.
    pod_a.enqueue("long", "job-2").await.unwrap();
    let item = pod_a.next("long", "5s").await.unwrap().expect("an item");
    assert_eq!(pod_a.settle("long", &item.id, "extend", "visibility=2s").await.unwrap().0, 200);
    let extended_at = Instant::now();
    let again = pod_b.next("long", "10s").await.unwrap().expect("redelivered once no longer extended");
    assert_eq!((again.id.as_str(), again.attempt), (item.id.as_str(), 2));
    assert!(extended_at.elapsed() >= Duration::from_millis(1900), "not before the extended deadline");
    let (status, body) = pod_a.settle("long", &item.id, "extend", "visibility=2s").await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("claim-lost")),
        "an extend after the claim was lost: {body}"
    );
    let (status, body) = pod_a.settle("long", &item.id, "ack", "").await.unwrap();
    assert_eq!((status, body["error"].as_str()), (409, Some("claim-lost")), "an ack after the claim was lost: {body}");
    assert_eq!(pod_b.settle("long", &again.id, "ack", "").await.unwrap().0, 200);
    assert_eq!(pod_a.metric("paddock_queue_extended_total").await.unwrap(), 9.0);

    // Bad input: a JSON 4xx, nothing changed.
    pod_a.enqueue("long", "job-3").await.unwrap();
    let held = pod_a.next("long", "5s").await.unwrap().expect("an item");
    let extend =
        |id: &str, query: &str| pod_a.http().post(pod_a.url(&format!("/queue/long/{id}/extend{query}"))).send();
    let never_claimed = "b9-000000000001.0000000001";
    assert_json_errors(vec![
        ("over maxVisibility", extend(&held.id, "?visibility=2m").await.unwrap(), 400, "visibility-too-long"),
        ("no visibility", extend(&held.id, "").await.unwrap(), 400, "bad-request"),
        ("bad duration", extend(&held.id, "?visibility=soon").await.unwrap(), 400, "invalid-duration"),
        ("zero", extend(&held.id, "?visibility=0s").await.unwrap(), 400, "invalid-duration"),
        ("never claimed", extend(never_claimed, "?visibility=5s").await.unwrap(), 409, "claim-lost"),
        ("bad id", extend("nonsense", "?visibility=5s").await.unwrap(), 400, "invalid-item-id"),
        (
            "unknown queue",
            pod_a
                .http()
                .post(pod_a.url(&format!("/queue/nope/{}/extend?visibility=5s", held.id)))
                .send()
                .await
                .unwrap(),
            404,
            "queue-not-found",
        ),
    ])
    .await;
    assert_eq!(pod_a.settle("long", &held.id, "ack", "").await.unwrap().0, 200, "the refused extends changed nothing");

    // An extend may shorten the time too: the item goes back at the sooner deadline.
    pod_a.enqueue("long", "job-4").await.unwrap();
    let item = pod_a.next("long", "5s").await.unwrap().expect("an item");
    assert_eq!(pod_a.settle("long", &item.id, "extend", "visibility=60s").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the first deadline: its timer now waits for 60 s
    assert_eq!(pod_a.settle("long", &item.id, "extend", "visibility=1s").await.unwrap().0, 200);
    let shortened = Instant::now();
    let again = pod_b.next("long", "30s").await.unwrap().expect("given back at the sooner deadline");
    assert_eq!((again.id.as_str(), again.attempt), (item.id.as_str(), 2));
    assert!(shortened.elapsed() < Duration::from_secs(20), "not at the 60 s deadline: {:?}", shortened.elapsed());
    assert_eq!(pod_b.settle("long", &again.id, "ack", "").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_and_timeouts_back_off_by_the_queue_retry_policy() {
    let retry =
        RetryPolicy { initial_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30), multiplier: 2.0 };
    let backoff = QueueConfig { max_attempts: 10, retry: Some(retry.clone()), ..QueueConfig::default() };
    let slow = QueueConfig {
        max_attempts: 10,
        visibility_timeout: Duration::from_secs(1),
        retry: Some(RetryPolicy { initial_delay: Duration::from_secs(2), ..retry }),
        ..QueueConfig::default()
    };
    let ensemble = setup(&[("backoff", backoff), ("slow", slow), ("plain", QueueConfig::default())]).await;
    let (_a, pod) = sidecar(&ensemble, "pod-a", NS, SESSION).await;

    pod.enqueue("backoff", "flaky").await.unwrap();
    let mut delivered = Vec::new();
    for attempt in 1..=4 {
        let item = pod.next("backoff", "30s").await.unwrap().expect("delivered again");
        delivered.push(Instant::now());
        assert_eq!(
            (item.attempt, item.payload.as_slice()),
            (attempt, &b"flaky"[..]),
            "Paddock-Attempt counts deliveries"
        );
        let (status, body) = pod.settle("backoff", &item.id, "nack", "reason=downstream%20down").await.unwrap();
        assert_eq!((status, body["outcome"].as_str()), (200, Some("requeued")), "{body}");
    }
    let gaps: Vec<Duration> = delivered.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, least) in gaps.iter().zip([500, 1000, 2000]) {
        assert!(*gap >= Duration::from_millis(least), "back-off of at least {least} ms between deliveries: {gaps:?}");
    }
    assert!(gaps[2] > gaps[0], "the back-off grows: {gaps:?}");
    // An explicit delay is the app's choice: no back-off on top of it.
    let item = pod.next("backoff", "30s").await.unwrap().expect("the fifth delivery");
    assert_eq!(pod.settle("backoff", &item.id, "nack", "delay=0s").await.unwrap().0, 200);
    let started = Instant::now();
    let item = pod.next("backoff", "30s").await.unwrap().expect("at once");
    assert!(started.elapsed() < Duration::from_secs(4), "delay=0s is not backed off by 8 s");
    assert_eq!(pod.settle("backoff", &item.id, "ack", "").await.unwrap().0, 200);

    // A visibility timeout backs off too: held 1 s, then 2 s of back-off.
    pod.enqueue("slow", "stuck").await.unwrap();
    let first = pod.next("slow", "5s").await.unwrap().expect("an item");
    let taken = Instant::now();
    let again = pod.next("slow", "30s").await.unwrap().expect("given back after its back-off");
    assert!(taken.elapsed() >= Duration::from_millis(2900), "1 s timeout + 2 s back-off, got {:?}", taken.elapsed());
    assert_eq!((again.attempt, again.payload.as_slice()), (2, &b"stuck"[..]), "{:?}", first.id);
    assert_eq!(pod.settle("slow", &again.id, "ack", "").await.unwrap().0, 200);

    // Without a policy a nack is ready again at once, as before.
    pod.enqueue("plain", "x").await.unwrap();
    let item = pod.next("plain", "5s").await.unwrap().unwrap();
    assert_eq!(pod.settle("plain", &item.id, "nack", "").await.unwrap().0, 200);
    let again = pod.next("plain", "0s").await.unwrap().expect("ready at once");
    assert_eq!(again.attempt, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_lists_without_claiming_and_purge_leaves_items_in_flight_to_their_consumers() {
    let ensemble = setup(&[("work", QueueConfig::default())]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    for n in 0..20 {
        pod_a.enqueue("work", format!("item-{n}")).await.unwrap();
    }
    let urgent = pod_a.http().post(pod_a.url("/queue/work?priority=5")).body("urgent").send().await.unwrap();
    assert_eq!(urgent.status(), 201);
    let later = pod_a.http().post(pod_a.url("/queue/work?delay=1h")).body("later").send().await.unwrap();
    assert_eq!(later.status(), 201);

    let peek = |query: &'static str| {
        let pod = pod_b.clone();
        async move {
            let response = pod.http().get(pod.url(&format!("/queue/work/items{query}"))).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()["items"].as_array().unwrap().clone()
        }
    };
    let listed = peek("?limit=1000&payload=true").await;
    let payloads = waiting(&pod_b, "work").await;
    let mut expected = vec!["urgent".to_owned()];
    expected.extend((0..20).map(|n| format!("item-{n}")));
    expected.push("later".to_owned());
    assert_eq!(payloads, expected, "delivery order: priority, then due time; delayed last");
    assert_eq!((listed[0]["priority"].as_u64(), listed[0]["attempt"].as_u64()), (Some(5), Some(0)));
    assert_eq!((listed[21]["ready"].as_bool(), listed[1]["size"].as_u64()), (Some(false), Some(6)));
    assert!(listed[0].get("payloadBase64").is_some() && peek("?limit=2").await[0].get("payloadBase64").is_none());
    assert_eq!(peek("?limit=3").await.len(), 3);

    // Peek claims nothing: a consumer still gets every ready item, in that order.
    let mut consumed = Vec::new();
    let mut held = Vec::new();
    for _ in 0..3 {
        let item = pod_a.next("work", "5s").await.unwrap().expect("an item");
        consumed.push(String::from_utf8(item.payload.clone()).unwrap());
        held.push(item);
    }
    assert_eq!(consumed, expected[..3]);
    let listed = peek("?limit=1000").await;
    assert_eq!(listed.len(), 19, "items in flight are not listed: {listed:?}");

    // Purge takes what nobody holds; the holders' acks still succeed.
    let purged = pod_b.http().delete(pod_b.url("/queue/work/items")).send().await.unwrap();
    assert_eq!(purged.status(), 200);
    let purged: Value = purged.json().await.unwrap();
    assert_eq!((purged["removed"].as_u64(), purged["leftInFlight"].as_u64()), (Some(19), Some(3)), "{purged}");
    assert!(pod_b.next("work", "0s").await.unwrap().is_none(), "nothing ready after a purge");
    let ids: HashSet<&str> = held.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    for item in &held {
        assert_eq!(pod_a.settle("work", &item.id, "ack", "").await.unwrap().0, 200, "an ack after a purge");
    }
    let stats = pod_a.queue_stats("work").await.unwrap();
    assert_eq!((stats["depth"].as_u64(), stats["inFlight"].as_u64()), (Some(0), Some(0)), "{stats}");
    assert_eq!(pod_b.metric("paddock_queue_purged_total").await.unwrap(), 19.0);

    // Dead letters are purged on their own.
    let dead = QueueConfig { max_attempts: 1, ..QueueConfig::default() };
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, NS, "poison", dead).await.unwrap();
    for n in 0..3 {
        pod_a.enqueue("poison", format!("p-{n}")).await.unwrap();
        let item = pod_a.next("poison", "5s").await.unwrap().unwrap();
        assert_eq!(pod_a.settle("poison", &item.id, "nack", "").await.unwrap().1["outcome"], "dead-lettered");
    }
    let purged = pod_a.http().delete(pod_a.url("/queue/poison/dead")).send().await.unwrap();
    let purged: Value = purged.json().await.unwrap();
    assert_eq!(purged["removed"], 3, "{purged}");
    assert_eq!(pod_a.queue_stats("poison").await.unwrap()["deadLettered"], 0);

    assert_json_errors(vec![
        (
            "peek unknown queue",
            pod_a.http().get(pod_a.url("/queue/nope/items")).send().await.unwrap(),
            404,
            "queue-not-found",
        ),
        (
            "purge unknown queue",
            pod_a.http().delete(pod_a.url("/queue/nope/items")).send().await.unwrap(),
            404,
            "queue-not-found",
        ),
        (
            "bad limit",
            pod_a.http().get(pod_a.url("/queue/work/items?limit=-1")).send().await.unwrap(),
            400,
            "invalid-query",
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_stores_one_item_per_window_across_sidecars_and_batches() {
    let window = Duration::from_secs(3);
    let ensemble =
        setup(&[("dedup", QueueConfig { deduplication_window: Some(window), ..QueueConfig::default() })]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let keyed = |pod: &paddock_testkit::PodClient, key: &str, payload: &str| {
        pod.http().post(pod.url("/queue/dedup")).header("Idempotency-Key", key).body(payload.to_owned()).send()
    };
    let batch = |pod: &paddock_testkit::PodClient, items: Value| {
        pod.http().post(pod.url("/queue/dedup/batch")).json(&serde_json::json!({ "items": items })).send()
    };

    let first = keyed(&pod_a, "order-1", "one").await.unwrap();
    let created_at = Instant::now();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["duplicate"], false, "{first}");
    for pod in [&pod_b, &pod_a] {
        let again = keyed(pod, "order-1", "one").await.unwrap();
        assert_eq!(again.status(), 200, "a duplicate is not created");
        let again: Value = again.json().await.unwrap();
        assert_eq!((&again["id"], &again["duplicate"]), (&first["id"], &Value::Bool(true)), "{again}");
    }

    // A batch: some keys seen, one twice in the batch, one item without a key.
    let response = batch(
        &pod_b,
        serde_json::json!([
            { "payload": "one again", "idempotencyKey": "order-1" },
            { "payload": "two", "idempotencyKey": "order-2" },
            { "payload": "plain" },
            { "payload": "two again", "idempotencyKey": "order-2" },
        ]),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["duplicates"], serde_json::json!([true, false, false, true]), "{body}");
    assert_eq!((&body["ids"][0], &body["ids"][3]), (&first["id"], &body["ids"][1]), "{body}");
    assert_eq!(waiting(&pod_a, "dedup").await, ["one", "two", "plain"]);

    // All or nothing for the rest: a refused batch records no key.
    let huge = "x".repeat(1_000_001);
    let refused =
        batch(&pod_a, serde_json::json!([{ "payload": "three", "idempotencyKey": "order-3" }, { "payload": huge }]))
            .await
            .unwrap();
    assert_eq!(refused.status(), 413);
    let three = keyed(&pod_a, "order-3", "three").await.unwrap();
    assert_eq!(three.status(), 201, "the refused batch stored nothing, its key included");

    // Bad keys: a JSON 400, nothing stored.
    let long = "k".repeat(129);
    assert_json_errors(vec![
        ("key too long", keyed(&pod_a, &long, "x").await.unwrap(), 400, "invalid-idempotency-key"),
        ("empty key", keyed(&pod_a, "", "x").await.unwrap(), 400, "invalid-idempotency-key"),
        (
            "batch key too long",
            batch(&pod_a, serde_json::json!([{ "payload": "x", "idempotencyKey": long }])).await.unwrap(),
            400,
            "invalid-idempotency-key",
        ),
    ])
    .await;
    assert_eq!(waiting(&pod_a, "dedup").await, ["one", "two", "plain", "three"]);
    let duplicates = pod_a.metric("paddock_queue_duplicates_total").await.unwrap()
        + pod_b.metric("paddock_queue_duplicates_total").await.unwrap();
    assert_eq!(duplicates, 4.0);

    // After the window the key is free again (whether or not the server's TTL reaper has
    // removed its record yet).
    tokio::time::sleep((created_at + window + Duration::from_millis(200)).saturating_duration_since(Instant::now()))
        .await;
    let later = keyed(&pod_b, "order-1", "one, next week").await.unwrap();
    assert_eq!(later.status(), 201, "a key past its window enqueues a new item");
    let later: Value = later.json().await.unwrap();
    assert_ne!(later["id"], first["id"], "{later}");
    assert_eq!(waiting(&pod_a, "dedup").await.len(), 5);
}
