//! A waiter never leaves a watch behind on a contender that is gone: a watch set on a
//! node that no longer exists would wait for a path that is never created again
//! (contender names are unique) and stay on the server for the life of the session, the
//! leak Curator's lock recipe guards against by watching with getData.

use std::sync::Arc;
use std::time::Duration;

use paddock_recipes::identity::NodeAcl;
use paddock_recipes::lock::{self, AcquireRequest, Acquisition, HolderInfo, LockMode};
use paddock_recipes::{LockConfig, Session, SessionOptions};
use paddock_testkit::{Ensemble, init_tracing, provision};

const SESSIONS: usize = 4;
const CONTENDERS: usize = 16;
const ROUNDS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_on_a_mutex_leaves_no_watch_on_a_vanished_contender() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let lock_path = provision::lock(&admin, "ns", "churn", LockConfig::default()).await.unwrap();
    // Contenders on several sessions, as pods are: a release reaches the server between
    // another session's listing and its watch.
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        let session = Session::start(SessionOptions {
            connect: ensemble.connect_string(),
            session_timeout: Duration::from_secs(30),
            digest_auth: None,
            tls: None,
        });
        clients.push(session.wait_connected(Duration::from_secs(30)).await.unwrap().client);
    }
    let lock_path = Arc::new(lock_path);
    let mut tasks = Vec::new();
    for c in 0..CONTENDERS {
        let (client, lock_path) = (clients[c % SESSIONS].clone(), lock_path.clone());
        tasks.push(tokio::spawn(async move {
            let holder = HolderInfo { pod: "pod".into(), owner: format!("owner-{c}") };
            for _ in 0..ROUNDS {
                let request = AcquireRequest {
                    lock_path: &lock_path,
                    mode: LockMode::Exclusive,
                    holder: &holder,
                    wait: Duration::from_secs(30),
                    acl: NodeAcl::Open,
                };
                let Acquisition::Acquired(held) =
                    lock::acquire(&client, &LockConfig::default(), &request, &()).await.unwrap()
                else {
                    panic!("timed out")
                };
                assert!(lock::release(&client, &held).await.unwrap());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(admin.list_children(&lock_path).await.unwrap().is_empty());
    // `wchp`: every path the server holds a watch on. Nothing of the lock's may be left.
    let watches = ensemble.four_letter_word(0, "wchp").await.unwrap();
    let left: Vec<&str> = watches.lines().filter(|l| l.starts_with(lock_path.as_str())).collect();
    assert!(
        left.is_empty(),
        "{} watches left on vanished contenders, e.g. {:?}",
        left.len(),
        &left[..left.len().min(3)]
    );
}

/// The step itself, where the race above lands: a contender that vanished between the
/// waiter's listing and its watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_a_contender_that_is_gone_sets_no_watch() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    let lock_path = provision::lock(&admin, "ns", "gone", LockConfig::default()).await.unwrap();
    let session = Session::start(SessionOptions {
        connect: ensemble.connect_string(),
        session_timeout: Duration::from_secs(30),
        digest_auth: None,
        tls: None,
    });
    let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
    let present = format!("{lock_path}/_c_a-lock-0000000001");
    let vanished = format!("{lock_path}/_c_b-lock-0000000000");
    admin
        .create(&present, b"", &paddock_recipes::zk::CreateMode::Ephemeral.with_acls(NodeAcl::Open.acls()))
        .await
        .unwrap();

    let watcher = lock::watch_contender(&client, &present).await.unwrap();
    assert!(watcher.is_some(), "a present contender is watched");
    assert!(lock::watch_contender(&client, &vanished).await.unwrap().is_none(), "a vanished one is reported gone");
    let watches = ensemble.four_letter_word(0, "wchp").await.unwrap();
    assert!(watches.lines().any(|l| l == present), "the present contender's watch is on the server:\n{watches}");
    assert!(!watches.lines().any(|l| l == vanished), "a watch was left on the vanished contender:\n{watches}");
}
