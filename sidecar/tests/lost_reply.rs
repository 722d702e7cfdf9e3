//! Lost replies (and one held back), deterministically: for each write path of the sidecar, the fault proxy
//! (`paddock_testkit::fault_proxy`) lets ZooKeeper apply the request, drops its reply and the
//! connection, and the sidecar reconnects through it within its session timeout. Each test
//! then reads ZooKeeper directly and checks that there is no orphan node, no double
//! effect, no lost item, and that the app got an answer it can act on.
//!
//! What the app is answered, by path (a retry is what the answer tells the app to do):
//!
//! | write path | answer after the lost reply |
//! |---|---|
//! | lock contender create | 200 grant (the contender is found again by its uuid) |
//! | withdrawal of a contender that timed out | 409 lock-busy (the retried delete finds it gone) |
//! | semaphore holder's touch (setData that wakes the next in line) | 200 grant (the touch is retried; on failure the contender is withdrawn) |
//! | release | 200 released (the retried delete finds its own delete) |
//! | release of a lock with a lock-delay (a multi: contender and held record) | 200 released, the next granted at once (the retried multi finds its own delete) |
//! | enqueue, batch enqueue | 201 with the ids (the multi's receipt is found, also when the items were consumed meanwhile; nothing to retry) |
//! | batch enqueue over several groups | 201 with the ids (one receipt, in the first place; the other groups' items found by the multi's transaction), null for a group's items that were all consumed meanwhile |
//! | claim | 200 with the item (the claim is found to be this session's) |
//! | ack, nack, delayed nack | 200 (the retried multi finds its own effect; a moved item's id by its receipt) |
//! | dead-letter (nack on the last attempt) | 200 dead-lettered (the retried multi finds the dead letter) |
//! | requeue of a dead letter | 200 with the new id (the letter gone, the move's receipt found) |

mod common;

use std::time::Duration;

use common::{SIDECAR, all_threads_stopped, eventually};
use paddock_recipes::queue::claim::{Read, read_candidate, try_claim};
use paddock_recipes::queue::group::GroupKey;
use paddock_recipes::queue::item::{Attempts, ItemId, Place, decode};
use paddock_recipes::queue::{self, ClaimOutcome};
use paddock_recipes::{Layout, LockConfig, Name, QueueConfig, zk};
use paddock_testkit::fault_proxy::{Fired, Match, Outcome, Then, op};
use paddock_testkit::process::Sidecar;
use paddock_testkit::{Acquire, Ensemble, FaultProxy, PodClient, SidecarOptions, init_tracing, provision};
use serde_json::{Value, json};

const NS: &str = "team-lost";
/// Long enough that the reconnect through the proxy always keeps the session.
const SESSION: Duration = Duration::from_secs(10);
const FIRED_WITHIN: Duration = Duration::from_secs(10);

/// One server (the proxy's subject is one connection), the proxy in front of it, a client
/// straight to the server for reading what is really there, and a sidecar whose only way
/// to ZooKeeper is the proxy.
struct World {
    _ensemble: Ensemble,
    proxy: FaultProxy,
    admin: zk::Client,
    sidecar: Sidecar,
    pod: PodClient,
}

async fn world(locks: &[(&str, u32)], queues: &[(&str, QueueConfig)]) -> World {
    world_with_session(locks, queues, SESSION).await
}

async fn world_with_session(locks: &[(&str, u32)], queues: &[(&str, QueueConfig)], session: Duration) -> World {
    init_tracing();
    let ensemble = Ensemble::start_single().await.expect("ensemble starts");
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    for (name, max_holders) in locks {
        provision::lock(&admin, NS, name, LockConfig { max_holders: *max_holders, ..Default::default() })
            .await
            .unwrap();
    }
    for (name, config) in queues {
        provision::queue(&admin, NS, name, config.clone()).await.unwrap();
    }
    let proxy = FaultProxy::for_ensemble(&ensemble).await.unwrap();
    let options = SidecarOptions::new(SIDECAR, proxy.connect_string(), "pod-a", NS).session_timeout(session);
    let sidecar = Sidecar::start(options).await.expect("sidecar starts");
    let pod = PodClient::new(sidecar.url(""));
    World { _ensemble: ensemble, proxy, admin, sidecar, pod }
}

fn queue_config(max_attempts: u32) -> QueueConfig {
    QueueConfig { max_attempts, visibility_timeout: Duration::from_secs(300), ..QueueConfig::default() }
}

fn lock_path(name: &str) -> String {
    format!("/paddock/{NS}/locks/{name}")
}

fn queue_path(name: &str) -> String {
    format!("/paddock/{NS}/queues/{name}")
}

async fn children(admin: &zk::Client, path: &str) -> Vec<String> {
    let mut children = admin.list_children(path).await.unwrap_or_else(|e| panic!("listing {path}: {e}"));
    children.sort();
    children
}

/// An item as it is in ZooKeeper.
#[derive(Debug)]
struct StoredItem {
    id: String,
    payload: String,
    carried: Option<Attempts>,
}

async fn items(admin: &zk::Client, queue: &str) -> Vec<StoredItem> {
    let base = format!("{}/items", queue_path(queue));
    let mut items = Vec::new();
    for bucket in children(admin, &base).await {
        let nodes = match admin.list_children(&format!("{base}/{bucket}")).await {
            Ok(nodes) => nodes,
            Err(zk::Error::NoNode) => continue, // an old empty bucket a view removed
            Err(e) => panic!("listing bucket {bucket}: {e}"),
        };
        // Items; an enqueue's receipt (`receipt-…`) lives beside them until it is deleted.
        for (node, seq) in nodes.iter().filter_map(|n| Some((n, n.strip_prefix("item-")?))) {
            let (data, _) = admin.get_data(&format!("{base}/{bucket}/{node}")).await.unwrap();
            let (envelope, payload) = decode(&data).expect("a Paddock item");
            items.push(StoredItem {
                id: format!("{bucket}.{seq}"),
                payload: String::from_utf8_lossy(payload).into_owned(),
                carried: envelope.carried,
            });
        }
    }
    items.sort_by(|a, b| a.id.cmp(&b.id));
    items
}

