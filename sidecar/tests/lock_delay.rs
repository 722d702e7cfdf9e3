//! Lock-delay through the sidecar, against a real 3-node ensemble: after a holder vanished
//! without releasing, nobody is granted the lock until `lockDelay` after the acquirer's
//! sidecar learned of it; after a clean release, at once; a lock without a lock-delay
//! keeps nothing but its contenders.

mod common;

use std::time::Duration;

use common::{eventually, sidecar};
use paddock_recipes::{LockConfig, zk};
use paddock_testkit::{Acquire, Ensemble, PodClient, init_tracing, provision};
use tokio::time::Instant;

const NS: &str = "team-delay";
const DELAY: Duration = Duration::from_secs(3);
/// The paused holder's session: short, so the test does not wait long for it to expire.
const SHORT_SESSION: Duration = Duration::from_secs(2);
const SESSION: Duration = Duration::from_secs(10);
/// How much sooner than the admin's client the waiter's sidecar may have heard of a
/// deletion (both are told by their servers as the transaction commits).
const NOTICE_SKEW: Duration = Duration::from_millis(250);

struct World {
    ensemble: Ensemble,
    admin: zk::Client,
}

async fn world() -> World {
    init_tracing();
    let ensemble = Ensemble::start().await.expect("ensemble starts");
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let delayed = LockConfig { lock_delay: Some(DELAY), ..LockConfig::default() };
    provision::lock(&admin, NS, "delayed", delayed).await.unwrap();
    provision::lock(&admin, NS, "plain", LockConfig::default()).await.unwrap();
    World { ensemble, admin }
}

fn lock_path(name: &str) -> String {
    format!("/paddock/{NS}/locks/{name}")
}

async fn children(admin: &zk::Client, name: &str) -> Vec<String> {
    let mut children = admin.list_children(&lock_path(name)).await.unwrap();
    children.sort();
    children
}

fn records(children: &[String]) -> Vec<&String> {
    children.iter().filter(|c| c.starts_with("paddock-held-")).collect()
}

async fn grant(pod: &PodClient, name: &str, owner: &str, wait: &str) -> i64 {
    match pod.acquire(name, owner, wait).await.unwrap() {
        Acquire::Acquired { token, .. } => token,
        other => panic!("{owner} was not granted {name}: {other:?}"),
    }
}

/// Waits (from the admin's own session) until the holder's contender is deleted; when.
async fn contender_deleted(admin: &zk::Client, name: &str) -> Instant {
    let children = children(admin, name).await;
    // The holder: the contender of the lowest sequence (the last ten digits).
    let contender =
        children.iter().filter(|c| c.starts_with("_c_")).min_by_key(|c| &c[c.len() - 10..]).expect("a contender");
    let (_, _, watcher) = admin.get_and_watch_data(&format!("{}/{contender}", lock_path(name))).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(30), watcher.changed()).await.expect("the contender goes");
    assert_eq!(event.event_type, zk::EventType::NodeDeleted, "{event:?}");
    Instant::now()
}

