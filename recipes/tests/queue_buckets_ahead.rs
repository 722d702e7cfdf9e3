//! A steady producer moves to a new bucket every [`BUCKET_SPAN_MS`]; the buckets of the
//! next slots are made ahead (`queue::ahead`), so the enqueue that first lands in one does
//! not fail its multi, look for the bucket, make it and send again (four requests, not
//! one). Real server.

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
    let mut buckets = HashSet::new();
    for n in 0..120 {
        let ids = queue::enqueue(&producer, &paths, &[item(n, (n % 2) as u8 * 5)]).await.unwrap();
        buckets.insert(ids[0].as_ref().expect("an id").bucket.clone());
        tokio::time::sleep(Duration::from_millis(BUCKET_SPAN_MS / 5)).await;
    }
    assert!(buckets.len() >= 10, "the enqueues spanned {} buckets", buckets.len());
    // A bucket made ahead was there before its slot began; one its first enqueue had to
    // make, only after. Each priority's first is of the second kind, and a slot an
    // enqueue skipped (a slow machine) can leave one more.
    let mut made_ahead = 0;
    for bucket in &buckets {
        let stat = admin.check_stat(&paths.bucket(bucket)).await.unwrap().expect("a bucket used");
        let slot_start = slot_of(bucket) * BUCKET_SPAN_MS;
        made_ahead += usize::from((stat.ctime as u64) < slot_start);
    }
    assert!(
        made_ahead * 4 >= buckets.len() * 3,
        "{made_ahead} of the {} buckets the enqueues used were made before their slot began",
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
