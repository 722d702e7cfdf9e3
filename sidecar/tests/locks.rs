//! The lock API through the sidecar's HTTP interface, against a real 3-node ensemble.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use common::{assert_json_errors, eventually, oversized, sidecar};
use paddock_recipes::LockConfig;
use paddock_testkit::fenced::{FencedCounter, Write};
use paddock_testkit::{Acquire, Ensemble, PodClient, init_tracing, provision};
use serde_json::json;

const NS: &str = "team-a";
const SESSION: Duration = Duration::from_secs(10);

async fn setup(locks: &[(&str, u32)]) -> Ensemble {
    init_tracing();
    let ensemble = Ensemble::start().await.expect("ensemble starts");
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    for (name, max_holders) in locks {
        provision::lock(&admin, NS, name, LockConfig { max_holders: *max_holders, ..Default::default() })
            .await
            .unwrap();
    }
    ensemble
}

/// Acquires with retries on 503 (ZooKeeper unavailable for a moment) until granted.
async fn acquire_until_granted(pod: &PodClient, name: &str, owner: &str) -> i64 {
    for _ in 0..200 {
        match pod.acquire(name, owner, "30s").await {
            Ok(Acquire::Acquired { token, .. }) => return token,
            Ok(Acquire::Busy(_)) => {}
            Ok(Acquire::Failed { status: 503, .. }) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(Acquire::Failed { status, body }) => panic!("acquire failed: {status} {body}"),
        }
    }
    panic!("{owner} never got {name}");
}

async fn release_until_done(pod: &PodClient, name: &str, owner: &str) {
    for _ in 0..200 {
        match pod.release(name, owner).await {
            Ok((200, _)) => return,
            Ok((503, _)) | Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok((status, body)) => panic!("release failed: {status} {body}"),
        }
    }
    panic!("{owner} could not release {name}");
}

