//! A persistent recursive watch survives a reconnect with the session intact: the server
//! the client comes back to must be told about it again (SetWatches2). Queue views, lock
//! waiters and the operator's triggers depend on it. zookeeper-client 0.11.2 dropped it
//! (see vendor/README.md); this test failed before the patch.

use std::time::Duration;

use paddock_recipes::zk;
use paddock_testkit::{Ensemble, Mode, init_tracing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_recursive_watch_fires_after_the_client_reconnects() {
    init_tracing();
    let mut ensemble = Ensemble::start().await.unwrap();
    let mut follower = None;
    for index in 0..ensemble.len() {
        if ensemble.mode(index).await == Some(Mode::Follower) {
            follower = Some(index);
        }
    }
    let follower = follower.expect("a follower");
    let writer = zk::Client::connect(&ensemble.connect_string()).await.unwrap();
    writer.create("/w", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await.unwrap();

    // Connected to the follower alone, so it comes back to that same server, restarted
    // with no memory of the watch.
    let client = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .connect(&ensemble.address(follower).to_string())
        .await
        .unwrap();
    let mut watcher = client.watch("/w", zk::AddWatchMode::PersistentRecursive).await.unwrap();
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    writer.create("/w/before", b"", &open).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watcher.changed()).await.unwrap();
    assert_eq!((event.event_type, event.path.as_str()), (zk::EventType::NodeCreated, "/w/before"));

    ensemble.kill(follower);
    ensemble.restart(follower, Duration::from_secs(60)).await.unwrap();
    // The watcher reports the disconnect and the reconnect, then the node events.
    let reconnected = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = watcher.changed().await;
            if event.event_type == zk::EventType::Session && event.session_state == zk::SessionState::SyncConnected {
                return;
            }
        }
    })
    .await;
    assert!(reconnected.is_ok(), "the client did not reconnect to the restarted server");
    writer.create("/w/after", b"", &open).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), watcher.changed())
        .await
        .expect("no event after the reconnect: the server was not told about the watch again");
    assert_eq!((event.event_type, event.path.as_str()), (zk::EventType::NodeCreated, "/w/after"));
}
