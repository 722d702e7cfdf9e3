//! Per-namespace isolation on a real ensemble: each namespace's znodes carry an ACL for
//! its own digest identity and the operator's; a client or sidecar with namespace A's
//! identity gets NoAuth on namespace B's locks and queues.

mod common;

use common::SIDECAR;
use paddock_recipes::identity::{DigestIdentity, namespace_acl};
use paddock_recipes::provision::{ensure_lock, ensure_queue};
use paddock_recipes::{Layout, LockConfig, Name, QueueConfig, zk};
use paddock_testkit::process::Sidecar;
use paddock_testkit::{Acquire, Ensemble, PodClient, SidecarOptions, init_tracing};

async fn authed(connect: &str, identity: Option<&DigestIdentity>) -> zk::Client {
    let mut connector = zk::Client::connector();
    if let Some(identity) = identity {
        connector = connector.with_auth("digest", identity.credentials().as_bytes());
    }
    connector.connect(connect).await.unwrap()
}

async fn sidecar_as(ensemble: &Ensemble, namespace: &str, identity: &DigestIdentity) -> (Sidecar, PodClient) {
    let options = SidecarOptions::new(SIDECAR, ensemble.connect_string(), "pod-x", namespace)
        .env("PADDOCK_ZK_AUTH", &identity.credentials());
    let sidecar = Sidecar::start(options).await.unwrap();
    let pod = PodClient::new(sidecar.url(""));
    (sidecar, pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_namespace_cannot_touch_anothers_locks_and_queues() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let connect = ensemble.connect_string();
    let operator = DigestIdentity::generate("paddock-operator");
    let team_a = DigestIdentity::generate("paddock-ns-team-a");
    let team_b = DigestIdentity::generate("paddock-ns-team-b");

    // Provisioned as the operator: the root for the operator alone, each namespace's
    // subtree for that namespace and the operator.
    let admin = authed(&connect, Some(&operator)).await;
    let operator_only = [zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("digest", &operator.acl_id()))];
    admin.create("/paddock", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&operator_only))).await.unwrap();
    let layout = Layout::new("/paddock").unwrap();
    for (ns, identity) in [("team-a", &team_a), ("team-b", &team_b)] {
        let acl = namespace_acl(identity, &operator);
        let ns = Name::new("namespace", ns).unwrap();
        ensure_lock(
            &admin,
            &layout,
            &ns,
            &Name::new("lock", "shared").unwrap(),
            &LockConfig::default(),
            zk::Acls::new(&acl),
        )
        .await
        .unwrap();
        ensure_queue(
            &admin,
            &layout,
            &ns,
            &Name::new("queue", "jobs").unwrap(),
            &QueueConfig::default(),
            zk::Acls::new(&acl),
        )
        .await
        .unwrap();
    }

    // A raw client with team-a's identity: its own namespace yes, team-b's no.
    let a = authed(&connect, Some(&team_a)).await;
    a.get_data("/paddock/team-a/locks/shared").await.expect("own lock readable");
    let open = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::creator_all());
    assert_eq!(a.get_data("/paddock/team-b/locks/shared").await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(a.create("/paddock/team-b/locks/shared/_c_x-lock-", b"", &open).await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(a.list_children("/paddock/team-b/queues/jobs/items").await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(a.list_children("/paddock").await.unwrap_err(), zk::Error::NoAuth, "namespaces are not listable");
    // Nobody without an identity.
    let anonymous = authed(&connect, None).await;
    for path in ["/paddock/team-a/locks/shared", "/paddock/team-b/queues/jobs"] {
        assert_eq!(anonymous.get_data(path).await.unwrap_err(), zk::Error::NoAuth, "{path}");
    }

    // Through sidecars: team-a's works in team-a; a pod of team-b holding team-a's
    // credentials (misconfigured or hostile) is refused; team-b's own works.
    let (_a, pod_a) = sidecar_as(&ensemble, "team-a", &team_a).await;
    let Acquire::Acquired { .. } = pod_a.acquire("shared", "w", "0s").await.unwrap() else { panic!("own lock") };
    assert_eq!(pod_a.enqueue("jobs", "a-item").await.unwrap().0, 201);

    let (_intruder, intruder) = sidecar_as(&ensemble, "team-b", &team_a).await;
    let Acquire::Failed { status, body } = intruder.acquire("shared", "w", "0s").await.unwrap() else {
        panic!("team-a's identity must not lock in team-b")
    };
    assert_eq!((status, body["error"].as_str()), (403, Some("zookeeper-no-auth")), "{body}");
    let (status, body) = intruder.enqueue("jobs", "sneaky").await.unwrap();
    assert_eq!((status, body["error"].as_str()), (403, Some("zookeeper-no-auth")), "{body}");

    let (_b, pod_b) = sidecar_as(&ensemble, "team-b", &team_b).await;
    let Acquire::Acquired { .. } = pod_b.acquire("shared", "w", "0s").await.unwrap() else {
        panic!("team-b's own lock")
    };
    assert!(pod_b.next("jobs", "2s").await.unwrap().is_none(), "team-b's queue got nothing from team-a");

    // What a sidecar creates belongs to its namespace's identity alone: even the operator
    // reads it only after adding that namespace's credentials to its session.
    let contender = admin.list_children("/paddock/team-a/locks/shared").await.unwrap().pop().unwrap();
    let path = format!("/paddock/team-a/locks/shared/{contender}");
    assert_eq!(admin.get_data(&path).await.unwrap_err(), zk::Error::NoAuth);
    admin.auth("digest", team_a.credentials().as_bytes()).await.unwrap();
    admin.get_data(&path).await.expect("readable with the namespace's credentials");
    let (acl, _) = admin.get_acl(&path).await.unwrap();
    assert_eq!(acl.len(), 1);
    assert_eq!(acl[0].id(), team_a.acl_id());
    let b = authed(&connect, Some(&team_b)).await;
    assert_eq!(b.get_data(&path).await.unwrap_err(), zk::Error::NoAuth);
}
