//! An enqueue's receipt (see `queue::receipt`) outlives its call only until the same
//! session's next enqueue, whose multi deletes it — so a steady producer's enqueue is one
//! request — or, when none comes, until it is deleted on its own. Meanwhile it must not show
//! in this session's counts, and a receipt that vanished must not fail the enqueue that
//! carries its delete. Real server.

use std::time::Duration;

use paddock_recipes::layout::QueuePaths;
use paddock_recipes::queue::group::GroupKey;
use paddock_recipes::queue::{self, NewItem};
use paddock_recipes::{Layout, Name, QueueConfig, zk};
use paddock_testkit::{Ensemble, init_tracing, provision};

fn item(n: usize) -> NewItem {
    NewItem { payload: n.to_string().into_bytes(), content_type: None, priority: 0, delay: Duration::ZERO, group: None }
}

fn paths(queue: &str) -> QueuePaths {
    Layout::new("/paddock").unwrap().queue(&Name::new("ns", "receipts").unwrap(), &Name::new("q", queue).unwrap())
}

/// A single server with the queue `queue`: (the server, an admin session, the queue's
/// paths, a producer's session).
async fn setup(queue: &str) -> (Ensemble, zk::Client, QueuePaths, zk::Client) {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "receipts", queue, QueueConfig::default()).await.unwrap();
    let producer = zk::Client::connect(&ensemble.connect_string()).await.unwrap();
    (ensemble, admin, paths(queue), producer)
}

/// Every receipt in the queue's buckets and groups, by path.
async fn receipts(admin: &zk::Client, paths: &QueuePaths) -> Vec<String> {
    let mut dirs: Vec<String> =
        admin.list_children(&paths.items()).await.unwrap().iter().map(|b| paths.bucket(b)).collect();
    match admin.list_children(&paths.groups()).await {
        Ok(groups) => dirs.extend(groups.iter().map(|g| paths.group(g))),
        Err(zk::Error::NoNode) => {}
        Err(e) => panic!("listing groups: {e}"),
    }
    let mut found = Vec::new();
    for dir in dirs {
        let nodes = match admin.list_children(&dir).await {
            Ok(nodes) => nodes,
            Err(zk::Error::NoNode) => continue,
            Err(e) => panic!("listing {dir}: {e}"),
        };
        found.extend(nodes.into_iter().filter(|n| n.starts_with("receipt-")).map(|n| format!("{dir}/{n}")));
    }
    found
}

/// Removes one receipt left in the queue, as someone else would; false when none was
/// there to remove (they went on their own first).
async fn remove_a_receipt(admin: &zk::Client, paths: &QueuePaths) -> bool {
    let left = receipts(admin, paths).await;
    let Some(receipt) = left.first() else { return false };
    match admin.delete(receipt, None).await {
        Ok(()) => true,
        Err(zk::Error::NoNode) => false,
        Err(e) => panic!("deleting {receipt}: {e}"),
    }
}

