//! What injection does to a pod, as a plain function: the pod in, the injected pod out
//! (the admission handler turns the difference into a JSONPatch). No I/O here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, PodSpec,
    Probe, ResourceRequirements, SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use paddock_recipes::Name;

use super::cli;
use crate::reconcile::identity::{CREDENTIALS_KEY, CREDENTIALS_SECRET};

/// The annotation that asks for a sidecar.
pub const INJECT_ANNOTATION: &str = "paddock.dev/inject";
/// The queue `GET /queue/next` serves by default (`PADDOCK_QUEUE`).
pub const QUEUE_ANNOTATION: &str = "paddock.dev/queue";
/// Set on pods the webhook injected; a pod carrying it is left alone.
pub const STATUS_ANNOTATION: &str = "paddock.dev/status";
/// The label of injected pods (`injected`), by which the chart's PodMonitor finds them.
pub const SIDECAR_LABEL: &str = "paddock.dev/sidecar";
/// The sidecar container's name.
pub const SIDECAR_NAME: &str = "paddock-sidecar";
/// The sidecar's port for probes and `/metrics` (all addresses, read-only).
pub const HEALTH_PORT_NAME: &str = "paddock-health";
/// `"false"` keeps the webhook from adding the `prometheus.io/*` scrape annotations.
pub const PROMETHEUS_ANNOTATIONS: &str = "paddock.dev/prometheus-annotations";
/// The conventional annotations by which Prometheus' `kubernetes_sd` configs find a
/// pod's metrics (one port per pod: a pod that has any of them keeps its own).
const SCRAPE_ANNOTATIONS: [&str; 3] = ["prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"];

/// Annotations overriding the sidecar's resources, with the field each sets.
const RESOURCE_ANNOTATIONS: [(&str, Bound, &str); 4] = [
    ("paddock.dev/sidecar-cpu-request", Bound::Requests, "cpu"),
    ("paddock.dev/sidecar-cpu-limit", Bound::Limits, "cpu"),
    ("paddock.dev/sidecar-memory-request", Bound::Requests, "memory"),
    ("paddock.dev/sidecar-memory-limit", Bound::Limits, "memory"),
];

#[derive(Debug, Clone, Copy)]
enum Bound {
    Requests,
    Limits,
}

/// The sidecar every injected pod gets (from the operator's settings).
#[derive(Debug, Clone)]
pub struct SidecarTemplate {
    pub image: String,
    pub pull_policy: String,
    /// Connect string the sidecars use.
    pub zookeeper: String,
    pub zk_root: String,
    pub resources: ResourceRequirements,
    /// The API port on loopback (`PADDOCK_URL`).
    pub port: u16,
    /// The probes' port, on all addresses (the kubelet probes from the node).
    pub health_port: u16,
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+), else a plain container.
    pub native: bool,
}

/// What the webhook does with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    /// Nothing to do, and why.
    Skip(&'static str),
    /// The pod as it should be created.
    Inject(Box<Pod>),
}

/// A pod whose annotations cannot be honoured; the message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// Ok when the pod asks for a sidecar and has none yet; else why it is left alone.
pub fn wants_sidecar(pod: &Pod) -> Result<(), &'static str> {
    let annotations = pod.metadata.annotations.as_ref();
    let asked = annotations.and_then(|a| a.get(INJECT_ANNOTATION)).is_some_and(|v| v == "true");
    if !asked {
        return Err("the pod is not annotated paddock.dev/inject: \"true\"");
    }
    let spec = pod.spec.as_ref();
    let has_sidecar = spec
        .is_some_and(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).any(|c| c.name == SIDECAR_NAME));
    if has_sidecar || annotations.is_some_and(|a| a.contains_key(STATUS_ANNOTATION)) {
        return Err("the pod already has its Paddock sidecar");
    }
    Ok(())
}