/// A waiter on another sidecar when the holder's sidecar is paused past its session: the
/// next grant comes no sooner than the lock-delay after the old contender vanished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_session_delays_the_waiters_grant() {
    let w = world().await;
    let (mut a, pod_a) = sidecar(&w.ensemble, "pod-a", NS, SHORT_SESSION).await;
    let (_b, pod_b) = sidecar(&w.ensemble, "pod-b", NS, SESSION).await;
    let stale = grant(&pod_a, "delayed", "app", "0s").await;
    let held = children(&w.admin, "delayed").await;
    assert_eq!((held.len(), records(&held).len()), (2, 1), "the holder's contender and its record: {held:?}");

    let waiting = tokio::spawn({
        let pod = pod_b.clone();
        async move {
            let result = pod.acquire("delayed", "app", "30s").await.unwrap();
            (result, Instant::now())
        }
    });
    eventually(Duration::from_secs(10), "pod-b waits", || async {
        pod_b.lock_status("delayed", "app").await.unwrap().1["state"] == "waiting"
    })
    .await;
    let watching = tokio::spawn({
        let admin = w.admin.clone();
        async move { contender_deleted(&admin, "delayed").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the admin's watch is set
    a.process.pause().unwrap(); // a hung pod: no pings, its session expires
    let vanished = watching.await.unwrap();
    let (granted, at) = waiting.await.unwrap();
    a.process.resume().unwrap();

    let Acquire::Acquired { token, .. } = granted else { panic!("pod-b is granted: {granted:?}") };
    assert!(token > stale);
    let after = at - vanished;
    println!("granted {after:?} after the old contender vanished (lockDelay {DELAY:?})");
    assert!(after + NOTICE_SKEW >= DELAY, "granted only {after:?} after the holder vanished");
    assert!(after < DELAY + Duration::from_secs(3), "granted {after:?} after: the delay ends");
    assert_eq!(pod_b.metric("paddock_lock_delays_total").await.unwrap(), 1.0);
    let now = children(&w.admin, "delayed").await;
    assert_eq!(
        (now.len(), records(&now).len()),
        (2, 1),
        "pod-b's contender and record; the stale one deleted: {now:?}"
    );
    assert!(!now.contains(records(&held)[0]), "the waited-out record is gone: {now:?}");
}

/// Nobody waits when the holder vanishes: the next acquirer, coming later, still waits the
/// lock-delay (the state is in ZooKeeper), and a wait that ends first answers busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquirer_after_a_holder_vanished_unwatched_waits_the_delay_too() {
    let w = world().await;
    let (mut a, pod_a) = sidecar(&w.ensemble, "pod-a", NS, SHORT_SESSION).await;
    let (_b, pod_b) = sidecar(&w.ensemble, "pod-b", NS, SESSION).await;
    grant(&pod_a, "delayed", "app", "0s").await;
    let watching = tokio::spawn({
        let admin = w.admin.clone();
        async move { contender_deleted(&admin, "delayed").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.process.pause().unwrap();
    watching.await.unwrap();

    let Acquire::Busy(body) = pod_b.acquire("delayed", "app", "1s").await.unwrap() else {
        panic!("a wait shorter than the lock-delay ends busy")
    };
    assert_eq!(body["holders"].as_array().map(Vec::len), Some(0), "nobody holds: {body}");
    let asked = Instant::now();
    grant(&pod_b, "delayed", "app", "10s").await;
    let after = asked.elapsed();
    a.process.resume().unwrap();
    println!("a newcomer was granted {after:?} after it asked (lockDelay {DELAY:?})");
    assert!(after + NOTICE_SKEW >= DELAY, "granted after {after:?}");
    assert_eq!(pod_b.metric("paddock_lock_delays_total").await.unwrap(), 2.0, "both acquires were held back");
}

/// A clean release grants the waiter at once; a lease that elapsed is no release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_release_grants_at_once_and_an_elapsed_lease_does_not() {
    let w = world().await;
    let (_a, pod_a) = sidecar(&w.ensemble, "pod-a", NS, SESSION).await;
    let (_b, pod_b) = sidecar(&w.ensemble, "pod-b", NS, SESSION).await;
    grant(&pod_a, "delayed", "app", "0s").await;
    let waiting = tokio::spawn({
        let pod = pod_b.clone();
        async move {
            let result = pod.acquire("delayed", "app", "30s").await.unwrap();
            (result, Instant::now())
        }
    });
    eventually(Duration::from_secs(10), "pod-b waits", || async {
        pod_b.lock_status("delayed", "app").await.unwrap().1["state"] == "waiting"
    })
    .await;
    let released = Instant::now();
    assert_eq!(pod_a.release("delayed", "app").await.unwrap().0, 200);
    let (granted, at) = waiting.await.unwrap();
    assert!(matches!(granted, Acquire::Acquired { .. }), "{granted:?}");
    println!("granted {:?} after a clean release", at - released);
    assert!(at - released < Duration::from_secs(1), "at once, not after the lock-delay: {:?}", at - released);
    assert_eq!(pod_b.metric("paddock_lock_delays_total").await.unwrap(), 0.0);
    assert_eq!(pod_b.release("delayed", "app").await.unwrap().0, 200);
    assert!(children(&w.admin, "delayed").await.is_empty(), "a release leaves nothing behind");

    // A lease (ttl) not renewed in time: the holder may still be writing.
    let body = serde_json::json!({ "name": "delayed", "owner": "app", "wait": "0s", "ttl": "500ms" });
    assert!(matches!(pod_a.acquire_with(body).await.unwrap(), Acquire::Acquired { .. }));
    let asked = Instant::now();
    grant(&pod_b, "delayed", "app", "10s").await;
    assert!(asked.elapsed() + NOTICE_SKEW >= Duration::from_millis(500) + DELAY, "{:?}", asked.elapsed());
    assert_eq!(pod_b.metric("paddock_lock_delays_total").await.unwrap(), 1.0);
}

/// A lock without a lock-delay behaves as before: no record, and a paused holder's
/// waiter is granted as soon as the session expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_without_a_delay_keeps_only_its_contenders() {
    let w = world().await;
    let (mut a, pod_a) = sidecar(&w.ensemble, "pod-a", NS, SHORT_SESSION).await;
    let (_b, pod_b) = sidecar(&w.ensemble, "pod-b", NS, SESSION).await;
    grant(&pod_a, "plain", "app", "0s").await;
    let held = children(&w.admin, "plain").await;
    assert!(held.len() == 1 && held[0].starts_with("_c_"), "only the contender: {held:?}");
    assert_eq!(pod_a.release("plain", "app").await.unwrap().0, 200);
    assert!(children(&w.admin, "plain").await.is_empty());

    grant(&pod_a, "plain", "app", "0s").await;
    let watching = tokio::spawn({
        let admin = w.admin.clone();
        async move { contender_deleted(&admin, "plain").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.process.pause().unwrap();
    let vanished = watching.await.unwrap();
    grant(&pod_b, "plain", "app", "10s").await;
    a.process.resume().unwrap();
    assert!(vanished.elapsed() < Duration::from_secs(1), "no delay: {:?}", vanished.elapsed());
    assert_eq!(pod_b.metric("paddock_lock_delays_total").await.unwrap(), 0.0);
    assert_eq!(children(&w.admin, "plain").await.len(), 1, "pod-b's contender, no record");
}

/// Curator's InterProcessMutex on the same lock is not confused by held records: a Paddock
/// holder (with its record) excludes it, its release lets it in, and a stale record does
/// not block it (Curator knows nothing of lock-delay, so it does not wait either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_neither_mistakes_nor_waits_for_held_records() {
    use paddock_testkit::curator::{CuratorMutex, compile};
    let w = world().await;
    let (_a, pod) = sidecar(&w.ensemble, "pod-a", NS, SESSION).await;
    let classes = tempfile::tempdir().unwrap();
    compile(classes.path()).unwrap();
    let curator = tokio::task::spawn_blocking({
        let (classes, connect) = (classes.path().to_owned(), w.ensemble.connect_string());
        move || CuratorMutex::start(&classes, &connect, &lock_path("delayed")).unwrap()
    })
    .await
    .unwrap();
    let curator_acquires = |mut curator: CuratorMutex, millis: u64| {
        tokio::task::spawn_blocking(move || {
            let got = curator.acquire(millis).unwrap();
            (curator, got)
        })
    };

    grant(&pod, "delayed", "app", "0s").await;
    let (curator, got) = curator_acquires(curator, 300).await.unwrap();
    assert!(!got, "Curator must not get a lock the sidecar holds");
    assert_eq!(pod.release("delayed", "app").await.unwrap().0, 200);
    let (mut curator, got) = curator_acquires(curator, 5000).await.unwrap();
    assert!(got, "Curator acquires after the sidecar released");
    curator = tokio::task::spawn_blocking(move || {
        curator.release().unwrap();
        curator
    })
    .await
    .unwrap();

    // A lease that elapses leaves a stale record behind.
    let body = serde_json::json!({ "name": "delayed", "owner": "app", "wait": "0s", "ttl": "300ms" });
    assert!(matches!(pod.acquire_with(body).await.unwrap(), Acquire::Acquired { .. }));
    eventually(Duration::from_secs(10), "the lease elapsed", || async {
        pod.lock_status("delayed", "app").await.unwrap().1["state"] == "lost"
    })
    .await;
    let left = children(&w.admin, "delayed").await;
    assert_eq!(records(&left).len(), 1, "a stale record: {left:?}");
    let (_curator, got) = curator_acquires(curator, 5000).await.unwrap();
    assert!(got, "a stale record is no contender for Curator: {left:?}");
}
