//! Operator and sidecar of neighbouring versions run together: today's sidecar keeps
//! serving when a newer operator writes config keys it does not know, also when the
//! operator is upgraded while the sidecar runs.

mod common;

use std::time::Duration;

use common::{eventually, sidecar};
use paddock_recipes::{LockConfig, QueueConfig};
use paddock_testkit::{Acquire, Ensemble, init_tracing, provision};

const NS: &str = "skew";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_configs_with_keys_it_does_not_know() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let lock_path = provision::lock(&admin, NS, "orders", LockConfig::default()).await.unwrap();
    let queue_path = provision::queue(&admin, NS, "jobs", QueueConfig::default()).await.unwrap();
    let (_sidecar, pod) = sidecar(&ensemble, "pod-a", NS, Duration::from_secs(10)).await;

    // Running on the old operator's configs first, so the sidecar has them cached.
    let Acquire::Acquired { token: first, .. } = pod.acquire("orders", "a", "5s").await.unwrap() else {
        panic!("acquire on the old config")
    };
    assert_eq!(pod.release("orders", "a").await.unwrap().0, 200);
    assert_eq!(pod.enqueue("jobs", "before").await.unwrap().0, 201);

    // The operator is upgraded and rewrites both configs with keys of the next version.
    admin.set_data(&lock_path, br#"{"maxHolders":1,"lockDelay":"5s","fairness":"strict"}"#, None).await.unwrap();
    admin
        .set_data(&queue_path, br#"{"maxAttempts":2,"visibilityTimeout":"30s","orderingKeys":true}"#, None)
        .await
        .unwrap();

    // What the sidecar knows of them applies (maxAttempts 2), the rest is ignored.
    eventually(Duration::from_secs(10), "the queue's new config is in force", || async {
        pod.http().get(pod.url("/queue/jobs")).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
            ["config"]["maxAttempts"]
            == 2
    })
    .await;
    match pod.acquire("orders", "a", "5s").await.unwrap() {
        Acquire::Acquired { token, .. } => assert!(token > first),
        other => panic!("acquire on the newer operator's config answered {other:?}"),
    }
    let item = pod.next("jobs", "5s").await.unwrap().expect("the item enqueued before");
    assert_eq!(pod.settle("jobs", &item.id, "ack", "").await.unwrap().0, 200);
    assert_eq!(pod.enqueue("jobs", "after").await.unwrap().0, 201);

    // The keys it ignored are counted, per kind and key.
    let text = pod.http().get(pod.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for series in [
        r#"paddock_config_unknown_fields_total{kind="lock",field="fairness"}"#,
        r#"paddock_config_unknown_fields_total{kind="queue",field="orderingKeys"}"#,
    ] {
        assert!(text.lines().any(|l| l.starts_with(series)), "{series} missing from /metrics:\n{text}");
    }
    assert!(!text.contains(r#"field="lockDelay""#), "lockDelay is a key this sidecar knows:\n{text}");
}
