//! `paddock enqueue` and `paddock status` as real processes against a real sidecar, and
//! what every subcommand says when the sidecar is not there.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use common::*;
use paddock_recipes::QueueConfig;
use serde_json::Value;

#[tokio::test]
async fn ten_thousand_lines_become_ten_thousand_items_and_a_keyed_rerun_stores_nothing_twice() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.txt");
    let mut lines = std::fs::File::create(&file).unwrap();
    for n in 0..10_000 {
        writeln!(lines, "line {n}").unwrap();
    }
    drop(lines);

    let path = file.display().to_string();
    let (code, out, stderr) = run(&pod, &["enqueue", "jobs", "--lines", &path]).await;
    assert_eq!(code, 0, "{stderr}");
    let ids: HashSet<&str> = out.lines().collect();
    assert_eq!(ids.len(), 10_000, "one id per line, all distinct");
    assert!(stderr.contains("10000 items enqueued to jobs in"), "the rate is printed: {stderr}");
    println!("{}", stderr.trim());
    assert_eq!(client.queue_stats("jobs").await.unwrap()["depth"], 10_000);
    let first = client.next("jobs", "0s").await.unwrap().expect("an item");
    assert_eq!(first.payload, b"line 0", "a line without its newline");

    let small = dir.path().join("small.txt");
    std::fs::write(&small, "a\nb\n\nc\n").unwrap();
    let small = small.display().to_string();
    for _ in 0..2 {
        let (code, out, stderr) =
            run(&pod, &["enqueue", "jobs", "--lines", "--idempotency-key", "run-1", &small]).await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(out.lines().count(), 3, "three non-empty lines, three ids: {out}");
    }
    assert_eq!(client.queue_stats("jobs").await.unwrap()["depth"], 10_003, "the keyed rerun stored nothing again");
}

#[tokio::test]
async fn one_item_from_stdin_keeps_its_bytes_priority_and_content_type() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let mut enqueue = paddock(&pod, &["enqueue", "jobs", "--priority", "7", "--content-type", "application/json"]);
    let mut child = enqueue.stdin(std::process::Stdio::piped()).spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"{\"job\": 42}\n").await.unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let id = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let item = client.next("jobs", "0s").await.unwrap().expect("the item");
    assert_eq!(item.id, id);
    assert_eq!(item.payload, b"{\"job\": 42}\n", "stdin as it was");
    let peek: Value = client.http().get(client.url("/queue/jobs/items")).send().await.unwrap().json().await.unwrap();
    assert!(peek["items"].as_array().is_some_and(Vec::is_empty), "the one item is in flight: {peek}");

    let (code, _, stderr) = run(&pod, &["enqueue", "no-such-queue", "/dev/null"]).await;
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("WorkQueue"), "says what to create: {stderr}");
}

/// `--group`: lines of one file go to one ordered group; the next of them is handed out
/// only once the one before is acked.
#[tokio::test]
async fn lines_enqueued_to_a_group_come_one_at_a_time_in_order() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "first\nsecond\nthird\n").unwrap();
    let path = file.path().to_str().unwrap();
    let (code, out, stderr) = run(&pod, &["enqueue", "jobs", path, "--lines", "--group", "customer 42"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out.lines().count(), 3, "{out}");
    for expected in ["first", "second", "third"] {
        let item = client.next("jobs", "0s").await.unwrap().expect("the group's head");
        assert_eq!(item.payload, expected.as_bytes());
        assert!(client.next("jobs", "0s").await.unwrap().is_none(), "one item of the group at a time");
        assert_eq!(client.settle("jobs", &item.id, "ack", "").await.unwrap().0, 200);
    }
}

#[tokio::test]
async fn status_shows_this_pods_holds_and_the_named_locks_and_queues() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(7)).await;
    let mut holder = paddock(
        &pod,
        &["lock", "orders", "--owner", "nightly", "--", "sh", "-c", "echo $PADDOCK_LOCK_TOKEN; sleep 30"],
    )
    .spawn()
    .unwrap();
    let token = first_line(&mut holder).await;
    client.enqueue("jobs", "one").await.unwrap();
    client.enqueue("jobs", "two").await.unwrap();
    let item = client.next("jobs", "0s").await.unwrap().unwrap();

    let (code, out, stderr) = run(&pod, &["status", "-o", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["session"]["timeoutMs"], 7000, "{status}");
    assert_eq!(status["locks"][0]["name"], "orders");
    assert_eq!(status["locks"][0]["owner"], "nightly");
    assert_eq!(status["locks"][0]["state"], "held");
    assert_eq!(status["locks"][0]["token"].to_string(), token);
    assert_eq!(status["inFlight"][0]["id"], item.id.as_str());

    let (code, table, _) = run(&pod, &["status"]).await;
    assert_eq!(code, 0);
    assert!(table.contains("ZooKeeper session connected (timeout 7000 ms)"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("orders") && l.contains("nightly") && l.contains(&token)), "{table}");
    assert!(table.lines().any(|l| l.starts_with("jobs") && l.contains(&item.id)), "{table}");

    let (code, table, stderr) = run(&pod, &["status", "orders", "jobs"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(table.lines().any(|l| l.starts_with("orders") && l.contains("pod-a/nightly")), "{table}");
    let jobs: Vec<&str> =
        table.lines().find(|l| l.starts_with("jobs")).expect("a queue row").split_whitespace().collect();
    assert_eq!(jobs, ["jobs", "2", "1", "1", "0", "0"], "depth, ready, in flight, delayed, dead: {table}");

    let (code, _, stderr) = run(&pod, &["status", "nothing-here"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("no DistributedLock or WorkQueue named nothing-here"), "{stderr}");
}

#[tokio::test]
async fn a_sidecar_that_is_not_there_is_named_with_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    for args in [
        vec!["status"],
        vec!["enqueue", "jobs", "/dev/null"],
        vec!["work", "jobs", "--", "true"],
        vec!["lock", "orders", "--", "touch", marker.to_str().unwrap()],
    ] {
        let output = tokio::process::Command::new(PADDOCK)
            .args(&args)
            .env("PADDOCK_URL", "http://127.0.0.1:9")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(69), "{args:?}: {stderr}");
        assert!(stderr.contains("not reachable at http://127.0.0.1:9"), "{args:?}: {stderr}");
        assert!(stderr.contains("PADDOCK_URL"), "{args:?}: says what to set: {stderr}");
    }
    assert!(!marker.exists(), "no command runs without its lock");
}

#[tokio::test]
async fn help_has_examples_and_shells_get_completions() {
    let help = tokio::process::Command::new(PADDOCK).arg("--help").output().await.unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("paddock lock nightly-report --wait 30s --ttl 60s -- ./report.sh"), "{help}");
    assert!(help.contains("76 the lock was lost"), "exit codes are listed: {help}");
    let bash = tokio::process::Command::new(PADDOCK).args(["completion", "bash"]).output().await.unwrap();
    let bash = String::from_utf8_lossy(&bash.stdout);
    assert!(bash.contains("complete -F _paddock"), "a bash completion: {}", &bash[..bash.len().min(200)]);
    assert!(bash.contains("--idempotency-key"), "it knows the flags");
}
