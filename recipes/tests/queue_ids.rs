//! An item id names one item for the queue's whole life: `claims/<id>`, `attempts/<id>`,
//! `dead/<id>` and a retried ack all mean it. Ids come from a bucket's sequence numbers,
//! which start again at 0 if the bucket znode is removed and made again; so an emptied
//! bucket must outlive the enqueues that can still land in it. Real server, its container
//! reaper running every 10 ms (the default is a minute, which only makes this rarer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use paddock_recipes::queue::view::{BucketRetention, QueueView};
use paddock_recipes::queue::{self, NewItem};
use paddock_recipes::{Layout, Name, QueueConfig, Session, SessionOptions};
use paddock_testkit::{Ensemble, EnsembleOptions, init_tracing, provision};

const ROUNDS: usize = 300;

fn item(n: usize) -> NewItem {
    NewItem { payload: n.to_string().into_bytes(), content_type: None, priority: 0, delay: Duration::ZERO, group: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_never_given_to_a_second_item_after_its_bucket_empties() {
    init_tracing();
    let options =
        EnsembleOptions { servers: 1, container_check_interval: Some(Duration::from_millis(10)), ..Default::default() };
    let ensemble = Ensemble::start_with(options).await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "ids", "q", QueueConfig::default()).await.unwrap();
    let paths = Layout::new("/paddock").unwrap().queue(&Name::new("ns", "ids").unwrap(), &Name::new("q", "q").unwrap());
    let session = Session::start(SessionOptions {
        connect: ensemble.connect_string(),
        session_timeout: Duration::from_secs(10),
        digest_auth: None,
        tls: None,
    });
    let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
    let view = QueueView::start(session, paths.clone(), Arc::new(()));
    let config = QueueConfig::default();

    // Each round enqueues one item, consumes it and gives the reaper time to act: rounds
    // that fall into the due-time slot of an earlier round write to the bucket that round
    // emptied.
    let mut given: HashMap<String, usize> = HashMap::new();
    let mut rounds_in_an_emptied_bucket = 0;
    let mut last_bucket = String::new();
    for round in 0..ROUNDS {
        let id = queue::enqueue(&client, &paths, &[item(round)]).await.unwrap().remove(0).expect("an id");
        if let Some(earlier) = given.insert(id.to_string(), round) {
            panic!("round {round}: id {id} was already given to the item of round {earlier}");
        }
        if id.bucket == last_bucket {
            rounds_in_an_emptied_bucket += 1;
        }
        last_bucket = id.bucket.clone();
        let delivery = loop {
            match queue::claim_next(&client, &paths, &view, &config, "pod", &()).await.unwrap() {
                Some(delivery) => break delivery,
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        assert_eq!(delivery.id, id, "round {round}: the only item in the queue");
        queue::ack(&client, &paths, &delivery.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The scenario happened: not a test that passes because the slots never repeated.
    assert!(
        rounds_in_an_emptied_bucket >= ROUNDS / 10,
        "only {rounds_in_an_emptied_bucket} of {ROUNDS} rounds wrote to a bucket an earlier round emptied"
    );
}

/// Buckets are not left behind for ever: once empty and old, a view removes them; one
/// that still holds an item stays however old it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_empty_buckets_are_removed_and_full_ones_kept() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "ids", "old", QueueConfig::default()).await.unwrap();
    let paths =
        Layout::new("/paddock").unwrap().queue(&Name::new("ns", "ids").unwrap(), &Name::new("q", "old").unwrap());
    let session = Session::start(SessionOptions {
        connect: ensemble.connect_string(),
        session_timeout: Duration::from_secs(10),
        digest_auth: None,
        tls: None,
    });
    let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
    let retention = BucketRetention { keep: Duration::from_secs(3), every: Duration::from_millis(200) };
    let view = QueueView::start_with(session, paths.clone(), Arc::new(()), retention);
    let config = QueueConfig::default();

    // Five buckets that are emptied, and one whose item is left in it.
    let mut used = std::collections::BTreeSet::new();
    for n in 0..5 {
        let id = queue::enqueue(&client, &paths, &[item(n)]).await.unwrap().remove(0).expect("an id");
        used.insert(id.bucket.clone());
        let delivery = loop {
            match queue::claim_next(&client, &paths, &view, &config, "pod", &()).await.unwrap() {
                Some(delivery) => break delivery,
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        assert_eq!(delivery.id, id);
        queue::ack(&client, &paths, &id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let kept = queue::enqueue(&client, &paths, &[item(5)]).await.unwrap().remove(0).expect("an id");
    used.insert(kept.bucket.clone());
    assert_eq!(used.len(), 6, "a bucket per 100 ms slot");
    // (Besides them, the next slots' buckets made ahead, which empty go the same way.)
    let listed: std::collections::BTreeSet<String> =
        client.list_children(&paths.items()).await.unwrap().into_iter().collect();
    assert!(listed.is_superset(&used), "{listed:?} has every bucket used, {used:?}");

    // Waits for the view; fails (never passes) if it removes nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let buckets = loop {
        let buckets = client.list_children(&paths.items()).await.unwrap();
        if buckets.len() == 1 || tokio::time::Instant::now() > deadline {
            break buckets;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(buckets, vec![kept.bucket.clone()], "the emptied buckets are removed, the full one is kept");
    let delivery =
        queue::claim_next(&client, &paths, &view, &config, "pod", &()).await.unwrap().expect("the kept item");
    assert_eq!(delivery.id, kept);
}
