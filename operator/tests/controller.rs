//! The real operator binary against a real 3-node ensemble and the Kubernetes API
//! stand-in, driven with kubectl: resources become Ready with their znodes and ACL, a
//! sidecar's lock and queue show in `kubectl get`, ZooKeeper going away turns them
//! Ready=False and coming back recovers them, and deletion cleans up (keeping a queue
//! that still holds items).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use paddock_kube_standin::ApiServer;
use paddock_operator::crd::{DistributedLock, WorkQueue};
use paddock_recipes::identity::DigestIdentity;
use paddock_recipes::zk;
use paddock_testkit::process::Sidecar;
use paddock_testkit::{
    Acquire, Ensemble, Operator, OperatorOptions, PodClient, SidecarOptions, eventually, init_tracing, workspace_binary,
};

fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Option<(String, String)> {
    conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.clone(), c.reason.clone()))
}

async fn as_operator(ensemble: &Ensemble, identity: &DigestIdentity) -> zk::Client {
    zk::Client::connector()
        .with_auth("digest", identity.credentials().as_bytes())
        .connect(&ensemble.connect_string())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_provisions_reports_recovers_and_cleans_up() {
    init_tracing();
    let mut ensemble = Ensemble::start().await.unwrap();
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let kubectl = |args: &[&str]| paddock_testkit::kubectl(&kubeconfig, args).unwrap();
    kubectl(&["apply", "-f", "crds/"]);
    kubectl(&["apply", "-f", "examples/"]);

    let operator_identity = DigestIdentity::generate("paddock-operator");
    let mut options = OperatorOptions::new(
        workspace_binary("paddock-operator"),
        &kubeconfig,
        &ensemble.connect_string(),
        &operator_identity.credentials(),
    );
    options.session_timeout = Duration::from_secs(4);
    let operator = Operator::spawn(options).unwrap();

    let client = api.client().unwrap();
    let locks: Api<DistributedLock> = Api::namespaced(client.clone(), "default");
    let queues: Api<WorkQueue> = Api::namespaced(client.clone(), "default");
    let lock_ready = || async {
        let lock = locks.get("orders").await.unwrap();
        lock.status.and_then(|s| ready(&s.conditions))
    };
    eventually(Duration::from_secs(60), "the lock is Ready", || async {
        lock_ready().await.is_some_and(|(s, _)| s == "True")
    })
    .await;
    eventually(Duration::from_secs(60), "the queue is Ready", || async {
        queues.get("jobs").await.unwrap().status.and_then(|s| ready(&s.conditions)).is_some_and(|(s, _)| s == "True")
    })
    .await;

    // Digest credentials over a plain connection: a Warning Event in the namespace says so.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    eventually(Duration::from_secs(30), "a CredentialsInClear Event", || async {
        let list = events.list(&Default::default()).await.unwrap();
        list.items.iter().any(|e| {
            e.reason.as_deref() == Some("CredentialsInClear")
                && e.type_.as_deref() == Some("Warning")
                && e.note.as_deref().is_some_and(|n| n.contains("PADDOCK_NAMESPACE_AUTH=x509"))
        })
    })
    .await;

    // The znodes exist with the config and the ACL (the namespace's identity and the operator's).
    let admin = as_operator(&ensemble, &operator_identity).await;
    let (acl, _) = admin.get_acl("/paddock/default/locks/orders").await.unwrap();
    assert_eq!(acl.len(), 2, "{acl:?}");
    let (data, _) = admin.get_data("/paddock/default/locks/workers").await.unwrap();
    assert!(String::from_utf8_lossy(&data).contains("\"maxHolders\":3"));

    // A pod of the namespace, with the credentials the operator put in its Secret.
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    let secret = secrets.get("paddock-zookeeper-credentials").await.unwrap();
    let credentials = String::from_utf8(secret.data.unwrap()["credentials"].0.clone()).unwrap();
    let options =
        SidecarOptions::new(workspace_binary("paddock-sidecar"), ensemble.connect_string(), "web-0", "default")
            .env("PADDOCK_ZK_AUTH", &credentials);
    let sidecar = Sidecar::start(options).await.unwrap();
    let pod = PodClient::new(sidecar.url(""));
    let Acquire::Acquired { token, .. } = pod.acquire("orders", "worker-1", "5s").await.unwrap() else { panic!() };
    assert_eq!(pod.enqueue("jobs", "one").await.unwrap().0, 201);
    assert_eq!(pod.enqueue("jobs", "two").await.unwrap().0, 201);

    // kubectl shows the holder and the depth soon after (the ZooKeeper watch, not a poll).
    eventually(Duration::from_secs(60), "kubectl shows the holder", || async {
        let table = kubectl(&["get", "dlock", "orders"]);
        table.contains("web-0")
    })
    .await;
    let lock = locks.get("orders").await.unwrap();
    assert_eq!(lock.status.unwrap().holders[0].token, token, "the status carries the fencing token");
    eventually(Duration::from_secs(60), "kubectl shows the depth", || async {
        let table = kubectl(&["get", "wq", "jobs"]);
        table.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(1) == Some("2"))
    })
    .await;

    // The operator counts its reconciles.
    let metrics = reqwest::get(operator.metrics_url()).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("paddock_operator_reconciles_total{kind=\"DistributedLock\"}"), "{metrics}");

    // ZooKeeper gone: Ready=False with the reason; back: Ready again, no restart.
    ensemble.stop_all();
    eventually(Duration::from_secs(60), "Ready=False while ZooKeeper is down", || async {
        lock_ready().await.is_some_and(|(s, reason)| s == "False" && reason == "ZooKeeperUnavailable")
    })
    .await;
    // The replica stays ready (its webhook needs the Kubernetes API, not ZooKeeper) and
    // says what it misses.
    let readyz = reqwest::get(operator.metrics_url().replace("/metrics", "/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 200);
    assert!(readyz.text().await.unwrap().contains("no ZooKeeper session"));
    ensemble.start_all(Duration::from_secs(60)).await.unwrap();
    eventually(Duration::from_secs(60), "Ready again after ZooKeeper returns", || async {
        lock_ready().await.is_some_and(|(s, _)| s == "True")
    })
    .await;

    // Deleting: the lock's znodes go; the queue with items is kept (policy Retain). (A new
    // admin session: the old one may have expired while the ensemble was down.)
    let admin = as_operator(&ensemble, &operator_identity).await;
    kubectl(&["delete", "dlock", "orders"]);
    eventually(Duration::from_secs(60), "the lock's znode is removed", || async {
        matches!(admin.check_stat("/paddock/default/locks/orders").await, Ok(None))
    })
    .await;
    assert!(locks.get_opt("orders").await.unwrap().is_none(), "the finalizer was removed");
    kubectl(&["delete", "wq", "jobs"]);
    eventually(Duration::from_secs(60), "the WorkQueue resource is gone", || async {
        queues.get_opt("jobs").await.unwrap().is_none()
    })
    .await;
    assert!(admin.check_stat("/paddock/default/queues/jobs").await.unwrap().is_some(), "its items are kept");
}