/// The pod with the sidecar added, or why it is left alone, or why it cannot be.
pub fn inject(pod: &Pod, template: &SidecarTemplate) -> Result<Injection, Rejected> {
    if let Err(reason) = wants_sidecar(pod) {
        return Ok(Injection::Skip(reason));
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let queue = match annotations.get(QUEUE_ANNOTATION) {
        Some(value) => Some(Name::new("queue", value).map_err(|e| {
            Rejected(format!("annotation {QUEUE_ANNOTATION}: {e}; name a WorkQueue of this namespace"))
        })?),
        None => None,
    };
    let resources = resources(template, &annotations)?;
    let wants_cli = cli::wanted(&annotations)?;
    let sidecar = sidecar_container(template, queue.as_ref(), resources);

    let mut injected = pod.clone();
    injected.metadata.labels.get_or_insert_with(BTreeMap::new).insert(SIDECAR_LABEL.into(), "injected".into());
    let pod_annotations = injected.metadata.annotations.get_or_insert_with(BTreeMap::new);
    pod_annotations.insert(STATUS_ANNOTATION.into(), "injected".into());
    let scrape_opted_out = annotations.get(PROMETHEUS_ANNOTATIONS).is_some_and(|v| v == "false");
    if !scrape_opted_out && !SCRAPE_ANNOTATIONS.iter().any(|a| annotations.contains_key(*a)) {
        let values = ["true".to_owned(), template.health_port.to_string(), "/metrics".to_owned()];
        pod_annotations.extend(SCRAPE_ANNOTATIONS.iter().map(|a| a.to_string()).zip(values));
    }
    let spec = injected.spec.get_or_insert_with(PodSpec::default);
    // Before the sidecar is added: only the app's containers get the command.
    let installer = if wants_cli { Some(cli::equip(spec, template, restricted())?) } else { None };
    let url = EnvVar {
        name: "PADDOCK_URL".into(),
        value: Some(format!("http://127.0.0.1:{}", template.port)),
        ..Default::default()
    };
    for container in spec.containers.iter_mut() {
        set_env(container, url.clone());
    }
    if template.native {
        // First among the init containers: the kubelet starts it (and waits for its
        // startup probe) before the rest, and stops it after the app containers.
        let init = spec.init_containers.get_or_insert_with(Vec::new);
        for container in init.iter_mut() {
            set_env(container, url.clone());
        }
        init.insert(0, Container { restart_policy: Some("Always".into()), ..sidecar });
    } else {
        spec.containers.push(sidecar);
    }
    if let Some(installer) = installer {
        // First of all: it exits before the sidecar and the app's init containers start.
        spec.init_containers.get_or_insert_with(Vec::new).insert(0, installer);
    }
    Ok(Injection::Inject(Box::new(injected)))
}

/// Sets `var` in the container's environment unless the container sets it itself.
fn set_env(container: &mut Container, var: EnvVar) {
    let env = container.env.get_or_insert_with(Vec::new);
    if !env.iter().any(|e| e.name == var.name) {
        env.push(var);
    }
}

fn resources(
    template: &SidecarTemplate,
    annotations: &BTreeMap<String, String>,
) -> Result<ResourceRequirements, Rejected> {
    let mut resources = template.resources.clone();
    for (annotation, bound, resource) in RESOURCE_ANNOTATIONS {
        let Some(value) = annotations.get(annotation) else { continue };
        if !is_quantity(value) {
            return Err(Rejected(format!(
                "annotation {annotation}: {value:?} is not a Kubernetes quantity; use e.g. \"100m\" for CPU or \"64Mi\" for memory"
            )));
        }
        let map = match bound {
            Bound::Requests => resources.requests.get_or_insert_with(BTreeMap::new),
            Bound::Limits => resources.limits.get_or_insert_with(BTreeMap::new),
        };
        map.insert(resource.into(), Quantity(value.clone()));
    }
    Ok(resources)
}

/// A quantity as the API server accepts it: a decimal number with an optional SI or
/// binary suffix or exponent.
fn is_quantity(value: &str) -> bool {
    static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
            .expect("valid pattern")
    });
    PATTERN.is_match(value)
}

