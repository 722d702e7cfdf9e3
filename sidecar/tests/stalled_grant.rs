//! A lock grant decided just before the sidecar is stopped (SIGSTOP: a starved node, a
//! long pause): when the sidecar runs again, the listing that made its contender first is
//! in, but it is older than half the session timeout. Stopped past its session, the
//! session is gone with the contender, another pod holds the lock, and the app must not
//! be told "acquired". Stopped for less, the contender still stands: proved again by a
//! read, the grant is answered.
//!
//! The fault proxy holds the deciding listing's reply back, so the stop falls after the
//! server answered it and before the sidecar read it. On waking, the sidecar's ZooKeeper
//! client reads that reply first (the grant is decided after the stop: the case under
//! test) or finds its connection timed out first (the listing fails: a plain 503). Which
//! comes first is fixed for the life of the client's task: its `select!` (async-select)
//! starts polling at a branch chosen by the address of its futures, the read before the
//! timer for about one address in three. So a round that misses restarts pod-a's
//! sidecar (a new process, new addresses) and the scenario is played again, until the
//! case under test has happened.

mod common;

use std::time::Duration;

use common::{SIDECAR, all_threads_stopped, eventually};
use paddock_recipes::{LockConfig, zk};
use paddock_testkit::fault_proxy::{Match, Outcome, op};
use paddock_testkit::process::Sidecar;
use paddock_testkit::{Acquire, Ensemble, FaultProxy, PodClient, SidecarOptions, init_tracing, provision};
use tokio::task::JoinHandle;

const NS: &str = "team-stall";
const LOCK: &str = "config";
/// Everyone's session but pod-a's: long enough never to expire here.
const SESSION: Duration = Duration::from_secs(20);
/// All 24 rounds miss the case under test about once in 10,000 runs.
const ROUNDS: usize = 24;
const STALE_METRIC: &str = "paddock_lock_grants_stale_total";

/// pod-a reaches ZooKeeper only through the proxy; pod-b and pod-c directly.
struct World {
    _ensemble: Ensemble,
    admin: zk::Client,
    proxy: FaultProxy,
    a: Sidecar,
    pod_a: PodClient,
    pod_b: PodClient,
    pod_c: PodClient,
    _others: Vec<Sidecar>,
}

async fn world(session_a: Duration) -> World {
    init_tracing();
    let ensemble = Ensemble::start_single().await.expect("ensemble starts");
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::lock(&admin, NS, LOCK, LockConfig::default()).await.unwrap();
    let proxy = FaultProxy::for_ensemble(&ensemble).await.unwrap();
    let options = SidecarOptions::new(SIDECAR, proxy.connect_string(), "pod-a", NS).session_timeout(session_a);
    let a = Sidecar::start(options).await.expect("sidecar starts");
    let pod_a = PodClient::new(a.url(""));
    let (b, pod_b) = common::sidecar(&ensemble, "pod-b", NS, SESSION).await;
    let (c, pod_c) = common::sidecar(&ensemble, "pod-c", NS, SESSION).await;
    World { _ensemble: ensemble, admin, proxy, a, pod_a, pod_b, pod_c, _others: vec![b, c] }
}

fn lock_path() -> String {
    format!("/paddock/{NS}/locks/{LOCK}")
}

async fn contenders(admin: &zk::Client) -> Vec<String> {
    admin.list_children(&lock_path()).await.expect("the lock's znode")
}

/// Listings of the lock's children pod-a has sent.
fn listings(proxy: &FaultProxy) -> u64 {
    proxy.forwarded(op::GET_CHILDREN) + proxy.forwarded(op::GET_CHILDREN2)
}

async fn grant(pod: &PodClient, owner: &str) -> i64 {
    match pod.acquire(LOCK, owner, "30s").await.unwrap() {
        Acquire::Acquired { token, .. } => token,
        other => panic!("{owner} should be granted {LOCK}: {other:?}"),
    }
}

