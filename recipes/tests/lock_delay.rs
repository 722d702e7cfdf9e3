//! Lock-delay in the recipe, on one server: a hold that ends without a release (here
//! `abandon`, as an elapsed lease does) leaves its held record, which holds back the next
//! grant for the lock-delay and is deleted by the acquirer that waited it out; a release
//! deletes contender and record together and grants at once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use paddock_recipes::identity::NodeAcl;
use paddock_recipes::lock::{self, AcquireRequest, Acquisition, Held, HolderInfo, LockMode, WakeObserver};
use paddock_recipes::{LockConfig, Session, SessionOptions, zk};
use paddock_testkit::{Ensemble, init_tracing, provision};

const DELAY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Delays(AtomicU32);

impl WakeObserver for Delays {
    fn woken(&self) {}
    fn delayed(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

async fn client(ensemble: &Ensemble) -> zk::Client {
    let options = SessionOptions {
        connect: ensemble.connect_string(),
        session_timeout: Duration::from_secs(30),
        digest_auth: None,
        tls: None,
    };
    Session::start(options).wait_connected(Duration::from_secs(30)).await.unwrap().client
}

async fn take(
    client: &zk::Client,
    config: &LockConfig,
    lock_path: &str,
    wait: Duration,
    seen: &Delays,
) -> Option<Held> {
    let holder = HolderInfo { pod: "pod".into(), owner: "owner".into() };
    let request = AcquireRequest { lock_path, mode: LockMode::Exclusive, holder: &holder, wait, acl: NodeAcl::Open };
    match lock::acquire(client, config, &request, seen).await.unwrap() {
        Acquisition::Acquired(held) => Some(held),
        Acquisition::TimedOut(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_ended_without_a_release_delays_the_next_grant_and_a_release_does_not() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let config = LockConfig { lock_delay: Some(DELAY), ..LockConfig::default() };
    let lock_path = provision::lock(&admin, "ns", "delayed", config.clone()).await.unwrap();
    let (first, second) = (client(&ensemble).await, client(&ensemble).await);
    let seen = Delays::default();

    let held = take(&first, &config, &lock_path, Duration::ZERO, &seen).await.expect("a free lock");
    let record = held.record.clone().expect("a lock with a lock-delay keeps a held record");
    assert!(lock::abandon(&first, &held).await.unwrap(), "the contender deleted, the record kept");
    assert_eq!(admin.list_children(&lock_path).await.unwrap(), [record.rsplit('/').next().unwrap()]);

    assert!(take(&second, &config, &lock_path, DELAY / 4, &seen).await.is_none(), "a shorter wait ends busy");
    let asked = Instant::now();
    let next = take(&second, &config, &lock_path, DELAY * 5, &seen).await.expect("granted after the delay");
    assert!(asked.elapsed() >= DELAY, "held back for the lock-delay: {:?}", asked.elapsed());
    assert_eq!(seen.0.load(Ordering::SeqCst), 2, "both acquires were held back, once each");
    let mut left = admin.list_children(&lock_path).await.unwrap();
    left.sort();
    assert_eq!(left.len(), 2, "the waited-out record is gone, the new holder's is there: {left:?}");
    assert!(!left.contains(&record.rsplit('/').next().unwrap().to_owned()));

    assert!(lock::release(&second, &next).await.unwrap());
    assert!(admin.list_children(&lock_path).await.unwrap().is_empty(), "contender and record went together");
    let asked = Instant::now();
    let again = take(&first, &config, &lock_path, Duration::ZERO, &seen).await.expect("granted at once");
    assert!(asked.elapsed() < DELAY);
    assert_eq!(seen.0.load(Ordering::SeqCst), 2, "not held back after a release");
    assert!(lock::release(&first, &again).await.unwrap());
}

/// A lock whose lock-delay was turned off: a record left from before delays nobody, and
/// the next holder deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_lock_delay_a_left_record_delays_nobody_and_is_cleared() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let delayed = LockConfig { lock_delay: Some(Duration::from_secs(30)), ..LockConfig::default() };
    let lock_path = provision::lock(&admin, "ns", "was-delayed", delayed.clone()).await.unwrap();
    let client = client(&ensemble).await;
    let seen = Delays::default();
    let held = take(&client, &delayed, &lock_path, Duration::ZERO, &seen).await.unwrap();
    lock::abandon(&client, &held).await.unwrap();

    let plain = LockConfig::default();
    let next = take(&client, &plain, &lock_path, Duration::ZERO, &seen).await.expect("no delay without lockDelay");
    assert_eq!((next.record.as_ref(), seen.0.load(Ordering::SeqCst)), (None, 0));
    assert_eq!(admin.list_children(&lock_path).await.unwrap().len(), 1, "only the contender: the old record cleared");
    assert!(lock::release(&client, &next).await.unwrap());
}
