//! Many groups, and one long group, against a real ensemble: a view lists them all when it
//! starts (10,000 groups; a group of 100,000 items, a child list of about 3 MB), offers
//! only heads, one per group, and hands a long group out in order. What it costs per
//! claim is measured in the benchmarks (`bash scripts/bench.sh queues`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_recipes::queue::group::GroupKey;
use paddock_recipes::queue::view::QueueView;
use paddock_recipes::queue::{self, NewItem};
use paddock_recipes::{Layout, Name, QueueConfig, Session, SessionOptions};
use paddock_testkit::{Ensemble, init_tracing, provision};

const GROUPS: usize = 10_000;
const LONG: usize = 100_000;

fn grouped(group: &str, payload: String) -> NewItem {
    NewItem { payload: payload.into_bytes(), group: Some(GroupKey::new(group).unwrap()), ..NewItem::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_groups_and_a_group_of_a_hundred_thousand_are_offered_head_by_head() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "scale", "q", QueueConfig::default()).await.unwrap();
    let paths =
        Layout::new("/paddock").unwrap().queue(&Name::new("ns", "scale").unwrap(), &Name::new("q", "q").unwrap());

    let started = Instant::now();
    // The long group first, so its head is the oldest item of the queue.
    for chunk in (0..LONG).collect::<Vec<_>>().chunks(1000) {
        let items: Vec<NewItem> = chunk.iter().map(|n| grouped("long", format!("long:{n}"))).collect();
        queue::enqueue(&admin, &paths, &items).await.unwrap();
    }
    for chunk in (0..GROUPS).collect::<Vec<_>>().chunks(500) {
        let items: Vec<NewItem> =
            chunk.iter().flat_map(|g| (0..2).map(move |n| grouped(&format!("g{g}"), format!("g{g}:{n}")))).collect();
        queue::enqueue(&admin, &paths, &items).await.unwrap();
    }
    println!("enqueued {} items in {:?}", LONG + 2 * GROUPS, started.elapsed());
    let stats = queue::stats(&admin, &paths).await.unwrap();
    assert_eq!((stats.depth, stats.groups), ((LONG + 2 * GROUPS) as u64, GROUPS as u64 + 1));
    let longest = queue::longest_group(&admin, &paths).await.unwrap().unwrap();
    assert_eq!((longest.group.as_str(), longest.items), ("long", LONG as u64));

    let session = Session::start(SessionOptions {
        connect: ensemble.connect_string(),
        session_timeout: Duration::from_secs(20),
        digest_auth: None,
        tls: None,
    });
    let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
    let listed = Instant::now();
    let view = QueueView::start(session, paths.clone(), Arc::new(()));
    while !view.is_synced() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("a view listed {} groups in {:?}", GROUPS + 1, listed.elapsed());
    assert_eq!(view.footprint().1, LONG + 2 * GROUPS, "the view knows every grouped item");

    // Batches of 100 take one head per group: the long group's first item, then heads of
    // other groups; never a second item of a group that is in flight.
    let config = QueueConfig::default();
    let mut in_flight = HashSet::new();
    let mut held = Vec::new();
    for _ in 0..20 {
        let batch = queue::claim_batch(&client, &paths, &view, &config, "pod", 100, &()).await.unwrap();
        assert_eq!(batch.len(), 100);
        for d in batch {
            let group = d.envelope.group.clone().unwrap();
            assert!(in_flight.insert(group.clone()), "a second item of {group} while one is in flight");
            let text = String::from_utf8(d.payload.clone()).unwrap();
            assert!(text.ends_with(":0"), "{text} is not its group's head");
            held.push(d.id);
        }
    }
    assert!(in_flight.contains("long"));
    // Acked, the long group goes on in order.
    for result in queue::ack_many(&client, &paths, &held).await {
        result.unwrap();
    }
    let mut next_long = 1;
    while next_long < 50 {
        let batch = queue::claim_batch(&client, &paths, &view, &config, "pod", 100, &()).await.unwrap();
        let ids: Vec<_> = batch.iter().map(|d| d.id.clone()).collect();
        for d in &batch {
            let text = String::from_utf8(d.payload.clone()).unwrap();
            if let Some(n) = text.strip_prefix("long:") {
                assert_eq!(n.parse::<usize>().unwrap(), next_long, "the long group out of order");
                next_long += 1;
            }
        }
        for result in queue::ack_many(&client, &paths, &ids).await {
            result.unwrap();
        }
    }
}
