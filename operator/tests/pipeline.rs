//! The reconcile steps against a real 3-node ensemble (no Kubernetes needed): build and
//! apply provision znodes with config and ACL, observe reads holders and depth, cleanup
//! removes a lock and keeps a queue that still holds items.

use paddock_operator::crd::{DeletionPolicy, DistributedLockSpec, WorkQueueSpec};
use paddock_operator::reconcile::cleanup::Cleanup;
use paddock_operator::reconcile::{Identities, apply, build, cleanup, observe};
use paddock_recipes::identity::{DigestIdentity, NodeAcl, ZkId};
use paddock_recipes::lock::{self, AcquireRequest, HolderInfo, LockMode};
use paddock_recipes::queue::{self, NewItem};
use paddock_recipes::{Layout, LockConfig, Name, zk};
use paddock_testkit::{Ensemble, init_tracing};

async fn authed(connect: &str, identity: &DigestIdentity) -> zk::Client {
    zk::Client::connector().with_auth("digest", identity.credentials().as_bytes()).connect(connect).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_observe_and_clean_up_a_lock_and_a_queue() {
    init_tracing();
    let ensemble = Ensemble::start().await.unwrap();
    let connect = ensemble.connect_string();
    let (ns_id, op_id) = (DigestIdentity::generate("paddock-ns-shop"), DigestIdentity::generate("paddock-operator"));
    let ids =
        Identities { namespace: ZkId::Digest(ns_id.clone()), operator: ZkId::Digest(op_id.clone()), legacy: None };
    let operator = authed(&connect, &op_id).await;
    operator.auth("digest", ns_id.credentials().as_bytes()).await.unwrap();
    let layout = Layout::new("/paddock").unwrap();
    let ns = Name::new("namespace", "shop").unwrap();
    let (lock_name, queue_name) = (Name::new("lock", "orders").unwrap(), Name::new("queue", "jobs").unwrap());

    // build + apply, twice (idempotent; the second changes the config).
    let mut spec =
        DistributedLockSpec { max_holders: 1, ttl: None, lock_delay: None, deletion_policy: DeletionPolicy::Retain };
    for max_holders in [1, 2] {
        spec.max_holders = max_holders;
        let desired = build::lock(&layout, &ns, &lock_name, &spec, &ids).unwrap();
        apply::lock(&operator, &layout, &ns, &lock_name, &desired).await.unwrap();
    }
    let path = "/paddock/shop/locks/orders";
    let (data, _) = operator.get_data(path).await.unwrap();
    assert_eq!(LockConfig::from_znode(path, &data).unwrap().max_holders, 2, "apply updates the config");
    let (acl, _) = operator.get_acl(path).await.unwrap();
    assert_eq!(acl.len(), 2, "the namespace's identity and the operator's: {acl:?}");
    let (root_acl, _) = operator.get_acl("/paddock").await.unwrap();
    assert_eq!(root_acl.len(), 1, "the root is the operator's alone: {root_acl:?}");
    assert_eq!(root_acl[0].id(), op_id.acl_id());
    let queue_spec = WorkQueueSpec { deletion_policy: DeletionPolicy::Retain, ..WorkQueueSpec::default() };
    let desired = build::queue(&layout, &ns, &queue_name, &queue_spec, &ids).unwrap();
    apply::queue(&operator, &layout, &ns, &queue_name, &desired).await.unwrap();

    // A workload of the namespace takes the lock and enqueues.
    let app = authed(&connect, &ns_id).await;
    let holder = HolderInfo { pod: "web-0".into(), owner: "worker-1".into() };
    let request = AcquireRequest {
        lock_path: path,
        mode: LockMode::Exclusive,
        holder: &holder,
        wait: std::time::Duration::ZERO,
        acl: NodeAcl::Creator,
    };
    let config = lock::read_config(&app, path).await.unwrap();
    let lock::Acquisition::Acquired(held) = lock::acquire(&app, &config, &request, &()).await.unwrap() else {
        panic!("free lock")
    };
    let app_layout = layout.clone().with_node_acl(NodeAcl::Creator);
    let paths = app_layout.queue(&ns, &queue_name);
    let item = NewItem {
        payload: b"x".to_vec(),
        content_type: None,
        priority: 0,
        delay: std::time::Duration::ZERO,
        group: None,
    };
    queue::enqueue(&app, &paths, &[item.clone(), item]).await.unwrap();
    // The enqueue's receipt is left for the app session's next enqueue to delete (or
    // deleted on its own within 50 ms), and another session's depth counts it until
    // then. The app's own count deletes its left receipts first, and the operator syncs,
    // so the operator's count below comes after that delete.
    assert_eq!(queue::stats(&app, &paths).await.unwrap().depth, 2);
    operator.sync(&paths.base).await.unwrap();

    // observe: what `kubectl get dlock,wq` will show.
    let (holders, waiters) = observe::lock(&operator, path, 2).await.unwrap();
    assert_eq!((holders.len(), waiters), (1, 0));
    assert_eq!((holders[0].pod.as_str(), holders[0].owner.as_str()), ("web-0", "worker-1"));
    assert_eq!(holders[0].token, held.token, "the status shows the fencing token");
    let stats = observe::queue(&operator, &layout.queue(&ns, &queue_name)).await.unwrap();
    assert_eq!((stats.depth, stats.in_flight), (2, 0));

    // cleanup: the lock goes, live contender and all; the non-empty queue stays.
    assert_eq!(cleanup::lock(&operator, path).await.unwrap(), Cleanup::Deleted);
    assert_eq!(operator.check_stat(path).await.unwrap(), None);
    assert_eq!(cleanup::lock(&operator, path).await.unwrap(), Cleanup::Deleted, "idempotent");
    let queue_paths = layout.queue(&ns, &queue_name);
    assert_eq!(
        cleanup::queue(&operator, &queue_paths, DeletionPolicy::Retain).await.unwrap(),
        Cleanup::Kept { depth: 2, dead_lettered: 0 }
    );
    assert!(operator.check_stat(&queue_paths.base).await.unwrap().is_some(), "nothing lost by accident");
    assert_eq!(cleanup::queue(&operator, &queue_paths, DeletionPolicy::Delete).await.unwrap(), Cleanup::Deleted);
    assert_eq!(operator.check_stat(&queue_paths.base).await.unwrap(), None);
    assert_eq!(cleanup::queue(&operator, &queue_paths, DeletionPolicy::Retain).await.unwrap(), Cleanup::Deleted);
}

#[test]
fn an_invalid_spec_builds_nothing() {
    let ids = Identities {
        namespace: ZkId::Digest(DigestIdentity::generate("paddock-ns-shop")),
        operator: ZkId::Digest(DigestIdentity::generate("paddock-operator")),
        legacy: None,
    };
    let spec =
        DistributedLockSpec { max_holders: 0, ttl: None, lock_delay: None, deletion_policy: DeletionPolicy::Retain };
    let layout = Layout::new("/paddock").unwrap();
    let err =
        build::lock(&layout, &Name::new("n", "shop").unwrap(), &Name::new("l", "x").unwrap(), &spec, &ids).unwrap_err();
    assert_eq!(err.field, "spec.maxHolders");
}
