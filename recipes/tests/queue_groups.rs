//! Groups against a real ensemble: order within a group, one item of a group in flight,
//! a nacked head stays the head, batched claims and acks, ids that never repeat when a
//! group's container is removed and made again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use paddock_recipes::layout::QueuePaths;
use paddock_recipes::queue::group::GroupKey;
use paddock_recipes::queue::view::{BucketRetention, QueueView};
use paddock_recipes::queue::{self, NewItem, QueueError};
use paddock_recipes::{Layout, Name, QueueConfig, Session, SessionOptions, zk};
use paddock_testkit::{Ensemble, EnsembleOptions, init_tracing, provision};

fn grouped(group: &str, payload: String) -> NewItem {
    NewItem { payload: payload.into_bytes(), group: Some(GroupKey::new(group).unwrap()), ..NewItem::default() }
}

async fn setup(ensemble: &Ensemble, queue: &str) -> QueuePaths {
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "groups", queue, QueueConfig::default()).await.unwrap();
    Layout::new("/paddock").unwrap().queue(&Name::new("ns", "groups").unwrap(), &Name::new("q", queue).unwrap())
}

async fn consumer(ensemble: &Ensemble, paths: &QueuePaths) -> (zk::Client, QueueView) {
    consumer_with(ensemble, paths, BucketRetention::default()).await
}

async fn consumer_with(ensemble: &Ensemble, paths: &QueuePaths, retention: BucketRetention) -> (zk::Client, QueueView) {
    let session = Session::start(SessionOptions {
        connect: ensemble.connect_string(),
        session_timeout: Duration::from_secs(10),
        digest_auth: None,
        tls: None,
    });
    let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
    let view = QueueView::start_with(session, paths.clone(), Arc::new(()), retention);
    while !view.is_synced() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (client, view)
}