async fn attempts(admin: &zk::Client, queue: &str, id: &str) -> Option<Attempts> {
    match admin.get_data(&format!("{}/attempts/{id}", queue_path(queue))).await {
        Ok((data, _)) => Some(serde_json::from_slice(&data).expect("attempts JSON")),
        Err(zk::Error::NoNode) => None,
        Err(e) => panic!("reading attempts of {id}: {e}"),
    }
}

/// What is left of a queue besides its items: claims, histories, dead letters.
async fn leftovers(admin: &zk::Client, queue: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let base = queue_path(queue);
    (
        children(admin, &format!("{base}/claims")).await,
        children(admin, &format!("{base}/attempts")).await,
        children(admin, &format!("{base}/dead")).await,
    )
}

/// Waits until the sidecar is connected again (after a lost reply it reconnects).
async fn ready(pod: &PodClient) {
    eventually(Duration::from_secs(15), "the sidecar reconnected", || async {
        pod.http().get(pod.url("/readyz")).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// The lost reply happened, after the server applied the request.
async fn applied(lost: paddock_testkit::fault_proxy::LostReply) -> Fired {
    let fired = lost.wait(FIRED_WITHIN).await.expect("the proxy lost the reply");
    assert!(fired.applied, "the server applied the request whose reply was lost: {fired:?}");
    fired
}

/// A 503 that tells the app ZooKeeper could not say whether the write happened.
fn assert_outcome_unknown(status: u16, body: &Value) {
    assert_eq!((status, body["error"].as_str()), (503, Some("zookeeper-unavailable")), "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("outcome is unknown"), "{body}");
}

/// Prints what the app was answered (`--nocapture` shows the record of a run).
fn answered(path: &str, status: u16, body: &Value) {
    println!("{path}: the app was answered {status} {body}");
}

async fn post(pod: &PodClient, path: &str) -> (u16, Value) {
    let response = pod.http().post(pod.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Delivers one item and acks it; its payload.
async fn consume(pod: &PodClient, queue: &str) -> String {
    let item = pod.next(queue, "10s").await.unwrap().expect("an item to consume");
    assert_eq!(pod.settle(queue, &item.id, "ack", "").await.unwrap().0, 200);
    String::from_utf8(item.payload).unwrap()
}

/// Another consumer's claim and ack of an item, while this sidecar cannot reach ZooKeeper.
async fn taken_and_acked_elsewhere(w: &World, queue: &str, id: &str) {
    let paths = Layout::new("/paddock").unwrap().queue(&Name::new("ns", NS).unwrap(), &Name::new("q", queue).unwrap());
    let id = ItemId::parse(id).unwrap();
    let read = read_candidate(&w.admin, &paths, &id).await.unwrap();
    let Read::Found(candidate) = read else { panic!("the item to claim: {read:?}") };
    let claimed = try_claim(&w.admin, &paths, *candidate, "pod-b").await.unwrap();
    assert!(matches!(claimed, ClaimOutcome::Claimed(_)), "{claimed:?}");
    queue::ack(&w.admin, &paths, &id).await.unwrap();
}

async fn assert_drained(world: &World, queue: &str) {
    assert!(world.pod.next(queue, "0s").await.unwrap().is_none(), "nothing more is delivered");
    assert!(items(&world.admin, queue).await.is_empty());
    let (claims, histories, _) = leftovers(&world.admin, queue).await;
    assert!(claims.is_empty() && histories.is_empty(), "no orphan claim or history: {claims:?} {histories:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_contender_create_reply_lost_grants_the_one_contender_it_created() {
    let w = world(&[("orders", 1)], &[]).await;
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: op::CREATES,
        body_contains: Some("/locks/orders/_c_"),
        ..Default::default()
    });
    let acquired = w.pod.acquire("orders", "worker-1", "5s").await.unwrap();
    let fired = applied(lost).await;
    println!("lock contender create: the app was answered {acquired:?}");

    // Exactly one contender: the one whose create reply was lost, not a second one.
    let contenders = children(&w.admin, &lock_path("orders")).await;
    assert_eq!(contenders.len(), 1, "no orphan contender: {contenders:?}");
    let node = format!("{}/{}", lock_path("orders"), contenders[0]);
    let stat = w.admin.check_stat(&node).await.unwrap().unwrap();
    assert_eq!(stat.czxid, fired.zxid, "the contender is the lost create's node");
    assert_ne!(stat.ephemeral_owner, 0, "owned by the sidecar's session, which survived");
    let Acquire::Acquired { token, body } = acquired else { panic!("the app is granted the lock: {acquired:?}") };
    assert_eq!(token, stat.czxid, "the token is that contender's czxid: {body}");

    // It really holds: another owner is busy, and the holder releases cleanly.
    assert!(matches!(w.pod.acquire("orders", "worker-2", "0s").await.unwrap(), Acquire::Busy(_)));
    assert_eq!(w.pod.release("orders", "worker-1").await.unwrap().0, 200);
    assert!(children(&w.admin, &lock_path("orders")).await.is_empty());
    assert_eq!(w.proxy.forwarded(op::CREATE2), 2, "one create per acquire: the lost one was not retried blindly");
}

/// A semaphore contender's create is applied, its reply lost, and ZooKeeper stays out of
/// reach for 3 s (a leader election, say) but within the session timeout. The acquire
/// must not give up and leave its applied contender holding a permit for nobody: it finds
/// it once back and grants it. (The chaos suite found such an orphan holder in `pool`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_contender_create_reply_lost_then_an_outage_grants_and_leaves_no_orphan() {
    let w = world(&[("pool", 3)], &[]).await;
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: op::CREATES,
        body_contains: Some("/locks/pool/_c_"),
        then: Then::Refuse,
        ..Default::default()
    });
    let acquire = tokio::spawn({
        let pod = w.pod.clone();
        async move { pod.acquire("pool", "worker-1", "30s").await.unwrap() }
    });
    let fired = applied(lost).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    w.proxy.heal();
    let acquired = acquire.await.unwrap();
    println!("contender create lost, then 3 s away: the app was answered {acquired:?}");

    let contenders = children(&w.admin, &lock_path("pool")).await;
    assert_eq!(contenders.len(), 1, "one contender, no orphan: {contenders:?}");
    let stat = w.admin.check_stat(&format!("{}/{}", lock_path("pool"), contenders[0])).await.unwrap().unwrap();
    assert_eq!(stat.czxid, fired.zxid, "the lost create's node");
    let Acquire::Acquired { token, .. } = acquired else { panic!("the app is granted the permit: {acquired:?}") };
    assert_eq!(token, stat.czxid);
    assert_eq!(w.pod.release("pool", "worker-1").await.unwrap().0, 200);
    assert!(children(&w.admin, &lock_path("pool")).await.is_empty(), "released: nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawal_reply_lost_answers_busy_and_leaves_no_contender() {
    let w = world(&[("orders", 1)], &[]).await;
    assert!(matches!(w.pod.acquire("orders", "worker-1", "5s").await.unwrap(), Acquire::Acquired { .. }));
    let holder = children(&w.admin, &lock_path("orders")).await;
    // worker-2 tries once: its contender is created, does not hold, and is deleted again.
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::DELETE],
        body_contains: Some("/locks/orders/_c_"),
        ..Default::default()
    });
    let busy = w.pod.acquire("orders", "worker-2", "0s").await.unwrap();
    applied(lost).await;
    println!("withdrawal: the app was answered {busy:?}");

    assert!(matches!(busy, Acquire::Busy(_)), "the app is told the lock is busy: {busy:?}");
    assert_eq!(children(&w.admin, &lock_path("orders")).await, holder, "only the holder's contender is left");
    let (_, state) = w.pod.lock_status("orders", "worker-2").await.unwrap();
    assert_eq!(state["state"], "free", "worker-2 neither holds nor waits: {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_touch_reply_lost_grants_and_leaves_no_orphan_holder() {
    // A semaphore holder sets its own node's data once it holds, so that the waiter behind
    // it re-arms its watches on the holders. That setData is a write of its own.
    let w = world(&[("workers", 2)], &[]).await;
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::SET_DATA],
        body_contains: Some("/locks/workers/_c_"),
        ..Default::default()
    });
    let first = w.pod.acquire("workers", "worker-1", "5s").await.unwrap();
    applied(lost).await;
    println!("semaphore touch: the app was answered {first:?}");
    ready(&w.pod).await;

    let contenders = children(&w.admin, &lock_path("workers")).await;
    let granted = match &first {
        Acquire::Acquired { token, .. } => Some(*token),
        Acquire::Failed { status: 503, body } => {
            assert_outcome_unknown(503, body);
            // The app retries, as it is told to.
            match w.pod.acquire("workers", "worker-1", "5s").await.unwrap() {
                Acquire::Acquired { token, .. } => Some(token),
                other => panic!("the retried acquire: {other:?}"),
            }
        }
        other => panic!("the app's answer: {other:?}"),
    };
    let contenders_after = children(&w.admin, &lock_path("workers")).await;
    assert_eq!(
        contenders_after.len(),
        1,
        "one owner holds one place of the semaphore: no orphan holder (after the lost reply: {contenders:?})"
    );
    // The other place is free for another owner.
    assert!(matches!(w.pod.acquire("workers", "worker-2", "0s").await.unwrap(), Acquire::Acquired { .. }));
    assert!(granted.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_release_reply_lost_answers_released_and_frees_the_lock() {
    let w = world(&[("orders", 1)], &[]).await;
    let Acquire::Acquired { token, .. } = w.pod.acquire("orders", "worker-1", "5s").await.unwrap() else {
        panic!("granted")
    };
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::DELETE],
        body_contains: Some("/locks/orders/_c_"),
        ..Default::default()
    });
    let (status, body) = w.pod.release("orders", "worker-1").await.unwrap();
    applied(lost).await;
    answered("release", status, &body);

    assert_eq!((status, body["token"].as_i64()), (200, Some(token)), "released, not lost: {body}");
    assert!(children(&w.admin, &lock_path("orders")).await.is_empty(), "no contender left");
    let (_, state) = w.pod.lock_status("orders", "worker-1").await.unwrap();
    assert_eq!(state["state"], "free", "{state}");
    assert_eq!(w.pod.metric("paddock_lock_losses_total").await.unwrap(), 0.0, "our own delete is no loss");
    let Acquire::Acquired { token: next, .. } = w.pod.acquire("orders", "worker-2", "0s").await.unwrap() else {
        panic!("the lock is free for the next owner")
    };
    assert!(next > token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_release_reply_lost_answers_released_and_the_next_is_granted_at_once() {
    let w = world(&[], &[]).await;
    let config = LockConfig { lock_delay: Some(Duration::from_secs(5)), ..LockConfig::default() };
    provision::lock(&w.admin, NS, "delayed", config).await.unwrap();
    let Acquire::Acquired { token, .. } = w.pod.acquire("delayed", "worker-1", "5s").await.unwrap() else {
        panic!("granted")
    };
    assert_eq!(children(&w.admin, &lock_path("delayed")).await.len(), 2, "contender and held record");
    // The release is one multi: the contender's delete and its held record's.
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some("/locks/delayed/_c_"),
        ..Default::default()
    });
    let (status, body) = w.pod.release("delayed", "worker-1").await.unwrap();
    applied(lost).await;
    answered("release with a lock-delay", status, &body);

    assert_eq!((status, body["token"].as_i64()), (200, Some(token)), "released, not lost: {body}");
    assert!(children(&w.admin, &lock_path("delayed")).await.is_empty(), "no contender, no record left");
    assert_eq!(w.pod.metric("paddock_lock_losses_total").await.unwrap(), 0.0, "our own delete is no loss");
    let asked = std::time::Instant::now();
    let Acquire::Acquired { token: next, .. } = w.pod.acquire("delayed", "worker-2", "0s").await.unwrap() else {
        panic!("a clean release: the next owner is granted at once, no lock-delay")
    };
    assert!(next > token && asked.elapsed() < Duration::from_secs(1));
    assert_eq!(w.pod.metric("paddock_lock_delays_total").await.unwrap(), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_reply_lost_answers_created_once() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    // The item's multi (its receipt and create), not the bucket's container create; a
    // multi refused for want of its bucket passes and the rule stays armed.
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/item-"), ..Default::default() });
    let (status, body) = w.pod.enqueue("jobs", "one").await.unwrap();
    applied(lost).await;
    answered("enqueue", status, &body);
    ready(&w.pod).await;

    let stored = items(&w.admin, "jobs").await;
    assert_eq!(stored.iter().filter(|i| i.payload == "one").count(), 1, "the applied item is there once: {stored:?}");
    // The sidecar resolved the unknown outcome itself (the multi's receipt): one item
    // for one 201, and the app has nothing to retry.
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"].as_str(), Some(stored[0].id.as_str()), "{body}");
    assert_eq!(consume(&w.pod, "jobs").await, "one");
    assert_drained(&w, "jobs").await;
}

