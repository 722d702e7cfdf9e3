//! The sidecar-injection webhook of the real operator binary, over real HTTPS (the
//! certificate it made, trusted through the caBundle it wrote), answering real v1
//! AdmissionReview JSON: a plain pod, an annotated pod (whose patch gives the expected
//! spec), an injected pod, a namespace without credentials, and malformed reviews. Then
//! the sidecar from the patched spec runs with exactly the environment the patch gives.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::{Api, PostParams};
use paddock_kube_standin::ApiServer;
use paddock_recipes::identity::DigestIdentity;
use paddock_testkit::ensemble::free_ports;
use paddock_testkit::{
    Ensemble, EnsembleOptions, Operator, OperatorOptions, PodClient, ProcessHandle, eventually, init_tracing,
    workspace_binary,
};
use serde_json::{Value, json};

const SERVICE: &str = "paddock-webhook";
const OPERATOR_NAMESPACE: &str = "paddock-system";
const CONFIGURATION: &str = "paddock-sidecar-injector";

/// An AdmissionReview as the API server sends it for a pod CREATE.
fn review(uid: &str, namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "u-1",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-7d4b9c-", "namespace": "default", "annotations": annotations,
                     "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "curlimages/curl", "command": ["sleep", "infinity"]}]}
    })
}

struct Answer {
    allowed: bool,
    uid: String,
    patch: Option<json_patch::Patch>,
    message: String,
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Answer {
    let response = http.post(url).json(body).send().await.unwrap();
    assert_eq!(response.status(), 200, "a well-formed review is answered with 200");
    let review: Value = response.json().await.unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    let patch = response["patch"].as_str().map(|encoded| {
        assert_eq!(response["patchType"], "JSONPatch");
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    });
    Answer {
        allowed: response["allowed"].as_bool().unwrap(),
        uid: response["uid"].as_str().unwrap().to_owned(),
        patch,
        message: response["status"]["message"].as_str().unwrap_or_default().to_owned(),
    }
}

/// The environment the kubelet would give `container` of `pod`: values as written,
/// downward-API fields from the pod, Secret keys from the API.
async fn resolve_env(container: &Container, pod: &Pod, secrets: &Api<Secret>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(source)) if source.field_ref.is_some() => {
                match source.field_ref.as_ref().unwrap().field_path.as_str() {
                    "metadata.name" => pod.metadata.name.clone().unwrap(),
                    "metadata.namespace" => pod.metadata.namespace.clone().unwrap(),
                    other => panic!("the kubelet stand-in knows no field {other}"),
                }
            }
            (None, Some(source)) if source.secret_key_ref.is_some() => {
                let selector = source.secret_key_ref.as_ref().unwrap();
                let secret = secrets.get(&selector.name).await.unwrap();
                String::from_utf8(secret.data.unwrap()[&selector.key].0.clone()).unwrap()
            }
            _ => panic!("env {} has no value", var.name),
        };
        env.push((var.name.clone(), value));
    }
    env
}

/// A single ZooKeeper server, the API stand-in with the CRDs and the operator's namespace,
/// and the kubeconfig (in the returned directory).
async fn cluster() -> (Ensemble, ApiServer, tempfile::TempDir, std::path::PathBuf) {
    init_tracing();
    let ensemble = Ensemble::start_with(EnsembleOptions { servers: 1, ..Default::default() }).await.unwrap();
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    paddock_testkit::kubectl(&kubeconfig, &["apply", "-f", "crds/"]).unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(api.client().unwrap());
    let namespace = serde_json::from_value(json!({"metadata": {"name": OPERATOR_NAMESPACE}})).unwrap();
    namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    (ensemble, api, dir, kubeconfig)
}

