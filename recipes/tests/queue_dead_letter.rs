//! Dead-lettering never takes an item that a consumer holds, and an ack whose item was
//! dead-lettered is refused, not reported as done. Real ensemble, the library directly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_recipes::queue::{self, NewItem, QueueError, view::QueueView};
use paddock_recipes::{Layout, Name, QueueConfig, Session, SessionOptions, zk};
use paddock_testkit::{Ensemble, init_tracing, provision};

const ITEMS: usize = 600;
const SESSIONS: usize = 2;
const CONSUMERS_PER_SESSION: usize = 4;

fn item(n: usize) -> NewItem {
    NewItem { payload: n.to_string().into_bytes(), content_type: None, priority: 0, delay: Duration::ZERO, group: None }
}

fn paths(queue: &str) -> paddock_recipes::layout::QueuePaths {
    Layout::new("/paddock").unwrap().queue(&Name::new("ns", "race").unwrap(), &Name::new("q", queue).unwrap())
}

async fn consumer_session(connect: String, paths: paddock_recipes::layout::QueuePaths) -> (zk::Client, QueueView) {
    let session = Session::start(SessionOptions {
        connect,
        session_timeout: Duration::from_secs(10),
        digest_auth: None,
        tls: None,
    });
    let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
    let view = QueueView::start(session, paths, Arc::new(()));
    while !view.is_synced() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (client, view)
}

/// The scenario that found the defect: `maxAttempts: 1`, 8 consumers on 2 sessions (as on
/// 2 sidecars, each sharing one view), no failure of any kind. A consumer whose view had
/// not yet seen another's claim used to dead-letter that item mid-processing (35 of 600).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_on_their_last_attempt_are_not_dead_lettered_while_claimed() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let config = QueueConfig { max_attempts: 1, ..QueueConfig::default() };
    provision::queue(&admin, "race", "last", config.clone()).await.unwrap();
    let paths = paths("last");

    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(consumer_session(ensemble.connect_string(), paths.clone()).await);
    }
    let acked: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    let mut consumers = Vec::new();
    for (s, (client, view)) in sessions.iter().enumerate() {
        for c in 0..CONSUMERS_PER_SESSION {
            let (client, view, paths, config, acked) =
                (client.clone(), view.clone(), paths.clone(), config.clone(), acked.clone());
            consumers.push(tokio::spawn(async move {
                let pod = format!("pod-{s}");
                let mut idle_since = tokio::time::Instant::now();
                loop {
                    let delivery = queue::claim_next(&client, &paths, &view, &config, &pod, &()).await.unwrap();
                    let Some(delivery) = delivery else {
                        if idle_since.elapsed() > Duration::from_secs(3) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    idle_since = tokio::time::Instant::now();
                    let n: usize = String::from_utf8(delivery.payload).unwrap().parse().unwrap();
                    // Processing: long enough for the other consumers to look at this item.
                    tokio::time::sleep(Duration::from_millis(2 + (n % 5) as u64)).await;
                    queue::ack(&client, &paths, &delivery.id)
                        .await
                        .unwrap_or_else(|e| panic!("consumer {s}/{c}: ack of item {n} refused: {e}"));
                    *acked.lock().unwrap().entry(n).or_default() += 1;
                }
            }));
        }
    }
    // Producers go on while the consumers run, so claims and views race all along.
    for start in (0..ITEMS).step_by(20) {
        let items: Vec<NewItem> = (start..start + 20).map(item).collect();
        queue::enqueue(&admin, &paths, &items).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }

    let dead = admin.list_children(&paths.dead()).await.unwrap();
    let claims = admin.list_children(&paths.claims()).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    let twice: Vec<_> = acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dead.is_empty(),
        "{} items dead-lettered while their consumers held them, e.g. {:?}",
        dead.len(),
        &dead[..dead.len().min(5)]
    );
    assert!(claims.is_empty(), "{} claims left behind: {claims:?}", claims.len());
    assert!(twice.is_empty(), "items acked more than once: {twice:?}");
    assert_eq!(acked.len(), ITEMS, "every item acked");
    assert_eq!(queue::stats(&admin, &paths).await.unwrap().depth, 0);
}

/// A sidecar of the version before the fix (still running in other pods during an
/// upgrade) dead-letters an item while its claim exists. The claimant's ack must then be
/// refused with a reason, not answered as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_of_an_item_dead_lettered_under_its_claim_is_refused() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let config = QueueConfig { max_attempts: 1, ..QueueConfig::default() };
    provision::queue(&admin, "race", "skew", config.clone()).await.unwrap();
    let paths = paths("skew");
    queue::enqueue(&admin, &paths, &[item(7)]).await.unwrap();

    let (client, view) = consumer_session(ensemble.connect_string(), paths.clone()).await;
    let delivery = queue::claim_next(&client, &paths, &view, &config, "pod-a", &()).await.unwrap().unwrap();
    let id = delivery.id.to_string();

    // What the older sidecar did: the item and its history to dead/, the claim untouched.
    let item_path = format!("{}/{}", paths.bucket(&delivery.id.bucket), delivery.id.node_name());
    let mut multi = admin.new_multi_writer();
    multi.add_delete(&item_path, None).unwrap();
    multi.add_delete(&paths.attempts_of(&id), None).unwrap();
    multi
        .add_create(&paths.dead_item(&id), b"{}\n7", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()))
        .unwrap();
    multi.commit().await.unwrap();

    match queue::ack(&client, &paths, &delivery.id).await {
        Err(QueueError::DeadLettered(dead)) => assert_eq!(dead, id),
        other => panic!("the ack of a dead-lettered item answered {other:?}"),
    }
}

/// Dead-lettering on the way to the next item checks the claim in the same transaction:
/// an item on its last attempt that another session holds is skipped, not moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_has_not_seen_a_claim_skips_the_item_instead_of_dead_lettering_it() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let config = QueueConfig { max_attempts: 1, ..QueueConfig::default() };
    provision::queue(&admin, "race", "stale", config.clone()).await.unwrap();
    let paths = paths("stale");
    queue::enqueue(&admin, &paths, &[item(1)]).await.unwrap();

    let (client_a, view_a) = consumer_session(ensemble.connect_string(), paths.clone()).await;
    let (client_b, view_b) = consumer_session(ensemble.connect_string(), paths.clone()).await;
    let held = queue::claim_next(&client_a, &paths, &view_a, &config, "pod-a", &()).await.unwrap().unwrap();
    // B's view has not seen A's claim yet: once the watch event is in, make the view
    // forget it again, as if the event were late.
    let claim_seen = || view_b.footprint().2 == 1;
    paddock_testkit::eventually(Duration::from_secs(10), "B's view sees A's claim", || async { claim_seen() }).await;
    view_b.unmark_claimed_for_test(&held.id);

    let next = queue::claim_next(&client_b, &paths, &view_b, &config, "pod-b", &()).await.unwrap();
    assert!(next.is_none(), "B must not get A's item: {next:?}");
    assert!(admin.list_children(&paths.dead()).await.unwrap().is_empty(), "A's item was dead-lettered under its claim");
    queue::ack(&client_a, &paths, &held.id).await.unwrap();
}