/// The enqueue is applied, its reply lost, and before the sidecar is back a consumer has
/// taken the item and acked it: a look for the item finds nothing. The sidecar must not
/// take that for "not applied" and store the item again (a fault run saw such a second
/// copy delivered after the first one's ack): one 201, with the id the item had, and
/// nothing left in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_reply_lost_and_the_item_acked_meanwhile_is_not_stored_again() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::CREATE2, op::MULTI], // the item's create, or the multi that holds it
        body_contains: Some("/item-"),
        then: Then::Refuse,
        ..Default::default()
    });
    let enqueue = tokio::spawn({
        let pod = w.pod.clone();
        async move { pod.enqueue("jobs", "one").await.unwrap() }
    });
    applied(lost).await;
    let stored = items(&w.admin, "jobs").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    taken_and_acked_elsewhere(&w, "jobs", &stored[0].id).await;
    w.proxy.heal();
    let (status, body) = enqueue.await.unwrap();
    answered("enqueue", status, &body);

    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"].as_str(), Some(stored[0].id.as_str()), "the id the item had: {body}");
    let left = items(&w.admin, "jobs").await;
    assert!(left.is_empty(), "acked once, not stored again: {left:?}");
    assert_drained(&w, "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_enqueue_reply_lost_answers_created_once_for_the_whole_batch() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/item-"), ..Default::default() });
    let batch: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let (status, body) = w.pod.enqueue_batch("jobs", &batch).await.unwrap();
    let fired = applied(lost).await;
    answered("batch enqueue", status, &body);
    let creates = fired.operations().iter().filter(|(_, path)| path.ends_with("/item-")).count();
    assert_eq!(creates, 3, "one multi of three item creates (and a receipt): {:?}", fired.operations());
    ready(&w.pod).await;

    let mut payloads: Vec<String> = items(&w.admin, "jobs").await.into_iter().map(|i| i.payload).collect();
    payloads.sort();
    assert_eq!(payloads, batch, "all of the batch, once (a multi is all or nothing)");
    // Resolved by the sidecar: 201 with the ids of the batch as stored, nothing to retry.
    assert_eq!(status, 201, "{body}");
    let mut stored_ids: Vec<String> = items(&w.admin, "jobs").await.into_iter().map(|i| i.id).collect();
    let mut answered_ids: Vec<String> =
        body["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect();
    stored_ids.sort();
    answered_ids.sort();
    assert_eq!(answered_ids, stored_ids, "{body}");
    let mut expected = batch.clone();
    let mut consumed = Vec::new();
    for _ in 0..expected.len() {
        consumed.push(consume(&w.pod, "jobs").await);
    }
    consumed.sort();
    expected.sort();
    assert_eq!(consumed, expected, "every accepted item is delivered");
    assert_drained(&w, "jobs").await;
}

