//! The fault proxy against a real ZooKeeper server: the request whose reply it loses was
//! applied, the client gets ConnectionLoss, reconnects through the proxy with the same
//! session, and its ephemerals survive; a refused request does not fire an
//! `Outcome::Applied` rule.

use std::time::Duration;

use paddock_testkit::fault_proxy::{Match, Outcome, op};
use paddock_testkit::{Ensemble, FaultProxy, init_tracing};
use zookeeper_client as zk;

fn open(mode: zk::CreateMode) -> zk::CreateOptions<'static> {
    mode.with_acls(zk::Acls::anyone_all())
}

async fn connected(client: &zk::Client) {
    let mut states = client.state_watcher();
    let wait = async {
        while client.state() != zk::SessionState::SyncConnected {
            states.changed().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.expect("reconnected within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_was_applied_and_the_session_survives_the_reconnect() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let proxy = FaultProxy::for_ensemble(&ensemble).await.unwrap();
    let direct = zk::Client::connect(&ensemble.connect_string()).await.unwrap();
    let client = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&proxy.connect_string())
        .await
        .unwrap();
    let session = client.session_id();
    client.create("/mine", b"", &open(zk::CreateMode::Ephemeral)).await.unwrap();
    assert_eq!(proxy.connections_accepted(), 1);

    // A delete of a missing node is refused: an Applied rule lets its reply through.
    let mut lost = proxy.lose_next_reply(Match {
        opcodes: &[op::DELETE, op::CREATE2],
        body_contains: Some("/lost"),
        outcome: Outcome::Applied,
        ..Default::default()
    });
    assert_eq!(client.delete("/lost", None).await, Err(zk::Error::NoNode));
    assert!(lost.fired().is_none(), "a refused request does not fire an Applied rule");

    let creates_before = proxy.forwarded(op::CREATE2);
    let result = client.create("/lost", b"applied", &open(zk::CreateMode::Persistent)).await;
    assert_eq!(result.map(|_| ()), Err(zk::Error::ConnectionLoss), "the client never hears the reply");
    let fired = lost.wait(Duration::from_secs(5)).await.unwrap();
    assert!(fired.applied && fired.err == 0, "{fired:?}");
    assert_eq!(fired.operations(), vec![(op::CREATE2, "/lost".to_owned())]);
    assert_eq!(proxy.forwarded(op::CREATE2), creates_before + 1, "a create is sent as create2 (15)");
    assert_eq!(proxy.replies_lost(), 1);

    // The server applied it: another client sees the node, created in the lost reply's zxid.
    let (data, stat) = direct.get_data("/lost").await.unwrap();
    assert_eq!((data.as_slice(), stat.czxid), (&b"applied"[..], fired.zxid));

    // The client reconnects through the proxy with the same session; its ephemeral lives.
    connected(&client).await;
    assert_eq!(client.session_id(), session);
    assert!(proxy.connections_accepted() >= 2, "a new connection through the proxy");
    let mine = direct.check_stat("/mine").await.unwrap().expect("the ephemeral survives");
    assert_eq!(mine.ephemeral_owner, session.0);
    assert_eq!(client.get_data("/lost").await.unwrap().0, b"applied");

    // A multi: the rule picks it by a path inside it.
    let mut multi = client.new_multi_writer();
    multi.add_create("/m1", b"", &open(zk::CreateMode::Persistent)).unwrap();
    multi.add_delete("/lost", None).unwrap();
    let lost = proxy.lose_next_reply(Match { opcodes: &[op::MULTI], body_contains: Some("/m1"), ..Default::default() });
    let result = multi.commit().await;
    assert!(
        matches!(result, Err(zk::MultiWriteError::RequestFailed { source: zk::Error::ConnectionLoss })),
        "{result:?}"
    );
    let fired = lost.wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(fired.operations(), vec![(op::CREATE2, "/m1".to_owned()), (op::DELETE, "/lost".to_owned())]);
    assert!(direct.check_stat("/m1").await.unwrap().is_some() && direct.check_stat("/lost").await.unwrap().is_none());
    connected(&client).await;
    assert_eq!(client.session_id(), session);

    // Disconnecting without a rule: the client comes back too.
    let mut states = client.state_watcher();
    proxy.disconnect_all();
    let dropped = async { while states.changed().await != zk::SessionState::Disconnected {} };
    tokio::time::timeout(Duration::from_secs(10), dropped).await.expect("the client sees the connection close");
    connected(&client).await;
    client.create("/after", b"", &open(zk::CreateMode::Persistent)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_multi_fires_only_a_rule_that_waits_for_a_refusal() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let proxy = FaultProxy::for_ensemble(&ensemble).await.unwrap();
    let client = zk::Client::connect(&proxy.connect_string()).await.unwrap();
    let refused = proxy.lose_next_reply(Match {
        opcodes: &[op::MULTI],
        body_contains: Some("/nowhere"),
        outcome: Outcome::Refused,
        ..Default::default()
    });
    let mut multi = client.new_multi_writer();
    multi.add_create("/nowhere/child", b"", &open(zk::CreateMode::Persistent)).unwrap();
    let result = multi.commit().await;
    assert!(
        matches!(result, Err(zk::MultiWriteError::RequestFailed { source: zk::Error::ConnectionLoss })),
        "{result:?}"
    );
    let fired = refused.wait(Duration::from_secs(5)).await.unwrap();
    assert!(!fired.applied, "a multi whose create had no parent: {fired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_past_the_session_timeout_expires_the_session_and_a_short_one_does_not() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let proxy = FaultProxy::for_ensemble(&ensemble).await.unwrap();
    let direct = zk::Client::connect(&ensemble.connect_string()).await.unwrap();
    let client = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .connect(&proxy.connect_string())
        .await
        .unwrap();
    let session = client.session_id();
    client.create("/held", b"", &open(zk::CreateMode::Ephemeral)).await.unwrap();

    // Cut for less than the session timeout: the session lives. The heal closes the
    // connection that lived through the cut; the client reconnects to the same session.
    proxy.blackhole();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(direct.check_stat("/held").await.unwrap().is_some());
    let mut states = client.state_watcher();
    proxy.heal();
    let dropped = async { while states.changed().await != zk::SessionState::Disconnected {} };
    tokio::time::timeout(Duration::from_secs(10), dropped).await.expect("the heal closes the connection");
    connected(&client).await;
    assert_eq!(client.session_id(), session);
    client.create("/short-cut", b"", &open(zk::CreateMode::Persistent)).await.unwrap();

    // Cut past it: the server expires the session (its ephemeral goes) while the client
    // hears nothing; after the heal the client learns its session expired.
    let mut states = client.state_watcher();
    proxy.blackhole();
    assert!(proxy.is_blackholed());
    let expired = async {
        while direct.check_stat("/held").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), expired).await.expect("the server expires the cut-off session");
    assert_ne!(client.state(), zk::SessionState::SyncConnected, "the client noticed the silence");
    proxy.heal();
    let learned = async { while states.changed().await != zk::SessionState::Expired {} };
    tokio::time::timeout(Duration::from_secs(15), learned).await.expect("the client learns its session expired");
}
