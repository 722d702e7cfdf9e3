//! The Helm chart (charts/paddock), rendered as `helm template` renders it: no helm binary
//! is packaged, so helm-render (Go's text/template with sprig, Helm's engine in small)
//! is built once from Debian's Go packages and run here.
//!
//! Every rendered document is parsed into its k8s-openapi type. Those types ignore unknown
//! fields, so each is serialized back and compared with what was rendered: a field that
//! did not survive the round trip is misspelt or misplaced, and a wrong type fails to
//! parse. Then the links between the objects are checked: Services and PodDisruptionBudgets
//! select the pods they are for, the webhook reaches the operator's webhook port, the
//! operator's ServiceAccount holds exactly the RBAC that deploy/operator-rbac.yaml lists,
//! the operator gets every setting of the operator <-> chart interface, and the ZooKeeper
//! configuration, start script and probes run a real ensemble.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PodTemplateSpec, ResourceRequirements, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod common;

use common::{NAMESPACE, RELEASE, chart_dir, documents, render, render_chart, repo};
use paddock_testkit::ensemble::{four_letter_word, free_ports};
use paddock_testkit::{eventually, init_tracing};
use zookeeper_client as zk;

/// What the operator reads from its environment (the operator <-> chart interface), in
/// every mode; plus the ones of each way to get the webhook's serving certificate.
const OPERATOR_ENV: &[&str] = &[
    "PADDOCK_ZOOKEEPER",
    "PADDOCK_ZK_ROOT",
    "PADDOCK_ZK_AUTH",
    "POD_NAME",
    "POD_NAMESPACE",
    "PADDOCK_LEASE_DURATION",
    "PADDOCK_METRICS_LISTEN",
    "PADDOCK_WEBHOOK_LISTEN",
    "PADDOCK_WEBHOOK_SERVICE",
    "PADDOCK_SIDECAR_IMAGE",
    "PADDOCK_SIDECAR_PULL_POLICY",
    "PADDOCK_SIDECAR_RESOURCES",
    "PADDOCK_SIDECAR_ZOOKEEPER",
    "PADDOCK_NATIVE_SIDECARS",
];
const SELF_SIGNED_ENV: &[&str] = &["PADDOCK_WEBHOOK_CONFIG", "PADDOCK_WEBHOOK_TLS_SECRET"];
const CERT_MANAGER_ENV: &[&str] = &["PADDOCK_WEBHOOK_CERT_DIR"];
/// TLS to the managed ensemble (on by default): its CA and the operator's certificate.
const ZK_TLS_ENV: &[&str] = &[
    "PADDOCK_ZK_TLS_CA",
    "PADDOCK_ZK_TLS_CERT",
    "PADDOCK_ZK_TLS_KEY",
    // Namespace identities by certificate, the default over TLS.
    "PADDOCK_NAMESPACE_AUTH",
    "PADDOCK_CLIENT_CERT_LIFETIME",
    // The managed ensemble restarted when its servers' certificate is renewed.
    "PADDOCK_ZOOKEEPER_STATEFULSET",
    "PADDOCK_ZOOKEEPER_SERVER_CERT",
    "PADDOCK_ZOOKEEPER_SERVERS",
];
/// The operator's own CA issues the ensemble's certificates (the default).
const OWN_CA_ENV: &[&str] = &[
    "PADDOCK_ZOOKEEPER_CA_SECRET",
    "PADDOCK_ZOOKEEPER_SERVER_SECRET",
    "PADDOCK_ZOOKEEPER_SERVER_NAMES",
    "PADDOCK_ZOOKEEPER_CERT_LIFETIME",
];
/// A CA the operator is given signs the namespaces' certificates (cert-manager's, the user's).
const CLIENT_CA_ENV: &[&str] = &["PADDOCK_CLIENT_CA_CERT", "PADDOCK_CLIENT_CA_KEY"];

/// API calls the operator makes, (group, resource, verb): a floor under
/// deploy/operator-rbac.yaml, so that dropping a rule from both is caught too.
const OPERATOR_CALLS: &[(&str, &str, &str)] = &[
    ("paddock.dev", "distributedlocks", "watch"),
    ("paddock.dev", "workqueues", "watch"),
    ("paddock.dev", "distributedlocks/status", "patch"),
    ("paddock.dev", "workqueues/status", "patch"),
    ("", "secrets", "get"),
    ("", "secrets", "create"),
    ("events.k8s.io", "events", "create"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
];

fn values_file(dir: &tempfile::TempDir, name: &str, yaml: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Parses a document into its typed form; fails on a wrong type, and on any field the type
/// does not have (k8s-openapi ignores those, so they are found by the round trip).
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    let mut lost = Vec::new();
    dropped(doc, &back, String::new(), &mut lost);
    assert!(lost.is_empty(), "{what}: fields its Kubernetes type does not have (misspelt or misplaced?): {lost:?}");
    object
}

/// Paths of `original` that `back` lost or changed (nulls are absent fields in both).
fn dropped(original: &Value, back: &Value, at: String, lost: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o.iter().filter(|(_, v)| !v.is_null()) {
                match b.get(key) {
                    Some(b) => dropped(value, b, format!("{at}.{key}"), lost),
                    None => lost.push(format!("{at}.{key}")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (o, b)) in o.iter().zip(b).enumerate() {
                dropped(o, b, format!("{at}[{i}]"), lost);
            }
        }
        (o, b) if o != b => lost.push(format!("{at}: {o} became {b}")),
        _ => {}
    }
}

/// Every object of a render, by kind.
#[derive(Default)]
struct Objects {
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
    services: Vec<Service>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    disruption_budgets: Vec<PodDisruptionBudget>,
    webhooks: Vec<MutatingWebhookConfiguration>,
    secrets: Vec<Secret>,
    config_maps: Vec<ConfigMap>,
    crds: Vec<CustomResourceDefinition>,
    /// cert-manager's Issuer and Certificate: no k8s-openapi type, kept as JSON.
    cert_manager: Vec<Value>,
    network_policies: Vec<NetworkPolicy>,
    /// (kind, namespace, name) of every object, for checks across kinds.
    all: Vec<(String, Option<String>, String)>,
}

impl Objects {
    fn parse(output: &str) -> Self {
        let mut objects = Objects::default();
        for (source, doc) in documents(output) {
            let api_version =
                doc["apiVersion"].as_str().unwrap_or_else(|| panic!("{source}: no apiVersion")).to_owned();
            let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{source}: no kind")).to_owned();
            let name = doc["metadata"]["name"].as_str().unwrap_or_else(|| panic!("{source}: no name")).to_owned();
            let namespace = doc["metadata"]["namespace"].as_str().map(str::to_owned);
            let what = format!("{source}: {kind} {name}");
            match (api_version.as_str(), kind.as_str()) {
                ("apps/v1", "Deployment") => objects.deployments.push(typed(&doc, &what)),
                ("apps/v1", "StatefulSet") => objects.stateful_sets.push(typed(&doc, &what)),
                ("v1", "Service") => objects.services.push(typed(&doc, &what)),
                ("v1", "ServiceAccount") => objects.service_accounts.push(typed(&doc, &what)),
                ("v1", "Secret") => objects.secrets.push(typed(&doc, &what)),
                ("v1", "ConfigMap") => objects.config_maps.push(typed(&doc, &what)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => objects.cluster_roles.push(typed(&doc, &what)),
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    objects.cluster_role_bindings.push(typed(&doc, &what))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => objects.roles.push(typed(&doc, &what)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => objects.role_bindings.push(typed(&doc, &what)),
                ("policy/v1", "PodDisruptionBudget") => objects.disruption_budgets.push(typed(&doc, &what)),
                ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                    objects.webhooks.push(typed(&doc, &what))
                }
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => objects.crds.push(typed(&doc, &what)),
                ("networking.k8s.io/v1", "NetworkPolicy") => objects.network_policies.push(typed(&doc, &what)),
                ("cert-manager.io/v1", "Issuer" | "Certificate") => {
                    check_cert_manager_object(&doc, &what);
                    objects.cert_manager.push(doc.clone());
                }
                _ => panic!("{what}: unexpected {api_version} {kind}"),
            }
            objects.all.push((kind, namespace, name));
        }
        objects
    }

    fn operator(&self) -> &Deployment {
        assert_eq!(self.deployments.len(), 1, "one Deployment, the operator's");
        &self.deployments[0]
    }

    fn operator_container(&self) -> &Container {
        let pod = self.operator().spec.template.spec.as_ref().unwrap();
        pod.containers.iter().find(|c| c.name == "operator").expect("the operator container")
    }

    fn service(&self, name: &str) -> &Service {
        self.services.iter().find(|s| s.metadata.name.as_deref() == Some(name)).unwrap_or_else(|| {
            panic!("no Service {name}: {:?}", self.services.iter().map(|s| &s.metadata.name).collect::<Vec<_>>())
        })
    }

    fn config_map(&self, name: &str) -> &ConfigMap {
        self.config_maps.iter().find(|c| c.metadata.name.as_deref() == Some(name)).expect("the ConfigMap")
    }

    /// The pod templates of the workloads: (kind/name, template).
    fn workloads(&self) -> Vec<(String, &PodTemplateSpec)> {
        let deployments = self
            .deployments
            .iter()
            .map(|d| (format!("Deployment/{}", d.metadata.name.as_deref().unwrap()), &d.spec.template));
        let stateful_sets = self
            .stateful_sets
            .iter()
            .map(|s| (format!("StatefulSet/{}", s.metadata.name.as_deref().unwrap()), &s.spec.template));
        deployments.chain(stateful_sets).collect()
    }

    /// The webhook's cert-manager objects of `kind`.
    fn cert_manager(&self, kind: &str) -> Vec<&Value> {
        self.cert_manager.iter().filter(|v| v["kind"] == kind && !is_zookeeper_tls(v)).collect()
    }

    /// The managed ensemble's cert-manager objects of `kind` (its CA, the servers' and the
    /// operator's certificates).
    fn zookeeper_cert_manager(&self, kind: &str) -> Vec<&Value> {
        self.cert_manager.iter().filter(|v| v["kind"] == kind && is_zookeeper_tls(v)).collect()
    }
}

fn is_zookeeper_tls(doc: &Value) -> bool {
    doc["metadata"]["name"].as_str().is_some_and(|n| n.contains("-zookeeper"))
}

/// cert-manager.io/v1 objects: the fields the chart may use, and their shapes.
fn check_cert_manager_object(doc: &Value, what: &str) {
    let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<BTreeSet<_>>()).unwrap_or_default();
    assert!(keys(doc).is_subset(&["apiVersion", "kind", "metadata", "spec"].map(String::from).into()), "{what}");
    assert!(doc["metadata"]["name"].is_string() && doc["metadata"]["namespace"].is_string(), "{what}");
    let spec = &doc["spec"];
    let allowed: &[&str] = if doc["kind"] == "Issuer" {
        &["selfSigned", "ca", "acme", "vault"]
    } else {
        &[
            "secretName",
            "dnsNames",
            "issuerRef",
            "duration",
            "renewBefore",
            "privateKey",
            "usages",
            "commonName",
            "subject",
            "isCA",
        ]
    };
    let unknown: Vec<String> = keys(spec).into_iter().filter(|k| !allowed.contains(&k.as_str())).collect();
    assert!(unknown.is_empty(), "{what}: spec fields cert-manager does not have: {unknown:?}");
    if doc["kind"] == "Certificate" {
        assert!(spec["secretName"].is_string(), "{what}: secretName");
        // A client certificate (the operator's for ZooKeeper) names no host.
        let dns = &spec["dnsNames"];
        assert!(dns.is_null() || dns.as_array().is_some_and(|d| d.iter().all(Value::is_string)), "{what}: dnsNames");
        assert!(dns.is_array() || spec["commonName"].is_string(), "{what}: a name or a subject");
        assert!(keys(&spec["issuerRef"]).is_subset(&["name", "kind", "group"].map(String::from).into()), "{what}");
        for duration in ["duration", "renewBefore"] {
            let text = spec[duration].as_str().unwrap_or_else(|| panic!("{what}: {duration}"));
            humantime::parse_duration(text).unwrap_or_else(|e| panic!("{what}: {duration} {text}: {e}"));
        }
    }
}

fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => panic!("selector operator {other}"),
        }
    });
    let empty = selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && selector.match_expressions.as_ref().is_none_or(Vec::is_empty);
    !empty && by_labels && by_expressions
}