/// The ids of a group's items as they are in ZooKeeper, in the group's order.
async fn group_ids(admin: &zk::Client, queue: &str, group: &str) -> Vec<String> {
    let key = GroupKey::new(group).unwrap();
    let nodes = children(admin, &format!("{}/groups/{}", queue_path(queue), key.encoded())).await;
    let mut ids: Vec<ItemId> = nodes.iter().filter_map(|node| Place::Group(key.clone()).id_of_node(node)).collect();
    ids.sort_by_key(ItemId::seq_number);
    ids.iter().map(ToString::to_string).collect()
}

/// A batch over three groups carries one receipt, in its first group, and its reply is
/// lost. While the sidecar cannot reach ZooKeeper, another consumer takes and acks the
/// head of the second group and the one item of the third. The answer: 201 with the ids
/// of the items still there and of the second group's consumed head (the group's other
/// items of the batch tell it: a group is consumed from its head), and null for the
/// third's, whose id nothing tells any more. The rest is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_batch_enqueue_reply_lost_answers_the_ids_its_groups_still_tell() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some("/groups/"),
        then: Then::Refuse,
        ..Default::default()
    });
    let batch = json!({ "items": [
        { "payload": "a1", "group": "a" }, { "payload": "b1", "group": "b" }, { "payload": "a2", "group": "a" },
        { "payload": "b2", "group": "b" }, { "payload": "c1", "group": "c" }, { "payload": "b3", "group": "b" },
    ] });
    let enqueue = tokio::spawn({
        let pod = w.pod.clone();
        async move {
            let response = pod.http().post(pod.url("/queue/jobs/batch")).json(&batch).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    });
    let fired = applied(lost).await;
    let receipts = fired.operations().iter().filter(|(_, path)| path.contains("/receipt-")).count();
    assert_eq!(receipts, 1, "one receipt, in the first group: {:?}", fired.operations());
    let (a, b, c) = (
        group_ids(&w.admin, "jobs", "a").await,
        group_ids(&w.admin, "jobs", "b").await,
        group_ids(&w.admin, "jobs", "c").await,
    );
    assert_eq!((a.len(), b.len(), c.len()), (2, 3, 1), "{a:?} {b:?} {c:?}");
    taken_and_acked_elsewhere(&w, "jobs", &b[0]).await;
    taken_and_acked_elsewhere(&w, "jobs", &c[0]).await;
    w.proxy.heal();
    let (status, body) = enqueue.await.unwrap();
    answered("grouped batch enqueue", status, &body);

    assert_eq!(status, 201, "{body}");
    assert_eq!(body["ids"], json!([a[0], b[0], a[1], b[1], null, b[2]]), "{body}");
    let mut consumed = Vec::new();
    for _ in 0..4 {
        consumed.push(consume(&w.pod, "jobs").await);
    }
    consumed.sort();
    assert_eq!(consumed, ["a1", "a2", "b2", "b3"], "every item not consumed elsewhere, once");
    assert!(group_ids(&w.admin, "jobs", "b").await.is_empty());
    assert_drained(&w, "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_reply_lost_delivers_the_item_it_claimed_once() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    assert_eq!(w.pod.enqueue("jobs", "job").await.unwrap().0, 201);
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/claims/"), ..Default::default() });
    let item = w.pod.next("jobs", "5s").await.unwrap();
    applied(lost).await;
    println!("claim: the app was answered {:?}", item.as_ref().map(|i| (&i.id, i.attempt)));

    let item = item.expect("the app gets the item whose claim was applied");
    assert_eq!((item.attempt, item.payload.as_slice()), (1, &b"job"[..]));
    let (claims, histories, _) = leftovers(&w.admin, "jobs").await;
    assert_eq!((claims, histories), (vec![item.id.clone()], vec![item.id.clone()]), "one claim, one history");
    assert_eq!(attempts(&w.admin, "jobs", &item.id).await.unwrap().attempt, 1, "the attempt is counted once");
    assert!(w.pod.next("jobs", "0s").await.unwrap().is_none(), "not delivered a second time");
    assert_eq!(w.pod.settle("jobs", &item.id, "ack", "").await.unwrap().0, 200, "and the app can ack it");
    assert_drained(&w, "jobs").await;
}

/// A claim applied just before the sidecar is stopped (SIGSTOP, a starved node) past its
/// session: when it runs again, the claim's reply is in, but the session is gone and with
/// it the claim; another consumer may have the item, and may have acked it. The proxy
/// holds the claim's reply back so that the stop falls exactly there. The app must not be
/// handed an item on a claim that no longer stands: whatever it gets must be held by the
/// sidecar's session now (the item claimed again, as its next attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_answered_after_the_sidecar_was_stopped_past_its_session_is_not_handed_out() {
    const SHORT: Duration = Duration::from_secs(4);
    let mut w = world_with_session(&[], &[("jobs", queue_config(5))], SHORT).await;
    assert_eq!(w.pod.enqueue("jobs", "job").await.unwrap().0, 201);
    let mut held =
        w.proxy.hold_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/claims/"), ..Default::default() });
    let pod = w.pod.clone();
    let next = tokio::spawn(async move {
        let response = pod.http().get(pod.url("/queue/next?queue=jobs&wait=30s")).send().await.unwrap();
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let item = (header("paddock-item-id"), header("paddock-attempt"));
        (status, item, response.text().await.unwrap())
    });
    let fired = held.wait(FIRED_WITHIN).await.expect("the claim reached ZooKeeper");
    assert!(fired.applied, "the claim was applied: {fired:?}");
    w.sidecar.process.pause().unwrap();
    // Every thread stopped before the reply goes on, so none can read it first.
    let pid = w.sidecar.process.pid().expect("the sidecar runs");
    eventually(
        Duration::from_secs(5),
        "every thread of the sidecar is stopped",
        || async move { all_threads_stopped(pid) },
    )
    .await;
    held.release();
    let claims = format!("{}/claims", queue_path("jobs"));
    eventually(Duration::from_secs(30), "the stopped sidecar's session expired, and its claim with it", || async {
        children(&w.admin, &claims).await.is_empty()
    })
    .await;
    w.sidecar.process.resume().unwrap();

    // On waking, the sidecar may read the claim's reply first (then it must not hand the
    // item out), or find its connection timed out first (then the claim's outcome is
    // unknown, the session gone: 503). Either way the app must not get the dead claim.
    let (status, (id, attempt), body) = next.await.unwrap();
    println!("the app was answered {status} {id:?} attempt {attempt:?} {body}");
    match status {
        204 => {}
        503 => assert!(body.contains("zookeeper-unavailable"), "{body}"),
        200 => {
            let id = id.expect("an item id");
            let claim = w.admin.check_stat(&format!("{claims}/{id}")).await.unwrap();
            assert!(claim.is_some(), "item {id} (attempt {attempt:?}) handed out on a claim that no longer stands");
            assert_ne!(attempt.as_deref(), Some("1"), "the attempt the expired claim used is counted");
        }
        other => panic!("unexpected answer {other}: {body}"),
    }
}

