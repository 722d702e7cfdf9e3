//! Two operator replicas: one leads (the Lease says which), the other waits; when the
//! leader dies the other takes the Lease over and reconciles.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use paddock_e2e::apiserver::ApiServer;
use paddock_e2e::{Ensemble, Operator, OperatorOptions, eventually, init_tracing, workspace_binary};
use paddock_operator::crd::{DeletionPolicy, DistributedLock, DistributedLockSpec};
use paddock_recipes::identity::DigestIdentity;

async fn ready(locks: &Api<DistributedLock>, name: &str) -> bool {
    locks
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|l| l.status)
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn lock(name: &str) -> DistributedLock {
    DistributedLock::new(
        name,
        DistributedLockSpec { max_holders: 1, ttl: None, deletion_policy: DeletionPolicy::Retain },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over_when_it_dies() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let api = ApiServer::start().await.unwrap();
    let client = api.client().unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for doc in include_str!("../../crds/paddock.dev.yaml").split("---\n") {
        crds.create(&PostParams::default(), &serde_yaml::from_str(doc).unwrap()).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    let operator_identity = DigestIdentity::generate("paddock-operator");
    let mut replicas = Vec::new();
    for name in ["operator-a", "operator-b"] {
        let mut options = OperatorOptions::new(
            workspace_binary("paddock-operator"),
            &kubeconfig,
            &ensemble.connect_string(),
            &operator_identity.credentials(),
        )
        .pod(name, "default");
        options.lease_duration = Duration::from_secs(3);
        replicas.push(Operator::spawn(options).unwrap());
    }

    let locks: Api<DistributedLock> = Api::namespaced(client.clone(), "default");
    locks.create(&PostParams::default(), &lock("first")).await.unwrap();
    eventually(Duration::from_secs(60), "the leader reconciles", || ready(&locks, "first")).await;
    let leases: Api<Lease> = Api::namespaced(client, "default");
    let holder = || async {
        leases.get_opt("paddock-operator").await.unwrap().and_then(|l| l.spec).and_then(|s| s.holder_identity)
    };
    let leader = holder().await.expect("a leader holds the Lease");

    // Kill the leader; the other replica takes over within the lease duration.
    let replica = replicas.iter_mut().find(|r| r.pod_name() == leader).unwrap();
    replica.process.kill();
    locks.create(&PostParams::default(), &lock("second")).await.unwrap();
    eventually(Duration::from_secs(60), "the other replica leads", || async {
        holder().await.is_some_and(|h| h != leader)
    })
    .await;
    eventually(Duration::from_secs(60), "and reconciles", || ready(&locks, "second")).await;
}