fn pod_labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
}

/// The workloads whose pods a label selector picks.
fn selected(objects: &Objects, matches: impl Fn(&BTreeMap<String, String>) -> bool) -> Vec<String> {
    objects.workloads().into_iter().filter(|(_, t)| matches(&pod_labels(t))).map(|(name, _)| name).collect()
}

/// The container port a Service's targetPort reaches (by number or by name).
fn resolve_port(target: &IntOrString, containers: &[Container]) -> Option<i32> {
    let ports = containers.iter().flat_map(|c| c.ports.iter().flatten());
    match target {
        IntOrString::Int(n) => ports.clone().find(|p| p.container_port == *n).map(|p| p.container_port),
        IntOrString::String(name) => ports.clone().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port),
    }
}

fn env<'a>(container: &'a Container, name: &str) -> &'a EnvVar {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{} has no {name}", container.name))
}

fn env_value<'a>(container: &'a Container, name: &str) -> &'a str {
    env(container, name).value.as_deref().unwrap_or_else(|| panic!("{name} has no literal value"))
}

/// The (group, resource, verb, resourceName) grants of a list of rules; "*" for any name.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        let names = rule.resource_names.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| vec!["*".into()]);
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for name in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

fn binds(subjects: &Option<Vec<Subject>>, service_account: &str) -> bool {
    subjects
        .iter()
        .flatten()
        .any(|s| s.kind == "ServiceAccount" && s.name == service_account && s.namespace.as_deref() == Some(NAMESPACE))
}

fn fullname() -> &'static str {
    // Release "paddock" already holds the chart's name, so it is the base name.
    RELEASE
}

/// Checks that hold in every mode: typed objects exist, and they refer to each other.
fn check_links(objects: &Objects, cert_manager: bool) {
    // Every namespaced object is in the release namespace; cluster-scoped ones have none.
    let cluster_scoped =
        ["ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "CustomResourceDefinition"];
    for (kind, namespace, name) in &objects.all {
        let expected = (!cluster_scoped.contains(&kind.as_str())).then_some(NAMESPACE);
        assert_eq!(namespace.as_deref(), expected, "namespace of {kind} {name}");
    }
    let mut names: Vec<_> = objects.all.iter().map(|(k, _, n)| (k, n)).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(names.len(), before, "two objects of one kind share a name");

    // The operator: replicas, selector, probes, security context.
    let operator = objects.operator();
    let spec = &operator.spec;
    assert_eq!(spec.replicas, Some(2));
    assert!(selects(&spec.selector, &pod_labels(&spec.template)), "the Deployment selects its own pods");
    let pod = spec.template.spec.as_ref().unwrap();
    let container = objects.operator_container();
    assert_eq!(container.args.as_deref(), Some(&["run".to_owned()][..]));
    assert!(container.image.as_deref().unwrap().ends_with(":0.1.0"), "the tag defaults to appVersion");
    let port = |name: &str| {
        container.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port)
    };
    assert_eq!(port("metrics"), Some(8080));
    assert_eq!(port("webhook"), Some(9443));
    for (probe, path) in [(&container.liveness_probe, "/healthz"), (&container.readiness_probe, "/readyz")] {
        let http = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
        assert_eq!(http.path.as_deref(), Some(path));
        assert_eq!(resolve_port(&http.port, &pod.containers), Some(8080), "{path} on the metrics port");
    }
    let resources = container.resources.as_ref().expect("operator resources");
    assert!(resources.requests.as_ref().is_some_and(|r| r.contains_key("memory")));
    assert!(resources.limits.as_ref().is_some_and(|r| r.contains_key("memory")));
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    let security = container.security_context.as_ref().expect("container securityContext");
    assert!(security.run_as_non_root.or(pod_security.run_as_non_root) == Some(true), "non-root");
    assert_eq!(pod_security.run_as_user, Some(65532), "the image's non-root uid");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_owned()]));
    let seccomp = security.seccomp_profile.as_ref().or(pod_security.seccomp_profile.as_ref());
    assert_eq!(seccomp.map(|s| s.type_.as_str()), Some("RuntimeDefault"));
    // Every volume the container mounts exists (a read-only root needs a writable /tmp).
    let volumes: BTreeSet<_> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    for mount in container.volume_mounts.iter().flatten() {
        assert!(volumes.contains(mount.name.as_str()), "volume {} is mounted but not defined", mount.name);
    }

    // Its environment: exactly the interface, with values that point at the right objects.
    let mode_env = if cert_manager { CERT_MANAGER_ENV } else { SELF_SIGNED_ENV };
    // The managed ensemble serves TLS by default; the tests that turn it off check no links.
    let tls_env = if objects.stateful_sets.is_empty() { &[][..] } else { ZK_TLS_ENV };
    let own_ca = pod.volumes.iter().flatten().any(|v| v.name == "zookeeper-tls" && v.empty_dir.is_some());
    let ca_env = match (tls_env.is_empty(), own_ca) {
        (true, _) => &[][..],
        (false, true) => OWN_CA_ENV,
        (false, false) => CLIENT_CA_ENV,
    };
    let expected: BTreeSet<&str> = OPERATOR_ENV.iter().chain(mode_env).chain(tls_env).chain(ca_env).copied().collect();
    let names: Vec<&str> = container.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(names.iter().copied().collect::<BTreeSet<_>>(), expected, "the operator's environment");
    assert_eq!(names.len(), expected.len(), "no variable set twice: {names:?}");
    assert_eq!(env_value(container, "PADDOCK_METRICS_LISTEN"), "0.0.0.0:8080");
    assert_eq!(env_value(container, "PADDOCK_WEBHOOK_LISTEN"), "0.0.0.0:9443");
    assert_eq!(env_value(container, "PADDOCK_ZK_ROOT"), "/paddock");
    assert_eq!(env_value(container, "PADDOCK_LEASE_DURATION"), "15s");
    assert_eq!(env_value(container, "PADDOCK_NATIVE_SIDECARS"), "auto");
    assert_eq!(env_value(container, "PADDOCK_SIDECAR_PULL_POLICY"), "IfNotPresent");
    assert!(env_value(container, "PADDOCK_SIDECAR_IMAGE").ends_with("paddock-sidecar:0.1.0"));
    let sidecar_resources: ResourceRequirements =
        serde_json::from_str(env_value(container, "PADDOCK_SIDECAR_RESOURCES")).expect("ResourceRequirements JSON");
    assert!(sidecar_resources.requests.is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert_eq!(env_value(container, "PADDOCK_SIDECAR_ZOOKEEPER"), env_value(container, "PADDOCK_ZOOKEEPER"));
    for (name, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let from = env(container, name).value_from.as_ref().and_then(|f| f.field_ref.as_ref());
        assert_eq!(from.map(|f| f.field_path.as_str()), Some(field), "{name} from the downward API");
    }
    let auth = env(container, "PADDOCK_ZK_AUTH").value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref());
    let auth = auth.expect("PADDOCK_ZK_AUTH from a Secret");
    assert_eq!(auth.key, "credentials");
    let secret = objects.secrets.iter().find(|s| s.metadata.name.as_deref() == Some(auth.name.as_str()));
    let secret = secret.expect("PADDOCK_ZK_AUTH's Secret is part of the release");
    let credentials = &secret.data.as_ref().expect("data")["credentials"].0;
    let credentials = std::str::from_utf8(credentials).unwrap();
    let (user, password) = credentials.split_once(':').expect("user:password");
    assert_eq!(user, "paddock-operator");
    assert!(password.len() >= 32 && password.chars().all(|c| c.is_ascii_alphanumeric()), "a random password");
    let keep = secret.metadata.annotations.as_ref().and_then(|a| a.get("helm.sh/resource-policy"));
    assert_eq!(keep.map(String::as_str), Some("keep"), "the identity outlives the release, as its znodes do");

    // Services select exactly the workload they are for, on ports its containers have.
    for service in &objects.services {
        let name = service.metadata.name.as_deref().unwrap();
        let spec = service.spec.as_ref().unwrap();
        let selector = spec.selector.clone().expect("a selector");
        assert!(!selector.is_empty());
        let chosen = selected(objects, |labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        let intended = if name.contains("zookeeper") {
            format!("StatefulSet/{}-zookeeper", fullname())
        } else {
            format!("Deployment/{}-operator", fullname())
        };
        assert_eq!(chosen, vec![intended.clone()], "Service {name} selects {chosen:?}");
        let template = objects.workloads().into_iter().find(|(n, _)| *n == intended).unwrap().1;
        let containers = &template.spec.as_ref().unwrap().containers;
        for port in spec.ports.iter().flatten() {
            let target = port.target_port.clone().unwrap_or(IntOrString::Int(port.port));
            assert!(
                resolve_port(&target, containers).is_some(),
                "Service {name} port {} reaches no container",
                port.port
            );
        }
    }
    let metrics = objects.service(&format!("{}-metrics", fullname()));
    let metrics_port = &metrics.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(resolve_port(metrics_port.target_port.as_ref().unwrap(), &pod.containers), Some(8080));

    // The webhook reaches the operator's webhook port through its Service.
    assert_eq!(objects.webhooks.len(), 1);
    let configuration = &objects.webhooks[0];
    let configuration_name = configuration.metadata.name.as_deref().unwrap();
    assert_eq!(configuration_name, format!("{}-sidecar-injector", fullname()));
    let hooks = configuration.webhooks.as_ref().unwrap();
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(hook.name, "inject.paddock.dev");
    let client = hook.client_config.service.as_ref().expect("clientConfig.service");
    assert_eq!(client.namespace, NAMESPACE);
    assert_eq!(client.path.as_deref(), Some("/inject"));
    assert_eq!(client.port, Some(443));
    assert_eq!(env_value(container, "PADDOCK_WEBHOOK_SERVICE"), client.name);
    let webhook_service = objects.service(&client.name);
    let service_port = webhook_service.spec.as_ref().unwrap().ports.iter().flatten().find(|p| p.port == 443);
    let target = service_port.and_then(|p| p.target_port.clone()).expect("port 443 with a targetPort");
    assert_eq!(resolve_port(&target, &pod.containers), Some(9443), "443 reaches the operator's webhook port");
    assert!(hook.client_config.ca_bundle.is_none(), "caBundle is the operator's or cainjector's to write");
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.admission_review_versions, ["v1"]);
    assert_eq!(hook.timeout_seconds, Some(10));
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert!(hook.object_selector.is_none(), "the webhook reads the annotation itself");
    let rules = hook.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].operations.as_deref(), Some(&["CREATE".to_owned()][..]));
    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(rules[0].api_versions.as_deref(), Some(&["v1".to_owned()][..]));
    assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_owned()][..]));
    let namespaces = hook.namespace_selector.as_ref().expect("a namespaceSelector");
    let namespace = |name: &str| BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), name.to_owned())]);
    assert!(!selects(namespaces, &namespace(NAMESPACE)), "the release namespace is never injected");
    assert!(!selects(namespaces, &namespace("kube-system")));
    assert!(selects(namespaces, &namespace("my-app")), "an app namespace is");
    if cert_manager {
        assert!(env(container, "PADDOCK_WEBHOOK_CERT_DIR").value.is_some());
    } else {
        assert_eq!(env_value(container, "PADDOCK_WEBHOOK_CONFIG"), configuration_name);
        assert_eq!(env_value(container, "PADDOCK_WEBHOOK_TLS_SECRET"), format!("{}-webhook-tls", fullname()));
    }

    // Disruption budgets select exactly one workload each.
    for budget in &objects.disruption_budgets {
        let spec = budget.spec.as_ref().unwrap();
        let selector = spec.selector.as_ref().expect("a selector");
        let chosen = selected(objects, |labels| selects(selector, labels));
        assert_eq!(chosen.len(), 1, "PDB {:?} selects {chosen:?}", budget.metadata.name);
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    }
    assert!(
        objects
            .disruption_budgets
            .iter()
            .any(|b| selects(b.spec.as_ref().unwrap().selector.as_ref().unwrap(), &pod_labels(&spec.template))),
        "the operator has a PodDisruptionBudget"
    );

    // The operator's ServiceAccount holds the ClusterRole and the leader-election Role.
    let account = pod.service_account_name.as_deref().expect("serviceAccountName");
    assert!(objects.service_accounts.iter().any(|a| a.metadata.name.as_deref() == Some(account)));
    assert_eq!(objects.cluster_role_bindings.len(), 1);
    let binding = &objects.cluster_role_bindings[0];
    assert!(binds(&binding.subjects, account), "ClusterRoleBinding binds {account}");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(objects.cluster_roles.len(), 1);
    assert_eq!(objects.cluster_roles[0].metadata.name.as_deref(), Some(binding.role_ref.name.as_str()));
    assert_eq!(objects.role_bindings.len(), 1);
    let binding = &objects.role_bindings[0];
    assert!(binds(&binding.subjects, account), "RoleBinding binds {account}");
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(objects.roles.len(), 1);
    assert_eq!(objects.roles[0].metadata.name.as_deref(), Some(binding.role_ref.name.as_str()));
    let granted = grants(objects.cluster_roles[0].rules.as_deref().unwrap_or_default())
        .union(&grants(objects.roles[0].rules.as_deref().unwrap_or_default()))
        .cloned()
        .collect::<BTreeSet<_>>();
    for (group, resource, verb) in OPERATOR_CALLS {
        assert!(
            granted.iter().any(|(g, r, v, _)| g == group && r == resource && v == verb),
            "the operator may not {verb} {group}/{resource}"
        );
    }
    let webhook_patch = granted.iter().any(|(_, r, v, _)| r == "mutatingwebhookconfigurations" && v == "patch");
    assert_eq!(webhook_patch, !cert_manager, "only a self-signed operator patches its webhook configuration");
    // A self-signed operator replaces its shared certificate's Secret, in its own namespace.
    let tls_update = grants(objects.roles[0].rules.as_deref().unwrap_or_default()).contains(&(
        "".into(),
        "secrets".into(),
        "update".into(),
        format!("{}-webhook-tls", fullname()),
    ));
    assert_eq!(tls_update, !cert_manager, "update of the webhook's TLS Secret, by name, in the Role");
    for (group, resource, verb, name) in &granted {
        assert!(![group, resource, verb].contains(&&"*".to_owned()), "a wildcard grant: {group} {resource} {verb}");
        if resource == "mutatingwebhookconfigurations" {
            assert_eq!(name, configuration_name, "the operator may only patch its own webhook configuration");
        }
        if resource == "secrets" && verb == "update" {
            let own = [format!("{}-webhook-tls", fullname()), format!("{}-zookeeper-tls", fullname())];
            assert!(own.contains(name), "no Secret but the webhook's and the servers' is updated: {name}");
        }
    }
}

