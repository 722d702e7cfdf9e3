//! A clean shutdown closes the session at once, so its ephemeral nodes (lock contenders,
//! queue claims) go with it, not a session timeout later, even while other tasks still
//! hold clones of its client, as queue views and lock watches do.

use std::time::Duration;

use paddock_recipes::{Session, SessionOptions, zk};
use paddock_testkit::{Ensemble, eventually, init_tracing, provision};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_deletes_the_sessions_ephemeral_nodes_while_clones_of_its_client_live() {
    init_tracing();
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    // A session timeout far longer than the test waits: only a real close frees the node.
    let session = Session::start(SessionOptions {
        connect: ensemble.connect_string(),
        session_timeout: Duration::from_secs(40),
        digest_auth: None,
        tls: None,
    });
    let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
    client.create("/held", b"", &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())).await.unwrap();
    // Another task keeps a clone, as a queue view does.
    let kept = client.clone();
    let watcher = tokio::spawn(async move {
        let (_, watch) = kept.check_and_watch_stat("/never").await.unwrap();
        watch.changed().await
    });

    session.close().await;
    eventually(Duration::from_secs(5), "the closed session's ephemeral node is gone", || async {
        admin.check_stat("/held").await.unwrap().is_none()
    })
    .await;
    assert!(matches!(client.check_stat("/held").await, Err(zk::Error::ClientClosed)), "the clone is closed too");
    watcher.abort();
}
