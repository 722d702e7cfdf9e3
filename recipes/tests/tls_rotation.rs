//! A rotated client certificate is picked up without a restart: the session's TLS files are
//! read again every 10 s, and the next connection — here a reconnect within the same
//! session, after its server restarted — presents the new certificate, as ZooKeeper's
//! `whoami` shows (real 3-node ensemble serving TLS only).

use std::time::Duration;

use paddock_recipes::tls::{RELOAD_INTERVAL, TlsFiles, ZkTls};
use paddock_recipes::{Session, SessionEvent, SessionOptions};
use paddock_testkit::{Ensemble, EnsembleOptions, init_tracing};

async fn x509_ids(session: &Session) -> Vec<String> {
    let client = session.wait_connected(Duration::from_secs(30)).await.unwrap().client;
    let users = client.list_auth_users().await.unwrap();
    users.iter().filter(|u| u.scheme() == "x509").map(|u| u.user().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_presented_at_the_next_reconnect() {
    init_tracing();
    let mut ensemble = Ensemble::start_with(EnsembleOptions { tls: true, ..Default::default() }).await.unwrap();
    let tls = ensemble.tls().unwrap();
    let first = tls.issue_client("rotating", "CN=first,O=paddock").unwrap();
    let files = TlsFiles { ca: tls.ca_path(), identity: Some((first.cert.clone(), first.key.clone())) };
    // One server only, so that restarting it makes the session reconnect (to it).
    let session = Session::start(SessionOptions {
        connect: ensemble.address(0).to_string(),
        session_timeout: Duration::from_secs(30),
        digest_auth: None,
        tls: Some(ZkTls::load(files).unwrap()),
    });
    let mut events = session.subscribe();
    assert_eq!(x509_ids(&session).await, ["CN=first,O=paddock"]);

    // The same files, rewritten with a new certificate and key.
    let second = tls.issue_client("rotating", "CN=second,O=paddock").unwrap();
    assert_eq!((second.cert.clone(), second.key.clone()), (first.cert.clone(), first.key.clone()));
    tokio::time::sleep(RELOAD_INTERVAL + Duration::from_secs(2)).await;
    assert_eq!(x509_ids(&session).await, ["CN=first,O=paddock"], "an open connection keeps its certificate");

    ensemble.restart(0, Duration::from_secs(60)).await.unwrap();
    assert_eq!(x509_ids(&session).await, ["CN=second,O=paddock"], "the reconnect presents the new certificate");
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert!(seen.contains(&SessionEvent::Reconnected { generation: 1 }), "{seen:?}");
    assert!(!seen.iter().any(|e| matches!(e, SessionEvent::Expired { .. })), "the same session: {seen:?}");
    session.close().await;
}
