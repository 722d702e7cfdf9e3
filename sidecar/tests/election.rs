//! Leader election over a mutex, against a real 3-node ensemble: candidates wait
//! "forever", observers on another sidecar follow the leader without contending (long
//! polls and `lock.changed` events) and make no ZooKeeper reads while nothing changes.

mod common;

use std::time::{Duration, Instant};

use common::sidecar;
use paddock_recipes::LockConfig;
use paddock_testkit::{Ensemble, PodClient, init_tracing, provision};
use serde_json::{Value, json};

const NAMESPACE: &str = "team-a";

async fn holders(client: &PodClient, query: &str) -> Value {
    let response = client.http().get(client.url(&format!("/lock/leader/holders?{query}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Campaigns in the background: the grant's token once this candidate leads.
fn campaign(client: &PodClient, owner: &str) -> tokio::task::JoinHandle<i64> {
    let (client, owner) = (client.clone(), owner.to_owned());
    tokio::spawn(async move {
        let body = json!({ "name": "leader", "owner": owner, "wait": "forever" });
        let response = client.http().post(client.url("/lock")).json(&body).timeout(Duration::from_secs(3600)).send();
        let grant: Value = response.await.unwrap().json().await.unwrap();
        grant["token"].as_i64().unwrap_or_else(|| panic!("a grant: {grant}"))
    })
}

#[tokio::test]
async fn observers_follow_the_leader_and_see_a_new_one_with_a_larger_token_when_it_dies() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::lock(&admin, NAMESPACE, "leader", LockConfig::default()).await.unwrap();
    let session = Duration::from_secs(4);
    let mut replicas = Vec::new();
    let mut campaigns = Vec::new();
    for n in 0..3 {
        let (process, client) = sidecar(&ensemble, &format!("replica-{n}"), NAMESPACE, session).await;
        campaigns.push(campaign(&client, "candidate"));
        replicas.push(process);
    }
    let (_observer, observer) = sidecar(&ensemble, "observer", NAMESPACE, session).await;
    let mut events = observer.events_at("/events?watch=leader").await.unwrap();

    let mut seen = holders(&observer, "").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen["waiters"] != 2 {
        assert!(Instant::now() < deadline, "three candidates in line: {seen}");
        let version = seen["version"].as_i64().unwrap();
        seen = holders(&observer, &format!("after={version}&wait=5s")).await;
    }
    let leader = seen["leader"]["pod"].as_str().unwrap().to_owned();
    let token = seen["leader"]["token"].as_i64().unwrap();
    let index: usize = leader.trim_start_matches("replica-").parse().unwrap();
    let granted = tokio::time::timeout(Duration::from_secs(5), &mut campaigns[index]).await.expect("granted").unwrap();
    assert_eq!(granted, token, "{leader} was granted the lock it is seen to hold");

    // Nothing changes: a long poll waits it out and costs ZooKeeper nothing.
    let reads = observer.metric("paddock_lock_observer_reads_total").await.unwrap();
    assert!(reads > 0.0, "the observer read the lock to see it");
    let version = seen["version"].as_i64().unwrap();
    let started = Instant::now();
    let same = holders(&observer, &format!("after={version}&wait=2s")).await;
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited");
    assert_eq!(same["version"], version, "unchanged");
    assert_eq!(observer.metric("paddock_lock_observer_reads_total").await.unwrap(), reads, "no reads while waiting");

    // The leader's pod dies: the observers see the next one within the session timeout.
    let killed = Instant::now();
    replicas[index].process.kill();
    let mut next = same;
    while next["leader"]["pod"] == leader.as_str() || next["leader"].is_null() {
        let version = next["version"].as_i64().unwrap();
        next = holders(&observer, &format!("after={version}&wait=10s")).await;
        assert!(killed.elapsed() < session + Duration::from_secs(5), "a new leader in time: {next}");
    }
    println!("new leader seen {:?} after the old one's pod was killed", killed.elapsed());
    let new_token = next["leader"]["token"].as_i64().unwrap();
    assert!(new_token > token, "the new leader's token {new_token} is larger than {token}");
    let new_index: usize = next["leader"]["pod"].as_str().unwrap().trim_start_matches("replica-").parse().unwrap();
    let granted = tokio::time::timeout(Duration::from_secs(5), campaigns.remove(new_index)).await.expect("granted");
    assert_eq!(granted.unwrap(), new_token, "its campaign was granted that token");

    let mut leaders = Vec::new();
    while leaders.last() != Some(&new_token) {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("lock.changed in time");
        let (kind, data) = event.expect("the stream goes on");
        if let Some(leader) = data["leader"]["token"].as_i64().filter(|_| kind == "lock.changed") {
            leaders.push(leader);
        }
    }
    assert!(leaders.contains(&token), "lock.changed showed the first leader, then the next: {leaders:?}");
}
