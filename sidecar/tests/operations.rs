//! How the sidecar behaves for the people who run it: what it logs while ZooKeeper is
//! away, and what it answers to abuse of its HTTP port.

mod common;

use std::time::Duration;

use common::{SIDECAR, eventually};
use paddock_testkit::process::Sidecar;
use paddock_testkit::{Ensemble, SidecarOptions, init_tracing};

/// A kubelet probes `/readyz` every few seconds; while ZooKeeper is unreachable each probe
/// answers 503. That is expected, says nothing new, and must not fill the log with
/// ERROR lines: the change of readiness is logged once, each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_during_an_outage_log_the_change_once_and_no_error() {
    init_tracing();
    let mut ensemble = Ensemble::start_single().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sidecar.log");
    let mut options = SidecarOptions::new(SIDECAR, ensemble.connect_string(), "pod-a", "ops")
        .session_timeout(Duration::from_secs(30))
        .env("RUST_LOG", "info")
        .env("PADDOCK_LOG_FORMAT", "json");
    options.log_file = Some(log.clone());
    let sidecar = Sidecar::start(options).await.unwrap();
    let http = reqwest::Client::new();
    let probe = || async { http.get(sidecar.url("/readyz")).send().await.unwrap().status().as_u16() };

    ensemble.stop_all();
    eventually(Duration::from_secs(10), "readyz answers 503", || async { probe().await == 503 }).await;
    for _ in 0..20 {
        assert_eq!(probe().await, 503);
        assert_eq!(http.get(sidecar.url("/queue/jobs")).send().await.unwrap().status().as_u16(), 503);
    }
    ensemble.start_all(Duration::from_secs(60)).await.unwrap();
    eventually(Duration::from_secs(30), "readyz answers 200 again", || async { probe().await == 200 }).await;
    for _ in 0..5 {
        assert_eq!(probe().await, 200);
    }

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or_default().to_owned();
    let errors: Vec<String> = lines.iter().filter(|l| l["level"] == "ERROR").map(message).collect();
    assert!(errors.is_empty(), "{} ERROR lines for an outage the sidecar handles itself: {errors:?}", errors.len());
    let count = |prefix: &str| lines.iter().filter(|l| message(l).starts_with(prefix)).count();
    assert_eq!(count("not ready"), 1, "the change to not ready is logged once:\n{text}");
    assert_eq!(count("ready: "), 2, "ready is logged at start and once when back:\n{text}");
}

/// A lock or queue whose config znode holds something the sidecar cannot use is the
/// resource's problem, not a server error: 409 with a message that names the resource
/// to fix, for every request on it, and nothing else is affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_resource_answers_409_naming_the_fix() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = paddock_testkit::provision::admin(&ensemble.connect_string()).await.unwrap();
    let lock = paddock_testkit::provision::lock(&admin, "ops", "orders", Default::default()).await.unwrap();
    let queue = paddock_testkit::provision::queue(&admin, "ops", "jobs", Default::default()).await.unwrap();
    admin.set_data(&lock, br#"{"maxHolders":0}"#, None).await.unwrap();
    admin.set_data(&queue, br#"{"visibilityTimeout":"soon"}"#, None).await.unwrap();
    let (_sidecar, pod) = common::sidecar(&ensemble, "pod-a", "ops", Duration::from_secs(10)).await;

    let lock = pod.http().post(pod.url("/lock")).json(&serde_json::json!({"name": "orders"})).send().await.unwrap();
    let queue = pod.http().post(pod.url("/queue/jobs")).body("x").send().await.unwrap();
    common::assert_json_errors(vec![
        ("acquire on a bad lock config", lock, 409, "lock-config-invalid"),
        ("enqueue on a bad queue config", queue, 409, "queue-config-invalid"),
    ])
    .await;
    let again = pod.http().post(pod.url("/lock")).json(&serde_json::json!({"name": "orders"})).send().await.unwrap();
    let body: serde_json::Value = again.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("maxHolders") && message.contains("DistributedLock orders"), "{body}");
}

/// Errors written by the framework's layers are JSON too, and a body over the limit
/// names the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_the_layers_are_json_and_name_the_limit() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = paddock_testkit::provision::admin(&ensemble.connect_string()).await.unwrap();
    paddock_testkit::provision::queue(&admin, "ops", "jobs", Default::default()).await.unwrap();
    let (_sidecar, pod) = common::sidecar(&ensemble, "pod-a", "ops", Duration::from_secs(10)).await;

    // A raw 2 MB payload, on a connection of its own (the sidecar closes it after 413).
    let oversized = reqwest::Client::new().post(pod.url("/queue/jobs")).body(vec![b'x'; 2 << 20]).send().await.unwrap();
    let wrong_method = pod.http().put(pod.url("/lock")).send().await.unwrap();
    let no_route = pod.http().get(pod.url("/locks")).send().await.unwrap();
    let allow = wrong_method.headers().get("allow").cloned();
    common::assert_json_errors(vec![
        ("raw body over the limit", oversized, 413, "payload-too-large"),
        ("wrong method", wrong_method, 405, "method-not-allowed"),
        ("unknown route", no_route, 404, "no-such-endpoint"),
    ])
    .await;
    assert!(allow.is_some(), "405 keeps its Allow header");
    let again = reqwest::Client::new().post(pod.url("/queue/jobs")).body(vec![b'x'; 2 << 20]).send().await.unwrap();
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["limit"], 1_048_576, "{body}");
    assert!(body["message"].as_str().unwrap().contains("1048576 bytes"), "{body}");
    assert_eq!(pod.queue_stats("jobs").await.unwrap()["depth"], 0, "nothing was enqueued");
}