/// The managed ensemble: StatefulSet, Services, config, budget, spread.
fn check_managed_zookeeper(objects: &Objects, replicas: usize) -> BTreeMap<String, String> {
    assert_eq!(objects.stateful_sets.len(), 1);
    let set = &objects.stateful_sets[0];
    let name = set.metadata.name.as_deref().unwrap();
    let spec = &set.spec;
    assert_eq!(spec.replicas, Some(replicas as i32));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"), "no server can be ready alone");
    assert!(selects(&spec.selector, &pod_labels(&spec.template)));
    let headless = objects.service(spec.service_name.as_deref().expect("serviceName"));
    let headless_spec = headless.spec.as_ref().unwrap();
    assert_eq!(headless_spec.cluster_ip.as_deref(), Some("None"), "serviceName is a headless Service");
    assert_eq!(headless_spec.publish_not_ready_addresses, Some(true), "servers find each other before ready");
    let client = objects.service(name);
    let client_port = client.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;

    let pod = spec.template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("paddock-zookeeper:0.1.0"), "scripts/images.sh builds it");
    let mounts: BTreeMap<&str, &str> =
        container.volume_mounts.iter().flatten().map(|m| (m.mount_path.as_str(), m.name.as_str())).collect();
    let claims = spec.volume_claim_templates.as_ref().expect("volumeClaimTemplates");
    assert_eq!(claims.len(), 1);
    assert_eq!(Some(mounts["/data"]), claims[0].metadata.name.as_deref(), "the data volume is persistent");
    let storage = claims[0].spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(storage["storage"].0, "8Gi");
    let volumes: BTreeMap<&str, _> = pod.volumes.iter().flatten().map(|v| (v.name.as_str(), v)).collect();
    for (path, volume) in &mounts {
        assert!(volumes.contains_key(volume) || *path == "/data", "volume {volume} is not defined");
    }
    let config_name = volumes[mounts["/config"]].config_map.as_ref().expect("config from a ConfigMap").name.clone();
    let data = objects.config_map(&config_name).data.clone().expect("ConfigMap data");

    // Probes speak four-letter words through probe.sh; the container's command is start.sh.
    let exec = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe.as_ref().and_then(|p| p.exec.as_ref()).and_then(|e| e.command.clone()).expect("an exec probe")
    };
    assert_eq!(exec(&container.liveness_probe), ["/bin/bash", "/config/probe.sh", "ruok"]);
    assert_eq!(exec(&container.readiness_probe), ["/bin/bash", "/config/probe.sh", "srvr"]);
    assert_eq!(container.command.as_deref(), Some(&["/bin/bash".to_owned(), "/config/start.sh".to_owned()][..]));
    let pod_name = container.env.iter().flatten().find(|e| e.name == "POD_NAME");
    let field = pod_name.and_then(|e| e.value_from.as_ref()).and_then(|f| f.field_ref.as_ref());
    assert_eq!(field.map(|f| f.field_path.as_str()), Some("metadata.name"), "start.sh takes myid from the pod name");
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(pod.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true));
    let client_container_port = container.ports.iter().flatten().find(|p| p.name.as_deref() == Some("client"));
    assert_eq!(client_container_port.map(|p| p.container_port), Some(client_port));

    // zoo.cfg: the settings Paddock needs, and one server line per replica, each the
    // stable DNS name of one pod of this StatefulSet under its headless Service.
    let config = &data["zoo.cfg"];
    let settings: BTreeMap<&str, &str> = config.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(settings["extendedTypesEnabled"], "true");
    assert_eq!(settings["dataDir"], "/data");
    // With TLS (the default) the client port is secureClientPort, and there is no plain one.
    let tls = settings.contains_key("secureClientPort");
    let port_key = if tls { "secureClientPort" } else { "clientPort" };
    assert_eq!(settings[port_key], client_port.to_string());
    assert!(!(tls && settings.contains_key("clientPort")), "no plain client port beside the TLS one");
    let words: BTreeSet<&str> = settings["4lw.commands.whitelist"].split(',').collect();
    assert!(words.contains("ruok") && words.contains("srvr"), "the probes' words are allowed: {words:?}");
    assert!(settings["maxSessionTimeout"].parse::<u64>().unwrap() >= 10_000, "the sidecar's 10s session fits");
    let servers: Vec<&str> = config.lines().filter(|l| l.starts_with("server.")).collect();
    assert_eq!(servers.len(), replicas, "{servers:?}");
    for (i, line) in servers.iter().enumerate() {
        let host = format!("{name}-{i}.{}.{NAMESPACE}.svc.cluster.local", headless.metadata.name.as_deref().unwrap());
        // A server line's ";port" would open a plain client port.
        let client = if tls { String::new() } else { format!(";{client_port}") };
        assert_eq!(*line, format!("server.{}={host}:2888:3888{client}", i + 1));
    }

    // A disruption budget that keeps a quorum, and servers spread over nodes.
    let budget = objects
        .disruption_budgets
        .iter()
        .find(|b| selects(b.spec.as_ref().unwrap().selector.as_ref().unwrap(), &pod_labels(&spec.template)));
    assert_eq!(budget.and_then(|b| b.spec.as_ref().unwrap().max_unavailable.clone()), Some(IntOrString::Int(1)));
    let anti = pod.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref()).expect("pod anti-affinity");
    let term = &anti.preferred_during_scheduling_ignored_during_execution.as_ref().expect("soft by default")[0];
    assert_eq!(term.pod_affinity_term.topology_key, "kubernetes.io/hostname");
    assert!(selects(term.pod_affinity_term.label_selector.as_ref().unwrap(), &pod_labels(&spec.template)));
    data
}

