//! The managed ensemble's certificates from the operator's own CA (issue 18), with the real
//! operator binary and the Kubernetes API stand-in: the replicas agree on one CA they make
//! themselves, issue the servers' certificate into its Secret and renew it before it
//! expires; and a real 3-node ensemble serving that certificate (quorum over TLS too) takes
//! the operator's own client certificate and a namespace's, and is restarted by the
//! operator once the certificate is renewed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use paddock_kube_standin::ApiServer;
use paddock_operator::crd::DistributedLock;
use paddock_operator::ensemble_certs::CERT_ANNOTATION;
use paddock_testkit::process::Sidecar;
use paddock_testkit::{
    Acquire, Ensemble, EnsembleOptions, Operator, OperatorOptions, PodClient, SidecarOptions, eventually, init_tracing,
    workspace_binary,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

const CA_SECRET: &str = "paddock-zookeeper-ca";
const SERVER_SECRET: &str = "paddock-zookeeper-tls";

const RESOURCES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: paddock.dev/v1alpha1
kind: DistributedLock
metadata: {name: shared, namespace: team-a}
spec: {maxHolders: 1}
";

/// A Secret's keys, as text.
async fn secret(client: &kube::Client, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get_opt(name).await.unwrap()?;
    Some(secret.data.unwrap().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect())
}

/// An operator replica with its own CA: its TLS files in `dir`, the servers' certificate
/// for `names`, valid `lifetime`.
fn operator(kubeconfig: &Path, zookeeper: &str, dir: &Path, pod: &str, names: &str, lifetime: &str) -> Operator {
    Operator::spawn(operator_options(kubeconfig, zookeeper, dir, pod, names, lifetime)).unwrap()
}

fn operator_options(
    kubeconfig: &Path,
    zookeeper: &str,
    dir: &Path,
    pod: &str,
    names: &str,
    lifetime: &str,
) -> OperatorOptions {
    let file = |name: &str| dir.join(name).display().to_string();
    OperatorOptions::new(workspace_binary("paddock-operator"), kubeconfig, zookeeper, "")
        .pod(pod, "default")
        .env("PADDOCK_ZOOKEEPER_CA_SECRET", CA_SECRET)
        .env("PADDOCK_ZOOKEEPER_SERVER_SECRET", SERVER_SECRET)
        .env("PADDOCK_ZOOKEEPER_SERVER_NAMES", names)
        .env("PADDOCK_ZOOKEEPER_CERT_LIFETIME", lifetime)
        .env("PADDOCK_ZK_TLS_CA", &file("ca.crt"))
        .env("PADDOCK_ZK_TLS_CERT", &file("tls.crt"))
        .env("PADDOCK_ZK_TLS_KEY", &file("tls.key"))
        .env("PADDOCK_ZOOKEEPER_STATEFULSET", "paddock-zookeeper")
        .env("PADDOCK_ZOOKEEPER_SERVER_CERT", &file("server.crt"))
        .env("PADDOCK_ZOOKEEPER_CERT_CHECK", "1s")
        .env("PADDOCK_CLIENT_CERT_LIFETIME", "1h")
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// Whether `cert_pem` is signed by `ca_pem` and valid for server `name` (webpki's checks).
fn verifies_for_server(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    verifier.verify_server_cert(&der(cert_pem), &[], &name, &[], UnixTime::now()).map(drop)
}

/// Whether `cert_pem` is signed by `ca_pem` and valid for client auth.
fn verifies_for_client(ca_pem: &str, cert_pem: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
    verifier.verify_client_cert(&der(cert_pem), &[], UnixTime::now()).is_ok()
}

struct Stand {
    api: ApiServer,
    client: kube::Client,
    kubeconfig: std::path::PathBuf,
    dir: tempfile::TempDir,
}

async fn stand_in() -> Stand {
    init_tracing();
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    paddock_testkit::kubectl(&kubeconfig, &["apply", "-f", "crds/"]).unwrap();
    paddock_testkit::kubectl_apply(&kubeconfig, RESOURCES).unwrap();
    paddock_testkit::kubectl_apply(&kubeconfig, paddock_testkit::MANAGED_STATEFULSET).unwrap();
    let client = api.client().unwrap();
    Stand { api, client, kubeconfig, dir }
}

/// With no CA Secret, two replicas make one CA between them, the servers' certificate is
/// issued from it for the given names (server and client auth, the key PKCS#8 as ZooKeeper
/// reads it), each replica writes its own client certificate from it, and the servers'
/// certificate is renewed after two thirds of its lifetime, the copy following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_make_one_ca_and_issue_and_renew_the_servers_certificate() {
    let stand = stand_in().await;
    let names = "paddock-zookeeper.default.svc,*.paddock-zookeeper-headless.default.svc.cluster.local";
    let (dir_a, dir_b) = (stand.dir.path().join("a"), stand.dir.path().join("b"));
    // No ensemble to reach: the certificates come first, from the Kubernetes API alone.
    let a = operator(&stand.kubeconfig, "127.0.0.1:9", &dir_a, "operator-a", names, "30s");
    let b = operator(&stand.kubeconfig, "127.0.0.1:9", &dir_b, "operator-b", names, "30s");
    eventually(Duration::from_secs(30), "the servers' certificate is issued", || async {
        let issued = secret(&stand.client, "default", SERVER_SECRET).await.is_some();
        issued && dir_a.join("tls.crt").exists() && dir_b.join("tls.crt").exists()
    })
    .await;
    let server = secret(&stand.client, "default", SERVER_SECRET).await.unwrap();
    let ca = secret(&stand.client, "default", CA_SECRET).await.expect("the CA's Secret");
    assert_eq!(ca["ca.crt"], ca["tls.crt"]);
    assert_eq!(server["ca.crt"], ca["tls.crt"], "the servers trust the operator's CA");
    for name in
        ["paddock-zookeeper.default.svc", "paddock-zookeeper-2.paddock-zookeeper-headless.default.svc.cluster.local"]
    {
        verifies_for_server(&ca["tls.crt"], &server["tls.crt"], name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verifies_for_server(&ca["tls.crt"], &server["tls.crt"], "elsewhere.example").is_err());
    assert!(verifies_for_client(&ca["tls.crt"], &server["tls.crt"]), "the quorum connects with it");
    assert!(server["tls.key"].starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    for dir in [&dir_a, &dir_b] {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("ca.crt"), ca["tls.crt"], "one CA for both replicas");
        assert!(verifies_for_client(&ca["tls.crt"], &read("tls.crt")), "the operator's own certificate");
        assert!(verifies_for_server(&ca["tls.crt"], &read("tls.crt"), "paddock-zookeeper.default.svc").is_err());
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("tls.key")).unwrap().permissions());
        assert_eq!(mode & 0o077, 0, "the key is the operator's alone");
    }
    let first = server["tls.crt"].clone();

    // Renewed after two thirds of its 30 s: a new certificate, same CA; the copies follow.
    eventually(Duration::from_secs(40), "the servers' certificate is renewed", || async {
        let now = secret(&stand.client, "default", SERVER_SECRET).await.unwrap();
        let copied = |dir: &Path| std::fs::read_to_string(dir.join("server.crt")).ok();
        now["tls.crt"] != first && copied(&dir_a) == Some(now["tls.crt"].clone()) && copied(&dir_b) == copied(&dir_a)
    })
    .await;
    assert_eq!(secret(&stand.client, "default", CA_SECRET).await.unwrap()["tls.crt"], ca["tls.crt"], "the same CA");

    // The CA replaced by hand: no replica goes on signing with the old one (each stops,
    // to be restarted with the new), and none switches the servers to the new one by
    // itself — the servers' Secret is left as it is, and a replica started now says why.
    let servers_before = secret(&stand.client, "default", SERVER_SECRET).await.unwrap();
    let other = paddock_testkit::TestCa::new("another-ca").unwrap();
    let bytes = |s: String| k8s_openapi::ByteString(s.into_bytes());
    let secrets = Api::<Secret>::namespaced(stand.client.clone(), "default");
    let mut replaced = secrets.get(CA_SECRET).await.unwrap();
    replaced.data =
        Some([("tls.crt".to_owned(), bytes(other.pem())), ("tls.key".to_owned(), bytes(other.key_pem()))].into());
    secrets.replace(CA_SECRET, &PostParams::default(), &replaced).await.unwrap();
    let (mut a, mut b) = (a, b);
    eventually(Duration::from_secs(20), "both replicas stop", || {
        let stopped = a.process.has_exited() && b.process.has_exited();
        async move { stopped }
    })
    .await;
    let log = stand.dir.path().join("operator-c.log");
    let mut options =
        operator_options(&stand.kubeconfig, "127.0.0.1:9", &stand.dir.path().join("c"), "operator-c", names, "30s");
    options.log_file = Some(log.clone());
    let _c = Operator::spawn(options).unwrap();
    eventually(Duration::from_secs(20), "the new replica says why it leaves the servers' Secret alone", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("does not switch the servers' CA by itself") }
    })
    .await;
    assert_eq!(secret(&stand.client, "default", SERVER_SECRET).await.unwrap(), servers_before, "left as it was");
    drop(stand.api);
}