/// The next item, waiting up to 5 s for the view to see one; None if none came.
async fn next_within(
    client: &zk::Client,
    paths: &QueuePaths,
    view: &QueueView,
    config: &QueueConfig,
) -> Option<queue::Delivery> {
    for _ in 0..100 {
        if let Some(d) = queue::claim_next(client, paths, view, config, "pod", &()).await.unwrap() {
            return Some(d);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_run_in_order_one_at_a_time_across_consumers_with_batched_claims_and_acks() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let paths = setup(&ensemble, "orders").await;
    let (producer, _) = consumer(&ensemble, &paths).await;
    const GROUPS: usize = 6;
    const PER_GROUP: usize = 25;
    // Interleaved: round r enqueues item r of every group, plus an ungrouped one.
    for round in 0..PER_GROUP {
        let mut batch: Vec<NewItem> = (0..GROUPS).map(|g| grouped(&format!("g{g}"), format!("g{g}:{round}"))).collect();
        batch.push(NewItem { payload: format!("free:{round}").into_bytes(), ..NewItem::default() });
        queue::enqueue(&producer, &paths, &batch).await.unwrap();
    }
    let stats = queue::stats(&producer, &paths).await.unwrap();
    assert_eq!(stats.depth, (GROUPS + 1) as u64 * PER_GROUP as u64);
    let groups = queue::group_stats(&producer, &paths).await.unwrap();
    assert_eq!(groups.groups, GROUPS as u64);
    assert_eq!(groups.longest_group.unwrap().items, PER_GROUP as u64);

    let in_flight = Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let done = Arc::new(std::sync::Mutex::new(HashMap::<String, Vec<usize>>::new()));
    let mut consumers = Vec::new();
    for c in 0..3 {
        let (client, view) = consumer(&ensemble, &paths).await;
        let (paths, in_flight, done) = (paths.clone(), in_flight.clone(), done.clone());
        consumers.push(tokio::spawn(async move {
            let config = QueueConfig::default();
            let mut idle = 0;
            while idle < 20 {
                let batch =
                    queue::claim_batch(&client, &paths, &view, &config, &format!("c{c}"), 8, &()).await.unwrap();
                if batch.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                idle = 0;
                let mut groups_in_batch = HashSet::new();
                for d in &batch {
                    let text = String::from_utf8(d.payload.clone()).unwrap();
                    let (group, n) = text.split_once(':').unwrap();
                    if group != "free" {
                        assert!(groups_in_batch.insert(group.to_owned()), "two items of {group} in one batch");
                        assert!(in_flight.lock().unwrap().insert(group.to_owned()), "two items of {group} in flight");
                        assert_eq!(d.envelope.group.as_deref(), Some(group));
                    }
                    done.lock().unwrap().entry(group.to_owned()).or_default().push(n.parse().unwrap());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                for d in &batch {
                    let text = String::from_utf8(d.payload.clone()).unwrap();
                    in_flight.lock().unwrap().remove(text.split_once(':').unwrap().0);
                }
                let ids: Vec<_> = batch.iter().map(|d| d.id.clone()).collect();
                for result in queue::ack_many(&client, &paths, &ids).await {
                    result.unwrap();
                }
            }
        }));
    }
    for c in consumers {
        c.await.unwrap();
    }
    let done = done.lock().unwrap().clone();
    for g in 0..GROUPS {
        assert_eq!(done[&format!("g{g}")], (0..PER_GROUP).collect::<Vec<_>>(), "group g{g} out of order");
    }
    assert_eq!(done["free"].len(), PER_GROUP);
    let stats = queue::stats(&producer, &paths).await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0));
    let groups = queue::group_stats(&producer, &paths).await.unwrap();
    assert_eq!((groups.groups, groups.longest_group), (0, None), "emptied groups' nodes are not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_head_stays_the_head_and_a_delayed_nack_holds_only_its_group() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let paths = setup(&ensemble, "retries").await;
    let (client, view) = consumer(&ensemble, &paths).await;
    let config = QueueConfig::default();
    let items = [grouped("g", "a".into()), grouped("g", "b".into()), grouped("h", "x".into())];
    queue::enqueue(&client, &paths, &items).await.unwrap();
    let next = || next_within(&client, &paths, &view, &config);
    // After a short wait for the view to catch up: what can be claimed right now.
    let next_now = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        queue::claim_next(&client, &paths, &view, &config, "pod", &()).await.unwrap()
    };
    let payload = |d: &queue::Delivery| String::from_utf8(d.payload.clone()).unwrap();

    let a = next().await.unwrap();
    assert_eq!(payload(&a), "a");
    let x = next().await.unwrap();
    assert_eq!(payload(&x), "x");
    assert!(next_now().await.is_none(), "b must wait behind a");
    queue::nack(&client, &paths, &config, &a.id, Some(Duration::ZERO), None).await.unwrap();
    let again = next().await.unwrap();
    assert_eq!((payload(&again), again.attempt), ("a".to_owned(), 2));
    // A delayed nack keeps the group waiting; the other group is not held up.
    queue::nack(&client, &paths, &config, &a.id, Some(Duration::from_secs(2)), None).await.unwrap();
    queue::ack(&client, &paths, &x.id).await.unwrap();
    queue::enqueue(&client, &paths, &[grouped("h", "y".into())]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let y = next().await.unwrap();
    assert_eq!(payload(&y), "y");
    assert!(next_now().await.is_none(), "g waits out a's back-off");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let third = next().await.unwrap();
    assert_eq!((payload(&third), third.attempt), ("a".to_owned(), 3));

    // Batched acks answer per item: one whose claim is gone fails alone.
    queue::release_claim(&client, &paths, &y.id).await.unwrap();
    let results = queue::ack_many(&client, &paths, &[third.id.clone(), y.id.clone()]).await;
    assert!(results[0].is_ok(), "{results:?}");
    assert!(matches!(results[1], Err(QueueError::ClaimLost(_))), "{results:?}");
    // Then g goes on with b, and h's y is ready again (which comes first depends on when
    // the view hears of a's ack).
    let mut rest = vec![payload(&next().await.unwrap()), payload(&next().await.unwrap())];
    rest.sort();
    assert_eq!(rest, ["b", "y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_id_is_never_given_to_a_second_item_after_its_group_is_removed() {
    init_tracing();
    let options =
        EnsembleOptions { servers: 1, container_check_interval: Some(Duration::from_millis(10)), ..Default::default() };
    let ensemble = Ensemble::start_with(options).await.unwrap();
    let paths = setup(&ensemble, "ids").await;
    // Empty groups are removed 300 ms after their last item was due (the real keep is 2
    // minutes, for clocks that are apart and retried enqueues).
    let retention = BucketRetention { keep: Duration::from_millis(300), every: Duration::from_millis(50) };
    let (client, view) = consumer_with(&ensemble, &paths, retention).await;
    let config = QueueConfig::default();
    let mut given = HashMap::new();
    let (mut last_seq, mut made_again) = (0, 0);
    for round in 0..120 {
        let id = queue::enqueue(&client, &paths, &[grouped("g", round.to_string())])
            .await
            .unwrap()
            .remove(0)
            .expect("an id");
        assert!(given.insert(id.to_string(), round).is_none(), "round {round}: id {id} given twice");
        if id.seq_number() < last_seq {
            made_again += 1;
        }
        last_seq = id.seq_number();
        let delivery = next_within(&client, &paths, &view, &config).await.expect("the item");
        assert_eq!(delivery.id, id);
        queue::ack(&client, &paths, &id).await.unwrap();
        let pause = if round % 10 == 9 { 600 } else { 15 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    assert!(made_again > 0, "the group was never removed and made again: the test shows nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_requeue_peek_and_purge_know_groups() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let config = QueueConfig { max_attempts: 2, ..QueueConfig::default() };
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "groups", "dead", config.clone()).await.unwrap();
    let paths =
        Layout::new("/paddock").unwrap().queue(&Name::new("ns", "groups").unwrap(), &Name::new("q", "dead").unwrap());
    let (client, view) = consumer(&ensemble, &paths).await;
    let items = [grouped("g", "a".into()), grouped("g", "b".into()), grouped("g", "c".into())];
    queue::enqueue(&client, &paths, &items).await.unwrap();
    let next = || next_within(&client, &paths, &view, &config);
    let payload = |d: &queue::Delivery| String::from_utf8(d.payload.clone()).unwrap();

    // a fails twice: dead-lettered, and b is the head.
    for _ in 0..2 {
        let a = next().await.unwrap();
        assert_eq!(payload(&a), "a");
        queue::nack(&client, &paths, &config, &a.id, Some(Duration::ZERO), None).await.unwrap();
    }
    let b = next().await.unwrap();
    assert_eq!(payload(&b), "b");
    let dead = queue::dead_letters(&client, &paths, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].letter.envelope.group.as_deref(), Some("g"));
    // Requeued, a goes to the end of its group: b (held), c, a.
    let requeued = queue::requeue_dead(&client, &paths, &dead[0].id).await.unwrap();
    assert_eq!(requeued.group, Some(GroupKey::new("g").unwrap()));
    let peeked = queue::peek(&client, &paths, 10, true).await.unwrap();
    let waiting: Vec<Vec<u8>> = peeked.iter().map(|p| p.payload.clone().unwrap()).collect();
    assert_eq!(waiting, [b"c".to_vec(), b"a".to_vec()], "peek shows what waits in the group, in order");
    assert!(peeked.iter().all(|p| p.group.as_deref() == Some("g")));
    // Purge takes what nobody holds; b stays with its consumer, whose ack succeeds.
    let purged = queue::purge(&client, &paths).await.unwrap();
    assert_eq!((purged.removed, purged.in_flight), (2, 1));
    queue::ack(&client, &paths, &b.id).await.unwrap();
    let stats = queue::stats(&client, &paths).await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0), "{stats:?}");
}