/// pod-a waits behind pod-b, pod-b releases, and pod-a's sidecar is stopped once the
/// server has answered the listing that makes pod-a first, before the answer reaches it.
/// Returns pod-b's token and pod-a's acquire, which answers once pod-a runs again.
async fn stop_pod_a_on_its_deciding_listing(w: &mut World) -> (i64, JoinHandle<Acquire>) {
    let token_b = grant(&w.pod_b, "b").await;
    let listed = listings(&w.proxy);
    let pod_a = w.pod_a.clone();
    let waiting = tokio::spawn(async move { pod_a.acquire(LOCK, "a", "60s").await.unwrap() });
    // pod-a's contender is in and its first listing (pod-b ahead) sent: the next listing
    // is the one that decides.
    let (proxy, admin) = (&w.proxy, &w.admin);
    eventually(Duration::from_secs(20), "pod-a waits behind pod-b", || async move {
        listings(proxy) > listed && contenders(admin).await.len() == 2
    })
    .await;
    let path = lock_path();
    let rule = Match {
        opcodes: &[op::GET_CHILDREN, op::GET_CHILDREN2],
        body_contains: Some(&path),
        outcome: Outcome::Any,
        ..Default::default()
    };
    let mut held = w.proxy.hold_next_reply(rule);
    assert_eq!(w.pod_b.release(LOCK, "b").await.unwrap().0, 200);
    held.wait(Duration::from_secs(20)).await.expect("pod-a lists the lock once pod-b released");
    w.a.process.pause().unwrap();
    let pid = w.a.process.pid().expect("the sidecar runs");
    eventually(Duration::from_secs(5), "every thread of pod-a's sidecar is stopped", || async move {
        all_threads_stopped(pid)
    })
    .await;
    held.release();
    (token_b, waiting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_decided_before_the_sidecar_was_stopped_past_its_session_is_not_answered_acquired() {
    let mut w = world(Duration::from_secs(4)).await;
    for round in 1..=ROUNDS {
        if stopped_past_its_session(&mut w, round).await {
            return;
        }
    }
    panic!("in {ROUNDS} rounds the stop never fell between the grant's decision and its answer");
}

/// pod-a stopped on its deciding listing until its session expired and pod-c was granted
/// the lock. True when pod-a's grant was decided (and refused as stale); false when
/// pod-a's connection was found dead before the listing's reply.
async fn stopped_past_its_session(w: &mut World, round: usize) -> bool {
    let stale_before = w.pod_a.metric(STALE_METRIC).await.unwrap();
    let (token_b, waiting) = stop_pod_a_on_its_deciding_listing(w).await;
    let admin = &w.admin;
    eventually(Duration::from_secs(30), "pod-a's session expired, and its contender with it", || async move {
        contenders(admin).await.is_empty()
    })
    .await;
    let token_c = grant(&w.pod_c, "c").await;
    assert!(token_c > token_b);
    w.a.process.resume().unwrap();

    let answer = waiting.await.unwrap();
    println!("round {round}: pod-a was answered {answer:?} while pod-c holds token {token_c}");
    let decided = match answer {
        Acquire::Acquired { token, body } => {
            panic!("pod-a answered acquired (token {token}) while pod-c holds {LOCK} with token {token_c}: {body}")
        }
        Acquire::Failed { status: 503, body } => {
            assert_eq!(body["error"], "zookeeper-unavailable", "{body}");
            assert!(body["message"].as_str().unwrap().contains("retry"), "says what to do: {body}");
            let decided = w.pod_a.metric(STALE_METRIC).await.unwrap() > stale_before;
            if decided {
                let ago = body["decidedAgoMs"].as_u64().unwrap_or_default();
                assert!(ago >= 2000, "the answer says how long ago the grant was decided: {body}");
            }
            decided
        }
        other => panic!("unexpected answer to pod-a: {other:?}"),
    };
    assert_eq!(contenders(&w.admin).await.len(), 1, "pod-c's contender alone: pod-a left nothing behind");
    assert_eq!(w.pod_c.release(LOCK, "c").await.unwrap().0, 200);
    w.a.wait_ready(Duration::from_secs(30)).await.expect("pod-a serves again with a new session");
    if !decided {
        w.a.restart().await.expect("pod-a's sidecar restarts");
    }
    decided
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_decided_before_a_stop_within_the_session_is_proved_again_and_answered() {
    let mut w = world(Duration::from_secs(10)).await;
    for round in 1..=ROUNDS {
        if stopped_within_its_session(&mut w, round).await {
            return;
        }
    }
    panic!("in {ROUNDS} rounds the stop never fell between the grant's decision and its answer");
}

/// pod-a stopped on its deciding listing for 6 s: past half its session of 10 s (the
/// grant is stale when read), not past the session (its contender stands). True when
/// pod-a's grant was decided, proved again and answered; false when pod-a's connection
/// was found dead before the listing's reply.
async fn stopped_within_its_session(w: &mut World, round: usize) -> bool {
    let (token_b, waiting) = stop_pod_a_on_its_deciding_listing(w).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    w.a.process.resume().unwrap();
    let answer = waiting.await.unwrap();
    println!("round {round}: pod-a was answered {answer:?}");
    let decided = match answer {
        Acquire::Acquired { token, .. } => {
            assert!(token > token_b);
            let ours = contenders(&w.admin).await;
            assert_eq!(ours.len(), 1, "pod-a's contender alone: {ours:?}");
            let stat = w.admin.check_stat(&format!("{}/{}", lock_path(), ours[0])).await.unwrap().unwrap();
            assert_eq!(stat.czxid, token, "the grant is the contender that stands");
            assert_eq!(w.pod_a.metric(STALE_METRIC).await.unwrap(), 0.0, "nothing refused");
            assert_eq!(w.pod_a.release(LOCK, "a").await.unwrap().0, 200);
            true
        }
        Acquire::Failed { status: 503, body } => {
            assert_eq!(body["error"], "zookeeper-unavailable", "{body}");
            false
        }
        other => panic!("unexpected answer to pod-a: {other:?}"),
    };
    w.a.wait_ready(Duration::from_secs(30)).await.expect("pod-a serves again");
    eventually(Duration::from_secs(30), "pod-a's contender is gone", || async {
        contenders(&w.admin).await.is_empty()
    })
    .await;
    if !decided {
        w.a.restart().await.expect("pod-a's sidecar restarts");
    }
    decided
}
