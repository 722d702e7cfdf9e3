//! Namespace identities by certificate (issue 18), with the real operator binary, the
//! Kubernetes API stand-in and a real 3-node ensemble that serves TLS only: the operator
//! issues each namespace a client certificate into its Secret, signed by the ensemble's
//! CA; namespace A's certificate gets NoAuth on namespace B's locks and queues, raw and
//! through a sidecar; the operator reads both namespaces; and a certificate the operator
//! renews (30 s lifetime here) reaches the Secret before it expires, with a sidecar whose
//! files are rewritten, and a sidecar started with the new ones, serving without a failed request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use paddock_kube_standin::ApiServer;
use paddock_operator::crd::{DistributedLock, WorkQueue};
use paddock_recipes::zk;
use paddock_testkit::process::Sidecar;
use paddock_testkit::{
    Acquire, Ensemble, EnsembleOptions, Operator, OperatorOptions, PodClient, SidecarOptions, eventually, init_tracing,
    workspace_binary,
};

const RESOURCES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b}
---
apiVersion: paddock.dev/v1alpha1
kind: DistributedLock
metadata: {name: shared, namespace: team-a}
spec: {maxHolders: 1}
---
apiVersion: paddock.dev/v1alpha1
kind: WorkQueue
metadata: {name: jobs, namespace: team-a}
spec: {maxAttempts: 3, visibilityTimeout: 30s}
---
apiVersion: paddock.dev/v1alpha1
kind: DistributedLock
metadata: {name: shared, namespace: team-b}
spec: {maxHolders: 1}
---
apiVersion: paddock.dev/v1alpha1
kind: WorkQueue
metadata: {name: jobs, namespace: team-b}
spec: {maxAttempts: 3, visibilityTimeout: 30s}
";

/// The namespace's Secret's keys (`tls.crt`, `tls.key`, `ca.crt`, `operator-id`).
async fn identity(client: &kube::Client, namespace: &str) -> BTreeMap<String, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get("paddock-zookeeper-credentials").await.unwrap();
    secret.data.unwrap().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect()
}

/// Writes the Secret's files into `dir` as the kubelet's mount would (each file replaced
/// whole); returns the sidecar's environment for them.
fn mount(dir: &Path, identity: &BTreeMap<String, String>) -> Vec<(String, String)> {
    std::fs::create_dir_all(dir).unwrap();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let tmp = dir.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, &identity[key]).unwrap();
        std::fs::rename(&tmp, dir.join(key)).unwrap();
    }
    let file = |key: &str| dir.join(key).display().to_string();
    vec![
        ("PADDOCK_ZK_TLS_CA".into(), file("ca.crt")),
        ("PADDOCK_ZK_TLS_CERT".into(), file("tls.crt")),
        ("PADDOCK_ZK_TLS_KEY".into(), file("tls.key")),
        ("PADDOCK_ZK_OPERATOR_ID".into(), identity["operator-id"].clone()),
    ]
}

async fn sidecar(ensemble: &Ensemble, pod: &str, namespace: &str, env: Vec<(String, String)>) -> (Sidecar, PodClient) {
    let mut options =
        SidecarOptions::new(workspace_binary("paddock-sidecar"), ensemble.connect_string(), pod, namespace);
    options.env.extend(env);
    let sidecar = Sidecar::start(options).await.unwrap();
    let client = PodClient::new(sidecar.url(""));
    (sidecar, client)
}

/// A raw ZooKeeper client presenting the Secret's certificate.
async fn raw(ensemble: &Ensemble, identity: &BTreeMap<String, String>) -> zk::Client {
    let options = zk::TlsOptions::new()
        .with_pem_ca(&identity["ca.crt"])
        .unwrap()
        .with_pem_identity(&identity["tls.crt"], &identity["tls.key"])
        .unwrap();
    paddock_testkit::provision::admin_tls(&ensemble.connect_string(), options).await.unwrap()
}