/// A 3-node ensemble serving, client port and quorum, the certificate the operator issued
/// into the servers' Secret from its CA (here the ensemble's own CA, put into the CA Secret
/// before the operator starts, as a user may): the operator connects with its own
/// certificate and provisions a lock, a sidecar with the namespace's certificate takes it,
/// and when the operator renews the servers' certificate it restarts the ensemble for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_serving_the_operators_certificate_takes_its_clients_and_is_restarted_on_renewal() {
    let stand = stand_in().await;
    let mut ensemble = Ensemble::start_with(EnsembleOptions { tls: true, ..Default::default() }).await.unwrap();
    let test_ca = ensemble.tls().unwrap().ca();
    let bytes = |s: String| k8s_openapi::ByteString(s.into_bytes());
    let ca_secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some(CA_SECRET.to_owned()), ..Default::default() },
        data: Some(
            [("tls.crt".to_owned(), bytes(test_ca.pem())), ("tls.key".to_owned(), bytes(test_ca.key_pem()))].into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(stand.client.clone(), "default")
        .create(&PostParams::default(), &ca_secret)
        .await
        .unwrap();

    let dir = stand.dir.path().join("operator");
    let _operator =
        operator(&stand.kubeconfig, &ensemble.connect_string(), &dir, "operator-0", "127.0.0.1,localhost", "45s");
    eventually(Duration::from_secs(30), "the servers' certificate is issued", || async {
        secret(&stand.client, "default", SERVER_SECRET).await.is_some()
    })
    .await;
    let server = secret(&stand.client, "default", SERVER_SECRET).await.unwrap();
    let issued =
        paddock_testkit::tls::Issued { cert_pem: server["tls.crt"].clone(), key_pem: server["tls.key"].clone() };
    ensemble.install_server_certificate(&issued).unwrap();
    ensemble
        .restart_one_at_a_time(Duration::from_secs(60))
        .await
        .expect("the servers start with the operator's certificate");
    for index in 0..ensemble.len() {
        let address = ensemble.address(index);
        let served = paddock_recipes::tls::served_certificate(&address.ip().to_string(), address.port()).await;
        assert_eq!(served, Some(der(&server["tls.crt"]).to_vec()), "server {index} serves the operator's certificate");
    }

    // The operator (its own certificate) provisions; a sidecar (the namespace's) locks.
    let locks: Api<DistributedLock> = Api::namespaced(stand.client.clone(), "team-a");
    eventually(Duration::from_secs(60), "the lock is Ready", || async {
        let status = locks.get("shared").await.unwrap().status;
        status.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await;
    let identity =
        secret(&stand.client, "team-a", "paddock-zookeeper-credentials").await.expect("team-a's certificate");
    let files = stand.dir.path().join("team-a");
    std::fs::create_dir_all(&files).unwrap();
    let mut options =
        SidecarOptions::new(workspace_binary("paddock-sidecar"), ensemble.connect_string(), "a-0", "team-a");
    for (key, setting) in
        [("ca.crt", "PADDOCK_ZK_TLS_CA"), ("tls.crt", "PADDOCK_ZK_TLS_CERT"), ("tls.key", "PADDOCK_ZK_TLS_KEY")]
    {
        std::fs::write(files.join(key), &identity[key]).unwrap();
        options.env.push((setting.to_owned(), files.join(key).display().to_string()));
    }
    options.env.push(("PADDOCK_ZK_OPERATOR_ID".to_owned(), identity["operator-id"].clone()));
    let _sidecar = Sidecar::start(options.clone()).await.unwrap();
    let pod = PodClient::new(_sidecar.url(""));
    let Acquire::Acquired { .. } = pod.acquire("shared", "a-0", "0s").await.unwrap() else { panic!("the lock") };

    // Renewed after two thirds of 45 s: the operator restarts the ensemble for it.
    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(stand.client.clone(), "default");
    eventually(Duration::from_secs(60), "the ensemble is restarted for the renewed certificate", || async {
        let now = secret(&stand.client, "default", SERVER_SECRET).await.unwrap();
        let template = statefulsets.get("paddock-zookeeper").await.unwrap().spec.template.metadata;
        let fingerprint = template.and_then(|m| m.annotations).and_then(|a| a.get(CERT_ANNOTATION).cloned());
        now["tls.crt"] != server["tls.crt"]
            && fingerprint == Some(paddock_operator::ensemble_certs::sha256_hex(&der(&now["tls.crt"])))
    })
    .await;
}