/// A world with three items enqueued to `jobs`, and their ids.
async fn three_jobs() -> (World, Vec<String>) {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    let mut ids = Vec::new();
    for payload in ["first", "second", "third"] {
        let (status, body) = w.pod.enqueue("jobs", payload).await.unwrap();
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    (w, ids)
}

/// A `max=N` answer holds exactly `ids`, in order, each on its first attempt.
fn assert_each_on_its_first_attempt(body: &Value, ids: &[String]) {
    let handed: Vec<(&str, u64)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i["attempt"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(&str, u64)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
    assert_eq!(handed, expected, "{body}");
}

/// `max=3` claims its three items in one multi. That multi never reaches ZooKeeper (its
/// connection drops first): nothing was claimed, which the sidecar finds out once it is
/// connected again, and it sends the claims again. The app gets all three, each on its
/// first attempt, and nothing is left claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claim_lost_before_it_was_sent_is_sent_again_and_hands_out_every_item_once() {
    let (w, ids) = three_jobs().await;
    let claim_of_second = format!("/claims/{}", ids[1]);
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some(&claim_of_second),
        outcome: Outcome::NotSent,
        ..Default::default()
    });
    let response = w.pod.http().get(w.pod.url("/queue/next?queue=jobs&max=3&wait=10s")).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    let fired = lost.wait(FIRED_WITHIN).await.expect("the batch's claim was dropped");
    assert!(!fired.applied);
    answered("next max=3", status, &body);
    assert_eq!(status, 200, "the claims are sent again: {body}");
    assert_each_on_its_first_attempt(&body, &ids);
    ready(&w.pod).await;
    for id in &ids {
        assert_eq!(w.pod.settle("jobs", id, "ack", "").await.unwrap().0, 200);
    }
    assert_drained(&w, "jobs").await;
}