/// Hundreds of connections that never finish their request (600: within the listen
/// backlog of 1,024, so the test's own connects are not slowed by SYN retries; the issue's
/// 2,000 behave the same, only slower to drain): the sidecar serves one pod, so it
/// holds at most its connection limit of them at once, closes each when its header
/// deadline passes, and serves a real request once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_a_request_are_bounded_and_closed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let options = SidecarOptions::new(SIDECAR, ensemble.connect_string(), "pod-a", "ops")
        .env("PADDOCK_MAX_CONNECTIONS", "100")
        .env("PADDOCK_HEADER_READ_TIMEOUT", "1s");
    let sidecar = Sidecar::start(options).await.unwrap();
    let pid = sidecar.process.pid().unwrap();
    let sockets = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count()
    };
    let before = sockets();
    let mut slow = Vec::new();
    for _ in 0..600 {
        let mut stream = tokio::net::TcpStream::connect(sidecar.addr).await.unwrap();
        stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // and never the end
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = sockets().saturating_sub(before);
    assert!(held <= 100 + 2, "the sidecar holds {held} connections at once, over its limit of 100");

    // Past the header deadline, the sidecar closes those it holds (408 or a plain close),
    // and takes the next ones from the backlog.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut closed = 0;
    for stream in slow.iter_mut() {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 408") => closed += 1,
            _ => {}
        }
    }
    assert!(closed >= 100, "only {closed} connections were closed past their header deadline");
    let held = sockets().saturating_sub(before);
    assert!(held <= 100 + 2, "the sidecar holds {held} connections, over its limit of 100");
    drop(slow);
    eventually(Duration::from_secs(30), "a real request is served again", || async {
        reqwest::get(sidecar.url("/healthz")).await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    eventually(Duration::from_secs(30), "the sidecar holds no leftover connection", || async {
        sockets() <= before + 2
    })
    .await;
}

/// The probe port listens on all addresses (the kubelet and Prometheus reach it from
/// outside the pod), so it serves the probes and `/metrics` and nothing else: the lock and
/// queue API stays on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_port_serves_metrics_and_probes_and_never_the_api() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let port = paddock_testkit::ensemble::free_ports(1).unwrap()[0];
    let options = SidecarOptions::new(SIDECAR, ensemble.connect_string(), "pod-a", "ops")
        .env("PADDOCK_HEALTH_LISTEN", &format!("127.0.0.1:{port}"));
    let sidecar = Sidecar::start(options).await.unwrap();
    let http = reqwest::Client::new();
    let probe_url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    let metrics = http.get(probe_url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"),
        "{:?}",
        metrics.headers()
    );
    let text = metrics.text().await.unwrap();
    assert!(text.contains("paddock_lock_losses_total{reason=\"session-expired\"} 0"), "{text}");
    assert_eq!(
        text,
        http.get(sidecar.url("/metrics")).send().await.unwrap().text().await.unwrap(),
        "the same registry"
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http.get(probe_url(path)).send().await.unwrap().status(), 200, "{path}");
    }

    for (method, path) in [
        (reqwest::Method::POST, "/lock/orders"),
        (reqwest::Method::DELETE, "/lock/orders"),
        (reqwest::Method::POST, "/queue/jobs"),
        (reqwest::Method::GET, "/queue/jobs/next"),
        (reqwest::Method::GET, "/events"),
        (reqwest::Method::GET, "/openapi.json"),
    ] {
        let response = http.request(method.clone(), probe_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "no-such-endpoint", "{method} {path}: {body}");
        assert!(body["message"].as_str().unwrap().contains("PADDOCK_URL"), "{body}");
    }
}

/// The sidecar's threads do not grow with the node's cores: two workers unless told
/// (`PADDOCK_WORKER_THREADS`), and a single one serves a lock and a queue as well. The
/// start-up line says how many the runtime runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_runs_the_workers_it_is_told_and_one_serves_locks_and_queues() {
    use paddock_recipes::{LockConfig, QueueConfig};
    use paddock_testkit::{Acquire, PodClient, provision};
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "ops", "jobs", QueueConfig::default()).await.unwrap();
    provision::lock(&admin, "ops", "leader", LockConfig::default()).await.unwrap();
    for (setting, expected) in [(Some("1"), 1), (Some("3"), 3), (None, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sidecar.log");
        let mut options = SidecarOptions::new(SIDECAR, ensemble.connect_string(), "pod-a", "ops")
            .env("RUST_LOG", "info")
            .env("PADDOCK_LOG_FORMAT", "json");
        if let Some(setting) = setting {
            options = options.env("PADDOCK_WORKER_THREADS", setting);
        }
        options.log_file = Some(log.clone());
        let sidecar = Sidecar::start(options).await.unwrap();
        let pod = PodClient::new(sidecar.url(""));
        let Acquire::Acquired { .. } = pod.acquire("leader", "pod-a", "5s").await.unwrap() else { panic!("the lock") };
        assert_eq!(pod.enqueue("jobs", "work").await.unwrap().0, 201);
        let item = pod.next("jobs", "5s").await.unwrap().expect("the item");
        assert_eq!(pod.settle("jobs", &item.id, "ack", "").await.unwrap().0, 200);
        assert_eq!(pod.release("leader", "pod-a").await.unwrap().0, 200);
        // Unset: two, or one on a single core (never one per core of a bigger node).
        let cores = std::thread::available_parallelism().unwrap().get();
        let expected = if setting.is_none() { expected.min(cores) } else { expected };
        // As the runtime counts them, in the start-up line.
        let started = std::fs::read_to_string(&log).unwrap();
        let line = started.lines().find(|l| l.contains("paddock-sidecar serving")).expect("the start-up line");
        let fields: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(fields["fields"]["workers"], expected, "PADDOCK_WORKER_THREADS={setting:?}: {line}");
    }
}
