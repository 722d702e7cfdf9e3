//! The queue recipe at depth, on a real ensemble, through the library: child lists stay
//! far below ZooKeeper's packet limit, and every item is delivered and acked once.
//! (`cargo run --release -p paddock-bench --bin bench -- queue-depth` runs the million.)

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_recipes::queue::{self, NewItem, view::QueueView};
use paddock_recipes::{Layout, Name, QueueConfig, Session, SessionOptions};
use paddock_testkit::{Ensemble, init_tracing, provision};

const ITEMS: usize = 30_000;
const BATCH: usize = 1_000;
/// ZooKeeper's default jute.maxbuffer: a child list must stay well below it.
const JUTE_MAX_BUFFER: usize = 0xfffff;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_thousand_items_keep_child_lists_small_and_drain_exactly_once() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "scale", "deep", QueueConfig::default()).await.unwrap();
    let paths =
        Layout::new("/paddock").unwrap().queue(&Name::new("ns", "scale").unwrap(), &Name::new("q", "deep").unwrap());

    for start in (0..ITEMS).step_by(BATCH) {
        let items: Vec<NewItem> = (start..start + BATCH)
            .map(|n| NewItem {
                payload: n.to_string().into_bytes(),
                content_type: None,
                priority: 0,
                delay: Duration::ZERO,
                group: None,
            })
            .collect();
        assert_eq!(queue::enqueue(&admin, &paths, &items).await.unwrap().len(), BATCH);
    }
    let stats = queue::stats(&admin, &paths).await.unwrap();
    assert_eq!(stats.depth, ITEMS as u64);

    // Every child list, as ZooKeeper would send it (4-byte length + name per child).
    let list_bytes = |names: &[String]| names.iter().map(|n| 4 + n.len()).sum::<usize>();
    let buckets = admin.list_children(&paths.items()).await.unwrap();
    let mut largest = list_bytes(&buckets);
    for bucket in &buckets {
        let items = admin.list_children(&paths.bucket(bucket)).await.unwrap();
        largest = largest.max(list_bytes(&items));
    }
    println!("{ITEMS} items in {} buckets; largest child list {largest} bytes", buckets.len());
    assert!(largest < JUTE_MAX_BUFFER / 8, "largest child list {largest} bytes is too close to jute.maxbuffer");

    // Drain with 4 consumers, each with its own session and watch-fed view.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut consumers = Vec::new();
    for c in 0..4 {
        let (paths, seen, connect) = (paths.clone(), seen.clone(), ensemble.connect_string());
        consumers.push(tokio::spawn(async move {
            let session = Session::start(SessionOptions {
                connect,
                session_timeout: Duration::from_secs(10),
                digest_auth: None,
                tls: None,
            });
            let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
            let view = QueueView::start(session.clone(), paths.clone(), Arc::new(()));
            while !view.is_synced() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let config = QueueConfig::default();
            let mut most_loaded = 0;
            loop {
                let Some(delivery) =
                    queue::claim_next(&client, &paths, &view, &config, &format!("consumer-{c}"), &()).await.unwrap()
                else {
                    break;
                };
                let n: usize = String::from_utf8(delivery.payload).unwrap().parse().unwrap();
                assert!(seen.lock().unwrap().insert(n), "item {n} delivered twice");
                queue::ack(&client, &paths, &delivery.id).await.unwrap();
                most_loaded = most_loaded.max(view.footprint().1);
            }
            most_loaded
        }));
    }
    let mut most_loaded = 0;
    for c in consumers {
        most_loaded = most_loaded.max(c.await.unwrap());
    }
    assert_eq!(seen.lock().unwrap().len(), ITEMS, "every item delivered");
    let stats = queue::stats(&admin, &paths).await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (0, 0));
    println!("a consumer's view held at most {most_loaded} item ids at once");
    assert!(most_loaded < ITEMS / 2, "views load buckets as they go, not the whole queue");
}