#[test]
fn defaults_render_into_valid_objects_that_refer_to_each_other() {
    let objects = Objects::parse(&render(&[]).unwrap());
    let count = |kind: &str| objects.all.iter().filter(|(k, _, _)| k == kind).count();
    assert_eq!(count("Deployment"), 1);
    assert_eq!(count("StatefulSet"), 1);
    assert_eq!(count("Service"), 4, "webhook, metrics, ZooKeeper headless and client");
    assert_eq!(count("PodDisruptionBudget"), 2);
    assert_eq!(count("ConfigMap"), 1);
    assert_eq!(count("Secret"), 1);
    assert_eq!(count("NetworkPolicy"), 1, "ZooKeeper's");
    assert_eq!(count("CustomResourceDefinition"), 2);
    assert!(objects.cert_manager("Issuer").is_empty() && objects.cert_manager("Certificate").is_empty());
    check_links(&objects, false);
    check_managed_zookeeper(&objects, 3);
    // The operator and every sidecar reach the ensemble through its client Service, by a
    // name that resolves from any namespace.
    let client = objects.service(&format!("{}-zookeeper", fullname()));
    let port = client.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    let address = format!("{}-zookeeper.{NAMESPACE}.svc.cluster.local:{port}", fullname());
    assert_eq!(env_value(objects.operator_container(), "PADDOCK_ZOOKEEPER"), address);
    // The CRDs are the generated ones, installed from the chart's crds/ directory.
    let names: BTreeSet<_> = objects.crds.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["distributedlocks.paddock.dev".to_owned(), "workqueues.paddock.dev".to_owned()]));
    let chart_crds = std::fs::read_to_string(chart_dir().join("crds/paddock.dev.yaml")).unwrap();
    assert_eq!(chart_crds, std::fs::read_to_string(repo().join("crds/paddock.dev.yaml")).unwrap());
}