/// One guarded read-modify-write of the counter under the lock.
async fn increment(pod: &PodClient, counter: &FencedCounter, owner: &str, last_token: &mut i64) {
    let token = acquire_until_granted(pod, "counter", owner).await;
    assert!(token > *last_token, "{owner}: token {token} not above its previous {last_token}");
    *last_token = token;
    counter.enter();
    let value = counter.read();
    tokio::task::yield_now().await;
    assert_eq!(counter.write(token, value + 1), Write::Accepted, "{owner}: token {token} rejected as stale");
    counter.exit();
    release_until_done(pod, "counter", owner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_clients_on_two_sidecars_count_exactly_with_increasing_tokens() {
    let ensemble = setup(&[("counter", 1)]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let counter = Arc::new(FencedCounter::new());
    let mut workers = Vec::new();
    for i in 0..8 {
        let pod = if i % 2 == 0 { pod_a.clone() } else { pod_b.clone() };
        let counter = counter.clone();
        workers.push(tokio::spawn(async move {
            let owner = format!("worker-{i}");
            let mut last = 0;
            for _ in 0..250 {
                increment(&pod, &counter, &owner, &mut last).await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(counter.value(), 2000, "no lost update");
    assert_eq!(counter.overlaps(), 0, "never two holders");
    assert_eq!(counter.rejected(), 0, "tokens of successive holders strictly increase");
    assert_eq!(counter.accepted(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_in_arrival_order_and_each_release_wakes_one() {
    let ensemble = setup(&[("fifo", 1)]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let Acquire::Acquired { .. } = pod_a.acquire("fifo", "first", "0s").await.unwrap() else { panic!("free lock") };

    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..6 {
        let pod = if i % 2 == 0 { pod_b.clone() } else { pod_a.clone() };
        let order = order.clone();
        let owner = format!("waiter-{i}");
        waiters.push(tokio::spawn({
            let owner = owner.clone();
            async move {
                let Acquire::Acquired { token, .. } = pod.acquire("fifo", &owner, "60s").await.unwrap() else {
                    panic!("{owner} not granted")
                };
                order.lock().unwrap().push((owner.clone(), token));
                let (status, _) = pod.release("fifo", &owner).await.unwrap();
                assert_eq!(status, 200);
            }
        }));
        // Arrival order is the order in which the contenders are queued: wait for this one.
        eventually(Duration::from_secs(10), "waiter queued", || async {
            let (_, s) = pod_a.lock_status("fifo", "first").await.unwrap();
            s["waiters"] == i + 1
        })
        .await;
    }
    let wakeups_before = pod_a.metric("paddock_lock_wakeups_total").await.unwrap()
        + pod_b.metric("paddock_lock_wakeups_total").await.unwrap();
    assert_eq!(wakeups_before, 0.0, "nobody wakes while the holder holds");

    let (status, _) = pod_a.release("fifo", "first").await.unwrap();
    assert_eq!(status, 200);
    for w in waiters {
        w.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let owners: Vec<&str> = order.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(owners, ["waiter-0", "waiter-1", "waiter-2", "waiter-3", "waiter-4", "waiter-5"]);
    assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "tokens increase in hand-over order: {order:?}");
    let wakeups = pod_a.metric("paddock_lock_wakeups_total").await.unwrap()
        + pod_b.metric("paddock_lock_wakeups_total").await.unwrap();
    assert_eq!(wakeups, 6.0, "6 releases woke exactly 6 waiters (no herd)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_of_three_never_admits_four() {
    let ensemble = setup(&[("pool", 3)]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let inside = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for i in 0..8 {
        let pod = if i % 2 == 0 { pod_a.clone() } else { pod_b.clone() };
        let (inside, most) = (inside.clone(), most.clone());
        workers.push(tokio::spawn(async move {
            let owner = format!("w{i}");
            for _ in 0..15 {
                acquire_until_granted(&pod, "pool", &owner).await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Held long enough that three holders overlap also on a loaded machine.
                tokio::time::sleep(Duration::from_millis(60)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                release_until_done(&pod, "pool", &owner).await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 3, "three holders at once, never four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_and_writers_exclude() {
    let ensemble = setup(&[("rw", 1)]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let readers = Arc::new(AtomicU32::new(0));
    let writers = Arc::new(AtomicU32::new(0));
    let violations = Arc::new(AtomicU32::new(0));
    let most_readers = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for i in 0..6 {
        let pod = if i % 2 == 0 { pod_a.clone() } else { pod_b.clone() };
        let shared = i < 4;
        let (readers, writers, violations, most_readers) =
            (readers.clone(), writers.clone(), violations.clone(), most_readers.clone());
        workers.push(tokio::spawn(async move {
            let owner = format!("{}{i}", if shared { "reader" } else { "writer" });
            let mode = if shared { "shared" } else { "exclusive" };
            for _ in 0..15 {
                let body = json!({"name": "rw", "owner": owner, "wait": "30s", "mode": mode});
                let outcome = pod.acquire_with(body).await.unwrap();
                assert!(matches!(outcome, Acquire::Acquired { .. }), "{owner}: {outcome:?}");
                if shared {
                    let now = readers.fetch_add(1, Ordering::SeqCst) + 1;
                    most_readers.fetch_max(now, Ordering::SeqCst);
                    if writers.load(Ordering::SeqCst) > 0 {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                } else {
                    if writers.fetch_add(1, Ordering::SeqCst) > 0 || readers.load(Ordering::SeqCst) > 0 {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    writers.fetch_sub(1, Ordering::SeqCst);
                }
                release_until_done(&pod, "rw", &owner).await;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(violations.load(Ordering::SeqCst), 0, "a writer never overlaps anyone");
    assert!(most_readers.load(Ordering::SeqCst) >= 2, "readers do share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_zookeeper_leader_never_lets_two_hold() {
    let mut ensemble = setup(&[("counter", 1)]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let counter = Arc::new(FencedCounter::new());
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..4 {
        let pod = if i % 2 == 0 { pod_a.clone() } else { pod_b.clone() };
        let (counter, done, stop) = (counter.clone(), done.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let owner = format!("worker-{i}");
            let mut last = 0;
            while !stop.load(Ordering::SeqCst) {
                increment(&pod, &counter, &owner, &mut last).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    eventually(Duration::from_secs(30), "some work before the fault", || async { done.load(Ordering::SeqCst) >= 50 })
        .await;
    let leader = ensemble.leader().await.expect("a leader");
    ensemble.kill(leader);
    let at_kill = done.load(Ordering::SeqCst);
    ensemble.wait_for_leader(Duration::from_secs(30)).await.unwrap();
    eventually(Duration::from_secs(60), "service resumes after the election", || async {
        done.load(Ordering::SeqCst) >= at_kill + 100
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(counter.overlaps(), 0, "never two holders");
    assert_eq!(counter.rejected(), 0, "no stale token");
    assert_eq!(counter.value(), done.load(Ordering::SeqCst), "no lost update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sidecar_loses_its_lock_and_its_stale_token_is_rejected() {
    let ensemble = setup(&[("leader", 1)]).await;
    let (mut a, pod_a) = sidecar(&ensemble, "pod-a", NS, Duration::from_secs(2)).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let store = FencedCounter::new();

    let mut events = pod_a.events().await.unwrap();
    let Acquire::Acquired { token: stale, .. } = pod_a.acquire("leader", "app", "0s").await.unwrap() else {
        panic!("free lock")
    };
    assert_eq!(store.write(stale, 1), Write::Accepted);

    a.process.pause().unwrap(); // a hung pod: no pings, its session expires
    let Acquire::Acquired { token: fresh, .. } = pod_b.acquire("leader", "app", "60s").await.unwrap() else {
        panic!("pod-b should get the lock once pod-a's session expired")
    };
    assert!(fresh > stale);
    assert_eq!(store.write(fresh, 2), Write::Accepted);
    a.process.resume().unwrap();

    // pod-a tells its app: an event, and `lost` on GET.
    let lost = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (kind, data) = events.recv().await.expect("event stream open");
            if kind == "lock.lost" {
                return data;
            }
        }
    })
    .await
    .expect("a lock.lost event");
    assert_eq!(lost["name"], "leader");
    assert_eq!(lost["token"], stale);
    // The ensemble deletes the expired session's contender node; the notification of
    // that delete can be read (from the socket buffer filled while pod-a was stopped)
    // before the closed connection is, so `node-deleted` is as true a reason here.
    let reasons = ["session-expired", "connection-lost", "node-deleted"];
    assert!(reasons.contains(&lost["reason"].as_str().unwrap()), "{lost}");
    // `lost` is known locally, also before pod-a has a new session.
    let (_, status) = pod_a.lock_status("leader", "app").await.unwrap();
    assert_eq!(status["state"], "lost", "{status}");
    assert_eq!(status["token"], stale);
    a.wait_ready(Duration::from_secs(30)).await.unwrap();
    let (_, status) = pod_a.lock_status("leader", "app").await.unwrap();
    assert_eq!(status["state"], "lost", "{status}");
    assert_eq!(status["holders"][0]["holder"]["pod"], "pod-b", "{status}");

    // The stale holder's write is refused by the token-checking resource.
    assert_eq!(store.write(stale, 3), Write::Stale { highest: fresh });
    assert_eq!(store.value(), 2);
    // pod-a serves again with a new session, and never re-acquired silently.
    let (status, body) = pod_a.release("leader", "app").await.unwrap();
    assert_eq!((status, body["error"].as_str()), (409, Some("lock-lost")));
    let Acquire::Busy(_) = pod_a.acquire("leader", "app", "0s").await.unwrap() else { panic!("pod-b holds it") };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_reentrance_and_sigterm_release() {
    let ensemble = setup(&[("lease", 1)]).await;
    // A long session: only an explicit release can let pod-b in within its wait.
    let (mut a, pod_a) = sidecar(&ensemble, "pod-a", NS, Duration::from_secs(60)).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;

    // Re-acquiring returns the same token.
    let Acquire::Acquired { token, .. } = pod_a.acquire("lease", "app", "0s").await.unwrap() else { panic!() };
    let Acquire::Acquired { token: again, body } = pod_a.acquire("lease", "app", "0s").await.unwrap() else { panic!() };
    assert_eq!(again, token);
    assert_eq!(body["reentrant"], true);
    assert_eq!(pod_a.release("lease", "app").await.unwrap().0, 200);

    // A lease not renewed is released and reported lost.
    let mut events = pod_a.events().await.unwrap();
    let grant = pod_a.acquire_with(json!({"name": "lease", "owner": "app", "ttl": "500ms"})).await.unwrap();
    let Acquire::Acquired { token, .. } = grant else { panic!() };
    let renewed = pod_a.http().post(pod_a.url("/lock/lease/renew?owner=app&ttl=700ms")).send().await.unwrap();
    assert_eq!(renewed.status(), 200);
    let Acquire::Acquired { token: next, .. } = pod_b.acquire("lease", "other", "30s").await.unwrap() else {
        panic!("the expired lease frees the lock")
    };
    assert!(next > token);
    let (kind, data) = events.recv().await.unwrap();
    assert_eq!(kind, "lock.acquired");
    let (kind, data2) = events.recv().await.unwrap();
    assert_eq!((kind.as_str(), data2["reason"].as_str()), ("lock.lost", Some("ttl-elapsed")), "{data} {data2}");
    let (_, status) = pod_a.lock_status("lease", "app").await.unwrap();
    assert_eq!(status["state"], "lost");
    let renew = pod_a.http().post(pod_a.url("/lock/lease/renew?owner=app")).send().await.unwrap();
    assert_eq!(renew.status(), 409);
    assert_eq!(pod_b.release("lease", "other").await.unwrap().0, 200);

    // SIGTERM releases before exit: pod-b, waiting, gets the lock long before pod-a's
    // 60 s session could have expired.
    let Acquire::Acquired { .. } = pod_a.acquire("lease", "app", "0s").await.unwrap() else { panic!() };
    let waiter = tokio::spawn({
        let pod_b = pod_b.clone();
        async move { pod_b.acquire("lease", "other", "20s").await.unwrap() }
    });
    eventually(Duration::from_secs(10), "pod-b queued", || async {
        pod_a.lock_status("lease", "app").await.unwrap().1["waiters"] == 1
    })
    .await;
    let exit = a.process.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(exit.success(), "graceful exit: {exit:?}");
    assert!(matches!(waiter.await.unwrap(), Acquire::Acquired { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx_and_never_a_panic() {
    let ensemble = setup(&[("orders", 1), ("pool", 3)]).await;
    let (mut a, pod) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let http = pod.http();
    let post =
        |body: Vec<u8>, ct: &'static str| http.post(pod.url("/lock")).header("content-type", ct).body(body).send();
    let cases: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        ("malformed JSON", post(b"{\"name\":".to_vec(), "application/json").await.unwrap(), 400, "invalid-json"),
        ("not JSON", post(b"name=orders".to_vec(), "text/plain").await.unwrap(), 415, "invalid-json"),
        (
            "unknown field",
            post(br#"{"name":"orders","wiat":"5s"}"#.to_vec(), "application/json").await.unwrap(),
            422,
            "invalid-json",
        ),
        // Neither "name" nor "names" (several locks): which one to give is said.
        ("missing name", post(br#"{"wait":"5s"}"#.to_vec(), "application/json").await.unwrap(), 400, "bad-request"),
        (
            "bad name",
            post(br#"{"name":"../locks/x"}"#.to_vec(), "application/json").await.unwrap(),
            400,
            "invalid-name",
        ),
        (
            "unicode look-alike",
            post("{\"name\":\"ord\u{0435}rs\"}".as_bytes().to_vec(), "application/json").await.unwrap(),
            400,
            "invalid-name",
        ),
        ("NUL", post(br#"{"name":"a\u0000b"}"#.to_vec(), "application/json").await.unwrap(), 400, "invalid-name"),
        (
            "bad wait",
            post(br#"{"name":"orders","wait":"soon"}"#.to_vec(), "application/json").await.unwrap(),
            400,
            "invalid-duration",
        ),
        (
            "negative wait",
            post(br#"{"name":"orders","wait":"-1s"}"#.to_vec(), "application/json").await.unwrap(),
            400,
            "invalid-duration",
        ),
        (
            "huge wait",
            post(br#"{"name":"orders","wait":"100d"}"#.to_vec(), "application/json").await.unwrap(),
            400,
            "invalid-duration",
        ),
        (
            "bad ttl",
            post(br#"{"name":"orders","ttl":"1ms"}"#.to_vec(), "application/json").await.unwrap(),
            400,
            "invalid-duration",
        ),
        (
            "bad mode",
            post(br#"{"name":"orders","mode":"both"}"#.to_vec(), "application/json").await.unwrap(),
            422,
            "invalid-json",
        ),
        (
            "shared semaphore",
            post(br#"{"name":"pool","mode":"shared"}"#.to_vec(), "application/json").await.unwrap(),
            400,
            "bad-request",
        ),
        (
            "bad owner",
            post(br#"{"name":"orders","owner":"a b"}"#.to_vec(), "application/json").await.unwrap(),
            400,
            "bad-request",
        ),
        ("huge body", oversized(&pod.url("/lock")).await, 413, "payload-too-large"),
        (
            "no such lock",
            post(br#"{"name":"nope"}"#.to_vec(), "application/json").await.unwrap(),
            404,
            "lock-not-found",
        ),
        ("release not held", http.delete(pod.url("/lock/orders")).send().await.unwrap(), 404, "lock-not-held"),
        ("bad name in path", http.get(pod.url("/lock/UPPER")).send().await.unwrap(), 400, "invalid-name"),
        ("unknown query", http.get(pod.url("/lock/orders?ownr=x")).send().await.unwrap(), 400, "invalid-query"),
        ("renew not held", http.post(pod.url("/lock/orders/renew?ttl=5s")).send().await.unwrap(), 404, "lock-not-held"),
        (
            "renew bad ttl",
            http.post(pod.url("/lock/orders/renew?ttl=x")).send().await.unwrap(),
            400,
            "invalid-duration",
        ),
    ];
    assert_json_errors(cases).await;
    let (_, body) = pod.lock_status("nope", "x").await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("DistributedLock"), "{body}");
    assert!(body["message"].as_str().unwrap().contains(NS), "{body}");
    // Still alive and serving.
    assert!(!a.process.has_exited());
    assert!(matches!(pod.acquire("orders", "x", "0s").await.unwrap(), Acquire::Acquired { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_interprocess_mutex_and_the_sidecar_exclude_each_other() {
    use paddock_testkit::curator::{CuratorMutex, compile};
    let ensemble = setup(&[("shared-with-java", 1)]).await;
    let (_a, pod) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let classes = tempfile::tempdir().unwrap();
    compile(classes.path()).unwrap();
    let connect = ensemble.connect_string();
    let path = format!("/paddock/{NS}/locks/shared-with-java");
    let mut curator = tokio::task::spawn_blocking({
        let classes = classes.path().to_owned();
        move || CuratorMutex::start(&classes, &connect, &path).unwrap()
    })
    .await
    .unwrap();

    // Curator holds: the sidecar is refused and names a non-Paddock holder.
    let (mut curator, got) = tokio::task::spawn_blocking(move || {
        let got = curator.acquire(5000).unwrap();
        (curator, got)
    })
    .await
    .unwrap();
    assert!(got, "Curator acquires a free lock");
    let Acquire::Busy(body) = pod.acquire("shared-with-java", "app", "300ms").await.unwrap() else {
        panic!("the sidecar must not get a lock Curator holds")
    };
    assert!(body["holders"][0]["foreign"].is_string(), "{body}");

    // The sidecar waits in line behind Curator and gets the lock when Curator releases.
    let waiting = tokio::spawn({
        let pod = pod.clone();
        async move { pod.acquire("shared-with-java", "app", "30s").await.unwrap() }
    });
    eventually(Duration::from_secs(10), "sidecar queued", || async {
        pod.lock_status("shared-with-java", "app").await.unwrap().1["state"] == "waiting"
    })
    .await;
    let mut curator = tokio::task::spawn_blocking(move || {
        curator.release().unwrap();
        curator
    })
    .await
    .unwrap();
    assert!(matches!(waiting.await.unwrap(), Acquire::Acquired { .. }));

    // The sidecar holds: Curator times out, then gets it after the sidecar releases.
    let (mut curator, got) = tokio::task::spawn_blocking(move || {
        let got = curator.acquire(300).unwrap();
        (curator, got)
    })
    .await
    .unwrap();
    assert!(!got, "Curator must not get a lock the sidecar holds");
    assert_eq!(pod.release("shared-with-java", "app").await.unwrap().0, 200);
    let got = tokio::task::spawn_blocking(move || curator.acquire(5000).unwrap()).await.unwrap();
    assert!(got, "Curator acquires after the sidecar released");
}

/// Re-acquiring answers for the mode asked: a reader asking for exclusive is refused (no
/// upgrade in place), and nobody else's shared hold is mistaken for exclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_acquiring_respects_the_mode() {
    let ensemble = setup(&[("rw", 1)]).await;
    let (_a, pod) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let shared = pod.acquire_with(json!({"name": "rw", "owner": "app", "mode": "shared"})).await.unwrap();
    let Acquire::Acquired { token, .. } = shared else { panic!("shared grant: {shared:?}") };
    let other = pod.acquire_with(json!({"name": "rw", "owner": "reader-2", "mode": "shared"})).await.unwrap();
    assert!(matches!(other, Acquire::Acquired { .. }), "readers share: {other:?}");

    let upgrade = pod.acquire_with(json!({"name": "rw", "owner": "app", "mode": "exclusive"})).await.unwrap();
    match upgrade {
        Acquire::Failed { status: 409, body } => assert_eq!(body["error"], "lock-held-shared", "{body}"),
        other => panic!("a shared holder asking for exclusive was answered {other:?}"),
    }
    // Still held shared, same token; released, an exclusive ask is a fresh acquire.
    let again = pod.acquire_with(json!({"name": "rw", "owner": "app", "mode": "shared"})).await.unwrap();
    let Acquire::Acquired { token: same, body } = again else { panic!("{again:?}") };
    assert_eq!((same, body["reentrant"].as_bool(), body["mode"].as_str()), (token, Some(true), Some("shared")));
    assert_eq!(pod.release("rw", "app").await.unwrap().0, 200);
    assert_eq!(pod.release("rw", "reader-2").await.unwrap().0, 200);
    let exclusive = pod.acquire_with(json!({"name": "rw", "owner": "app", "mode": "exclusive"})).await.unwrap();
    let Acquire::Acquired { token: writer, body } = exclusive else { panic!("{exclusive:?}") };
    assert!(writer > token);
    assert_eq!((body["reentrant"].as_bool(), body["mode"].as_str()), (Some(false), Some("exclusive")));
}

/// A ZooKeeper server's restart (a rolling restart for a new certificate or version) moves
/// sessions to the other servers; with a quorum up all along, no lock request fails: one in
/// flight on the stopping server's connection, or sent while the session moves, waits for
/// the session to be back and is answered. Four owners on two sidecars contend for one
/// mutex (so the waiting, the watches, the grant and the release all run) while every
/// server is restarted in turn, twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_servers_fails_no_lock_request() {
    let mut ensemble = setup(&[("baton", 1)]).await;
    let (_a, pod_a) = sidecar(&ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let counter = Arc::new(FencedCounter::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..4 {
        let pod = if i % 2 == 0 { pod_a.clone() } else { pod_b.clone() };
        let (counter, stop) = (counter.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let owner = format!("worker-{i}");
            let mut rounds = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let token = match pod.acquire("baton", &owner, "60s").await.unwrap() {
                    Acquire::Acquired { token, .. } => token,
                    other => panic!("{owner}: no failed request, got {other:?}"),
                };
                counter.enter();
                let value = counter.read();
                let (code, status) = pod.lock_status("baton", &owner).await.unwrap();
                assert_eq!((code, &status["state"]), (200, &json!("held")), "{owner}: {status}");
                assert_eq!(status["token"], token, "{owner}: {status}");
                assert_eq!(
                    counter.write(token, value + 1),
                    Write::Accepted,
                    "{owner}: token {token} rejected as stale"
                );
                counter.exit();
                let (code, body) = pod.release("baton", &owner).await.unwrap();
                assert_eq!(code, 200, "{owner}: no failed request: {body}");
                rounds += 1;
            }
            rounds
        }));
    }
    for _ in 0..2 {
        for index in (0..3).rev() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            ensemble.restart(index, Duration::from_secs(60)).await.unwrap();
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for worker in workers {
        let rounds = worker.await.unwrap();
        assert!(rounds > 5, "{rounds} rounds during the restarts");
        total += u64::from(rounds);
    }
    assert_eq!(counter.overlaps(), 0, "never two holders");
    assert_eq!(counter.value(), total, "no lost update");
}
