//! The fault suite, short (CI): the whole system under every kind of fault, then the
//! checkers. And deliberately broken variants, to prove the checkers bite (and one whose
//! consumers fail some items, to prove dead letters are counted, not lost), the grouped
//! workload's two checkers included. The runs
//! take turns: they share the machine's two cores.
//!
//! `PADDOCK_CHAOS_SEED` replays a run's fault schedule, `PADDOCK_CHAOS_DURATION` (e.g.
//! `5m`) lengthens it, `PADDOCK_CHAOS_TLS=0` runs the short run in plain text (it is over
//! TLS otherwise); `bash scripts/chaos.sh --duration 30m` is the long run.

use std::time::Duration;

use paddock_chaos::{self as chaos, Broken, ChaosOptions, FaultKind};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seed() -> u64 {
    std::env::var("PADDOCK_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_under_every_fault_has_no_violation_and_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let duration = std::env::var("PADDOCK_CHAOS_DURATION")
        .ok()
        .map(|d| humantime::parse_duration(&d).expect("PADDOCK_CHAOS_DURATION like 5m"))
        .unwrap_or(Duration::from_secs(150));
    // Over TLS, as the chart runs it: every client with a certificate, the fault proxies
    // terminating TLS to lose replies (tools/chaos/src/cluster.rs). `PADDOCK_CHAOS_TLS=0`
    // runs it in plain text.
    let tls = !std::env::var("PADDOCK_CHAOS_TLS").is_ok_and(|v| v == "0");
    let options = ChaosOptions { seed: seed(), duration, tls, ..Default::default() };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    assert!(report.violations.is_empty(), "violations (seed {}):\n{report}", report.seed);
    assert!(report.lost.is_empty(), "items lost (seed {}):\n{report}", report.seed);
    assert_eq!(report.durability.writes_lost(), 0, "ZooKeeper lost confirmed writes (seed {}):\n{report}", report.seed);
    assert!(report.durability.creates_confirmed > 0, "the durability ledger wrote:\n{report}");
    assert_eq!(report.fault_counts.len(), FaultKind::ALL.len(), "every kind of fault was injected:\n{report}");
    let count = |what: &str| report.operations.iter().find(|(w, _)| w.contains(what)).map(|(_, n)| *n).unwrap();
    assert!(count("increments") > 0 && count("deliveries") > 0 && count("semaphore") > 0 && count("write holds") > 0);
    assert!(count("keyed enqueues answered as duplicates") > 0, "every 20th keyed item was sent again:\n{report}");
    assert!(count("leader writes accepted") > 0, "leaders were elected and wrote:\n{report}");
    assert!(count("grouped items processed") > 0 && count("grouped batched acks") > 0, "grouped items:\n{report}");
    for checker in ["group-order:", "group-exclusive:"] {
        assert!(report.checks.iter().any(|c| c.starts_with(checker)), "{checker} judged:\n{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fencing_checks_the_store_loses_updates_and_the_checker_says_so() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let options = ChaosOptions {
        seed: seed(),
        duration: Duration::from_secs(25),
        faults: vec![FaultKind::PauseSidecar],
        broken: Some(Broken::NoFencing),
        ..Default::default()
    };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    assert!(
        report.violations.iter().any(|v| v.starts_with("counter:")),
        "a paused holder's stale write went unnoticed:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_ack_before_processing_lose_items_and_the_ledger_says_so() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let options = ChaosOptions {
        seed: seed(),
        duration: Duration::from_secs(25),
        faults: vec![FaultKind::KillSidecar],
        broken: Some(Broken::AckBeforeProcessing),
        ..Default::default()
    };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    assert!(!report.lost.is_empty(), "items acked but never processed went unnoticed:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_that_always_fail_are_dead_lettered_and_counted_not_lost() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let options = ChaosOptions {
        seed: seed(),
        duration: Duration::from_secs(15),
        faults: vec![FaultKind::KillSidecar],
        broken: Some(Broken::FailSomeItems),
        ..Default::default()
    };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    let count = |what: &str| report.operations.iter().find(|(w, _)| w.contains(what)).map(|(_, n)| *n).unwrap();
    let failing = count("items to fail enqueued");
    assert!(failing > 0 && count("nacks confirmed") > 0, "no item was failed on purpose:\n{report}");
    // Every confirmed item meant to fail is in the dead letters (a missing one would be
    // lost: it was never processed), and none is reported lost or as a violation.
    assert!(report.lost.is_empty(), "dead-lettered items reported lost:\n{report}");
    assert!(
        report.dead_lettered >= failing,
        "{failing} items to fail, {} dead letters:\n{report}",
        report.dead_lettered
    );
    assert!(report.violations.is_empty(), "violations:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_zookeeper_writes_undone_behind_the_ledger_are_reported() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let options = ChaosOptions {
        seed: seed(),
        duration: Duration::from_secs(15),
        faults: vec![FaultKind::KillZkLeader],
        broken: Some(Broken::ZookeeperLosesWrites),
        ..Default::default()
    };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    let durability = &report.durability;
    assert!(durability.undone_on_purpose > 0, "the saboteur undid something:\n{report}");
    assert!(!durability.lost_creates.is_empty(), "deleted confirmed creates went unnoticed:\n{report}");
    assert!(!durability.undone_deletes.is_empty(), "recreated confirmed deletes went unnoticed:\n{report}");
    assert!(!report.clean(), "a run whose ZooKeeper lost writes is not clean:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_producers_that_drop_their_keys_store_items_twice_and_the_ledger_says_so() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let options = ChaosOptions {
        seed: seed(),
        duration: Duration::from_secs(15),
        faults: vec![FaultKind::PauseZkFollower],
        broken: Some(Broken::DropIdempotencyKeys),
        ..Default::default()
    };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    assert!(
        report.violations.iter().any(|v| v.contains("sent with an idempotency key")),
        "items stored twice went unnoticed:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_writing_to_an_unfenced_log_is_two_leaders_and_the_checker_says_so() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let options = ChaosOptions {
        seed: seed(),
        duration: Duration::from_secs(25),
        faults: vec![FaultKind::PauseSidecar],
        broken: Some(Broken::ElectionWithoutFencing),
        ..Default::default()
    };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    assert!(
        report.violations.iter().any(|v| v.starts_with("election:")),
        "a paused leader's write after its successor's went unnoticed:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_consumers_that_ack_before_processing_finish_a_group_out_of_order_and_the_checker_says_so() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let options = ChaosOptions {
        seed: seed(),
        duration: Duration::from_secs(20),
        faults: vec![FaultKind::PauseZkFollower],
        broken: Some(Broken::GroupAckBeforeProcessing),
        ..Default::default()
    };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    assert!(
        report.violations.iter().any(|v| v.starts_with("group-order:")),
        "a group's next item processed before the one acked ahead of its processing went unnoticed:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_drops_the_group_lets_two_items_of_it_run_at_once_and_the_checker_says_so() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let options = ChaosOptions {
        seed: seed(),
        duration: Duration::from_secs(20),
        faults: vec![FaultKind::PauseZkFollower],
        broken: Some(Broken::ProducersDropGroups),
        ..Default::default()
    };
    let report = chaos::run(options).await.unwrap();
    println!("{report}");
    assert!(
        report.violations.iter().any(|v| v.starts_with("group-exclusive:")),
        "two items of one group in flight at once went unnoticed:\n{report}"
    );
}