/// With failurePolicy Fail, only pods that ask for the sidecar may depend on the webhook:
/// from 1.28 the API server filters them with matchConditions before calling it.
#[test]
fn only_pods_that_ask_for_the_sidecar_reach_the_webhook() {
    let objects = Objects::parse(&render(&[]).unwrap());
    let hook = &objects.webhooks[0].webhooks.as_ref().unwrap()[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    let conditions = hook.match_conditions.as_ref().expect("matchConditions on 1.28+");
    assert_eq!(conditions.len(), 1);
    let expression = &conditions[0].expression;
    assert!(expression.contains(r#"object.metadata.annotations["paddock.dev/inject"] == "true""#), "{expression}");
    assert!(expression.starts_with("has(object.metadata.annotations)"), "guards pods without annotations");

    let older = Objects::parse(&render(&["--kube-version", "v1.27.0"]).unwrap());
    let hook = &older.webhooks[0].webhooks.as_ref().unwrap()[0];
    assert!(hook.match_conditions.is_none(), "no matchConditions where the API server does not know them");
}

#[test]
fn the_ensemble_size_follows_zookeeper_replicas() {
    let objects = Objects::parse(&render(&["--set", "zookeeper.replicas=5"]).unwrap());
    check_managed_zookeeper(&objects, 5);
    let hard = Objects::parse(&render(&["--set", "zookeeper.antiAffinity=hard"]).unwrap());
    let pod = hard.stateful_sets[0].spec.template.spec.clone().unwrap();
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    let required = anti.required_during_scheduling_ignored_during_execution.expect("hard anti-affinity");
    assert_eq!(required[0].topology_key, "kubernetes.io/hostname");
}

/// A rejoining follower is sent a whole snapshot unless turned off (the 3.8.0 log hole;
/// see values.yaml), and extra flags still come after it.
#[test]
fn the_servers_sync_rejoining_followers_by_snapshot_unless_told_not_to() {
    let flags = |args: &[&str]| {
        let objects = Objects::parse(&render(args).unwrap());
        let pod = objects.stateful_sets[0].spec.template.spec.clone().unwrap();
        env_value(&pod.containers[0], "SERVER_JVMFLAGS").to_owned()
    };
    assert_eq!(flags(&[]), "-Xmx512m -Xms512m -Dzookeeper.forceSnapshotSync=true");
    let off = flags(&["--set", "zookeeper.forceSnapshotSync=false", "--set", "zookeeper.jvmFlags=-XX:+UseG1GC"]);
    assert_eq!(off.split_whitespace().collect::<Vec<_>>(), ["-Xmx512m", "-Xms512m", "-XX:+UseG1GC"]);
}

#[test]
fn an_external_zookeeper_replaces_the_managed_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let connect = "zk-0.zk.example:2181,zk-1.zk.example:2181,zk-2.zk.example:2181";
    let values =
        values_file(&dir, "external.yaml", &format!("zookeeper:\n  enabled: false\n  connectString: {connect}\n"));
    let objects = Objects::parse(&render(&["-f", &values]).unwrap());
    assert!(objects.stateful_sets.is_empty() && objects.config_maps.is_empty(), "no managed ensemble");
    assert_eq!(objects.services.len(), 2, "only the operator's Services");
    assert_eq!(objects.disruption_budgets.len(), 1, "only the operator's budget");
    check_links(&objects, false);
    let container = objects.operator_container();
    assert_eq!(env_value(container, "PADDOCK_ZOOKEEPER"), connect);
    assert_eq!(env_value(container, "PADDOCK_SIDECAR_ZOOKEEPER"), connect);
}

#[test]
fn an_external_zookeeper_needs_its_connect_string() {
    let error = render(&["--set", "zookeeper.enabled=false"]).unwrap_err();
    assert!(
        error.contains("zookeeper.connectString is required when zookeeper.enabled=false"),
        "the `required` message: {error}"
    );
    assert!(error.contains("execution error at (paddock/templates/"), "{error}");
}

/// The managed ensemble serves TLS only by default (secureClientPort with Netty, PEM
/// stores from the mounted Secret, client certificates, x509, quorum over TLS), with
/// certificates from cert-manager (a CA of the release's own) or from Secrets the user
/// names; the operator is given the CA and its certificate.
#[test]
fn zookeeper_serves_tls_only_by_default_and_the_operator_connects_with_a_certificate() {
    let objects = Objects::parse(&render(&[]).unwrap());
    let data = check_managed_zookeeper(&objects, 3);
    let settings: BTreeMap<&str, &str> = data["zoo.cfg"].lines().filter_map(|l| l.split_once('=')).collect();
    for (key, value) in [
        ("serverCnxnFactory", "org.apache.zookeeper.server.NettyServerCnxnFactory"),
        ("ssl.keyStore.type", "PEM"),
        ("ssl.trustStore.location", "/tls/ca.crt"),
        ("ssl.trustStore.type", "PEM"),
        ("ssl.clientAuth", "need"),
        ("authProvider.x509", "org.apache.zookeeper.server.auth.X509AuthenticationProvider"),
        ("sslQuorum", "true"),
        ("ssl.quorum.keyStore.type", "PEM"),
        ("ssl.quorum.trustStore.location", "/tls/ca.crt"),
    ] {
        assert_eq!(settings.get(key), Some(&value), "zoo.cfg {key}");
    }
    assert!(!settings.contains_key("clientPort"), "no plain client port");
    assert!(!data["zoo.cfg"].lines().any(|l| l.starts_with("server.") && l.contains(';')), "no plain port per server");
    // start.sh writes the key store zoo.cfg names, from the Secret mounted where ZOO_TLS_DIR says.
    let keystore = settings["ssl.keyStore.location"];
    assert_eq!(settings["ssl.quorum.keyStore.location"], keystore);
    assert!(data["start.sh"].contains(keystore) && data["probe.sh"].contains(keystore), "{keystore}");
    let set = &objects.stateful_sets[0];
    let pod = set.spec.template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(env_value(container, "ZOO_TLS_DIR"), "/tls");
    let secret_at = |pod: &k8s_openapi::api::core::v1::PodSpec, container: &Container, path: &str| {
        let mount = container.volume_mounts.iter().flatten().find(|m| m.mount_path == path).expect("mounted");
        let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("a volume");
        volume.secret.as_ref().and_then(|s| s.secret_name.clone()).expect("a Secret")
    };
    let server_secret = secret_at(pod, container, "/tls");

    // The default: the operator's own CA issues the servers' certificate into the Secret the
    // servers mount, for the names clients use, and its own certificate into a directory
    // of its own (no Secret to mount, so nothing waits for the operator to start); it signs
    // the namespaces' certificates with it; it may update that one Secret.
    assert!(objects.zookeeper_cert_manager("Certificate").is_empty(), "no cert-manager needed");
    let operator = objects.operator_container();
    let operator_pod = objects.operator().spec.template.spec.as_ref().unwrap();
    assert_eq!(env_value(operator, "PADDOCK_ZOOKEEPER_SERVER_SECRET"), server_secret);
    assert_eq!(env_value(operator, "PADDOCK_ZOOKEEPER_CA_SECRET"), format!("{}-zookeeper-ca", fullname()));
    assert_eq!(env_value(operator, "PADDOCK_ZOOKEEPER_CERT_LIFETIME"), "2160h");
    let names: Vec<&str> = env_value(operator, "PADDOCK_ZOOKEEPER_SERVER_NAMES").split(',').collect();
    let headless = objects.stateful_sets[0].spec.service_name.clone().unwrap();
    let connect_host = env_value(operator, "PADDOCK_ZOOKEEPER").rsplit_once(':').unwrap().0.to_owned();
    assert!(names.contains(&connect_host.as_str()), "the connect string's host: {names:?}");
    assert!(names.contains(&format!("*.{headless}.{NAMESPACE}.svc.cluster.local").as_str()), "each server: {names:?}");
    let dir = env_value(operator, "PADDOCK_ZK_TLS_CA").strip_suffix("/ca.crt").expect("ca.crt").to_owned();
    for (setting, file) in [
        ("PADDOCK_ZK_TLS_CERT", "tls.crt"),
        ("PADDOCK_ZK_TLS_KEY", "tls.key"),
        ("PADDOCK_ZOOKEEPER_SERVER_CERT", "server.crt"),
    ] {
        assert_eq!(env_value(operator, setting), format!("{dir}/{file}"));
    }
    let mount = operator.volume_mounts.iter().flatten().find(|m| m.mount_path == dir).expect("mounted");
    assert_ne!(mount.read_only, Some(true), "the operator writes its files there");
    let volume = operator_pod.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
    assert!(volume.empty_dir.is_some() && volume.secret.is_none(), "a directory of the operator's own");
    assert!(operator.env.iter().flatten().all(|e| !e.name.starts_with("PADDOCK_CLIENT_CA")), "its own CA signs");
    assert_eq!(env_value(operator, "PADDOCK_NAMESPACE_AUTH"), "x509");
    let update = ("".to_owned(), "secrets".to_owned(), "update".to_owned(), server_secret.clone());
    assert!(grants(objects.roles[0].rules.as_deref().unwrap()).contains(&update), "renews the servers' Secret");
    // What would leave servers and clients trusting different CAs is refused, saying what to set:
    // an issuer of the user's left from a cert-manager install, a client CA the servers
    // would not trust.
    let error = render(&["--set", "zookeeper.tls.certManager.issuerRef.name=corp-ca"]).unwrap_err();
    assert!(error.contains("zookeeper.tls.certManager.enabled=true"), "{error}");
    let error = render(&["--set", "zookeeper.tls.clientCaSecretName=client-ca"]).unwrap_err();
    assert!(error.contains("unset clientCaSecretName"), "{error}");

    // cert-manager: a CA of the release's own signs the servers' and the operator's.
    let objects = Objects::parse(&render(&["--set", "zookeeper.tls.certManager.enabled=true"]).unwrap());
    check_links(&objects, false);
    let set = &objects.stateful_sets[0];
    let certificates = objects.zookeeper_cert_manager("Certificate");
    let issuers = objects.zookeeper_cert_manager("Issuer");
    assert_eq!((issuers.len(), certificates.len()), (2, 3), "self-signed and CA Issuers; CA, server, operator");
    let by_secret = |name: &str| {
        *certificates.iter().find(|c| c["spec"]["secretName"] == name).unwrap_or_else(|| panic!("{name} issued"))
    };
    let server = by_secret(&server_secret);
    let ca_issuer = issuers.iter().find(|i| i["spec"]["ca"].is_object()).expect("a CA Issuer");
    assert_eq!(server["spec"]["issuerRef"]["name"], ca_issuer["metadata"]["name"]);
    let ca = by_secret(ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap());
    assert_eq!(ca["spec"]["isCA"], true);
    let usages = |c: &Value| c["spec"]["usages"].as_array().unwrap().iter().map(|u| u.to_string()).collect::<Vec<_>>();
    assert!(usages(server).contains(&"\"server auth\"".to_owned()), "servers serve with it");
    assert!(usages(server).contains(&"\"client auth\"".to_owned()), "and connect to each other with it");
    assert_eq!(server["spec"]["privateKey"]["encoding"], "PKCS8", "ZooKeeper's PEM key store reads PKCS#8 only");
    let dns: Vec<&str> = server["spec"]["dnsNames"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    let client_service = format!("{}-zookeeper.{NAMESPACE}.svc.cluster.local", fullname());
    assert!(dns.contains(&client_service.as_str()), "{dns:?}");
    let headless = set.spec.service_name.as_deref().unwrap();
    assert!(dns.contains(&format!("*.{headless}.{NAMESPACE}.svc.cluster.local").as_str()), "each server: {dns:?}");

    // The operator: the CA and its own certificate, from the mounted Secret.
    let operator = objects.operator_container();
    let operator_pod = objects.operator().spec.template.spec.as_ref().unwrap();
    let dir = env_value(operator, "PADDOCK_ZK_TLS_CA").strip_suffix("/ca.crt").expect("ca.crt").to_owned();
    assert_eq!(env_value(operator, "PADDOCK_ZK_TLS_CERT"), format!("{dir}/tls.crt"));
    assert_eq!(env_value(operator, "PADDOCK_ZK_TLS_KEY"), format!("{dir}/tls.key"));
    let operator_secret = secret_at(operator_pod, operator, &dir);
    let operator_cert = by_secret(&operator_secret);
    assert_eq!(operator_cert["spec"]["commonName"], "paddock-operator", "the operator's x509 identity");
    assert_eq!(operator_cert["spec"]["issuerRef"], server["spec"]["issuerRef"], "one CA for all");
    assert_eq!(usages(operator_cert), ["\"client auth\"", "\"digital signature\""]);
    // Namespace identities by certificate: the operator signs them with the release's CA,
    // the one the servers trust.
    assert_eq!(env_value(operator, "PADDOCK_NAMESPACE_AUTH"), "x509");
    let ca_dir = env_value(operator, "PADDOCK_CLIENT_CA_CERT").strip_suffix("/tls.crt").expect("tls.crt").to_owned();
    assert_eq!(env_value(operator, "PADDOCK_CLIENT_CA_KEY"), format!("{ca_dir}/tls.key"));
    assert_eq!(secret_at(operator_pod, operator, &ca_dir), ca["spec"]["secretName"].as_str().unwrap());
    assert_eq!(env_value(operator, "PADDOCK_CLIENT_CERT_LIFETIME"), "720h");
    // ZooKeeper reads its key store only at start: the operator restarts the StatefulSet
    // when a server serves another certificate than the servers' Secret holds. It sees
    // that Secret's certificate and not its key, looks at each server by its pod's name,
    // and may get and patch that StatefulSet and no other.
    assert_eq!(env_value(operator, "PADDOCK_ZOOKEEPER_STATEFULSET"), set.metadata.name.as_deref().unwrap());
    let cert_dir = env_value(operator, "PADDOCK_ZOOKEEPER_SERVER_CERT").strip_suffix("/tls.crt").expect("tls.crt");
    assert_eq!(secret_at(operator_pod, operator, cert_dir), server_secret);
    let mount = operator.volume_mounts.iter().flatten().find(|m| m.mount_path == cert_dir).unwrap();
    let volume = operator_pod.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
    let items: Vec<&str> = volume.secret.as_ref().unwrap().items.iter().flatten().map(|i| i.key.as_str()).collect();
    assert_eq!(items, ["tls.crt"], "the servers' certificate only, not their key");
    let servers: Vec<String> =
        (0..3).map(|i| format!("{}-zookeeper-{i}.{headless}.{NAMESPACE}.svc.cluster.local:2181", fullname())).collect();
    assert_eq!(env_value(operator, "PADDOCK_ZOOKEEPER_SERVERS"), servers.join(","));
    let restart =
        ("apps".to_owned(), "statefulsets".to_owned(), "patch".to_owned(), set.metadata.name.clone().unwrap());
    assert!(grants(objects.roles[0].rules.as_deref().unwrap()).contains(&restart), "patch of the StatefulSet, by name");

    // Secrets of the user's instead: no cert-manager object, the Secrets mounted.
    let objects = Objects::parse(
        &render(&[
            "--set",
            "zookeeper.tls.secretName=zk-certs",
            "--set",
            "zookeeper.tls.operatorSecretName=operator-certs",
            "--set",
            "zookeeper.tls.clientCaSecretName=client-ca",
        ])
        .unwrap(),
    );
    check_links(&objects, false);
    assert!(objects.cert_manager.is_empty());
    let pod = objects.stateful_sets[0].spec.template.spec.as_ref().unwrap();
    assert_eq!(secret_at(pod, &pod.containers[0], "/tls"), "zk-certs");
    let operator_pod = objects.operator().spec.template.spec.as_ref().unwrap();
    assert_eq!(secret_at(operator_pod, objects.operator_container(), &dir), "operator-certs");
    assert_eq!(secret_at(operator_pod, objects.operator_container(), &ca_dir), "client-ca");
    // Without a client CA of theirs, x509 namespaces cannot be: the error says what to set;
    // digest needs none.
    let theirs =
        ["--set", "zookeeper.tls.secretName=zk-certs", "--set", "zookeeper.tls.operatorSecretName=operator-certs"];
    let error = render(&theirs).unwrap_err();
    assert!(error.contains("zookeeper.tls.clientCaSecretName") && error.contains("namespaceAuth=digest"), "{error}");
    let digest =
        Objects::parse(&render(&[&theirs[..], &["--set", "zookeeper.tls.namespaceAuth=digest"]].concat()).unwrap());
    assert_eq!(env_value(digest.operator_container(), "PADDOCK_NAMESPACE_AUTH"), "digest");
    assert!(digest.operator_container().env.iter().flatten().all(|e| !e.name.starts_with("PADDOCK_CLIENT_CA")));
    // ... both of them; and neither source is an error that says what to set.
    let error =
        render(&["--set", "zookeeper.tls.secretName=zk-certs", "--set", "zookeeper.tls.clientCaSecretName=client-ca"])
            .unwrap_err();
    assert!(error.contains("zookeeper.tls.operatorSecretName"), "{error}");

    // An external ensemble: the operator over TLS when given its certificate's Secret.
    let external = ["--set", "zookeeper.enabled=false", "--set", "zookeeper.connectString=zk-0:2281"];
    let objects = Objects::parse(&render(&external).unwrap());
    assert!(objects.operator_container().env.iter().flatten().all(|e| !e.name.starts_with("PADDOCK_ZK_TLS")));
    let with_tls = [
        &external[..],
        &[
            "--set",
            "zookeeper.tls.operatorSecretName=operator-certs",
            "--set",
            "zookeeper.tls.clientCaSecretName=client-ca",
        ],
    ]
    .concat();
    let objects = Objects::parse(&render(&with_tls).unwrap());
    assert!(objects.cert_manager.is_empty() && objects.stateful_sets.is_empty());
    let operator_pod = objects.operator().spec.template.spec.as_ref().unwrap();
    assert_eq!(env_value(objects.operator_container(), "PADDOCK_ZK_TLS_CA"), format!("{dir}/ca.crt"));
    assert_eq!(secret_at(operator_pod, objects.operator_container(), &dir), "operator-certs");

    // Turned off: a plain client port, no certificates, the operator in plain text.
    let objects = Objects::parse(&render(&["--set", "zookeeper.tls.enabled=false"]).unwrap());
    let data = check_managed_zookeeper(&objects, 3);
    assert!(data["zoo.cfg"].contains("\nclientPort=") && !data["zoo.cfg"].contains("secureClientPort"));
    assert!(objects.cert_manager.is_empty());
    assert!(objects.operator_container().env.iter().flatten().all(|e| !e.name.starts_with("PADDOCK_ZK_TLS")));
}

/// ZooKeeper's client port takes the operator and pods of namespaces labelled as Paddock's
/// clients (or every namespace, opted out), its quorum ports only the servers.
#[test]
fn a_network_policy_keeps_zookeeper_to_its_clients_and_its_quorum_to_itself() {
    let objects = Objects::parse(&render(&[]).unwrap());
    assert_eq!(objects.network_policies.len(), 1);
    let policy = objects.network_policies[0].spec.as_ref().unwrap();
    let set = &objects.stateful_sets[0];
    let zookeeper = pod_labels(&set.spec.template);
    let operator = pod_labels(&objects.operator().spec.template);
    assert!(selects(policy.pod_selector.as_ref().unwrap(), &zookeeper), "it applies to the servers");
    assert_eq!(policy.policy_types.as_deref(), Some(&["Ingress".to_owned()][..]));
    let rules = policy.ingress.as_ref().unwrap();
    let ports = |rule: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| {
        rule.ports.iter().flatten().map(|p| p.port.clone().unwrap()).collect::<Vec<_>>()
    };
    let client_port =
        objects.service(&format!("{}-zookeeper", fullname())).spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port;
    let labelled = BTreeMap::from([("paddock.dev/client".to_owned(), "true".to_owned())]);
    let other = BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), "elsewhere".to_owned())]);
    // Whether a pod with `labels`, in this namespace (`namespace` None) or in one with the
    // labels `namespace`, may reach `port`.
    let allowed = |rules: &[k8s_openapi::api::networking::v1::NetworkPolicyIngressRule],
                   port: i32,
                   labels: &BTreeMap<String, String>,
                   namespace: Option<&BTreeMap<String, String>>| {
        rules.iter().filter(|r| ports(r).contains(&IntOrString::Int(port))).any(|rule| {
            rule.from.iter().flatten().any(|peer| match (&peer.namespace_selector, &peer.pod_selector, namespace) {
                (None, Some(pods), None) => selects(pods, labels),
                (Some(namespaces), pods, Some(ns)) => {
                    // An empty namespaceSelector is every namespace.
                    let every = namespaces.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                        && namespaces.match_expressions.as_ref().is_none_or(Vec::is_empty);
                    (every || selects(namespaces, ns)) && pods.as_ref().is_none_or(|p| selects(p, labels))
                }
                _ => false,
            })
        })
    };
    let app = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    assert!(allowed(rules, client_port, &operator, None), "the operator reaches the client port");
    assert!(allowed(rules, client_port, &app, Some(&labelled)), "a pod of a labelled namespace does");
    assert!(!allowed(rules, client_port, &app, Some(&other)), "a pod of another namespace does not");
    assert!(!allowed(rules, client_port, &app, None), "nor another pod of the release's namespace");
    for port in [2888, 3888] {
        assert!(allowed(rules, port, &zookeeper, None), "servers reach each other on {port}");
        assert!(!allowed(rules, port, &operator, None), "the operator does not reach {port}");
        assert!(!allowed(rules, port, &app, Some(&labelled)), "no client reaches {port}");
    }
    let container = &set.spec.template.spec.as_ref().unwrap().containers[0];
    let declared: BTreeSet<i32> = container.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(declared, BTreeSet::from([client_port, 2888, 3888]), "the policy covers every port the servers open");

    // Opted out: every namespace's pods reach the client port; the quorum stays closed.
    let objects = Objects::parse(&render(&["--set", "zookeeper.networkPolicy.allowAllNamespaces=true"]).unwrap());
    let rules = objects.network_policies[0].spec.as_ref().unwrap().ingress.clone().unwrap();
    assert!(allowed(&rules, client_port, &app, Some(&other)));
    assert!(!allowed(&rules, 2888, &app, Some(&other)));
    // Off, or no managed ensemble: no policy.
    for off in ["zookeeper.networkPolicy.enabled=false", "zookeeper.enabled=false"] {
        let objects = Objects::parse(&render(&["--set", off, "--set", "zookeeper.connectString=zk:2181"]).unwrap());
        assert!(objects.network_policies.is_empty(), "{off}");
    }
}

