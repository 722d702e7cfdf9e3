//! `paddock lock NAME -- CMD` as real processes against real sidecars and a real ensemble.

mod common;

use std::time::{Duration, Instant};

use common::*;
use paddock_recipes::QueueConfig;

#[tokio::test]
async fn the_command_runs_with_the_token_a_busy_lock_runs_nothing_and_exit_codes_pass_through() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod, _) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();

    let mut holder = paddock(&pod, &["lock", "orders", "--", "sh", "-c", "echo $PADDOCK_LOCK_TOKEN; sleep 3; exit 7"])
        .spawn()
        .unwrap();
    let token: i64 = first_line(&mut holder).await.parse().expect("the command printed the token");
    assert!(token > 0);

    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let (code, _, stderr) = run(&pod, &["lock", "orders", "--wait", "1s", "--", "sh", "-c", &touch]).await;
    assert_eq!(code, 75, "busy after --wait: {stderr}");
    assert!(!marker.exists(), "the command of a busy lock must not run");
    assert!(stderr.contains("held by pod-a/paddock-"), "the message names the holder: {stderr}");

    assert_eq!(exit_code(&mut holder, Duration::from_secs(20)).await, 7, "the command's exit code");
    let (code, out, _) = run(&pod, &["lock", "orders", "--", "sh", "-c", "echo $PADDOCK_LOCK_TOKEN; exit 3"]).await;
    assert_eq!(code, 3, "released when the command ended, and its code passes through");
    let next: i64 = out.trim().parse().unwrap();
    assert!(next > token, "the next holder's token {next} is larger than {token}");

    let (code, _, stderr) = run(&pod, &["lock", "no-such-lock", "--", "true"]).await;
    assert_eq!(code, 78, "not provisioned: {stderr}");
    assert!(stderr.contains("DistributedLock"), "says what to create: {stderr}");
}

/// The command's whole group writes a line per process when SIGTERM reaches it.
fn group_that_records_sigterm(dir: &std::path::Path) -> String {
    let parent = dir.join("parent-got-term");
    let child = dir.join("child-got-term");
    script(
        dir,
        "guarded.sh",
        &format!(
            "echo $PADDOCK_LOCK_TOKEN\n\
             (trap 'touch {child}; exit 0' TERM; while true; do sleep 0.1; done) &\n\
             trap 'touch {parent}; wait; exit 0' TERM\n\
             while true; do sleep 0.1; done",
            child = child.display(),
            parent = parent.display()
        ),
    )
}

async fn both_got_sigterm(dir: &std::path::Path) -> bool {
    dir.join("parent-got-term").exists() && dir.join("child-got-term").exists()
}

/// `holder` exits 76, its command's whole group got SIGTERM, within the session timeout
/// (and a margin) of `since`, when the fault began.
async fn assert_stopped_as_lost(
    holder: &mut tokio::process::Child,
    dir: &std::path::Path,
    since: Instant,
    session: Duration,
) {
    let code = exit_code(holder, session + Duration::from_secs(10)).await;
    let stopped_after = since.elapsed();
    assert_eq!(code, 76, "lost while running: {}", stderr(holder).await);
    assert!(both_got_sigterm(dir).await, "SIGTERM reached the command and its child");
    assert!(stopped_after < session + Duration::from_secs(5), "stopped {stopped_after:?} after the fault");
}

#[tokio::test]
async fn a_sidecar_killed_under_a_running_command_stops_its_whole_group_and_another_pod_takes_over() {
    let session = Duration::from_secs(4);
    let ensemble = ensemble(QueueConfig::default()).await;
    let (mut pod_a, _) = sidecar(&ensemble, "pod-a", session).await;
    let (pod_b, _) = sidecar(&ensemble, "pod-b", session).await;
    let dir = tempfile::tempdir().unwrap();
    let command = group_that_records_sigterm(dir.path());

    let mut holder = paddock(&pod_a, &["lock", "orders", "--grace", "5s", "--", &command]).spawn().unwrap();
    let token: i64 = first_line(&mut holder).await.parse().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Instant::now();
    pod_a.process.kill();
    assert_stopped_as_lost(&mut holder, dir.path(), killed, session).await;

    let (code, out, stderr) =
        run(&pod_b, &["lock", "orders", "--wait", "20s", "--", "sh", "-c", "echo $PADDOCK_LOCK_TOKEN"]).await;
    assert_eq!(code, 0, "{stderr}");
    let next: i64 = out.trim().parse().unwrap();
    assert!(next > token, "the new holder's token {next} is larger than {token}");
}