fn sidecar_container(template: &SidecarTemplate, queue: Option<&Name>, resources: ResourceRequirements) -> Container {
    let value = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..Default::default() };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![
        value("PADDOCK_ZOOKEEPER", template.zookeeper.clone()),
        value("PADDOCK_ZK_ROOT", template.zk_root.clone()),
        value("PADDOCK_LISTEN", format!("127.0.0.1:{}", template.port)),
        value("PADDOCK_HEALTH_LISTEN", format!("0.0.0.0:{}", template.health_port)),
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        EnvVar {
            name: "PADDOCK_ZK_AUTH".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: CREDENTIALS_SECRET.into(),
                    key: CREDENTIALS_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        value("PADDOCK_LOG_FORMAT", "json".into()),
    ];
    if let Some(queue) = queue {
        env.push(value("PADDOCK_QUEUE", queue.to_string()));
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HEALTH_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(template.image.clone()),
        image_pull_policy: Some(template.pull_policy.clone()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(HEALTH_PORT_NAME.into()),
            container_port: template.health_port.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // The process is up; ZooKeeper's state is the app's to query (`/readyz`), so an
        // outage never takes the app's pod out of its Services.
        startup_probe: Some(probe("/healthz", 1, 30)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(resources),
        security_context: Some(restricted()),
        ..Default::default()
    }
}

/// The securityContext of what the webhook adds: the image's non-root user, a read-only
/// root filesystem, no capabilities, no privilege escalation.
pub(super) fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn template(native: bool) -> SidecarTemplate {
        SidecarTemplate {
            image: "paddock-sidecar:0.1.0".into(),
            pull_policy: "IfNotPresent".into(),
            zookeeper: "zk:2181".into(),
            zk_root: "/paddock".into(),
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("50m".into()))])),
                ..Default::default()
            },
            port: 7420,
            health_port: 7421,
            native,
        }
    }

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "app", "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        }))
        .unwrap()
    }

    fn injected(result: Result<Injection, Rejected>) -> Pod {
        match result.unwrap() {
            Injection::Inject(pod) => *pod,
            other => panic!("expected an injection, got {other:?}"),
        }
    }

    #[test]
    fn pods_without_the_annotation_are_left_alone() {
        assert!(matches!(inject(&pod(&[]), &template(true)), Ok(Injection::Skip(_))));
        assert!(matches!(inject(&pod(&[(INJECT_ANNOTATION, "false")]), &template(true)), Ok(Injection::Skip(_))));
    }

    #[test]
    fn native_sidecar_first_among_init_containers_and_the_app_gets_its_url() {
        let pod = injected(inject(&pod(&[(INJECT_ANNOTATION, "true"), (QUEUE_ANNOTATION, "jobs")]), &template(true)));
        let spec = pod.spec.unwrap();
        let sidecar = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, SIDECAR_NAME);
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        let env = sidecar.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "PADDOCK_QUEUE" && e.value.as_deref() == Some("jobs")));
        let app_env = spec.containers[0].env.as_ref().unwrap();
        assert!(app_env.iter().any(|e| e.name == "PADDOCK_URL" && e.value.as_deref() == Some("http://127.0.0.1:7420")));
        assert_eq!(spec.containers.len(), 1);
    }

    #[test]
    fn plain_container_on_older_clusters() {
        let pod = injected(inject(&pod(&[(INJECT_ANNOTATION, "true")]), &template(false)));
        let spec = pod.spec.unwrap();
        assert!(spec.init_containers.is_none());
        assert_eq!(spec.containers[1].name, SIDECAR_NAME);
        assert_eq!(spec.containers[1].restart_policy, None);
    }

    #[test]
    fn prometheus_finds_the_sidecar_by_its_named_port_and_the_scrape_annotations() {
        let pod_ = injected(inject(&pod(&[(INJECT_ANNOTATION, "true")]), &template(true)));
        let annotations = pod_.metadata.annotations.clone().unwrap();
        assert_eq!(pod_.metadata.labels.as_ref().unwrap()[SIDECAR_LABEL], "injected", "for the PodMonitor");
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "7421");
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
        let sidecar = &pod_.spec.unwrap().init_containers.unwrap()[0];
        let port = &sidecar.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.container_port), (Some(HEALTH_PORT_NAME), 7421));
        let listen = sidecar.env.as_ref().unwrap().iter().find(|e| e.name == "PADDOCK_HEALTH_LISTEN").unwrap();
        assert_eq!(listen.value.as_deref(), Some("0.0.0.0:7421"));

        // A pod that says how to scrape its own metrics keeps them; one may opt out.
        let own = pod(&[(INJECT_ANNOTATION, "true"), ("prometheus.io/port", "9090")]);
        let annotations = injected(inject(&own, &template(true))).metadata.annotations.unwrap();
        assert_eq!(annotations["prometheus.io/port"], "9090");
        assert!(!annotations.contains_key("prometheus.io/scrape") && !annotations.contains_key("prometheus.io/path"));
        let opted_out = pod(&[(INJECT_ANNOTATION, "true"), (PROMETHEUS_ANNOTATIONS, "false")]);
        let annotations = injected(inject(&opted_out, &template(true))).metadata.annotations.unwrap();
        assert!(SCRAPE_ANNOTATIONS.iter().all(|a| !annotations.contains_key(*a)), "{annotations:?}");
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let once = injected(inject(&pod(&[(INJECT_ANNOTATION, "true")]), &template(true)));
        assert!(matches!(inject(&once, &template(true)), Ok(Injection::Skip(_))));
    }

    #[test]
    fn annotations_override_resources_and_bad_ones_are_rejected_with_the_fix() {
        let pod_ = injected(inject(
            &pod(&[(INJECT_ANNOTATION, "true"), ("paddock.dev/sidecar-memory-limit", "128Mi")]),
            &template(true),
        ));
        let resources = pod_.spec.unwrap().init_containers.unwrap()[0].resources.clone().unwrap();
        assert_eq!(resources.limits.unwrap()["memory"], Quantity("128Mi".into()));
        assert_eq!(resources.requests.unwrap()["cpu"], Quantity("50m".into()), "the default stays");

        let bad =
            inject(&pod(&[(INJECT_ANNOTATION, "true"), ("paddock.dev/sidecar-cpu-limit", "lots")]), &template(true));
        assert!(bad.unwrap_err().0.contains("not a Kubernetes quantity"));
        let bad = inject(&pod(&[(INJECT_ANNOTATION, "true"), (QUEUE_ANNOTATION, "Bad_Queue")]), &template(true));
        assert!(bad.unwrap_err().0.contains(QUEUE_ANNOTATION));
    }
}
