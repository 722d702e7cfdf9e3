//! The Kubernetes API stand-in (tools/kube-standin) through `kube::Client`, the way the
//! operator will use it: CRDs from `crds/`, typed resources, status, conflicts,
//! finalizers, watch.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use paddock_kube_standin::ApiServer;
use paddock_operator::crd::{DeletionPolicy, DistributedLock, DistributedLockSpec, DistributedLockStatus, WorkQueue};
use serde_json::json;

async fn with_crds() -> (ApiServer, kube::Client) {
    let server = ApiServer::start().await.unwrap();
    let client = server.client().unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for doc in include_str!("../../crds/paddock.dev.yaml").split("---\n") {
        let crd: CustomResourceDefinition = serde_yaml::from_str(doc).unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    (server, client)
}

fn lock(name: &str) -> DistributedLock {
    DistributedLock::new(
        name,
        DistributedLockSpec { max_holders: 1, ttl: None, lock_delay: None, deletion_policy: DeletionPolicy::Retain },
    )
}

#[tokio::test]
async fn typed_resources_with_status_conflicts_and_finalizers() {
    let (_server, client) = with_crds().await;
    let locks: Api<DistributedLock> = Api::namespaced(client.clone(), "default");
    let created = locks.create(&PostParams::default(), &lock("orders")).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "status is a subresource: not set by create");

    // Status through /status; the spec stays, the generation does not move.
    let status =
        json!({"status": DistributedLockStatus { waiters: 2, observed_generation: Some(1), ..Default::default() }});
    let patched = locks.patch_status("orders", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    assert_eq!(patched.status.unwrap().waiters, 2);
    assert_eq!(patched.metadata.generation, Some(1));

    // A spec change bumps the generation; a stale resourceVersion is a 409.
    let mut stale = locks.get("orders").await.unwrap();
    let mut fresh = stale.clone();
    fresh.spec.max_holders = 3;
    let updated = locks.replace("orders", &PostParams::default(), &fresh).await.unwrap();
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(updated.status.unwrap().waiters, 2, "replace keeps the status");
    stale.spec.max_holders = 5;
    let err = locks.replace("orders", &PostParams::default(), &stale).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref e) if e.code == 409), "{err}");

    // Finalizers hold a delete until they are removed.
    let finalizer = json!({"metadata": {"finalizers": ["paddock.dev/znodes"]}});
    locks.patch("orders", &PatchParams::default(), &Patch::Merge(&finalizer)).await.unwrap();
    locks.delete("orders", &DeleteParams::default()).await.unwrap();
    let deleting = locks.get("orders").await.unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let none = json!({"metadata": {"finalizers": null}});
    locks.patch("orders", &PatchParams::default(), &Patch::Merge(&none)).await.unwrap();
    assert!(locks.get_opt("orders").await.unwrap().is_none(), "gone once the finalizer is removed");

    // Server-side apply creates, and the other kind is served too.
    let queues: Api<WorkQueue> = Api::namespaced(client, "default");
    let applied = json!({"apiVersion": "paddock.dev/v1alpha1", "kind": "WorkQueue", "metadata": {"name": "jobs"},
        "spec": {"maxAttempts": 3, "visibilityTimeout": "1m"}});
    let queue = queues.patch("jobs", &PatchParams::apply("test"), &Patch::Apply(&applied)).await.unwrap();
    assert_eq!(queue.spec.max_attempts, 3);
}

#[tokio::test]
async fn kube_runtime_watchers_see_every_change() {
    let (_server, client) = with_crds().await;
    let locks: Api<DistributedLock> = Api::namespaced(client.clone(), "default");
    locks.create(&PostParams::default(), &lock("before")).await.unwrap();
    let mut events = watcher(locks.clone(), watcher::Config::default()).applied_objects().boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.try_next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("before"), "the initial list");
    locks.create(&PostParams::default(), &lock("after")).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), events.try_next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.metadata.name.as_deref(), Some("after"), "a live change");
    let status = json!({"status": {"waiters": 7}});
    locks.patch_status("after", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(10), events.try_next()).await.unwrap().unwrap().unwrap();
    assert_eq!(changed.status.map(|s| s.waiters), Some(7));
}

/// kubectl (the machine's /usr/bin/kubectl) against the stand-in: apply the CRDs and the
/// examples, and `kubectl get` shows the printer columns from the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_and_shows_printer_columns() {
    let server = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let kubectl = |args: &[&str]| {
        let kubeconfig = kubeconfig.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            let output = tokio::process::Command::new("kubectl")
                .args(&args)
                .env("KUBECONFIG", &kubeconfig)
                .current_dir(root)
                .output()
                .await
                .expect("kubectl runs");
            assert!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap()
        }
    };
    assert!(kubectl(&["apply", "-f", "crds/"]).await.contains("distributedlocks.paddock.dev created"));
    let applied = kubectl(&["apply", "-f", "examples/"]).await;
    assert!(applied.contains("distributedlock.paddock.dev/orders created"), "{applied}");
    assert!(kubectl(&["apply", "-f", "examples/"]).await.contains("unchanged"), "apply is idempotent");

    let locks: Api<DistributedLock> = Api::namespaced(server.client().unwrap(), "default");
    let status = json!({"status": {"holders": [{"pod": "web-0", "owner": "w1", "token": 42}], "waiters": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    locks.patch_status("orders", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();

    let table = kubectl(&["get", "dlock"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "HOLDER", "WAITERS", "READY", "AGE"], "{table}");
    let orders = table.lines().find(|l| l.starts_with("orders")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = orders.split_whitespace().collect();
    assert_eq!(&cells[..4], ["orders", "web-0", "3", "True"], "{table}");
    assert!(kubectl(&["get", "paddock"]).await.contains("jobs"), "the category lists both kinds");
    assert!(kubectl(&["delete", "wq", "jobs"]).await.contains("deleted"));
}

#[tokio::test]
async fn custom_resources_are_validated_and_defaulted_against_the_crd_schema() {
    let (_server, client) = with_crds().await;
    let locks: Api<DistributedLock> = Api::namespaced(client, "default");
    let created = locks.create(&PostParams::default(), &lock("defaults")).await.unwrap();
    assert_eq!(created.spec.deletion_policy, DeletionPolicy::Retain);
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        locks.clone().into_client(),
        "default",
        &kube::api::ApiResource::erase::<DistributedLock>(&()),
    );
    // Defaults fill what the manifest left out, as the API server does.
    let minimal: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "paddock.dev/v1alpha1", "kind": "DistributedLock", "metadata": {"name": "minimal"}, "spec": {}
    }))
    .unwrap();
    let stored = raw.create(&PostParams::default(), &minimal).await.unwrap();
    assert_eq!(stored.data["spec"]["maxHolders"], 1);
    assert_eq!(stored.data["spec"]["deletionPolicy"], "Retain");
    for (spec, complaint) in [
        (json!({"maxHolders": 0}), "greater than or equal to 1"),
        (json!({"maxHolders": "two"}), "must be of type integer"),
        (json!({"ttl": "soon"}), "should match"),
        (json!({"deletionPolicy": "Maybe"}), "Unsupported value"),
    ] {
        let bad: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "paddock.dev/v1alpha1", "kind": "DistributedLock", "metadata": {"name": "bad"}, "spec": spec
        }))
        .unwrap();
        let err = raw.create(&PostParams::default(), &bad).await.unwrap_err();
        let kube::Error::Api(status) = err else { panic!("{err}") };
        assert_eq!(status.code, 422, "{spec}");
        assert!(status.message.contains(complaint), "{spec}: {}", status.message);
    }
}
