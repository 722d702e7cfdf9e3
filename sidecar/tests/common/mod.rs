//! What the sidecar's tests share: a real ensemble and sidecar processes standing for pods.

#![allow(dead_code)]

use std::time::Duration;

use paddock_recipes::QueueConfig;
#[allow(unused_imports)] // not every test file waits
pub use paddock_testkit::eventually;
use paddock_testkit::process::Sidecar;
use paddock_testkit::{Ensemble, PodClient, SidecarOptions, init_tracing, provision};

pub const SIDECAR: &str = env!("CARGO_BIN_EXE_paddock-sidecar");

/// A real 3-node ensemble with `queues` provisioned in `namespace`.
pub async fn ensemble_with_queues(namespace: &str, queues: &[(&str, QueueConfig)]) -> Ensemble {
    init_tracing();
    let ensemble = Ensemble::start().await.expect("ensemble starts");
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    for (name, config) in queues {
        provision::queue(&admin, namespace, name, config.clone()).await.unwrap();
    }
    ensemble
}

/// A sidecar for `pod` in `namespace` with the given session timeout.
pub async fn sidecar(
    ensemble: &Ensemble,
    pod: &str,
    namespace: &str,
    session_timeout: Duration,
) -> (Sidecar, PodClient) {
    let options =
        SidecarOptions::new(SIDECAR, ensemble.connect_string(), pod, namespace).session_timeout(session_timeout);
    let sidecar = Sidecar::start(options).await.expect("sidecar starts");
    let client = PodClient::new(sidecar.url(""));
    (sidecar, client)
}

/// Each response has the expected status and a JSON body `{"error": code, "message": ..}`
/// whose message is long enough to tell a person what to do.
pub async fn assert_json_errors(cases: Vec<(&str, reqwest::Response, u16, &str)>) {
    for (what, response, status, code) in cases {
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: serde_json::Value = response.json().await.unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        assert_eq!(body["error"], code, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.len() > 20, "{what}: a message a person can act on: {body}");
    }
}

/// POSTs a 2 MiB JSON body on a connection of its own: the sidecar answers 413 before
/// reading it all and closes that connection, which a pooled client could otherwise pick
/// for the next request.
pub async fn oversized(url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 << 20])
        .send()
        .await
        .expect("a response to an oversized body")
}

/// Whether every thread of `pid` is in state T (stopped), from /proc: after a SIGSTOP,
/// before a test lets anything reach the stopped process.
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    })
}