async fn eventually_none(admin: &zk::Client, paths: &QueuePaths) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = receipts(admin, paths).await;
        if left.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "receipts left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_goes_with_the_next_enqueue_or_on_its_own() {
    let (ensemble, admin, paths, producer) = setup("steady").await;

    // Ungrouped, and every third one in a group (a receipt in a group's node): each
    // enqueue's multi also deletes the receipt of the one before, so it takes one request,
    // not two (plus a failed multi and a create when a bucket or group is new).
    let before = ensemble.packets_received(0).await.unwrap();
    for n in 0..100 {
        let group = (n % 3 == 0).then(|| GroupKey::new(&format!("g{}", n % 2)).unwrap());
        let ids = queue::enqueue(&producer, &paths, &[NewItem { group, ..item(n) }]).await.unwrap();
        assert_eq!(ids.len(), 1);
    }
    let per_enqueue = (ensemble.packets_received(0).await.unwrap() - before) as f64 / 100.0;
    assert!(per_enqueue < 1.5, "{per_enqueue} requests per enqueue: the receipts' deletes went on their own");
    // A batch over two priorities (two buckets, two receipts) leaves both, then both go.
    let batch = [item(100), NewItem { priority: 5, ..item(101) }];
    queue::enqueue(&producer, &paths, &batch).await.unwrap();
    eventually_none(&admin, &paths).await;
    assert_eq!(queue::stats(&admin, &paths).await.unwrap().depth, 102, "every item, no receipt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producers_own_count_right_after_an_enqueue_has_no_receipt() {
    let (_ensemble, _admin, paths, producer) = setup("count").await;

    for n in 1..=5 {
        queue::enqueue(&producer, &paths, &[item(n)]).await.unwrap();
        let stats = queue::stats(&producer, &paths).await.unwrap();
        assert_eq!((stats.depth, stats.ready), (n as u64, n as u64), "after {n} enqueues: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_receipt_does_not_fail_the_enqueue_that_carries_its_delete() {
    let (_ensemble, admin, paths, producer) = setup("gone").await;

    // Someone else removes the receipt before the next enqueue can delete it (tried again
    // if the receipt went on its own first, on a slow machine).
    let mut enqueued = 0;
    for attempt in 0..20 {
        let first = queue::enqueue(&producer, &paths, &[item(attempt)]).await.unwrap().remove(0).expect("an id");
        enqueued += 1;
        if !remove_a_receipt(&admin, &paths).await {
            continue;
        }
        let second = queue::enqueue(&producer, &paths, &[item(100 + attempt)]).await.unwrap().remove(0).expect("an id");
        enqueued += 1;
        assert_ne!(first, second);
        eventually_none(&admin, &paths).await;
        let stats = queue::stats(&admin, &paths).await.unwrap();
        assert_eq!(stats.depth, enqueued, "every item, once each: {stats:?}");
        return;
    }
    panic!("the receipt was never there to remove before the next enqueue");
}

/// A batch over several groups leaves a receipt in each; they go in one multi of deletes,
/// and one at a time when that multi fails because one of them is already gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_receipts_go_together_and_one_vanished_does_not_keep_the_others() {
    let (_ensemble, admin, paths, producer) = setup("many").await;
    let batch: Vec<NewItem> =
        (0..5).map(|n| NewItem { group: Some(GroupKey::new(&format!("g{n}")).unwrap()), ..item(n) }).collect();

    // Left alone, the five go (in one multi).
    queue::enqueue(&producer, &paths, &batch).await.unwrap();
    eventually_none(&admin, &paths).await;

    // One removed by someone else first: the others still go (tried again if the receipts
    // went on their own before the removal, on a slow machine).
    for attempt in 0..20 {
        queue::enqueue(&producer, &paths, &batch).await.unwrap();
        if !remove_a_receipt(&admin, &paths).await {
            continue;
        }
        eventually_none(&admin, &paths).await;
        let stats = queue::stats(&admin, &paths).await.unwrap();
        assert_eq!(stats.depth, 5 * (attempt + 2), "every item, no receipt: {stats:?}");
        return;
    }
    panic!("the receipts were never there to remove one before they went");
}

/// A session id is unique only within its ensemble: two servers started in the same
/// millisecond hand out the same ids (ZooKeeper makes them from its start time and server
/// id), as two tests' single servers in one test process once did. A receipt left by a
/// session of one must be deleted there, never carried into the other's multi (where it
/// is not, so it would be dropped and left behind). Here the second server is made from
/// the first's data, so it knows the producer's session, and a second producer resumes
/// that session there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_of_two_ensembles_keeps_each_ones_receipts_apart() {
    init_tracing();
    let mut first = Ensemble::start_single().await.unwrap();
    provision::queue(
        &provision::admin(&first.connect_string()).await.unwrap(),
        "receipts",
        "twins",
        QueueConfig::default(),
    )
    .await
    .unwrap();
    let paths = paths("twins");
    // A session that outlives the servers' restart below, however slow.
    let first_producer = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(60))
        .connect(&first.connect_string())
        .await
        .unwrap();
    let mut second = Ensemble::start_single().await.unwrap();
    // The same data in both: the queue, and the producer's session (in the log).
    second.stop_all();
    first.stop_all();
    let data = |ensemble: &Ensemble| ensemble.dir().join("server-1/data/version-2");
    std::fs::remove_dir_all(data(&second)).unwrap();
    copy_dir(&data(&first), &data(&second));
    first.start_all(Duration::from_secs(30)).await.unwrap();
    second.start_all(Duration::from_secs(30)).await.unwrap();
    let second_producer = zk::Client::connector()
        .with_session(first_producer.session().clone())
        .connect(&second.connect_string())
        .await
        .unwrap();
    assert_eq!(first_producer.session_id(), second_producer.session_id());
    let first_admin = provision::admin(&first.connect_string()).await.unwrap();
    let second_admin = provision::admin(&second.connect_string()).await.unwrap();

    // Each enqueue on one server right after one on the other: each leaves a receipt.
    for n in 0..10 {
        queue::enqueue(&first_producer, &paths, &[item(n)]).await.unwrap();
        queue::enqueue(&second_producer, &paths, &[item(100 + n)]).await.unwrap();
    }
    eventually_none(&first_admin, &paths).await;
    eventually_none(&second_admin, &paths).await;
    assert_eq!(queue::stats(&first_admin, &paths).await.unwrap().depth, 10);
    assert_eq!(queue::stats(&second_admin, &paths).await.unwrap().depth, 10);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