/// An HTTPS client that trusts `ca` alone and reaches the webhook Service's name at `port`.
fn https_client(ca: &[u8], port: u16) -> (reqwest::Client, String) {
    let host = format!("{SERVICE}.{OPERATOR_NAMESPACE}.svc");
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .resolve(&host, ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    (http, format!("https://{host}:{port}/inject"))
}

/// With cert-manager the operator serves the mounted certificate and makes none itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_directory_the_webhook_serves_that_certificate() {
    let (ensemble, api, dir, kubeconfig) = cluster().await;
    let names = paddock_operator::webhook::certs::service_dns_names(SERVICE, OPERATOR_NAMESPACE);
    let cert = paddock_operator::webhook::certs::ServingCert::self_signed(&names).unwrap();
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    std::fs::write(tls_dir.join("tls.crt"), &cert.cert_pem).unwrap();
    std::fs::write(tls_dir.join("tls.key"), &cert.key_pem).unwrap();
    std::fs::write(tls_dir.join("ca.crt"), &cert.ca_pem).unwrap();

    let webhook_port = free_ports(1).unwrap()[0];
    let credentials = DigestIdentity::generate("paddock-operator").credentials();
    let options = OperatorOptions::new(
        workspace_binary("paddock-operator"),
        &kubeconfig,
        &ensemble.connect_string(),
        &credentials,
    )
    .pod("paddock-operator-0", OPERATOR_NAMESPACE)
    .env("PADDOCK_WEBHOOK_LISTEN", &format!("127.0.0.1:{webhook_port}"))
    .env("PADDOCK_WEBHOOK_SERVICE", SERVICE)
    .env("PADDOCK_WEBHOOK_CERT_DIR", tls_dir.to_str().unwrap());
    let _operator = Operator::spawn(options).unwrap();

    let (http, url) = https_client(cert.ca_pem.as_bytes(), webhook_port);
    let mut answered = None;
    for _ in 0..300 {
        if let Ok(response) = http.post(&url).json(&review("uid-cm", "default", &pod(json!({})))).send().await {
            answered = Some(response.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = answered.expect("the webhook answers over TLS with the mounted certificate");
    assert_eq!(answer["response"]["allowed"], true);
    let secrets: Api<Secret> = Api::namespaced(api.client().unwrap(), OPERATOR_NAMESPACE);
    assert!(secrets.get_opt("paddock-webhook-tls").await.unwrap().is_none(), "no certificate of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_injects_annotated_pods_over_https_and_the_sidecar_it_describes_runs() {
    let (ensemble, api, _dir, kubeconfig) = cluster().await;
    let client = api.client().unwrap();
    let kubectl = |args: &[&str]| paddock_testkit::kubectl(&kubeconfig, args).unwrap();
    kubectl(&["apply", "-f", "examples/"]);
    // The configuration as the chart installs it: no caBundle yet.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION},
        "webhooks": [{"name": "inject.paddock.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "clientConfig": {"service": {"name": SERVICE, "namespace": OPERATOR_NAMESPACE, "path": "/inject", "port": 443}},
                      "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]}]
    }))
    .unwrap();
    configurations.create(&PostParams::default(), &configuration).await.unwrap();

    let [webhook_port, sidecar_port, health_port] = free_ports(3).unwrap()[..] else { unreachable!() };
    let operator_identity = DigestIdentity::generate("paddock-operator");
    let options = OperatorOptions::new(
        workspace_binary("paddock-operator"),
        &kubeconfig,
        &ensemble.connect_string(),
        &operator_identity.credentials(),
    )
    .pod("paddock-operator-0", OPERATOR_NAMESPACE)
    .env("PADDOCK_WEBHOOK_LISTEN", &format!("127.0.0.1:{webhook_port}"))
    .env("PADDOCK_WEBHOOK_SERVICE", SERVICE)
    .env("PADDOCK_WEBHOOK_CONFIG", CONFIGURATION)
    .env("PADDOCK_WEBHOOK_TLS_SECRET", "paddock-webhook-tls")
    .env("PADDOCK_SIDECAR_IMAGE", "registry.example.com/paddock/paddock-sidecar:test")
    .env("PADDOCK_SIDECAR_PORT", &sidecar_port.to_string())
    .env("PADDOCK_SIDECAR_HEALTH_PORT", &health_port.to_string());
    let operator = Operator::spawn(options).unwrap();

    // The operator writes its CA into the caBundle; the test trusts that CA alone.
    let ca_bundle = || async {
        let current = configurations.get(CONFIGURATION).await.unwrap();
        current.webhooks.unwrap()[0].client_config.ca_bundle.clone().map(|b| b.0)
    };
    eventually(Duration::from_secs(60), "the caBundle is written", || async { ca_bundle().await.is_some() }).await;
    let ca = ca_bundle().await.unwrap();
    // The Secret where replicas share the certificate.
    let tls: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    assert_eq!(tls.get("paddock-webhook-tls").await.unwrap().type_.as_deref(), Some("kubernetes.io/tls"));
    // The namespace's credentials exist once its resources are reconciled.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    eventually(Duration::from_secs(60), "the namespace's credentials", || async {
        secrets.get_opt("paddock-zookeeper-credentials").await.unwrap().is_some()
    })
    .await;

    let (http, url) = https_client(&ca, webhook_port);

    // A plain pod: allowed, unchanged.
    let plain = post(&http, &url, &review("uid-plain", "default", &pod(json!({})))).await;
    assert!(plain.allowed && plain.patch.is_none());
    assert_eq!(plain.uid, "uid-plain", "the answer carries the request's uid");

    // An annotated pod: the patch, applied, gives the sidecar as a native sidecar (the
    // stand-in reports Kubernetes 1.34) and the app its URL.
    let annotated = pod(json!({"paddock.dev/inject": "true", "paddock.dev/queue": "jobs"}));
    let answer = post(&http, &url, &review("uid-inject", "default", &annotated)).await;
    assert!(answer.allowed, "{}", answer.message);
    let mut patched = annotated.clone();
    json_patch::patch(&mut patched, &answer.patch.expect("a JSONPatch")).unwrap();
    let patched_pod: Pod = serde_json::from_value(patched.clone()).unwrap();
    let spec = patched_pod.spec.clone().unwrap();
    let sidecar = spec.init_containers.as_ref().expect("an init container")[0].clone();
    assert_eq!(sidecar.name, "paddock-sidecar");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"), "a native sidecar");
    assert_eq!(sidecar.image.as_deref(), Some("registry.example.com/paddock/paddock-sidecar:test"));
    assert!(sidecar.startup_probe.is_some() && sidecar.liveness_probe.is_some());
    let security = sidecar.security_context.clone().unwrap();
    assert_eq!((security.run_as_non_root, security.read_only_root_filesystem), (Some(true), Some(true)));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let app = &spec.containers[0];
    assert_eq!(app.command.as_ref().unwrap()[0], "sleep", "the app container is kept as it was");
    let app_env: BTreeMap<_, _> =
        app.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
    assert_eq!(app_env["PADDOCK_URL"], format!("http://127.0.0.1:{sidecar_port}"));
    assert_eq!(patched["metadata"]["annotations"]["paddock.dev/status"], "injected");

    // The injected pod again (a reinvocation): left alone.
    let again = post(&http, &url, &review("uid-again", "default", &patched)).await;
    assert!(again.allowed && again.patch.is_none());

    // A namespace the operator has made no credentials for: refused, saying what to do.
    let elsewhere = post(&http, &url, &review("uid-team-b", "team-b", &annotated)).await;
    assert!(!elsewhere.allowed);
    assert!(elsewhere.message.contains("no Paddock credentials"), "{}", elsewhere.message);
    assert!(elsewhere.message.contains("apply a DistributedLock or WorkQueue in team-b"), "{}", elsewhere.message);

    // A bad annotation: refused with the fix.
    let bad = pod(json!({"paddock.dev/inject": "true", "paddock.dev/sidecar-memory-limit": "plenty"}));
    let answer = post(&http, &url, &review("uid-bad", "default", &bad)).await;
    assert!(!answer.allowed && answer.message.contains("64Mi"), "{}", answer.message);

    // Malformed reviews: a JSON error, and the webhook keeps serving.
    for body in ["not json at all", r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#] {
        let response = http.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "malformed-review");
        assert!(error["message"].as_str().unwrap().contains("AdmissionReview"), "{error}");
    }
    let mut broken = review("uid-broken", "default", &annotated);
    broken["request"]["object"]["spec"]["containers"] = json!("not a list");
    let answer = post(&http, &url, &broken).await;
    assert!(
        !answer.allowed && answer.uid == "uid-broken" && answer.message.contains("not a Pod"),
        "{}",
        answer.message
    );
    let healthy = post(&http, &url, &review("uid-after", "default", &pod(json!({})))).await;
    assert!(healthy.allowed);

    // The operator counts its answers.
    let metrics = reqwest::get(operator.metrics_url()).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("paddock_operator_webhook_admissions_total{result=\"injected\"} 1"), "{metrics}");

    // The sidecar the patch describes, started with exactly that environment (as the
    // kubelet would resolve it for the pod `web-7d4b9c-x1`), serves the app.
    let mut running = patched_pod.clone();
    running.metadata.name = Some("web-7d4b9c-x1".into());
    let env = resolve_env(&sidecar, &running, &secrets).await;
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for wanted in
        ["PADDOCK_ZOOKEEPER", "POD_NAME", "POD_NAMESPACE", "PADDOCK_ZK_AUTH", "PADDOCK_QUEUE", "PADDOCK_LISTEN"]
    {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    let mut command = Command::new(workspace_binary("paddock-sidecar"));
    command.env_clear().envs(env);
    let _sidecar = ProcessHandle::spawn("injected sidecar", command).unwrap();
    let health = format!("http://127.0.0.1:{health_port}/readyz");
    eventually(Duration::from_secs(30), "the sidecar's probe port answers ready", || async {
        reqwest::get(&health).await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    let pod_client = PodClient::new(app_env["PADDOCK_URL"].clone());
    let paddock_testkit::Acquire::Acquired { .. } = pod_client.acquire("orders", "app", "5s").await.unwrap() else {
        panic!("the injected sidecar takes the lock")
    };
    let status = pod_client.lock_status("orders", "app").await.unwrap().1;
    assert_eq!(status["owner"], "app");
    assert_eq!(pod_client.enqueue("jobs", "from-the-app").await.unwrap().0, 201);
    // `GET /queue/next` with no queue named: the annotation's queue.
    let next = pod_client.http().get(pod_client.url("/queue/next")).query(&[("wait", "5s")]).send().await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(next.headers()["paddock-queue"], "jobs");
    assert_eq!(next.bytes().await.unwrap().as_ref(), b"from-the-app");
}
