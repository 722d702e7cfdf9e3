//! TLS to ZooKeeper (issue 18, first part), against a real 3-node ensemble that serves TLS
//! only (`secureClientPort`, client certificates required, the quorum over TLS): a sidecar
//! with the CA and a certificate works; without a CA, or with a CA that did not sign the
//! servers, it stays unready and says why; no server has a plain client port; bad TLS
//! settings stop the sidecar at start with a message naming the setting.

mod common;

use std::path::Path;
use std::time::Duration;

use common::SIDECAR;
use paddock_recipes::{QueueConfig, zk};
use paddock_testkit::process::Sidecar;
use paddock_testkit::{Acquire, Ensemble, EnsembleOptions, PodClient, SidecarOptions, TestCa, init_tracing, provision};
use serde_json::Value;

const NS: &str = "team-tls";

async fn tls_ensemble() -> Ensemble {
    init_tracing();
    let ensemble =
        Ensemble::start_with(EnsembleOptions { tls: true, ..Default::default() }).await.expect("TLS ensemble");
    let admin = ensemble.admin().await.expect("admin over TLS");
    provision::lock(&admin, NS, "leader", Default::default()).await.unwrap();
    provision::queue(&admin, NS, "jobs", QueueConfig::default()).await.unwrap();
    ensemble
}

fn options(ensemble: &Ensemble, pod: &str, env: Vec<(String, String)>) -> SidecarOptions {
    let mut options = SidecarOptions::new(SIDECAR, ensemble.connect_string(), pod, NS);
    options.env.extend(env);
    options
}

