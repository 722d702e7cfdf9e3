//! The gauges that tell a platform team whether a queue keeps up and whether a lock is
//! stuck, read as Prometheus reads them (`/metrics`), from a real sidecar on a real
//! ensemble.

mod common;

use std::time::Duration;

use common::{eventually, sidecar};
use paddock_recipes::{LockConfig, QueueConfig};
use paddock_testkit::{Acquire, Ensemble, PodClient, init_tracing, provision};

const NS: &str = "team-metrics";

async fn gauge(pod: &PodClient, series: &str) -> f64 {
    pod.metric(series).await.unwrap()
}

/// The age of the oldest ready item grows while items wait, and is 0 once they are
/// consumed; ready and in-flight counts follow the consumer's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_ready_age_rises_while_items_wait_and_falls_when_they_are_consumed() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, NS, "jobs", QueueConfig::default()).await.unwrap();
    let (_sidecar, pod) = sidecar(&ensemble, "pod-a", NS, Duration::from_secs(10)).await;
    let age = r#"paddock_queue_oldest_ready_age_seconds{queue="jobs"}"#;
    let ready = r#"paddock_queue_ready_items{queue="jobs"}"#;
    let in_flight = r#"paddock_queue_in_flight_items{queue="jobs"}"#;

    // A consumer that finds nothing: the sidecar now keeps a view of the queue.
    assert!(pod.next("jobs", "0s").await.unwrap().is_none());
    assert_eq!(gauge(&pod, age).await, 0.0, "nothing waits");

    for n in 0..3 {
        assert_eq!(pod.enqueue("jobs", format!("job {n}")).await.unwrap().0, 201);
    }
    eventually(Duration::from_secs(10), "the view sees the items", || async { gauge(&pod, age).await > 0.0 }).await;
    let first = gauge(&pod, age).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = gauge(&pod, age).await;
    assert!(later >= first + 1.0, "the age grows while the items wait: {first} then {later}");

    // One claimed and held: two ready, one in flight, the oldest still waiting.
    let held = pod.next("jobs", "5s").await.unwrap().expect("an item");
    assert_eq!((gauge(&pod, ready).await, gauge(&pod, in_flight).await), (2.0, 1.0));
    // The other two have waited as long (to the enqueue's few milliseconds, and the 100 ms
    // of a bucket): the oldest of them is the age now.
    let still = gauge(&pod, age).await;
    assert!(still >= 1.0, "two items still wait, for 1.5 s and more: {still}");
    assert_eq!(pod.settle("jobs", &held.id, "ack", "").await.unwrap().0, 200);
    for _ in 0..2 {
        let item = pod.next("jobs", "5s").await.unwrap().expect("an item");
        assert_eq!(pod.settle("jobs", &item.id, "ack", "").await.unwrap().0, 200);
    }
    eventually(Duration::from_secs(10), "the view sees the acks", || async { gauge(&pod, in_flight).await == 0.0 })
        .await;
    assert_eq!((gauge(&pod, age).await, gauge(&pod, ready).await), (0.0, 0.0), "all consumed");
}

/// A held lock shows how long it has been held; its release ends the series and counts
/// the hold in the histogram. The session's state and changes are there from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_shows_its_hold_time_and_the_session_its_state() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::lock(&admin, NS, "orders", LockConfig::default()).await.unwrap();
    let (_sidecar, pod) = sidecar(&ensemble, "pod-a", NS, Duration::from_secs(10)).await;
    assert_eq!(gauge(&pod, "paddock_zookeeper_connected").await, 1.0);
    assert!(gauge(&pod, r#"paddock_zookeeper_session_events_total{event="established"}"#).await >= 1.0);
    assert_eq!(gauge(&pod, r#"paddock_zookeeper_session_events_total{event="expired"}"#).await, 0.0);

    let held = r#"paddock_lock_held_seconds{lock="orders"}"#;
    assert!(matches!(pod.acquire("orders", "worker", "5s").await.unwrap(), Acquire::Acquired { .. }));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(gauge(&pod, held).await >= 1.0, "held for more than a second");
    assert_eq!(pod.release("orders", "worker").await.unwrap().0, 200);

    let text = pod.http().get(pod.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains(held), "no hold, no series: {text}");
    assert_eq!(gauge(&pod, r#"paddock_lock_hold_seconds_count{lock="orders"}"#).await, 1.0);
    assert!(gauge(&pod, r#"paddock_lock_hold_seconds_sum{lock="orders"}"#).await >= 1.0);
}

/// Delayed items and dead letters, counted by the view from its resync and the watch
/// events after it: a delayed item and a dead letter made before the view started, and
/// one of each after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_items_and_dead_letters_are_counted_from_the_view() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, NS, "jobs", QueueConfig { max_attempts: 1, ..QueueConfig::default() }).await.unwrap();
    let (_producer, producer) = sidecar(&ensemble, "producer", NS, Duration::from_secs(10)).await;
    let (_sidecar, pod) = sidecar(&ensemble, "pod-a", NS, Duration::from_secs(10)).await;
    let delayed = r#"paddock_queue_delayed_items{queue="jobs"}"#;
    let dead = r#"paddock_queue_dead_letters{queue="jobs"}"#;
    let enqueue_delayed = || async {
        let url = producer.url("/queue/jobs?delay=1h");
        let response = producer.http().post(url).body("later").send().await.unwrap();
        assert_eq!(response.status(), 201);
    };
    let dead_letter = |n: usize| {
        let (producer, pod) = (producer.clone(), pod.clone());
        async move {
            assert_eq!(producer.enqueue("jobs", format!("poison {n}")).await.unwrap().0, 201);
            let item = pod.next("jobs", "5s").await.unwrap().expect("an item");
            let (status, body) = pod.settle("jobs", &item.id, "nack", "").await.unwrap();
            assert_eq!((status, body["outcome"].as_str()), (200, Some("dead-lettered")), "{body}");
        }
    };

    // Before the view: made by another sidecar's view, then counted at this one's resync.
    enqueue_delayed().await;
    let (_other, other) = sidecar(&ensemble, "pod-b", NS, Duration::from_secs(10)).await;
    assert_eq!(producer.enqueue("jobs", "poison 0").await.unwrap().0, 201);
    let item = other.next("jobs", "5s").await.unwrap().expect("an item");
    assert_eq!(other.settle("jobs", &item.id, "nack", "").await.unwrap().0, 200);

    assert!(pod.next("jobs", "0s").await.unwrap().is_none(), "starts the view; nothing ready");
    assert_eq!((gauge(&pod, delayed).await, gauge(&pod, dead).await), (1.0, 1.0), "counted at the resync");
    enqueue_delayed().await;
    dead_letter(1).await;
    eventually(Duration::from_secs(10), "the view counts the new ones", || async {
        gauge(&pod, delayed).await == 2.0 && gauge(&pod, dead).await == 2.0
    })
    .await;
    let letters: serde_json::Value =
        pod.http().get(pod.url("/queue/jobs/dead")).send().await.unwrap().json().await.unwrap();
    let first = letters["items"][0]["id"].as_str().unwrap().to_owned();
    let requeued = pod.http().post(pod.url(&format!("/queue/jobs/dead/{first}/requeue"))).send().await.unwrap();
    assert_eq!(requeued.status(), 200);
    eventually(Duration::from_secs(10), "a requeued dead letter is no longer counted", || async {
        gauge(&pod, dead).await == 1.0
    })
    .await;
}