#[test]
fn cert_manager_issues_the_webhook_certificate_when_asked() {
    let objects = Objects::parse(&render(&["--set", "webhook.certManager.enabled=true"]).unwrap());
    check_links(&objects, true);
    let issuers = objects.cert_manager("Issuer");
    let certificates = objects.cert_manager("Certificate");
    assert_eq!((issuers.len(), certificates.len()), (1, 1));
    let (issuer, certificate) = (issuers[0], certificates[0]);
    assert!(issuer["spec"]["selfSigned"].is_object(), "a self-signed Issuer by default");
    assert_eq!(certificate["spec"]["issuerRef"]["name"], issuer["metadata"]["name"]);
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "Issuer");

    // cainjector finds the Certificate by the webhook configuration's annotation.
    let annotations = objects.webhooks[0].metadata.annotations.clone().expect("annotations");
    let certificate_name = certificate["metadata"]["name"].as_str().unwrap();
    assert_eq!(annotations["cert-manager.io/inject-ca-from"], format!("{NAMESPACE}/{certificate_name}"));
    // The certificate is for the name the API server calls.
    let service = &objects.webhooks[0].webhooks.as_ref().unwrap()[0].client_config.service.as_ref().unwrap().name;
    let dns: Vec<&str> =
        certificate["spec"]["dnsNames"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(dns.contains(&format!("{service}.{NAMESPACE}.svc").as_str()), "{dns:?}");

    // The operator reads the issued Secret from /tls.
    let container = objects.operator_container();
    assert_eq!(env_value(container, "PADDOCK_WEBHOOK_CERT_DIR"), "/tls");
    let mount = container.volume_mounts.iter().flatten().find(|m| m.mount_path == "/tls").expect("/tls mounted");
    let pod = objects.operator().spec.template.spec.as_ref().unwrap();
    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
    let secret_name = volume.secret.as_ref().and_then(|s| s.secret_name.as_deref());
    assert_eq!(secret_name, certificate["spec"]["secretName"].as_str());

    // With an issuer of the user's, the chart makes none.
    let dir = tempfile::tempdir().unwrap();
    let values = values_file(
        &dir,
        "issuer.yaml",
        "webhook:\n  certManager:\n    enabled: true\n    issuerRef:\n      name: corp-ca\n      kind: ClusterIssuer\n",
    );
    let objects = Objects::parse(&render(&["-f", &values]).unwrap());
    assert!(objects.cert_manager("Issuer").is_empty());
    let certificate = objects.cert_manager("Certificate")[0];
    assert_eq!(certificate["spec"]["issuerRef"]["name"], "corp-ca");
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
}

#[test]
fn the_schema_rejects_wrong_values_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let values = values_file(
        &dir,
        "wrong.yaml",
        "operator:\n  replicas: two\nwebhook:\n  failurePolicy: Sometimes\nzookeeper:\n  image:\n    tag: 3.8\n\
         zookeper:\n  enabled: false\n",
    );
    let error = render(&["-f", &values]).unwrap_err();
    for named in [
        "operator.replicas: Invalid type. Expected: integer, given: string",
        "webhook.failurePolicy",
        "zookeeper.image.tag: Invalid type. Expected: string, given: number",
        "Additional property zookeper is not allowed",
    ] {
        assert!(error.contains(named), "the error names `{named}`:\n{error}");
    }
    // --set values are checked as well, after merging.
    let error = render(&["--set", "sidecar.nativeSidecar=sometimes"]).unwrap_err();
    assert!(error.contains("sidecar.nativeSidecar"), "{error}");
    let error = render(&["--set", "operator.resources.requests.cpu=lots"]).unwrap_err();
    assert!(error.contains("operator.resources.requests.cpu"), "{error}");
    let error = render(&["--set", "operator.imageTag=latest"]).unwrap_err();
    assert!(error.contains("Additional property imageTag is not allowed"), "{error}");
}

#[test]
fn the_operator_rbac_is_what_deploy_operator_rbac_yaml_lists() {
    let objects = Objects::parse(&render(&[]).unwrap());
    let listed = std::fs::read_to_string(repo().join("deploy/operator-rbac.yaml")).unwrap();
    let mut listed_cluster = BTreeSet::new();
    let mut listed_namespaced = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&listed) {
        let doc = Value::deserialize(doc).unwrap();
        match doc["kind"].as_str() {
            Some("ClusterRole") => listed_cluster = grants(&typed::<ClusterRole>(&doc, "deploy").rules.unwrap()),
            Some("Role") => listed_namespaced = grants(&typed::<Role>(&doc, "deploy").rules.unwrap()),
            other => panic!("deploy/operator-rbac.yaml: unexpected {other:?}"),
        }
    }
    assert!(!listed_cluster.is_empty() && !listed_namespaced.is_empty());
    let chart_cluster = grants(objects.cluster_roles[0].rules.as_deref().unwrap());
    let chart_namespaced = grants(objects.roles[0].rules.as_deref().unwrap());
    assert_eq!(chart_cluster, listed_cluster, "the chart's ClusterRole grants what deploy/operator-rbac.yaml lists");
    assert_eq!(chart_namespaced, listed_namespaced, "the chart's Role grants what deploy/operator-rbac.yaml lists");
}