#[tokio::test]
async fn a_sidecar_paused_past_its_session_timeout_stops_the_command_and_another_pod_takes_over() {
    let session = Duration::from_secs(4);
    let ensemble = ensemble(QueueConfig::default()).await;
    let (mut pod_a, _) = sidecar(&ensemble, "pod-a", session).await;
    let (pod_b, _) = sidecar(&ensemble, "pod-b", session).await;
    let dir = tempfile::tempdir().unwrap();
    let command = group_that_records_sigterm(dir.path());

    let mut holder = paddock(&pod_a, &["lock", "orders", "--", &command]).spawn().unwrap();
    let token: i64 = first_line(&mut holder).await.parse().unwrap();
    let waiter = paddock(&pod_b, &["lock", "orders", "--wait", "30s", "--", "sh", "-c", "echo $PADDOCK_LOCK_TOKEN"]);
    let waiter = tokio::spawn(async move { waiter_output(waiter).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let paused = Instant::now();
    pod_a.process.pause().unwrap();
    assert_stopped_as_lost(&mut holder, dir.path(), paused, session).await;

    let (code, out) = waiter.await.unwrap();
    assert_eq!(code, 0, "pod-b acquired once pod-a's session expired");
    let next: i64 = out.trim().parse().unwrap();
    assert!(next > token, "the new holder's token {next} is larger than {token}");
    pod_a.process.resume().unwrap();
}

async fn waiter_output(mut command: tokio::process::Command) -> (i32, String) {
    let output = command.output().await.unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test]
async fn signals_reach_the_command_and_a_wait_given_up_leaves_no_holder_behind() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod, client) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let command = group_that_records_sigterm(dir.path());

    let mut holder = paddock(&pod, &["lock", "orders", "--", &command]).spawn().unwrap();
    first_line(&mut holder).await;
    let mut waiter = paddock(&pod, &["lock", "orders", "--wait", "60s", "--", "true"]).spawn().unwrap();
    eventually(Duration::from_secs(10), "the second run waits", || async {
        client.lock_status("orders", "pod-a").await.is_ok_and(|(_, s)| s["waiters"] == 1)
    })
    .await;
    signal(waiter.id().unwrap(), libc::SIGINT);
    assert_eq!(exit_code(&mut waiter, Duration::from_secs(10)).await, 130, "ended by SIGINT before acquiring");

    signal(holder.id().unwrap(), libc::SIGTERM);
    assert_eq!(exit_code(&mut holder, Duration::from_secs(10)).await, 0, "the command's own exit after its trap");
    assert!(both_got_sigterm(dir.path()).await, "SIGTERM to paddock reached the command's group");
    let (_, status) = client.lock_status("orders", "pod-a").await.unwrap();
    assert_eq!(status["holders"], serde_json::json!([]), "released after the command ended: {status}");
    assert_eq!(status["waiters"], 0, "the abandoned wait left nothing behind: {status}");
}

#[tokio::test]
async fn a_sidecar_restarted_under_a_running_command_stops_it_without_waiting_out_the_session() {
    let session = Duration::from_secs(20);
    let ensemble = ensemble(QueueConfig::default()).await;
    let (mut pod, _) = sidecar(&ensemble, "pod-a", session).await;
    let dir = tempfile::tempdir().unwrap();
    let command = group_that_records_sigterm(dir.path());

    let mut holder = paddock(&pod, &["lock", "orders", "--", &command]).spawn().unwrap();
    first_line(&mut holder).await;
    let restarted = Instant::now();
    pod.restart().await.unwrap();
    assert_eq!(exit_code(&mut holder, session).await, 76);
    assert!(
        restarted.elapsed() < session / 2,
        "learned from the new sidecar, not from silence: {:?}",
        restarted.elapsed()
    );
    let err = stderr(&mut holder).await;
    assert!(err.contains("no longer holds it"), "{err}");
    assert!(both_got_sigterm(dir.path()).await);
}

#[tokio::test]
async fn waiting_forever_makes_a_leader_loop_that_runs_each_candidate_in_turn() {
    let ensemble = ensemble(QueueConfig::default()).await;
    let (pod_a, _) = sidecar(&ensemble, "pod-a", Duration::from_secs(10)).await;
    let (pod_b, _) = sidecar(&ensemble, "pod-b", Duration::from_secs(10)).await;
    let lead = ["lock", "orders", "--wait", "forever", "--", "sh", "-c", "echo $PADDOCK_LOCK_TOKEN; sleep 2"];
    let mut first = paddock(&pod_a, &lead).spawn().unwrap();
    let first_token: i64 = first_line(&mut first).await.parse().unwrap();
    let mut second = paddock(&pod_b, &lead).spawn().unwrap();
    let second_token: i64 = first_line(&mut second).await.parse().unwrap();
    assert_eq!(exit_code(&mut first, Duration::from_secs(1)).await, 0, "the second leads once the first is done");
    assert!(second_token > first_token, "{second_token} after {first_token}");
    assert_eq!(exit_code(&mut second, Duration::from_secs(10)).await, 0);
    let (code, _, stderr) = run(&pod_a, &["lock", "orders", "--wait", "soon", "--", "true"]).await;
    assert_eq!(code, 2, "a bad --wait is a usage error: {stderr}");
    assert!(stderr.contains("forever"), "{stderr}");
}