/// `max=3`, the batch's one claim multi applied but its reply lost: the sidecar finds the
/// first claim is its session's (all or none, so all three are), and hands out all three,
/// once, on their first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claim_applied_with_its_reply_lost_hands_out_every_item_once() {
    let (w, ids) = three_jobs().await;
    let claim_of_second = format!("/claims/{}", ids[1]);
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some(&claim_of_second),
        ..Default::default()
    });
    let response = w.pod.http().get(w.pod.url("/queue/next?queue=jobs&max=3&wait=10s")).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    applied(lost).await;
    answered("next max=3", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_each_on_its_first_attempt(&body, &ids);
    ready(&w.pod).await;
    let acks = serde_json::json!({ "ids": ids });
    let response = w.pod.http().post(w.pod.url("/queue/jobs/ack")).json(&acks).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["acked"], 3, "{body}");
    assert_drained(&w, "jobs").await;
}

/// A batched ack applied with its reply lost: each item is then settled on its own, finds
/// its nodes gone and no dead letter, and answers acked; nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ack_reply_lost_answers_acked_for_every_item() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    for payload in ["first", "second", "third"] {
        assert_eq!(w.pod.enqueue("jobs", payload).await.unwrap().0, 201);
    }
    let response = w.pod.http().get(w.pod.url("/queue/next?queue=jobs&max=3&wait=5s")).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    let ids: Vec<String> = body["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().into()).collect();
    assert_eq!(ids.len(), 3, "{body}");
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/claims/"), ..Default::default() });
    let acks = serde_json::json!({ "ids": ids });
    let response = w.pod.http().post(w.pod.url("/queue/jobs/ack")).json(&acks).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    applied(lost).await;
    answered("batch ack", status, &body);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acked"], 3, "{body}");
    assert!(body["results"].as_array().unwrap().iter().all(|r| r["outcome"] == "acked"), "{body}");
    ready(&w.pod).await;
    assert_drained(&w, "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_reply_lost_answers_acked_and_removes_item_claim_and_history() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    assert_eq!(w.pod.enqueue("jobs", "job").await.unwrap().0, 201);
    let item = w.pod.next("jobs", "5s").await.unwrap().expect("an item");
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/claims/"), ..Default::default() });
    let (status, body) = w.pod.settle("jobs", &item.id, "ack", "").await.unwrap();
    applied(lost).await;
    answered("ack", status, &body);

    assert_eq!((status, body["acked"].as_bool()), (200, Some(true)), "{body}");
    assert_drained(&w, "jobs").await;
    // Acked once is acked: a repeat is refused as not held (the app must not count it twice).
    let (status, body) = w.pod.settle("jobs", &item.id, "ack", "").await.unwrap();
    assert_eq!((status, body["error"].as_str()), (409, Some("claim-lost")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_reply_lost_answers_requeued_and_the_item_comes_again() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    assert_eq!(w.pod.enqueue("jobs", "job").await.unwrap().0, 201);
    let item = w.pod.next("jobs", "5s").await.unwrap().expect("an item");
    // Zero delay: one multi that notes the nack in the history and deletes the claim.
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/claims/"), ..Default::default() });
    let (status, body) = w.pod.settle("jobs", &item.id, "nack", "reason=boom").await.unwrap();
    let fired = applied(lost).await;
    answered("nack", status, &body);
    assert_eq!(fired.operations().iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![op::SET_DATA, op::DELETE]);

    assert_eq!(
        (status, body["outcome"].as_str(), body["newId"].as_str()),
        (200, Some("requeued"), Some(item.id.as_str())),
        "{body}"
    );
    let stored = items(&w.admin, "jobs").await;
    assert_eq!(
        stored.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec![item.id.as_str()],
        "same item, same place"
    );
    let (claims, _, _) = leftovers(&w.admin, "jobs").await;
    assert!(claims.is_empty(), "no orphan claim: {claims:?}");
    let history = attempts(&w.admin, "jobs", &item.id).await.unwrap();
    assert_eq!(history.attempt, 1);
    assert_eq!(history.deliveries.last().and_then(|d| d.outcome.as_deref()), Some("nack: boom"));
    let again = w.pod.next("jobs", "5s").await.unwrap().expect("delivered again");
    assert_eq!((again.id.as_str(), again.attempt), (item.id.as_str(), 2));
    assert_eq!(w.pod.settle("jobs", &again.id, "ack", "").await.unwrap().0, 200);
    assert_drained(&w, "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_nack_reply_lost_answers_requeued_and_moves_the_item_once() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    assert_eq!(w.pod.enqueue("jobs", "job").await.unwrap().0, 201);
    let item = w.pod.next("jobs", "5s").await.unwrap().expect("an item");
    // Delayed: one multi that deletes claim, item and history and creates a receipt and
    // the moved item.
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/claims/"), ..Default::default() });
    let (status, body) = w.pod.settle("jobs", &item.id, "nack", "delay=1s").await.unwrap();
    let fired = applied(lost).await;
    answered("delayed nack", status, &body);
    assert_eq!(fired.operations().len(), 5, "{:?}", fired.operations());

    // The outcome and the new id are found again by the move's receipt.
    assert_eq!((status, body["outcome"].as_str()), (200, Some("requeued")), "{body}");
    let stored = items(&w.admin, "jobs").await;
    assert_eq!(stored.len(), 1, "moved once, not lost, not copied: {stored:?}");
    assert_ne!(stored[0].id, item.id, "moved to the bucket of its due time");
    assert_eq!(stored[0].carried.as_ref().map(|a| a.attempt), Some(1), "carrying its history");
    assert_eq!(body["newId"].as_str(), Some(stored[0].id.as_str()), "{body}");
    let (claims, histories, _) = leftovers(&w.admin, "jobs").await;
    assert!(claims.is_empty() && histories.is_empty(), "no orphan claim or history: {claims:?} {histories:?}");
    let again = w.pod.next("jobs", "10s").await.unwrap().expect("delivered after its delay");
    assert_eq!((again.id.as_str(), again.attempt, again.payload.as_slice()), (stored[0].id.as_str(), 2, &b"job"[..]));
    assert_eq!(w.pod.settle("jobs", &again.id, "ack", "").await.unwrap().0, 200);
    assert_drained(&w, "jobs").await;
}

/// The delayed nack's move is applied, its reply lost, and before the sidecar is back a
/// consumer has taken the moved item and acked it: a look for the item finds nothing,
/// yet the app is told the id its item moved to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_nack_reply_lost_and_the_moved_item_acked_meanwhile_answers_its_new_id() {
    let w = world(&[], &[("jobs", queue_config(5))]).await;
    assert_eq!(w.pod.enqueue("jobs", "job").await.unwrap().0, 201);
    let item = w.pod.next("jobs", "5s").await.unwrap().expect("an item");
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some("/claims/"),
        then: Then::Refuse,
        ..Default::default()
    });
    let nack = tokio::spawn({
        let (pod, id) = (w.pod.clone(), item.id.clone());
        async move { pod.settle("jobs", &id, "nack", "delay=1s").await.unwrap() }
    });
    applied(lost).await;
    let stored = items(&w.admin, "jobs").await;
    assert_eq!(stored.len(), 1, "moved once: {stored:?}");
    taken_and_acked_elsewhere(&w, "jobs", &stored[0].id).await;
    w.proxy.heal();
    let (status, body) = nack.await.unwrap();
    answered("delayed nack", status, &body);

    assert_eq!((status, body["outcome"].as_str()), (200, Some("requeued")), "{body}");
    assert_eq!(body["newId"].as_str(), Some(stored[0].id.as_str()), "the id the item moved to: {body}");
    assert_drained(&w, "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_reply_lost_answers_dead_lettered() {
    let w = world(&[], &[("jobs", queue_config(1))]).await;
    assert_eq!(w.pod.enqueue("jobs", "poison").await.unwrap().0, 201);
    let item = w.pod.next("jobs", "5s").await.unwrap().expect("an item");
    // The last attempt's nack: one multi that deletes item, history and claim and creates
    // the dead letter.
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/dead/"), ..Default::default() });
    let (status, body) = w.pod.settle("jobs", &item.id, "nack", "").await.unwrap();
    applied(lost).await;
    answered("dead-letter", status, &body);
    ready(&w.pod).await;

    // ZooKeeper: dead-lettered exactly once, nothing left behind.
    assert!(items(&w.admin, "jobs").await.is_empty(), "the item moved");
    let (claims, histories, dead) = leftovers(&w.admin, "jobs").await;
    assert!(claims.is_empty() && histories.is_empty(), "no orphan claim or history: {claims:?} {histories:?}");
    assert_eq!(dead, vec![item.id.clone()], "one dead letter");
    assert!(w.pod.next("jobs", "0s").await.unwrap().is_none(), "a dead letter is not delivered");

    // The app: dead-lettered, or an error whose retry (as the error says) tells it so.
    let (status, body) = if status == 503 {
        assert_outcome_unknown(status, &body);
        let retried = w.pod.settle("jobs", &item.id, "nack", "").await.unwrap();
        answered("dead-letter, retried", retried.0, &retried.1);
        retried
    } else {
        (status, body)
    };
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("dead-lettered")),
        "the app learns that its nack dead-lettered the item: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_of_a_dead_letter_reply_lost_answers_requeued() {
    let w = world(&[], &[("jobs", queue_config(1))]).await;
    assert_eq!(w.pod.enqueue("jobs", "poison").await.unwrap().0, 201);
    let item = w.pod.next("jobs", "5s").await.unwrap().expect("an item");
    let (status, body) = w.pod.settle("jobs", &item.id, "nack", "").await.unwrap();
    assert_eq!((status, body["outcome"].as_str()), (200, Some("dead-lettered")), "{body}");
    let lost =
        w.proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/dead/"), ..Default::default() });
    let requeue = format!("/queue/jobs/dead/{}/requeue", item.id);
    let (status, body) = post(&w.pod, &requeue).await;
    applied(lost).await;
    answered("requeue", status, &body);
    ready(&w.pod).await;

    // ZooKeeper: back in the queue exactly once, the dead letter gone.
    let stored = items(&w.admin, "jobs").await;
    assert_eq!(stored.iter().map(|i| i.payload.as_str()).collect::<Vec<_>>(), vec!["poison"], "requeued once");
    let (claims, histories, dead) = leftovers(&w.admin, "jobs").await;
    assert!(claims.is_empty() && histories.is_empty() && dead.is_empty(), "{claims:?} {histories:?} {dead:?}");
    let again = w.pod.next("jobs", "5s").await.unwrap().expect("delivered again");
    assert_eq!((again.attempt, again.payload.as_slice()), (1, &b"poison"[..]), "attempts reset");
    assert_eq!(w.pod.settle("jobs", &again.id, "ack", "").await.unwrap().0, 200);

    // The app: requeued (with the new id), or an error whose retry tells it so.
    let (status, body) = if status == 503 {
        assert_outcome_unknown(status, &body);
        let retried = post(&w.pod, &requeue).await;
        answered("requeue, retried", retried.0, &retried.1);
        retried
    } else {
        (status, body)
    };
    assert_eq!(status, 200, "the app learns that its requeue was done: {body}");
    assert_eq!(body["id"].as_str(), Some(again.id.as_str()), "{body}");
}

/// The requeue is applied, its reply lost, and before the sidecar is back a consumer has
/// taken the requeued item and acked it: the dead letter is gone and so is the item, yet
/// the app is told its requeue was done (not 404 `no-such-dead-letter`), with the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_reply_lost_and_the_item_acked_meanwhile_answers_requeued() {
    let w = world(&[], &[("jobs", queue_config(1))]).await;
    assert_eq!(w.pod.enqueue("jobs", "poison").await.unwrap().0, 201);
    let item = w.pod.next("jobs", "5s").await.unwrap().expect("an item");
    let (status, body) = w.pod.settle("jobs", &item.id, "nack", "").await.unwrap();
    assert_eq!((status, body["outcome"].as_str()), (200, Some("dead-lettered")), "{body}");
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some("/dead/"),
        then: Then::Refuse,
        ..Default::default()
    });
    let requeue = tokio::spawn({
        let (pod, path) = (w.pod.clone(), format!("/queue/jobs/dead/{}/requeue", item.id));
        async move { post(&pod, &path).await }
    });
    applied(lost).await;
    let stored = items(&w.admin, "jobs").await;
    assert_eq!(stored.len(), 1, "requeued once: {stored:?}");
    taken_and_acked_elsewhere(&w, "jobs", &stored[0].id).await;
    w.proxy.heal();
    let (status, body) = requeue.await.unwrap();
    answered("requeue", status, &body);

    assert_eq!(status, 200, "the requeue was done: {body}");
    assert_eq!(body["id"].as_str(), Some(stored[0].id.as_str()), "{body}");
    assert_drained(&w, "jobs").await;
    let (_, _, dead) = leftovers(&w.admin, "jobs").await;
    assert!(dead.is_empty(), "{dead:?}");
}

