//! The ZooKeeper ensemble harness against the real server: it serves, survives the loss
//! of its leader, and expires the session of a client that stops answering.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paddock_testkit::{Ensemble, Mode, ProcessHandle, init_tracing};
use zookeeper_client as zk;

fn open() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_write_and_read_a_znode() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    assert_eq!(ensemble.len(), 3);
    let mut modes = Vec::new();
    for i in 0..3 {
        modes.push(ensemble.mode(i).await.expect("every server serves"));
    }
    assert_eq!(modes.iter().filter(|m| **m == Mode::Leader).count(), 1, "{modes:?}");
    assert_eq!(modes.iter().filter(|m| **m == Mode::Follower).count(), 2, "{modes:?}");

    let writer = zk::Client::connect(&ensemble.address(0).to_string()).await.unwrap();
    writer.create("/hello", b"paddock", &open()).await.unwrap();
    // A client of another server reads the write after a sync (ZooKeeper's read-your-
    // writes across servers).
    let reader = zk::Client::connect(&ensemble.address(2).to_string()).await.unwrap();
    reader.sync("/hello").await.unwrap();
    let (data, stat) = reader.get_data("/hello").await.unwrap();
    assert_eq!(data, b"paddock");
    assert_eq!(stat.version, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_succeed_after_the_leader_is_killed() {
    init_tracing();
    let mut ensemble = Ensemble::start().await.unwrap();
    let client = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&ensemble.connect_string())
        .await
        .unwrap();
    client.create("/before", b"1", &open()).await.unwrap();

    let old_leader = ensemble.leader().await.expect("a leader");
    ensemble.kill(old_leader);
    let new_leader = ensemble.wait_for_leader(Duration::from_secs(30)).await.unwrap();
    assert_ne!(new_leader, old_leader);

    // The client's next write goes through once it has reconnected to a server of the
    // new quorum; connection loss meanwhile is retried, as an application would.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.create("/after", b"2", &open()).await {
            Ok(_) => break,
            Err(zk::Error::ConnectionLoss | zk::Error::Timeout) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(zk::Error::NodeExists) => break, // the lost attempt had been applied
            Err(e) => panic!("write after leader change failed: {e}"),
        }
    }
    let (data, _) = client.get_data("/after").await.unwrap();
    assert_eq!(data, b"2");
    let (data, _) = client.get_data("/before").await.unwrap();
    assert_eq!(data, b"1", "data written under the old leader survives");
    assert_eq!(client.state(), zk::SessionState::SyncConnected, "the session survived the leader change");

    // The killed server rejoins as a follower.
    ensemble.restart(old_leader, Duration::from_secs(30)).await.unwrap();
    assert_eq!(ensemble.mode(old_leader).await, Some(Mode::Follower));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_client_loses_its_ephemeral_node_after_the_session_timeout() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let session_timeout = Duration::from_millis(1500);
    let mut command = Command::new(env!("CARGO_BIN_EXE_zk-hold-ephemeral"));
    command
        .args([&ensemble.connect_string(), "/held", &session_timeout.as_millis().to_string()])
        .stdout(Stdio::piped());
    let mut holder = ProcessHandle::spawn("zk-hold-ephemeral", command).unwrap();
    let stdout = holder_stdout(&mut holder);
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    })
    .await
    .unwrap();

    let observer = zk::Client::connect(&ensemble.connect_string()).await.unwrap();
    let stat = observer.check_stat("/held").await.unwrap().expect("the ephemeral node exists");
    assert_ne!(stat.ephemeral_owner, 0);

    // Stopped, the client sends no pings; the ensemble expires its session and deletes
    // its ephemeral node. The deletion is observed by a watch, not by polling.
    let (_, watcher) = observer.check_and_watch_stat("/held").await.unwrap();
    holder.pause().unwrap();
    let event = tokio::time::timeout(Duration::from_secs(30), watcher.changed()).await.expect("node deleted");
    assert_eq!(event.event_type, zk::EventType::NodeDeleted);
    assert_eq!(observer.check_stat("/held").await.unwrap(), None);
    holder.resume().unwrap();
}

fn holder_stdout(holder: &mut ProcessHandle) -> std::process::ChildStdout {
    holder.take_stdout().expect("stdout is piped")
}

/// With each server on a host of its own, a partition really cuts one off: its client
/// cannot reach it, the other two keep a quorum and take writes, and once healed it
/// rejoins and serves those writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_server_is_cut_off_and_rejoins_when_healed() {
    init_tracing();
    let options = paddock_testkit::EnsembleOptions { isolated_network: true, ..Default::default() };
    let mut ensemble = Ensemble::start_with(options).await.unwrap();
    assert!(!ensemble.address(0).ip().is_loopback(), "each server has an address of its own");
    let leader = ensemble.leader().await.expect("a leader");
    let victim = (leader + 1) % 3;
    let others: Vec<String> = (0..3).filter(|i| *i != victim).map(|i| ensemble.address(i).to_string()).collect();

    ensemble.partition(victim).unwrap();
    // The victim answers nothing, not even a four-letter word (the connect times out).
    let reply = ensemble.four_letter_word(victim, "ruok").await;
    assert!(reply.is_err(), "a partitioned server answered: {reply:?}");
    // The majority side takes writes.
    let client = zk::Client::connect(&others.join(",")).await.unwrap();
    client.create("/during-partition", b"x", &open()).await.unwrap();

    ensemble.heal(victim).unwrap();
    ensemble.wait_until_serving(Duration::from_secs(60)).await.unwrap();
    let rejoined = zk::Client::connect(&ensemble.address(victim).to_string()).await.unwrap();
    rejoined.sync("/during-partition").await.unwrap();
    assert_eq!(rejoined.get_data("/during-partition").await.unwrap().0, b"x");
}
