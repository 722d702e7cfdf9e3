//! Several locks in one request (`"names"`), against a real 3-node ensemble: all or none,
//! no deadlock between sets, and every lock of a set as safe as a lock taken alone.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sidecar;
use paddock_recipes::LockConfig;
use paddock_testkit::{Ensemble, PodClient, init_tracing, provision};
use serde_json::{Value, json};

const NAMESPACE: &str = "team-a";
const LOCKS: [&str; 6] = ["l0", "l1", "l2", "l3", "l4", "l5"];

async fn ensemble_with_locks() -> Ensemble {
    init_tracing();
    let ensemble = Ensemble::start().await.expect("ensemble starts");
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    for name in LOCKS {
        provision::lock(&admin, NAMESPACE, name, LockConfig::default()).await.unwrap();
    }
    ensemble
}

async fn post_set(client: &PodClient, body: Value) -> (u16, Value) {
    let response = client.http().post(client.url("/lock")).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn delete_set(client: &PodClient, names: &[&str], owner: &str) -> (u16, Value) {
    let response = client
        .http()
        .delete(client.url("/lock"))
        .query(&[("names", names.join(",")), ("owner", owner.to_owned())])
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_set_is_acquired_whole_or_not_at_all_and_released_with_one_request() {
    let ensemble = ensemble_with_locks().await;
    let (_pod, client) = sidecar(&ensemble, "pod-a", NAMESPACE, Duration::from_secs(10)).await;

    let (status, body) = post_set(&client, json!({ "names": ["l2", "l0", "l1"], "owner": "w1" })).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["locks"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["l0", "l1", "l2"], "granted in the global (name) order");
    assert!(body["locks"].as_array().unwrap().iter().all(|g| g["token"].as_i64().unwrap() > 0), "a token per lock");

    // l2 is held, so {l3, l4, l2} cannot be had: it leaves l3 and l4 free.
    let (status, body) =
        post_set(&client, json!({ "names": ["l3", "l4", "l2"], "owner": "w2", "wait": "300ms" })).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "lock-busy");
    assert_eq!(body["name"], "l2", "names the busy lock: {body}");
    assert!(body["message"].as_str().unwrap().contains("none of the set is held"), "{body}");
    for name in ["l3", "l4"] {
        let (_, lock) = client.lock_status(name, "w2").await.unwrap();
        assert_eq!(lock["holders"], json!([]), "{name} was given back: {lock}");
    }

    let (status, body) = delete_set(&client, &["l0", "l1", "l2", "l5"], "w1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(body["errors"][0]["name"], "l5");
    assert_eq!(body["errors"][0]["error"], "lock-not-held");

    let (status, body) = post_set(&client, json!({ "names": ["l0"], "name": "l1" })).await;
    assert_eq!(status, 400, "name and names together: {body}");
}

/// Who holds each lock now, and the last token each lock granted.
#[derive(Default)]
struct Ledger {
    holding: HashMap<&'static str, String>,
    last_token: HashMap<&'static str, i64>,
    rounds: u64,
}

#[tokio::test]
async fn eight_clients_taking_random_sets_of_three_of_six_never_deadlock_or_overlap() {
    let ensemble = ensemble_with_locks().await;
    let (_a, client_a) = sidecar(&ensemble, "pod-a", NAMESPACE, Duration::from_secs(10)).await;
    let (_b, client_b) = sidecar(&ensemble, "pod-b", NAMESPACE, Duration::from_secs(10)).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let until = Instant::now() + Duration::from_secs(30);
    let mut clients = Vec::new();
    for n in 0..8u64 {
        let client = if n % 2 == 0 { client_a.clone() } else { client_b.clone() };
        clients.push(tokio::spawn(take_sets(client, format!("client-{n}"), n + 1, until, ledger.clone())));
    }
    let mut busy = 0;
    for client in clients {
        busy += client.await.unwrap();
    }
    let ledger = ledger.lock().unwrap();
    assert_eq!(busy, 0, "no set waited out its 20 s: a deadlock would");
    assert!(ledger.rounds > 100, "sets were taken throughout: {} rounds", ledger.rounds);
    println!("{} sets of 3 of 6 locks taken by 8 clients on 2 sidecars in 30 s", ledger.rounds);
}

/// Takes random sets until `until`; how often one came back busy.
async fn take_sets(client: PodClient, owner: String, seed: u64, until: Instant, ledger: Arc<Mutex<Ledger>>) -> u32 {
    let mut random = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut busy = 0;
    while Instant::now() < until {
        let mut set = HashSet::new();
        while set.len() < 3 {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            set.insert(LOCKS[(random % 6) as usize]);
        }
        let mut set: Vec<&'static str> = set.into_iter().collect();
        // Shuffled differently per request: the sidecar must order them itself.
        set.rotate_left((random % 3) as usize);
        let (status, body) = post_set(&client, json!({ "names": set, "owner": owner, "wait": "20s" })).await;
        if status == 409 {
            busy += 1;
            continue;
        }
        assert_eq!(status, 200, "{body}");
        record_grants(&ledger, &owner, &body);
        tokio::time::sleep(Duration::from_millis(random % 5)).await;
        {
            let mut ledger = ledger.lock().unwrap();
            for name in &set {
                ledger.holding.remove(name);
            }
        }
        let (status, body) = delete_set(&client, &set, &owner).await;
        assert_eq!((status, body["errors"].clone()), (200, json!([])), "{body}");
    }
    busy
}

fn record_grants(ledger: &Mutex<Ledger>, owner: &str, body: &Value) {
    let mut ledger = ledger.lock().unwrap();
    ledger.rounds += 1;
    for grant in body["locks"].as_array().unwrap() {
        let name = LOCKS.iter().find(|l| grant["name"] == **l).expect("one of the six");
        let token = grant["token"].as_i64().unwrap();
        if let Some(other) = ledger.holding.insert(name, owner.to_owned()) {
            panic!("{name} granted to {owner} while {other} held it");
        }
        let last = ledger.last_token.insert(name, token).unwrap_or(0);
        assert!(token > last, "{name}: token {token} after {last}");
    }
}