async fn readyz(sidecar: &Sidecar) -> Option<(u16, Value)> {
    let response = reqwest::get(sidecar.url("/readyz")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// Waits until `/readyz` answers 503 with a message containing `expected`, then checks it
/// stays 503 and the log says the same; returns the message.
async fn assert_unready_saying(mut sidecar: Sidecar, log: &Path, expected: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let message = loop {
        match readyz(&sidecar).await {
            Some((503, body)) => {
                let message = body["message"].as_str().unwrap_or_default().to_owned();
                if message.contains(expected) {
                    break message;
                }
                assert!(tokio::time::Instant::now() < deadline, "/readyz never said {expected:?}; last: {message}");
            }
            Some((status, body)) => panic!("/readyz answered {status}: {body}"),
            None => assert!(tokio::time::Instant::now() < deadline, "/readyz never answered"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(message.contains("cannot connect to ZooKeeper"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(readyz(&sidecar).await.map(|(s, _)| s), Some(503), "still not ready");
    assert!(!sidecar.process.has_exited(), "the sidecar keeps trying, it does not exit");
    let logged = std::fs::read_to_string(log).unwrap();
    assert!(logged.contains("ZooKeeper connect failed") && logged.contains(expected), "log: {logged}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_the_ca_and_a_certificate_takes_a_lock_and_moves_an_item() {
    let ensemble = tls_ensemble().await;
    let tls = ensemble.tls().unwrap();
    let cert = tls.issue_client("pod-a", "CN=team-tls,O=paddock").unwrap();
    let sidecar = Sidecar::start(options(&ensemble, "pod-a", cert.env(&tls.ca_path()))).await.expect("ready over TLS");
    let pod = PodClient::new(sidecar.url(""));

    match pod.acquire("leader", "pod-a", "5s").await.unwrap() {
        Acquire::Acquired { token, .. } => assert!(token > 0),
        other => panic!("lock over TLS: {other:?}"),
    }
    let (status, body) = pod.enqueue("jobs", "over tls").await.unwrap();
    assert_eq!(status, 201, "{body}");
    let item = pod.next("jobs", "5s").await.unwrap().expect("an item");
    assert_eq!(item.payload, b"over tls");
    let (status, body) = pod.settle("jobs", &item.id, "ack", "").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(pod.queue_stats("jobs").await.unwrap()["depth"], 0, "the acked item is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_ca_a_sidecar_stays_unready_and_says_why_and_no_port_is_plain() {
    let ensemble = tls_ensemble().await;
    let tls = ensemble.tls().unwrap();
    let logs = tempfile::tempdir().unwrap();

    // No TLS settings at all: the handshake-less client is cut off by every server.
    let log = logs.path().join("plain.log");
    let plain = Sidecar::spawn(options(&ensemble, "plain", vec![]).log_file(&log)).unwrap();
    let message = assert_unready_saying(plain, &log, "serves TLS only: set PADDOCK_ZK_TLS_CA").await;
    eprintln!("without a CA: {message}");

    // A CA that did not sign the servers (and a certificate the servers would accept).
    let other_ca = TestCa::new("someone-else").unwrap();
    let other_ca_path = logs.path().join("other-ca.pem");
    std::fs::write(&other_ca_path, other_ca.pem()).unwrap();
    let cert = tls.issue_client("pod-b", "CN=team-tls").unwrap();
    let log = logs.path().join("wrong-ca.log");
    let wrong = Sidecar::spawn(options(&ensemble, "wrong-ca", cert.env(&other_ca_path)).log_file(&log)).unwrap();
    let message = assert_unready_saying(wrong, &log, "is not signed by the CA of PADDOCK_ZK_TLS_CA").await;
    eprintln!("with another CA: {message}");

    // The right CA but no client certificate: the servers require one.
    let log = logs.path().join("no-cert.log");
    let ca_only = vec![("PADDOCK_ZK_TLS_CA".to_owned(), tls.ca_path().display().to_string())];
    let anonymous = Sidecar::spawn(options(&ensemble, "no-cert", ca_only).log_file(&log)).unwrap();
    let message =
        assert_unready_saying(anonymous, &log, "accept this client's certificate (PADDOCK_ZK_TLS_CERT)").await;
    eprintln!("without a client certificate: {message}");

    // No server listens in plain text.
    for index in 0..ensemble.len() {
        let addr = ensemble.address(index).to_string();
        let connect =
            zk::Client::connector().with_session_timeout(Duration::from_secs(2)).with_fail_eagerly().connect(&addr);
        let outcome = tokio::time::timeout(Duration::from_secs(10), connect).await;
        assert!(!matches!(outcome, Ok(Ok(_))), "a plain client connected to server {index} at {addr}");
    }
}

/// Runs the sidecar binary with `env` and returns what it wrote to stderr once it exited
/// (it must exit, with a failure, within 10 s).
fn run_to_exit(env: &[(&str, &Path)]) -> String {
    let mut command = std::process::Command::new(SIDECAR);
    command
        .env("PADDOCK_ZOOKEEPER", "127.0.0.1:1")
        .env("PADDOCK_LISTEN", "127.0.0.1:0")
        .env("POD_NAME", "bad")
        .env("POD_NAMESPACE", NS)
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the sidecar did not exit on {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "{env:?}: exits with a failure");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Environment settings naming files.
type Settings<'a> = Vec<(&'a str, &'a Path)>;

#[test]
fn bad_tls_settings_stop_the_sidecar_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca").unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_pem = write("ca.pem", &ca.pem());
    let good = ca.issue_client("CN=good", false).unwrap();
    let (cert, key) = (write("good.crt", &good.cert_pem), write("good.key", &good.key_pem));
    let expired = ca.issue_client("CN=old", true).unwrap();
    let (old_cert, old_key) = (write("old.crt", &expired.cert_pem), write("old.key", &expired.key_pem));
    let junk = write("junk.pem", "this is not PEM\n");
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(&str, Settings, &[&str])> = vec![
        ("CA missing", vec![("PADDOCK_ZK_TLS_CA", &missing)], &["PADDOCK_ZK_TLS_CA", "cannot read"]),
        ("CA not PEM", vec![("PADDOCK_ZK_TLS_CA", &junk)], &["PADDOCK_ZK_TLS_CA", "not PEM"]),
        (
            "certificate without key",
            vec![("PADDOCK_ZK_TLS_CA", &ca_pem), ("PADDOCK_ZK_TLS_CERT", &cert)],
            &["PADDOCK_ZK_TLS_CERT", "without its key", "set PADDOCK_ZK_TLS_KEY"],
        ),
        (
            "key without certificate",
            vec![("PADDOCK_ZK_TLS_CA", &ca_pem), ("PADDOCK_ZK_TLS_KEY", &key)],
            &["PADDOCK_ZK_TLS_KEY", "without its certificate"],
        ),
        (
            "certificate without a CA",
            vec![("PADDOCK_ZK_TLS_CERT", &cert), ("PADDOCK_ZK_TLS_KEY", &key)],
            &["PADDOCK_ZK_TLS_CA", "not set"],
        ),
        (
            "certificate not PEM",
            vec![("PADDOCK_ZK_TLS_CA", &ca_pem), ("PADDOCK_ZK_TLS_CERT", &junk), ("PADDOCK_ZK_TLS_KEY", &key)],
            &["PADDOCK_ZK_TLS_CERT", "not PEM"],
        ),
        (
            "key of another certificate",
            vec![("PADDOCK_ZK_TLS_CA", &ca_pem), ("PADDOCK_ZK_TLS_CERT", &cert), ("PADDOCK_ZK_TLS_KEY", &old_key)],
            &["PADDOCK_ZK_TLS_KEY", "not the key"],
        ),
        (
            "expired certificate",
            vec![("PADDOCK_ZK_TLS_CA", &ca_pem), ("PADDOCK_ZK_TLS_CERT", &old_cert), ("PADDOCK_ZK_TLS_KEY", &old_key)],
            &["PADDOCK_ZK_TLS_CERT", "expired", "issue a new certificate"],
        ),
    ];
    for (what, env, expected) in cases {
        let stderr = run_to_exit(&env);
        for needle in expected {
            assert!(stderr.contains(needle), "{what}: stderr lacks {needle:?}:\n{stderr}");
        }
    }
}
