//! The webhook for a namespace whose identity is a certificate (issue 18): the real
//! operator binary with TLS to a 3-node ensemble that serves TLS only answers an
//! AdmissionReview with a patch that mounts the namespace's Secret read-only into the
//! sidecar and names its files in `PADDOCK_ZK_TLS_CA/CERT/KEY`, without digest credentials;
//! the sidecar that patch describes, its mount and environment resolved as the kubelet
//! would, takes the namespace's lock and moves an item over TLS.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use paddock_kube_standin::ApiServer;
use paddock_testkit::ensemble::free_ports;
use paddock_testkit::{
    Ensemble, EnsembleOptions, Operator, OperatorOptions, PodClient, ProcessHandle, eventually, init_tracing,
    workspace_binary,
};
use serde_json::{Value, json};

const MOUNT_PATH: &str = "/var/run/paddock/zk-identity";

fn review(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "uid-x509",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": null, "dryRun": false
        }
    })
}

/// The sidecar's environment as the kubelet gives it: its Secret volume's files written
/// under `root` (standing for the mount path), Secret keys and downward-API fields resolved.
async fn resolve(
    sidecar: &Container,
    pod: &Pod,
    secrets: &Api<Secret>,
    root: &std::path::Path,
) -> Vec<(String, String)> {
    let secret = secrets.get("paddock-zookeeper-credentials").await.unwrap();
    let data = secret.data.unwrap();
    let mount = &sidecar.volume_mounts.as_ref().expect("a volume mount")[0];
    assert_eq!((mount.mount_path.as_str(), mount.read_only), (MOUNT_PATH, Some(true)));
    let volume = pod.spec.as_ref().unwrap().volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
    assert_eq!(volume.secret.as_ref().unwrap().secret_name.as_deref(), Some("paddock-zookeeper-credentials"));
    for (key, value) in &data {
        std::fs::write(root.join(key), &value.0).unwrap();
    }
    let mut env = Vec::new();
    for var in sidecar.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.replace(MOUNT_PATH, &root.display().to_string()),
            (None, Some(source)) if source.secret_key_ref.is_some() => {
                let selector = source.secret_key_ref.as_ref().unwrap();
                match data.get(&selector.key) {
                    Some(value) => String::from_utf8(value.0.clone()).unwrap(),
                    // As the kubelet does: an optional key the Secret lacks sets nothing.
                    None if selector.optional == Some(true) => continue,
                    None => panic!("env {}: key {} missing", var.name, selector.key),
                }
            }
            (None, Some(source)) => match source.field_ref.as_ref().unwrap().field_path.as_str() {
                "metadata.name" => "web-x509".to_owned(),
                _ => "default".to_owned(),
            },
            _ => panic!("env {} has no value", var.name),
        };
        env.push((var.name.clone(), value));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_namespace_gets_its_secret_mounted_and_the_sidecar_works_over_tls() {
    init_tracing();
    let ensemble = Ensemble::start_with(EnsembleOptions { tls: true, ..Default::default() }).await.unwrap();
    let tls = ensemble.tls().unwrap();
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    paddock_testkit::kubectl(&kubeconfig, &["apply", "-f", "crds/"]).unwrap();
    paddock_testkit::kubectl(&kubeconfig, &["apply", "-f", "examples/"]).unwrap();

    let [webhook_port, sidecar_port, health_port] = free_ports(3).unwrap()[..] else { unreachable!() };
    let own = tls.issue_client("operator", "CN=paddock-operator,O=paddock").unwrap();
    let mut options =
        OperatorOptions::new(workspace_binary("paddock-operator"), &kubeconfig, &ensemble.connect_string(), "");
    options.env.extend(own.env(&tls.ca_path()));
    let options = options
        .env("PADDOCK_CLIENT_CA_CERT", &tls.ca_path().display().to_string())
        .env("PADDOCK_CLIENT_CA_KEY", &tls.ca_key_path().display().to_string())
        .env("PADDOCK_WEBHOOK_LISTEN", &format!("127.0.0.1:{webhook_port}"))
        .env("PADDOCK_WEBHOOK_SERVICE", "paddock-webhook")
        .env("PADDOCK_WEBHOOK_TLS_SECRET", "paddock-webhook-tls")
        .env("PADDOCK_SIDECAR_PORT", &sidecar_port.to_string())
        .env("PADDOCK_SIDECAR_HEALTH_PORT", &health_port.to_string());
    let _operator = Operator::spawn(options).unwrap();

    let client = api.client().unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    eventually(Duration::from_secs(60), "the namespace's certificate", || async {
        let secret = secrets.get_opt("paddock-zookeeper-credentials").await.unwrap();
        secret.and_then(|s| s.data).is_some_and(|d| d.contains_key("tls.crt"))
    })
    .await;
    // The webhook serves the certificate of its shared Secret; trust it from there.
    let webhook_tls: Api<Secret> = Api::namespaced(client.clone(), "default");
    let ca = webhook_tls.get("paddock-webhook-tls").await.unwrap().data.unwrap()["ca.crt"].0.clone();
    let host = "paddock-webhook.default.svc";
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(host, ([127, 0, 0, 1], webhook_port).into())
        .build()
        .unwrap();

    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-x509", "namespace": "default", "annotations": {"paddock.dev/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}
    });
    let url = format!("https://{host}:{webhook_port}/inject");
    let answer: Value = http.post(&url).json(&review(&pod)).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    use base64::Engine as _;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let mut patched = pod.clone();
    let operations: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    json_patch::patch(&mut patched, &operations).unwrap();
    let patched: Pod = serde_json::from_value(patched).unwrap();
    let spec = patched.spec.clone().unwrap();
    let sidecar = spec.init_containers.iter().flatten().chain(&spec.containers).find(|c| c.name == "paddock-sidecar");
    let sidecar = sidecar.unwrap().clone();
    // Digest credentials only from a namespace that had them before TLS: none here.
    let digest = sidecar.env.iter().flatten().find(|v| v.name == "PADDOCK_ZK_AUTH").unwrap();
    assert_eq!(digest.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().optional, Some(true));

    let files = dir.path().join("zk-identity");
    std::fs::create_dir_all(&files).unwrap();
    let env = resolve(&sidecar, &patched, &secrets, &files).await;
    assert!(env.iter().all(|(name, _)| name != "PADDOCK_ZK_AUTH"), "no digest credentials in this namespace");
    let mut command = Command::new(workspace_binary("paddock-sidecar"));
    command.env_clear().envs(env);
    let _sidecar = ProcessHandle::spawn("injected sidecar", command).unwrap();
    let health = format!("http://127.0.0.1:{health_port}/readyz");
    eventually(Duration::from_secs(30), "the injected sidecar is ready over TLS", || async {
        reqwest::get(&health).await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    let app = PodClient::new(format!("http://127.0.0.1:{sidecar_port}"));
    let paddock_testkit::Acquire::Acquired { .. } = app.acquire("orders", "app", "5s").await.unwrap() else {
        panic!("the injected sidecar takes the lock")
    };
    assert_eq!(app.enqueue("jobs", "over tls").await.unwrap().0, 201);
    assert_eq!(app.next("jobs", "5s").await.unwrap().expect("the item").payload, b"over tls");
}