/// Every variable the chart gives the operator is one the operator reads (a clap `env`
/// of operator/src), so a misspelt name cannot silently fall back to a default.
#[test]
fn the_operator_reads_every_variable_the_chart_sets() {
    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut code = String::new();
    sources(&repo().join("operator/src"), &mut code);
    let read: BTreeSet<&str> = regex::Regex::new(r#"env = "([A-Z_]+)""#)
        .unwrap()
        .captures_iter(&code)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert!(read.contains("PADDOCK_ZOOKEEPER"), "found the operator's settings: {read:?}");
    for extra in [&[][..], &["--set", "webhook.certManager.enabled=true"][..]] {
        let objects = Objects::parse(&render(extra).unwrap());
        for var in objects.operator_container().env.iter().flatten() {
            assert!(read.contains(var.name.as_str()), "the chart sets {} but the operator does not read it", var.name);
        }
    }
}

/// The README's app pod: a valid Pod that asks for the sidecar and names a queue of the
/// examples, outside what `kubectl apply -f examples/` applies (not recursive).
#[test]
fn the_example_app_pod_asks_for_the_sidecar() {
    let path = repo().join("examples/pods/app.yaml");
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = typed(&doc, "examples/pods/app.yaml");
    assert!(pod.metadata.namespace.is_none(), "the namespace comes from `kubectl -n`");
    let annotations = pod.metadata.annotations.expect("annotations");
    assert_eq!(annotations["paddock.dev/inject"], "true");
    let queue = &annotations["paddock.dev/queue"];
    let mut queues = Vec::new();
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for doc in serde_yaml::Deserializer::from_str(&std::fs::read_to_string(&path).unwrap()) {
                let doc = Value::deserialize(doc).unwrap();
                if doc["kind"] == "WorkQueue" {
                    queues.push(doc["metadata"]["name"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(queues.contains(queue), "paddock.dev/queue names a WorkQueue of examples/: {queues:?}");
    let app = &pod.spec.expect("spec").containers[0];
    assert_eq!(app.name, "app", "the README execs into container `app`");
    assert!(app.image.as_deref().unwrap().contains("curl"), "the README curls from it");
}

/// examples/cronjob-under-lock.yaml: a valid CronJob and ConfigMap (typed, no unknown
/// field) beside the DistributedLock the CronJob's command takes; its pod asks for the
/// sidecar and the paddock command, and as the webhook injects it the container runs
/// `paddock` found first in its PATH, and the script from the ConfigMap, executable.
#[test]
fn the_example_cronjob_runs_its_report_under_its_lock_by_the_paddock_command() {
    use k8s_openapi::api::batch::v1::CronJob;
    use k8s_openapi::api::core::v1::Pod;
    use paddock_operator::webhook::cli::{CLI_ANNOTATION, CLI_DIR, CLI_NAME};
    use paddock_operator::webhook::inject::{INJECT_ANNOTATION, Injection, SidecarTemplate, inject};

    let path = repo().join("examples/cronjob-under-lock.yaml");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&std::fs::read_to_string(&path).unwrap())
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect();
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("a {kind}"));
    let lock = find("DistributedLock")["metadata"]["name"].as_str().unwrap();
    let cronjob: CronJob = typed(find("CronJob"), "the example CronJob");
    let config: ConfigMap = typed(find("ConfigMap"), "the example ConfigMap");
    let template = cronjob.spec.job_template.spec.unwrap().template;
    let annotations = template.metadata.clone().unwrap().annotations.unwrap();
    assert_eq!((annotations[INJECT_ANNOTATION].as_str(), annotations[CLI_ANNOTATION].as_str()), ("true", "true"));
    let spec = template.spec.clone().unwrap();
    let report = &spec.containers[0];
    let command = report.command.clone().unwrap();
    let expected = ["paddock", "lock", lock, "--wait", "30s", "--ttl", "60s", "--", "/app/report.sh"];
    assert_eq!(command, expected, "the README's command, on the example's lock");
    let script = command.last().unwrap().strip_prefix("/app/").unwrap();
    assert!(config.data.unwrap().contains_key(script), "the ConfigMap holds {script}");
    let volume = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == "app").unwrap();
    let mode = volume.config_map.as_ref().unwrap().default_mode.unwrap();
    assert_eq!(mode & 0o111, 0o111, "the script is executable (defaultMode {mode:o})");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));

    let sidecar = SidecarTemplate {
        image: "paddock-sidecar:0.1.0".into(),
        pull_policy: "IfNotPresent".into(),
        zookeeper: "zk:2181".into(),
        zk_root: "/paddock".into(),
        resources: ResourceRequirements::default(),
        port: 7420,
        health_port: 7421,
        native: true,
    };
    let pod = Pod { metadata: template.metadata.unwrap(), spec: Some(spec), ..Default::default() };
    let Ok(Injection::Inject(injected)) = inject(&pod, &sidecar) else { panic!("the webhook injects the pod") };
    let spec = injected.spec.unwrap();
    assert_eq!(spec.init_containers.unwrap()[0].name, CLI_NAME, "the command is installed first");
    let env = spec.containers[0].env.clone().unwrap();
    let path = env.iter().find(|e| e.name == "PATH").and_then(|e| e.value.clone()).unwrap();
    assert!(path.starts_with(&format!("{CLI_DIR}:")), "{path}");
}

/// The round trip that stands in for deny-unknown-fields does catch what it is for.
#[test]
fn a_misspelt_or_mistyped_field_fails_the_typed_parse() {
    let output = render(&[]).unwrap();
    let (_, deployment) = documents(&output).into_iter().find(|(_, d)| d["kind"] == "Deployment").unwrap();
    typed::<Deployment>(&deployment, "as rendered");
    let fails = |doc: Value| {
        let panic = std::panic::catch_unwind(|| typed::<Deployment>(&doc, "changed")).expect_err("rejected");
        panic.downcast_ref::<String>().cloned().unwrap_or_default()
    };
    let mut misspelt = deployment.clone();
    misspelt["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always".into();
    let message = fails(misspelt);
    assert!(message.contains(".spec.template.spec.containers[0].imagePullPolicyy"), "{message}");
    let mut misplaced = deployment.clone();
    misplaced["spec"]["serviceAccountName"] = "paddock-operator".into();
    assert!(fails(misplaced).contains(".spec.serviceAccountName"));
    let mut mistyped = deployment.clone();
    mistyped["spec"]["replicas"] = "2".into();
    assert!(fails(mistyped).contains("invalid type"));
    let mut wrong_kind = deployment;
    wrong_kind["apiVersion"] = "apps/v1beta1".into();
    assert!(fails(wrong_kind).contains("apps/v1beta1"));
}

#[test]
fn values_yaml_documents_every_key() {
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let lines: Vec<&str> = values.lines().collect();
    let mut keys = 0;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let is_key = !trimmed.starts_with('#')
            && !trimmed.starts_with('-')
            && trimmed.split_once(':').is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '));
        if is_key {
            keys += 1;
            let above = if i == 0 { "" } else { lines[i - 1].trim_start() };
            assert!(above.starts_with("# "), "values.yaml:{}: `{}` has no comment line above it", i + 1, line.trim());
        }
    }
    assert!(keys > 50, "found only {keys} keys");
}

#[test]
fn long_release_names_stay_within_kubernetes_limits() {
    let name = "a-release-name-of-fifty-three-characters-the-most-too";
    assert_eq!(name.len(), 53, "helm's limit");
    let output = render_chart(&chart_dir(), &["--name", name, "--namespace", NAMESPACE]).unwrap();
    let objects = Objects::parse(&output);
    for (kind, _, object) in &objects.all {
        assert!(object.len() <= 63, "{kind} {object} is longer than 63");
    }
    let set = objects.stateful_sets[0].metadata.name.as_deref().unwrap();
    assert!(set.len() <= 52, "a StatefulSet's pods get an 11-character revision label suffix: {set}");
    for label in objects.operator().metadata.labels.as_ref().unwrap().values() {
        assert!(label.len() <= 63, "label value {label}");
    }
}

/// helm-render itself, on a small chart of the test's own: what helm does that the paddock
/// chart does not use all of.
#[test]
fn the_renderer_renders_as_helm_does() {
    let chart = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = chart.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("Chart.yaml", "apiVersion: v2\nname: demo\nversion: 1.2.3\nappVersion: \"4.5\"\n");
    write(
        "values.yaml",
        "greeting: hello\nnested:\n  keep: 1\n  drop: 2\ncount: 3\ntemplated: \"{{ .Values.greeting }}!\"\n",
    );
    write("templates/_names.tpl", "{{- define \"demo.name\" -}}{{ .Release.Name }}-{{ .Chart.Name }}{{- end }}\n");
    write(
        "templates/b.yaml",
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "demo.name" . }}
data:
  chart: {{ .Chart.Version }}/{{ .Chart.AppVersion }}
  release: {{ .Release.Namespace }}/{{ .Release.Service }}/{{ .Release.IsInstall }}/{{ .Release.Revision }}
  kube: "{{ .Capabilities.KubeVersion.Major }}.{{ .Capabilities.KubeVersion.Minor }}"
  policy: {{ .Capabilities.APIVersions.Has "policy/v1" | quote }}
  custom: {{ .Capabilities.APIVersions.Has "example.com/v1" | quote }}
  template: {{ .Template.Name }} in {{ .Template.BasePath }}
  tpl: {{ tpl .Values.templated . | quote }}
  values: {{ .Values.nested | toJson | quote }}
  count: {{ .Values.count | quote }}
  sprig: {{ list 3 1 2 | sortAlpha | join "," | upper | quote }}
  lookup: {{ lookup "v1" "Secret" "ns" "x" | len | quote }}
  yaml: {{ (fromYaml "a: [1, 2]").a | toJson | quote }}
  missing: "{{ .Values.nothing }}"
"#,
    );
    // In helm's install order a ConfigMap comes before a Service, whatever their files'
    // names; a document of only comments is left out.
    write("templates/a.yaml", "# only a comment\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc\n");
    write("templates/NOTES.txt", "Thanks for installing {{ .Chart.Name }}.\n");
    write("override.yaml", "nested:\n  drop: null\n  added: true\ngreeting: hi\n");
    let override_file = chart.path().join("override.yaml");
    let output = render_chart(
        chart.path(),
        &[
            "--name",
            "rel",
            "--namespace",
            "ns",
            "--kube-version",
            "v1.31.2",
            "--api-versions",
            "example.com/v1",
            "-f",
            override_file.to_str().unwrap(),
            "--set",
            "count=7",
        ],
    )
    .unwrap();
    let docs = documents(&output);
    let kinds: Vec<_> = docs.iter().map(|(source, d)| (source.as_str(), d["kind"].as_str().unwrap())).collect();
    assert_eq!(kinds, [("demo/templates/b.yaml", "ConfigMap"), ("demo/templates/a.yaml", "Service")]);
    assert!(!output.contains("Thanks"), "NOTES.txt is rendered but not printed");
    let data = &docs[0].1["data"];
    let expect = [
        ("chart", "1.2.3/4.5"),
        ("release", "ns/Helm/true/1"),
        ("kube", "1.31"),
        ("policy", "true"),
        ("custom", "true"),
        ("template", "demo/templates/b.yaml in demo/templates"),
        ("tpl", "hi!"),
        ("values", r#"{"added":true,"keep":1}"#),
        ("count", "7"),
        ("sprig", "1,2,3"),
        ("lookup", "0"),
        ("yaml", "[1,2]"),
        ("missing", ""),
    ];
    for (key, value) in expect {
        assert_eq!(data[key], value, "{key}");
    }
    assert_eq!(docs[0].1["metadata"]["name"], "rel-demo");

    // --notes prints them; `fail` and a kubeVersion the chart excludes stop the render.
    let notes = render_chart(chart.path(), &["--notes"]).unwrap();
    assert!(notes.contains("\nNOTES:\nThanks for installing demo."), "{notes}");
    write("templates/c.yaml", "{{ fail \"no, thanks\" }}\n");
    let error = render_chart(chart.path(), &[]).unwrap_err();
    assert!(error.contains("no, thanks"), "{error}");
    let error = render_chart(&chart_dir(), &["--kube-version", "1.20.0"]).unwrap_err();
    assert!(error.contains("incompatible with Kubernetes v1.20.0"), "{error}");
}