/// Issue 15: a producer with an idempotency key whose enqueue was applied but answered
/// with a failure (its reply lost, then ZooKeeper out of reach past the session, so the
/// sidecar could not find out) sends it again, as it must: the item is stored once, and
/// the second send is answered 200, a duplicate, with the id the item has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_enqueue_applied_but_answered_unavailable_is_stored_once_when_sent_again() {
    let w = world_with_session(&[], &[("jobs", queue_config(5))], Duration::from_secs(4)).await;
    let lost = w.proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some("/item-"),
        then: Then::Refuse,
        ..Default::default()
    });
    let send = |pod: PodClient| async move {
        let response = pod
            .http()
            .post(pod.url("/queue/jobs"))
            .header("Idempotency-Key", "job-42")
            .body("forty-two")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap())
    };
    let first = tokio::spawn(send(w.pod.clone()));
    applied(lost).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // past the session timeout
    w.proxy.heal();
    let (status, body) = first.await.unwrap();
    answered("idempotent enqueue, reply lost past the session", status, &body);
    assert_eq!(status, 503, "the outcome was unknown to the sidecar too: {body}");
    ready(&w.pod).await;

    let (status, body) = send(w.pod.clone()).await;
    let stored = items(&w.admin, "jobs").await;
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");
    assert_eq!((status, body["duplicate"].as_bool()), (200, Some(true)), "{body}");
    assert_eq!(body["id"].as_str(), Some(stored[0].id.as_str()), "the duplicate names the stored item: {body}");
    assert_eq!(consume(&w.pod, "jobs").await, "forty-two");
    assert_drained(&w, "jobs").await;
}
