//! The steps of a claim, each outcome made to happen against a real server: claimed,
//! lost the race (held by another, or its history moved on), gone, and unknown (a lost
//! reply, through the fault proxy) resolved either way.

use std::time::Duration;

use paddock_recipes::layout::QueuePaths;
use paddock_recipes::queue::claim::{Read, read_candidate, resolve_unknown, try_claim};
use paddock_recipes::queue::item::ItemId;
use paddock_recipes::queue::{self, Candidate, ClaimOutcome, NewItem};
use paddock_recipes::{Layout, Name, QueueConfig, zk};
use paddock_testkit::fault_proxy::{Match, Outcome, op};
use paddock_testkit::{Ensemble, FaultProxy, init_tracing, provision};

struct World {
    ensemble: Ensemble,
    admin: zk::Client,
    paths: QueuePaths,
    id: ItemId,
}

/// One server, a queue, one item in it.
async fn world() -> World {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "steps", "q", QueueConfig::default()).await.unwrap();
    let paths =
        Layout::new("/paddock").unwrap().queue(&Name::new("ns", "steps").unwrap(), &Name::new("q", "q").unwrap());
    let item =
        NewItem { payload: b"job".to_vec(), content_type: None, priority: 0, delay: Duration::ZERO, group: None };
    let id = queue::enqueue(&admin, &paths, &[item]).await.unwrap().remove(0).expect("an id");
    World { ensemble, admin, paths, id }
}

async fn candidate(client: &zk::Client, paths: &QueuePaths, id: &ItemId) -> Candidate {
    match read_candidate(client, paths, id).await.unwrap() {
        Read::Found(candidate) => *candidate,
        other => panic!("the item is there to read: {other:?}"),
    }
}

async fn consumer(w: &World) -> zk::Client {
    provision::admin(&w.ensemble.connect_string()).await.unwrap()
}

async fn claim_owner(w: &World) -> Option<i64> {
    w.admin.check_stat(&w.paths.claim(&w.id.to_string())).await.unwrap().map(|s| s.ephemeral_owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_item_is_claimed_on_its_first_attempt() {
    let w = world().await;
    let client = consumer(&w).await;
    let outcome = try_claim(&client, &w.paths, candidate(&client, &w.paths, &w.id).await, "pod-a").await.unwrap();
    let ClaimOutcome::Claimed(delivery) = outcome else { panic!("claimed: {outcome:?}") };
    assert_eq!((delivery.attempt, delivery.payload.as_slice()), (1, &b"job"[..]));
    assert_eq!(claim_owner(&w).await, Some(client.session_id().0), "the claim is this session's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_claimed_by_another_since_it_was_read_is_a_lost_race() {
    let w = world().await;
    let (late, early) = (consumer(&w).await, consumer(&w).await);
    let read_late = candidate(&late, &w.paths, &w.id).await;
    let read_early = candidate(&early, &w.paths, &w.id).await;
    assert!(matches!(try_claim(&early, &w.paths, read_early, "pod-b").await.unwrap(), ClaimOutcome::Claimed(_)));
    let outcome = try_claim(&late, &w.paths, read_late, "pod-a").await.unwrap();
    assert!(matches!(outcome, ClaimOutcome::LostRace), "{outcome:?}");
    assert_eq!(claim_owner(&w).await, Some(early.session_id().0), "the winner keeps its claim");
}

/// Claimed and given up since it was read: nobody holds it, but its history has one
/// attempt more than the read saw, so the claim would miscount. A lost race: read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_whose_history_moved_on_since_it_was_read_is_a_lost_race() {
    let w = world().await;
    let (late, early) = (consumer(&w).await, consumer(&w).await);
    let read_late = candidate(&late, &w.paths, &w.id).await;
    let read_early = candidate(&early, &w.paths, &w.id).await;
    assert!(matches!(try_claim(&early, &w.paths, read_early, "pod-b").await.unwrap(), ClaimOutcome::Claimed(_)));
    queue::release_claim(&early, &w.paths, &w.id).await.unwrap();
    let outcome = try_claim(&late, &w.paths, read_late, "pod-a").await.unwrap();
    assert!(matches!(outcome, ClaimOutcome::LostRace), "{outcome:?}");
    assert_eq!(claim_owner(&w).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_acked_since_it_was_read_is_gone() {
    let w = world().await;
    let (late, early) = (consumer(&w).await, consumer(&w).await);
    let read_late = candidate(&late, &w.paths, &w.id).await;
    let read_early = candidate(&early, &w.paths, &w.id).await;
    assert!(matches!(try_claim(&early, &w.paths, read_early, "pod-b").await.unwrap(), ClaimOutcome::Claimed(_)));
    queue::ack(&early, &w.paths, &w.id).await.unwrap();
    let outcome = try_claim(&late, &w.paths, read_late, "pod-a").await.unwrap();
    assert!(matches!(outcome, ClaimOutcome::Gone), "{outcome:?}");
    assert!(matches!(read_candidate(&late, &w.paths, &w.id).await.unwrap(), Read::Gone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_was_lost_is_unknown_and_resolves_to_the_claim_it_made() {
    let w = world().await;
    let proxy = FaultProxy::for_ensemble(&w.ensemble).await.unwrap();
    let client = provision::admin(&proxy.connect_string()).await.unwrap();
    let read = candidate(&client, &w.paths, &w.id).await;
    let lost =
        proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/claims/"), ..Default::default() });
    let outcome = try_claim(&client, &w.paths, read, "pod-a").await.unwrap();
    assert!(lost.wait(Duration::from_secs(10)).await.unwrap().applied);
    let ClaimOutcome::Unknown { delivery, error } = outcome else { panic!("unknown: {outcome:?}") };
    let delivery = resolve_unknown(&client, &w.paths, delivery, error).await.expect("the claim is found to be ours");
    assert_eq!(delivery.attempt, 1);
    assert_eq!(claim_owner(&w).await, Some(client.session_id().0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_never_reached_the_server_is_unknown_and_resolves_to_an_error() {
    let w = world().await;
    let proxy = FaultProxy::for_ensemble(&w.ensemble).await.unwrap();
    let client = provision::admin(&proxy.connect_string()).await.unwrap();
    let read = candidate(&client, &w.paths, &w.id).await;
    let lost = proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some("/claims/"),
        outcome: Outcome::NotSent,
        ..Default::default()
    });
    let outcome = try_claim(&client, &w.paths, read, "pod-a").await.unwrap();
    assert!(!lost.wait(Duration::from_secs(10)).await.unwrap().applied);
    let ClaimOutcome::Unknown { delivery, error } = outcome else { panic!("unknown: {outcome:?}") };
    assert!(resolve_unknown(&client, &w.paths, delivery, error).await.is_err(), "not ours: not delivered");
    assert_eq!(claim_owner(&w).await, None, "and nobody holds it");
}