/// A ZooKeeper server process, killed when dropped (and, by PR_SET_PDEATHSIG, with the test).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The rendered zoo.cfg, start.sh and probe.sh run a real 3-server ensemble of Debian's
/// ZooKeeper 3.8 (this machine's java and jars, where the paddock-zookeeper image has
/// them; tools/images-test runs the image itself). Only what cannot work outside a
/// cluster is changed: the servers' DNS names and ports become 127.0.0.1 and free ports,
/// and the data directories temporary ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_zookeeper_config_scripts_and_probes_run_a_real_ensemble() {
    run_rendered_ensemble(false).await;
}

/// The same with TLS, the default: certificates made by the test (a server certificate
/// for 127.0.0.1, a PKCS#8 key, as cert-manager's), mounted as the Secret would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_tls_configuration_runs_a_real_ensemble_with_no_plain_port() {
    run_rendered_ensemble(true).await;
}

/// What the rendered ensemble's clients use: its CA and a certificate, when it serves TLS.
struct RenderedTls {
    ca: String,
    client: paddock_testkit::tls::Issued,
}

impl RenderedTls {
    async fn four_letter_word(tls: &Option<Self>, port: u16, word: &str) -> String {
        let addr = ([127, 0, 0, 1], port).into();
        match tls {
            Some(tls) => paddock_testkit::tls::four_letter_word(&tls.ca, &tls.client, addr, word).await.unwrap(),
            None => four_letter_word(addr, word).await.unwrap(),
        }
    }
}

/// The two rendered ensembles take turns: three JVMs each, and a JVM per TLS probe, on a
/// shared two-core machine.
static ONE_ENSEMBLE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_rendered_ensemble(tls: bool) {
    let _turn = ONE_ENSEMBLE_AT_A_TIME.lock().await;
    init_tracing();
    let objects = Objects::parse(&render(&["--set", &format!("zookeeper.tls.enabled={tls}")]).unwrap());
    let data = check_managed_zookeeper(&objects, 3);
    let dir = tempfile::Builder::new().prefix("paddock-chart-zk-").tempdir().unwrap();
    let scripts = dir.path().join("config");
    std::fs::create_dir_all(&scripts).unwrap();
    for file in ["start.sh", "probe.sh"] {
        std::fs::write(scripts.join(file), &data[file]).unwrap();
    }
    // The Secret's files (ca.crt, tls.crt, tls.key), as mounted at /tls.
    let tls_dir = dir.path().join("tls");
    let certificates = tls.then(|| {
        let ca = paddock_testkit::TestCa::new("paddock-chart-test-ca").unwrap();
        let server = ca.issue_server([127, 0, 0, 1].into()).unwrap();
        std::fs::create_dir_all(&tls_dir).unwrap();
        std::fs::write(tls_dir.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(tls_dir.join("tls.crt"), &server.cert_pem).unwrap();
        std::fs::write(tls_dir.join("tls.key"), &server.key_pem).unwrap();
        RenderedTls { ca: ca.pem(), client: ca.issue_client("CN=paddock-chart-test", false).unwrap() }
    });
    // Where each server's start.sh writes its key store (the pod's /tmp, here its directory).
    let keystore = |i: usize| dir.path().join(format!("server-{i}/keystore.pem"));

    let ports = free_ports(9).unwrap();
    let client_ports = [ports[0], ports[3], ports[6]];
    let set_name = objects.stateful_sets[0].metadata.name.clone().unwrap();
    let mut servers = Vec::new();
    for i in 0..3 {
        let server_dir = dir.path().join(format!("server-{i}"));
        std::fs::create_dir_all(server_dir.join("data")).unwrap();
        let mut config = String::new();
        for line in data["zoo.cfg"].lines() {
            let line = match line.split_once('=') {
                Some(("dataDir", _)) => format!("dataDir={}", server_dir.join("data").display()),
                Some(("clientPort", _)) => format!("clientPort={}\nclientPortAddress=127.0.0.1", ports[3 * i]),
                Some(("secureClientPort", _)) => {
                    format!("secureClientPort={}\nsecureClientPortAddress=127.0.0.1", ports[3 * i])
                }
                Some((key @ ("ssl.keyStore.location" | "ssl.quorum.keyStore.location"), _)) => {
                    format!("{key}={}", keystore(i).display())
                }
                Some((key @ ("ssl.trustStore.location" | "ssl.quorum.trustStore.location"), _)) => {
                    format!("{key}={}", tls_dir.join("ca.crt").display())
                }
                Some(("quorumListenOnAllIPs", _)) => "quorumListenOnAllIPs=false".to_owned(),
                Some((key, _)) if key.starts_with("server.") => {
                    let n: usize = key["server.".len()..].parse().unwrap();
                    let (client, peer, election) = (ports[3 * (n - 1)], ports[3 * (n - 1) + 1], ports[3 * (n - 1) + 2]);
                    let client = if tls { String::new() } else { format!(";127.0.0.1:{client}") };
                    format!("{key}=127.0.0.1:{peer}:{election}{client}")
                }
                _ => line.to_owned(),
            };
            config.push_str(&line);
            config.push('\n');
        }
        std::fs::write(server_dir.join("zoo.cfg"), config).unwrap();
        let log = std::fs::File::create(server_dir.join("server.log")).unwrap();
        let mut command = Command::new("/bin/bash");
        command
            .arg(scripts.join("start.sh"))
            .env("POD_NAME", format!("{set_name}-{i}"))
            .env("ZOO_DATA_DIR", server_dir.join("data"))
            .env("ZOO_CFG", server_dir.join("zoo.cfg"))
            .env("SERVER_JVMFLAGS", "-Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1")
            .envs(tls.then(|| [("ZOO_TLS_DIR", tls_dir.clone()), ("ZOO_KEYSTORE", keystore(i))]).into_iter().flatten())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the JVM (start.sh execs into it) dies with us.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        servers.push(Some(Server(command.spawn().unwrap())));
    }
    // start.sh gave each server the id of its pod's ordinal plus one.
    for i in 0..3 {
        let myid = dir.path().join(format!("server-{i}/data/myid"));
        eventually(Duration::from_secs(10), "start.sh writes myid", || {
            let myid = myid.clone();
            async move { myid.exists() }
        })
        .await;
        assert_eq!(std::fs::read_to_string(&myid).unwrap().trim(), (i + 1).to_string());
    }

    // Over TLS the probe presents server 0's certificate (the pod's own, in the cluster).
    let probe_env: Vec<(&str, PathBuf)> =
        if tls { vec![("ZOO_TLS_DIR", tls_dir.clone()), ("ZOO_KEYSTORE", keystore(0))] } else { vec![] };
    let probe = |word: &'static str, port: u16| {
        let (script, env) = (scripts.join("probe.sh"), probe_env.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut command = Command::new("/bin/bash");
                command.arg(script).arg(word).arg(port.to_string()).envs(env);
                command.status().unwrap().success()
            })
            .await
            .unwrap()
        }
    };
    for i in 0..3 {
        let port = ports[3 * i];
        eventually(Duration::from_secs(90), &format!("server {i} is ready (srvr)"), || probe("srvr", port)).await;
        assert!(probe("ruok", port).await, "server {i} is live (ruok)");
    }
    let certificates_ref = &certificates;
    let modes: Vec<String> = futures::future::join_all((0..3).map(|i| async move {
        let reply = RenderedTls::four_letter_word(certificates_ref, client_ports[i], "srvr").await;
        reply.lines().find_map(|l| l.strip_prefix("Mode: ")).unwrap().to_owned()
    }))
    .await;
    assert_eq!(modes.iter().filter(|m| *m == "leader").count(), 1, "one quorum of three: {modes:?}");
    // The word whitelist is in force (the test ensembles allow all words; this one not).
    let stat = RenderedTls::four_letter_word(&certificates, ports[0], "stat").await;
    assert!(stat.contains("not in the whitelist"), "{stat}");
    // Extended types are on: a TTL node can be created.
    let connect = (0..3).map(|i| format!("127.0.0.1:{}", ports[3 * i])).collect::<Vec<_>>().join(",");
    let client = match &certificates {
        Some(tls) => {
            let options = zk::TlsOptions::new()
                .with_pem_ca(&tls.ca)
                .unwrap()
                .with_pem_identity(&tls.client.cert_pem, &tls.client.key_pem)
                .unwrap();
            zk::Client::connector().with_tls(options).secure_connect(&connect).await.unwrap()
        }
        None => zk::Client::connect(&connect).await.unwrap(),
    };
    if tls {
        // No plain port: a plain client is not served (ZooKeeper drops what is not TLS).
        let plain = four_letter_word(([127, 0, 0, 1], ports[0]).into(), "ruok").await;
        assert!(plain.as_deref().is_ok_and(str::is_empty) || plain.is_err(), "{plain:?}");
        let plain = zk::Client::connector().with_session_timeout(Duration::from_secs(2)).connect(&connect).await;
        assert!(plain.is_err(), "a plain client connected");
    }
    let ttl = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()).with_ttl(Duration::from_secs(60));
    client.create("/ttl", b"", &ttl).await.expect("a TTL node: extendedTypesEnabled is in force");
    drop(client);

    // A server that lost its quorum is live but not ready; a dead one is neither.
    servers[1] = None;
    servers[2] = None;
    let port = ports[0];
    eventually(Duration::from_secs(30), "server 0 without a quorum is not ready", || async move {
        !probe("srvr", port).await
    })
    .await;
    // (ruok within a few tries: the server drops its client connections as it leaves
    // the quorum, which is why the liveness probe tolerates failures.)
    eventually(Duration::from_secs(10), "server 0 without a quorum is still live", || probe("ruok", port)).await;
    assert!(!probe("ruok", ports[3]).await, "a killed server is not live");
}