/// The API stand-in with the CRDs and the test's resources applied: (the server, a
/// directory for the test's files, its kubeconfig there).
async fn stand_in() -> (ApiServer, tempfile::TempDir, std::path::PathBuf) {
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    paddock_testkit::kubectl(&kubeconfig, &["apply", "-f", "crds/"]).unwrap();
    paddock_testkit::kubectl_apply(&kubeconfig, RESOURCES).unwrap();
    (api, dir, kubeconfig)
}

struct Setup {
    ensemble: Ensemble,
    _api: ApiServer,
    _operator: Operator,
    client: kube::Client,
    dir: tempfile::TempDir,
    operator_id: String,
}

async fn setup() -> Setup {
    setup_with(&[]).await
}

/// [`setup`], with the operator's extra environment `env`.
async fn setup_with(env: &[(&str, String)]) -> Setup {
    init_tracing();
    let ensemble = Ensemble::start_with(EnsembleOptions { tls: true, ..Default::default() }).await.unwrap();
    let tls = ensemble.tls().unwrap();
    let (api, dir, kubeconfig) = stand_in().await;

    // The operator: its own certificate, the ensemble's CA as the client CA, no digest.
    let own = tls.issue_client("operator", "CN=paddock-operator,O=paddock").unwrap();
    let mut options =
        OperatorOptions::new(workspace_binary("paddock-operator"), &kubeconfig, &ensemble.connect_string(), "");
    options.env.extend(own.env(&tls.ca_path()));
    let (ca, key) = (tls.ca_path().display().to_string(), tls.ca_key_path().display().to_string());
    let options = options
        .env("PADDOCK_CLIENT_CA_CERT", &ca)
        .env("PADDOCK_CLIENT_CA_KEY", &key)
        .env("PADDOCK_CLIENT_CERT_LIFETIME", "30s");
    let options = env.iter().fold(options, |options, (key, value)| options.env(key, value));
    let operator = Operator::spawn(options).unwrap();
    let client = api.client().unwrap();
    for ns in ["team-a", "team-b"] {
        let locks: Api<DistributedLock> = Api::namespaced(client.clone(), ns);
        let queues: Api<WorkQueue> = Api::namespaced(client.clone(), ns);
        eventually(Duration::from_secs(60), "the lock and the queue are Ready", || async {
            let ready = |c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            };
            let lock = locks.get("shared").await.unwrap().status.is_some_and(|s| ready(&s.conditions));
            lock && queues.get("jobs").await.unwrap().status.is_some_and(|s| ready(&s.conditions))
        })
        .await;
    }
    Setup { ensemble, _api: api, _operator: operator, client, dir, operator_id: own.subject }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_certificate_cannot_touch_another_namespace_and_the_operator_reads_both() {
    let setup = setup().await;
    let (a, b) = (identity(&setup.client, "team-a").await, identity(&setup.client, "team-b").await);
    assert_eq!(a["operator-id"], setup.operator_id, "the sidecars learn the operator's x509 id");
    assert_eq!(a["ca.crt"], std::fs::read_to_string(setup.ensemble.tls().unwrap().ca_path()).unwrap());
    assert!(!a.contains_key("credentials"), "no digest credentials with certificate identities");

    // The provisioned znodes name the namespace's certificate and the operator's.
    let raw_a = raw(&setup.ensemble, &a).await;
    let (acl, _) = raw_a.get_acl("/paddock/team-a/locks/shared").await.unwrap();
    let ids: Vec<(&str, &str)> = acl.iter().map(|a| (a.scheme(), a.id())).collect();
    assert_eq!(ids, [("x509", "CN=paddock-ns-team-a,O=paddock"), ("x509", "CN=paddock-operator,O=paddock")]);

    // Raw, with team-a's certificate: its own namespace yes, team-b's no.
    raw_a.get_data("/paddock/team-a/queues/jobs").await.expect("own queue readable");
    let open = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::creator_all());
    assert_eq!(raw_a.get_data("/paddock/team-b/locks/shared").await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(
        raw_a.create("/paddock/team-b/locks/shared/_c_x-lock-", b"", &open).await.unwrap_err(),
        zk::Error::NoAuth
    );
    assert_eq!(raw_a.list_children("/paddock/team-b/queues/jobs/items").await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(raw_a.list_children("/paddock").await.unwrap_err(), zk::Error::NoAuth, "namespaces are not listable");

    // Through sidecars: each namespace's own works; team-a's certificate in team-b is refused.
    let (_a, pod_a) = sidecar(&setup.ensemble, "a-0", "team-a", mount(&setup.dir.path().join("a"), &a)).await;
    let Acquire::Acquired { .. } = pod_a.acquire("shared", "a-0", "0s").await.unwrap() else { panic!("own lock") };
    assert_eq!(pod_a.enqueue("jobs", "a-item").await.unwrap().0, 201);
    let (_intruder, intruder) = sidecar(&setup.ensemble, "x-0", "team-b", mount(&setup.dir.path().join("x"), &a)).await;
    let Acquire::Failed { status, body } = intruder.acquire("shared", "x-0", "0s").await.unwrap() else {
        panic!("team-a's certificate must not lock in team-b")
    };
    assert_eq!((status, body["error"].as_str()), (403, Some("zookeeper-no-auth")), "{body}");
    let (status, body) = intruder.enqueue("jobs", "sneaky").await.unwrap();
    assert_eq!((status, body["error"].as_str()), (403, Some("zookeeper-no-auth")), "{body}");
    let (_b, pod_b) = sidecar(&setup.ensemble, "b-0", "team-b", mount(&setup.dir.path().join("b"), &b)).await;
    let Acquire::Acquired { .. } = pod_b.acquire("shared", "b-0", "0s").await.unwrap() else { panic!("own lock") };
    assert_eq!(pod_b.enqueue("jobs", "b-item").await.unwrap().0, 201);

    // What a sidecar creates names its namespace and the operator; team-b cannot read it.
    let contender = raw_a.list_children("/paddock/team-a/locks/shared").await.unwrap().pop().unwrap();
    let path = format!("/paddock/team-a/locks/shared/{contender}");
    let (acl, _) = raw_a.get_acl(&path).await.unwrap();
    let ids: Vec<&str> = acl.iter().map(|a| a.id()).collect();
    assert_eq!(ids, ["CN=paddock-ns-team-a,O=paddock", "CN=paddock-operator,O=paddock"]);
    assert_eq!(raw(&setup.ensemble, &b).await.get_data(&path).await.unwrap_err(), zk::Error::NoAuth);

    // The operator reads both namespaces: holders and depths reach the resources' status.
    for (ns, pod) in [("team-a", "a-0"), ("team-b", "b-0")] {
        let locks: Api<DistributedLock> = Api::namespaced(setup.client.clone(), ns);
        let queues: Api<WorkQueue> = Api::namespaced(setup.client.clone(), ns);
        eventually(Duration::from_secs(60), "the status shows the holder and the depth", || async {
            let lock =
                locks.get("shared").await.unwrap().status.is_some_and(|s| s.holders.iter().any(|h| h.pod == pod));
            lock && queues.get("jobs").await.unwrap().status.is_some_and(|s| s.depth == 1)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_reaches_the_secret_before_expiry_and_sidecars_keep_serving() {
    let setup = setup().await;
    let first = identity(&setup.client, "team-a").await;
    let issued_at = std::time::Instant::now();
    let files: PathBuf = setup.dir.path().join("a");
    let (_a, pod) = sidecar(&setup.ensemble, "a-0", "team-a", mount(&files, &first)).await;

    // Requests all along, while the kubelet (this loop) rewrites the mounted files.
    let mut served = 0;
    let renewed = loop {
        assert_eq!(pod.enqueue("jobs", "during rotation").await.unwrap().0, 201, "no failed request");
        let item = pod.next("jobs", "1s").await.unwrap().expect("the item");
        assert_eq!(pod.settle("jobs", &item.id, "ack", "").await.unwrap().0, 200, "no failed request");
        served += 1;
        let current = identity(&setup.client, "team-a").await;
        if current["tls.crt"] != first["tls.crt"] {
            mount(&files, &current);
            break current;
        }
        assert!(issued_at.elapsed() < Duration::from_secs(28), "renewed before the 30 s certificate expires");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(issued_at.elapsed() < Duration::from_secs(30), "renewed before expiry");
    assert!(served > 5, "served {served} rounds during the first certificate's life");
    assert_eq!(renewed["ca.crt"], first["ca.crt"]);

    // A new sidecar with the new files, and the first one past the old certificate's expiry.
    let (_new, new_pod) = sidecar(&setup.ensemble, "a-1", "team-a", mount(&files, &renewed)).await;
    let Acquire::Acquired { .. } = new_pod.acquire("shared", "a-1", "0s").await.unwrap() else { panic!("lock") };
    assert_eq!(new_pod.release("shared", "a-1").await.unwrap().0, 200);
    while issued_at.elapsed() < Duration::from_secs(35) {
        assert_eq!(pod.enqueue("jobs", "after").await.unwrap().0, 201, "no failed request");
        let item = new_pod.next("jobs", "1s").await.unwrap().expect("the item");
        assert_eq!(new_pod.settle("jobs", &item.id, "ack", "").await.unwrap().0, 200, "no failed request");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The new certificate is what ZooKeeper sees: a raw client with it is team-a.
    let raw_new = raw(&setup.ensemble, &renewed).await;
    let users = raw_new.list_auth_users().await.unwrap();
    assert!(users.iter().any(|u| u.scheme() == "x509" && u.user() == "CN=paddock-ns-team-a,O=paddock"), "{users:?}");
    raw_new.get_data("/paddock/team-a/locks/shared").await.expect("the renewed certificate is team-a");
}

/// The StatefulSet's pod-template annotations.
async fn template_annotations(client: &kube::Client) -> BTreeMap<String, String> {
    let api: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), "default");
    let statefulset = api.get("paddock-zookeeper").await.unwrap();
    statefulset.spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

fn write_replacing(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What each server presents in a TLS handshake.
async fn served(ensemble: &Ensemble) -> Vec<Option<Vec<u8>>> {
    let mut served = Vec::new();
    for index in 0..ensemble.len() {
        let address = ensemble.address(index);
        served.push(paddock_recipes::tls::served_certificate(&address.ip().to_string(), address.port()).await);
    }
    served
}

/// ZooKeeper 3.8 reads its key store only at start: the servers' certificate renewed in
/// their Secret, the operator restarts the ensemble's StatefulSet for it — not while the
/// servers serve the Secret's certificate, once when they do not, and not again once they
/// do — and a sidecar's session, lock and queue live through the servers' restart one at a
/// time without a failed request: the lock held, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_restarts_the_ensemble_once_and_sidecars_live_through_it() {
    use paddock_operator::ensemble_certs::{CERT_ANNOTATION, RESTARTED_AT_ANNOTATION, sha256_hex};
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("server-tls/tls.crt");
    let env = [
        ("PADDOCK_ZOOKEEPER_STATEFULSET", "paddock-zookeeper".to_owned()),
        ("PADDOCK_ZOOKEEPER_SERVER_CERT", cert_file.display().to_string()),
        ("PADDOCK_ZOOKEEPER_CERT_CHECK", "1s".to_owned()),
    ];
    let mut setup = setup_with(&env).await;
    let kubeconfig = setup.dir.path().join("kubeconfig");
    paddock_testkit::kubectl_apply(&kubeconfig, paddock_testkit::MANAGED_STATEFULSET).unwrap();

    // One certificate served by every server, as the chart's Secret holds one, and the
    // Secret (its mounted file) holding it: nothing to restart.
    let first = setup.ensemble.renew_server_certificate("zookeeper-first").unwrap();
    setup.ensemble.restart_one_at_a_time(Duration::from_secs(60)).await.unwrap();
    write_replacing(&cert_file, &first.cert_pem);
    assert_eq!(served(&setup.ensemble).await, vec![Some(der(&first.cert_pem)); 3]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(template_annotations(&setup.client).await.get(CERT_ANNOTATION), None, "no restart needed");

    let a = identity(&setup.client, "team-a").await;
    let (_a, pod) = sidecar(&setup.ensemble, "a-0", "team-a", mount(&setup.dir.path().join("a"), &a)).await;
    let Acquire::Acquired { token, .. } = pod.acquire("shared", "a-0", "0s").await.unwrap() else { panic!("lock") };

    // Renewed in the Secret: the operator restarts the ensemble for it.
    let second = setup.ensemble.renew_server_certificate("zookeeper-second").unwrap();
    write_replacing(&cert_file, &second.cert_pem);
    let fingerprint = sha256_hex(&der(&second.cert_pem));
    eventually(Duration::from_secs(30), "the StatefulSet restarted for the renewed certificate", || async {
        template_annotations(&setup.client).await.get(CERT_ANNOTATION) == Some(&fingerprint)
    })
    .await;
    let restarted_at = template_annotations(&setup.client).await[RESTARTED_AT_ANNOTATION].clone();

    // The StatefulSet controller's part, with a sidecar working all along: a request in
    // flight on the connection of a server that stops, or sent while the session moves to
    // another server, waits for it and succeeds.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = tokio::spawn({
        let (pod, stop) = (pod.clone(), stop.clone());
        async move {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, body) = pod.enqueue("jobs", "during the restart").await.unwrap();
                assert_eq!(code, 201, "no failed request: {body}");
                let item = pod.next("jobs", "5s").await.expect("no failed request").expect("the item");
                let (code, body) = pod.settle("jobs", &item.id, "ack", "").await.unwrap();
                assert_eq!(code, 200, "no failed request: {body}");
                rounds += 1;
            }
            rounds
        }
    });
    setup.ensemble.restart_one_at_a_time(Duration::from_secs(60)).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = worker.await.unwrap();
    assert!(rounds > 10, "{rounds} rounds during the restart");
    assert_eq!(served(&setup.ensemble).await, vec![Some(der(&second.cert_pem)); 3]);
    let (code, status) = pod.lock_status("shared", "a-0").await.unwrap();
    assert_eq!((code, &status["state"]), (200, &serde_json::json!("held")), "the lock lived through it: {status}");
    assert_eq!(status["token"], token, "{status}");

    assert_eq!(pod.queue_stats("jobs").await.unwrap()["depth"], 0, "every item enqueued was acked, none left behind");

    // Served now: the operator does not restart the ensemble again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(template_annotations(&setup.client).await[RESTARTED_AT_ANNOTATION], restarted_at, "restarted once");
}

/// An install that ran digest identities moves to certificates (the chart's TLS default):
/// what the namespace's sidecars made under digest names that identity alone. The operator,
/// restarted with certificates and its digest credentials still given, issues the
/// namespace's certificate beside the digest credentials in its Secret, keeps the digest
/// identity in the ACL of what it provisions, and reads with it; a sidecar of the old kind
/// (digest) keeps enqueueing and locking, and one of the new kind (its certificate, and the
/// digest credentials as the webhook passes them on) takes the lock after it and claims and
/// acks every item, the old ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_made_under_digest_keeps_its_locks_and_items_when_the_operator_moves_to_certificates() {
    init_tracing();
    let ensemble = Ensemble::start_with(EnsembleOptions { tls: true, ..Default::default() }).await.unwrap();
    let tls = ensemble.tls().unwrap();
    let (api, dir, kubeconfig) = stand_in().await;
    let client = api.client().unwrap();
    let own = tls.issue_client("operator", "CN=paddock-operator,O=paddock").unwrap();
    let operator_options = |auth: &str| {
        let mut options = OperatorOptions::new(
            workspace_binary("paddock-operator"),
            &kubeconfig,
            &ensemble.connect_string(),
            "paddock-operator:operator-password",
        );
        options.env.extend(own.env(&tls.ca_path()));
        options.env("PADDOCK_NAMESPACE_AUTH", auth)
    };
    let ready = || async {
        let locks: Api<DistributedLock> = Api::namespaced(client.clone(), "team-a");
        let queues: Api<WorkQueue> = Api::namespaced(client.clone(), "team-a");
        let ok = |c: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        };
        locks.get("shared").await.unwrap().status.is_some_and(|s| ok(&s.conditions))
            && queues.get("jobs").await.unwrap().status.is_some_and(|s| ok(&s.conditions))
    };

    // Before: digest identities.
    let digest_operator = Operator::spawn(operator_options("digest")).unwrap();
    eventually(Duration::from_secs(60), "provisioned with digest identities", ready).await;
    let credentials = identity(&client, "team-a").await["credentials"].clone();
    // A sidecar of the digest kind (its connection's certificate says nothing of the namespace).
    let transport = tls.issue_client("old-pod", "CN=some-pod").unwrap();
    let mut old_env = transport.env(&tls.ca_path());
    old_env.push(("PADDOCK_ZK_AUTH".into(), credentials.clone()));
    let (_old, old_pod) = sidecar(&ensemble, "old-0", "team-a", old_env).await;
    for i in 0..3 {
        let (code, body) = old_pod.enqueue("jobs", format!("made under digest {i}")).await.unwrap();
        assert_eq!(code, 201, "{body}");
    }

    // After: certificates, the digest credentials kept in the Secret.
    drop(digest_operator);
    let (ca, key) = (tls.ca_path().display().to_string(), tls.ca_key_path().display().to_string());
    let _operator =
        Operator::spawn(operator_options("x509").env("PADDOCK_CLIENT_CA_CERT", &ca).env("PADDOCK_CLIENT_CA_KEY", &key))
            .unwrap();
    eventually(Duration::from_secs(60), "the namespace's certificate issued", || async {
        identity(&client, "team-a").await.contains_key("tls.crt")
    })
    .await;
    let moved = identity(&client, "team-a").await;
    assert_eq!(moved["credentials"], credentials, "the digest credentials stay");
    eventually(Duration::from_secs(60), "provisioned with certificate identities", ready).await;

    // The old kind keeps working: it enqueues, and holds the lock.
    let (code, body) = old_pod.enqueue("jobs", "made under digest, after the move").await.unwrap();
    assert_eq!(code, 201, "an old sidecar enqueues after the move: {body}");
    let Acquire::Acquired { token: old_token, .. } = old_pod.acquire("shared", "old-0", "0s").await.unwrap() else {
        panic!("an old sidecar locks after the move")
    };

    // The new kind, as the webhook configures it: the certificate and the digest credentials.
    let mut new_env = mount(&dir.path().join("new"), &moved);
    new_env.push(("PADDOCK_ZK_AUTH".into(), credentials.clone()));
    let (_new, new_pod) = sidecar(&ensemble, "new-0", "team-a", new_env).await;
    let waiting = tokio::spawn({
        let new_pod = new_pod.clone();
        async move { new_pod.acquire("shared", "new-0", "30s").await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, body) = old_pod.release("shared", "old-0").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let Acquire::Acquired { token, .. } = waiting.await.unwrap() else { panic!("the new sidecar gets the lock") };
    assert!(token > old_token);
    for _ in 0..4 {
        let item = new_pod.next("jobs", "5s").await.expect("claims an item made under digest").expect("an item");
        let (code, body) = new_pod.settle("jobs", &item.id, "ack", "").await.unwrap();
        assert_eq!(code, 200, "acks an item made under digest: {body}");
    }
    assert_eq!(new_pod.queue_stats("jobs").await.unwrap()["depth"], 0);
}
