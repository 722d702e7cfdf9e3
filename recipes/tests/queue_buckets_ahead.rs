//! A steady producer moves to a new bucket every [`BUCKET_SPAN_MS`]; the buckets of the
//! next slots are made ahead (`queue::ahead`), so the enqueue that first lands in one does
//! not fail its multi, look for the bucket, make it and send again. Real server.

use std::collections::HashSet;
use std::time::Duration;

use paddock_recipes::queue::item::BUCKET_SPAN_MS;
use paddock_recipes::queue::{self, NewItem};
use paddock_recipes::{Layout, Name, QueueConfig, zk};
use paddock_testkit::{Ensemble, init_tracing, provision};

fn item(n: usize, priority: u8) -> NewItem {
    NewItem { payload: n.to_string().into_bytes(), content_type: None, priority, delay: Duration::ZERO, group: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_producer_finds_each_new_slots_bucket_made() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "ahead", "q", QueueConfig::default()).await.unwrap();
    let paths =
        Layout::new("/paddock").unwrap().queue(&Name::new("ns", "ahead").unwrap(), &Name::new("q", "q").unwrap());
    let producer = zk::Client::connect(&ensemble.connect_string()).await.unwrap();

    // One enqueue every fifth of a slot, over a dozen slots, at two priorities.
    let before = ensemble.packets_received(0).await.unwrap();
    let mut buckets = HashSet::new();
    let enqueues = 120;
    for n in 0..enqueues {
        let ids = queue::enqueue(&producer, &paths, &[item(n, (n % 2) as u8 * 5)]).await.unwrap();
        buckets.insert(ids[0].bucket.clone());
        tokio::time::sleep(Duration::from_millis(BUCKET_SPAN_MS / 5)).await;
    }
    let extra = ensemble.packets_received(0).await.unwrap() - before - enqueues as u64;
    // Each bucket made ahead costs one create (sent once per slot); a bucket an enqueue
    // has to make costs four requests. Only each priority's first is made that way (plus
    // a ping or two, and the receipts' deletes of the last enqueues).
    let made_by_enqueues = 2;
    let allowed = buckets.len() as u64 + 2 * 2 + 4 * made_by_enqueues + 6;
    assert!(buckets.len() >= 10, "the enqueues spanned {} buckets", buckets.len());
    assert!(
        extra <= allowed,
        "{extra} requests besides the {enqueues} enqueues over {} buckets (at most {allowed} if they were made ahead)",
        buckets.len()
    );

    // The slots after the last enqueue's have their buckets, empty.
    let items = admin.list_children(&paths.items()).await.unwrap();
    let last = buckets.iter().map(|b| slot_of(b)).max().unwrap();
    let ahead: Vec<&String> = items.iter().filter(|b| slot_of(b) > last).collect();
    assert!(!ahead.is_empty(), "no bucket after the last enqueue's slot: {items:?}");
    for bucket in ahead {
        assert!(admin.list_children(&paths.bucket(bucket)).await.unwrap().is_empty(), "{bucket} made ahead is empty");
    }
}

/// The slot of a bucket name (`b<rank>-<slot>`).
fn slot_of(bucket: &str) -> u64 {
    queue::item::parse_bucket(bucket).expect("a bucket name").1 / BUCKET_SPAN_MS
}
