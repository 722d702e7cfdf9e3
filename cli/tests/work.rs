//! `paddock work QUEUE -- CMD` as real processes against real sidecars and a real ensemble.
//! The handlers append to a ledger file when they finish an item; the ledger says what
//! ran, and how often.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use paddock_recipes::QueueConfig;
use paddock_testkit::PodClient;

/// Lines of the ledger: (payload, attempt) per finished run.
fn ledger(path: &Path) -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let (payload, attempt) = line.rsplit_once(' ').expect("payload attempt");
            (payload.to_owned(), attempt.parse().unwrap())
        })
        .collect()
}

/// A handler that reads the payload, runs `work` (shell), and writes the ledger's line.
fn ledger_handler(dir: &Path, ledger: &Path, work: &str) -> String {
    let body = format!("payload=$(cat)\n{work}\necho \"$payload $PADDOCK_ATTEMPT\" >> {}", ledger.display());
    script(dir, "handler.sh", &body)
}

async fn enqueue_numbers(client: &PodClient, count: usize) {
    let payloads: Vec<String> = (0..count).map(|n| format!("item-{n}")).collect();
    for chunk in payloads.chunks(250) {
        let (status, body) = client.enqueue_batch("jobs", chunk).await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
}

async fn drained(client: &PodClient) -> bool {
    client.queue_stats("jobs").await.is_ok_and(|s| s["depth"] == 0)
}

#[tokio::test]
async fn every_item_is_acked_once_and_failed_first_attempts_are_retried() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger");
    // Every tenth item fails its first attempt.
    let failing_first = "case \"$payload\" in *0) [ \"$PADDOCK_ATTEMPT\" = 1 ] && exit 1;; esac";
    let handler = ledger_handler(dir.path(), &ledger_path, failing_first);
    enqueue_numbers(&client, 500).await;

    let mut worker = paddock(&pod, &["work", "jobs", "--concurrency", "4", "--", &handler]).spawn().unwrap();
    eventually(Duration::from_secs(120), "the queue drains", || drained(&client)).await;
    signal(worker.id().unwrap(), libc::SIGTERM);
    assert_eq!(exit_code(&mut worker, Duration::from_secs(20)).await, 0, "a SIGTERM ends the worker with 0");

    let runs = ledger(&ledger_path);
    let mut seen: HashMap<String, u32> = HashMap::new();
    for (payload, attempt) in &runs {
        assert!(seen.insert(payload.clone(), *attempt).is_none(), "{payload} finished twice");
    }
    assert_eq!(seen.len(), 500, "every item finished");
    for (payload, attempt) in &seen {
        let expected = if payload.ends_with('0') { 2 } else { 1 };
        assert_eq!(*attempt, expected, "{payload}: a failing first attempt is retried once, others run once");
    }
    assert_eq!(client.metric("paddock_queue_nacked_total").await.unwrap(), 50.0, "the 50 failures were nacked");
}

#[tokio::test]
async fn a_handler_longer_than_the_visibility_timeout_is_extended_and_not_redelivered() {
    let config = QueueConfig { visibility_timeout: Duration::from_secs(3), ..QueueConfig::default() };
    let ensemble = ensemble(config).await;
    let (pod_a, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let (pod_b, _) = sidecar(&ensemble, "pod-b", Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger");
    let handler = ledger_handler(dir.path(), &ledger_path, "sleep 7");
    enqueue_numbers(&client, 2).await;

    let args = ["work", "jobs", "--concurrency", "2", "--max-items", "2", "--", &handler];
    let mut first = paddock(&pod_a, &args).spawn().unwrap();
    eventually(Duration::from_secs(60), "both items in flight", || async {
        client.queue_stats("jobs").await.is_ok_and(|s| s["inFlight"] == 2)
    })
    .await;
    // A second pod takes whatever the first gives back: nothing, if the extends work.
    let mut second = paddock(&pod_b, &["work", "jobs", "--", &handler]).spawn().unwrap();
    assert_eq!(exit_code(&mut first, Duration::from_secs(90)).await, 0, "two items handled");
    eventually(Duration::from_secs(30), "the queue drains", || drained(&client)).await;
    signal(second.id().unwrap(), libc::SIGTERM);
    exit_code(&mut second, Duration::from_secs(20)).await;

    let runs = ledger(&ledger_path);
    assert_eq!(runs.len(), 2, "each item ran once though each took over two visibility timeouts: {runs:?}");
    assert!(runs.iter().all(|(_, attempt)| *attempt == 1), "never redelivered: {runs:?}");
    assert!(client.metric("paddock_queue_extended_total").await.unwrap() >= 8.0, "extended while running");
}

#[tokio::test]
async fn sigterm_mid_run_finishes_what_runs_and_loses_nothing() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger_path = dir.path().join("ledger");
    let handler = ledger_handler(dir.path(), &ledger_path, "sleep 0.3");
    enqueue_numbers(&client, 120).await;

    let mut worker = paddock(&pod, &["work", "jobs", "--concurrency", "4", "--", &handler]).spawn().unwrap();
    eventually(Duration::from_secs(60), "some items finished", || async { ledger(&ledger_path).len() >= 20 }).await;
    signal(worker.id().unwrap(), libc::SIGTERM);
    assert_eq!(exit_code(&mut worker, Duration::from_secs(20)).await, 0);
    let done_at_stop = ledger(&ledger_path).len();
    assert!(done_at_stop < 120, "stopped mid-run ({done_at_stop} done)");
    let stats = client.queue_stats("jobs").await.unwrap();
    assert_eq!(stats["inFlight"], 0, "nothing left claimed after the worker stopped: {stats}");
    assert_eq!(stats["depth"].as_u64().unwrap() as usize, 120 - done_at_stop, "the rest waits: {stats}");

    let (code, _, stderr) =
        run(&pod, &["work", "jobs", "--max-items", &(120 - done_at_stop).to_string(), "--", &handler]).await;
    assert_eq!(code, 0, "{stderr}");
    let mut payloads: Vec<String> = ledger(&ledger_path).into_iter().map(|(p, _)| p).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 120, "every item ran");
    assert_eq!(ledger(&ledger_path).len(), 120, "and none twice");
}

#[tokio::test]
async fn a_command_whose_claim_is_lost_is_stopped() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (mut pod, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let terminated = dir.path().join("terminated");
    let handler = script(
        dir.path(),
        "stuck.sh",
        &format!("trap 'touch {}; exit 0' TERM\nwhile true; do sleep 0.1; done", terminated.display()),
    );
    enqueue_numbers(&client, 1).await;

    let mut worker =
        paddock(&pod, &["work", "jobs", "--extend-every", "300ms", "--grace", "2s", "--", &handler]).spawn().unwrap();
    eventually(Duration::from_secs(20), "the item is in flight", || async {
        client.queue_stats("jobs").await.is_ok_and(|s| s["inFlight"] == 1)
    })
    .await;
    // A restarted sidecar has a new session: the old claim went with the old one.
    pod.restart().await.unwrap();
    eventually(Duration::from_secs(20), "the command got SIGTERM", || async { terminated.exists() }).await;
    signal(worker.id().unwrap(), libc::SIGTERM);
    assert_eq!(exit_code(&mut worker, Duration::from_secs(20)).await, 0);
    let err = stderr(&mut worker).await;
    assert!(err.contains("claim lost while the command ran"), "{err}");
}
