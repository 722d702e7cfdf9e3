//! The chart's monitoring (values `monitoring.*`): rendered only when asked and where the
//! cluster serves the Prometheus Operator's API; the alerting rules pass `promtool check
//! rules` and the unit tests of `alerts.test.yaml`; and a real Prometheus (Debian's 2.42),
//! scraping a real sidecar and operator as the rendered PodMonitor and ServiceMonitor
//! say (their port names, paths, intervals, honorLabels), has the sidecar's series and
//! runs every expression of the rules and the dashboard without error.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{NAMESPACE, documents, render, repo};
use paddock_operator::webhook::inject::{HEALTH_PORT_NAME, SIDECAR_LABEL};
use paddock_recipes::identity::DigestIdentity;
use paddock_recipes::{LockConfig, QueueConfig};
use paddock_testkit::ensemble::free_ports;
use paddock_testkit::{
    Acquire, Ensemble, Operator, OperatorOptions, PodClient, Sidecar, SidecarOptions, eventually, init_tracing,
    provision, workspace_binary,
};
use serde_json::Value;

const MONITORING_API: &str = "monitoring.coreos.com/v1";
const ALL_ON: [&str; 8] = [
    "--set",
    "monitoring.serviceMonitor.enabled=true",
    "--set",
    "monitoring.podMonitor.enabled=true",
    "--set",
    "monitoring.prometheusRule.enabled=true",
    "--set",
    "monitoring.dashboard.enabled=true",
];

/// The rendered documents of `kind`.
fn of_kind(output: &str, kind: &str) -> Vec<Value> {
    documents(output).into_iter().map(|(_, doc)| doc).filter(|doc| doc["kind"] == kind).collect()
}

fn one(output: &str, kind: &str) -> Value {
    let mut docs = of_kind(output, kind);
    assert_eq!(docs.len(), 1, "one {kind}");
    docs.remove(0)
}

/// The rule groups of the rendered PrometheusRule, as a Prometheus rules file.
fn rules_file(output: &str) -> String {
    let rule = one(output, "PrometheusRule");
    serde_yaml::to_string(&serde_json::json!({ "groups": rule["spec"]["groups"] })).unwrap()
}

fn promtool(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool (scripts/install-deps.sh installs Debian's prometheus package)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn monitoring_is_rendered_only_when_asked_and_where_the_api_is_served() {
    let kinds = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];
    let defaults = render(&[]).unwrap();
    for kind in kinds {
        assert!(of_kind(&defaults, kind).is_empty(), "{kind} is off by default");
    }
    let without_api = render(&ALL_ON).unwrap();
    for kind in kinds {
        assert!(of_kind(&without_api, kind).is_empty(), "no {kind} where {MONITORING_API} is not served");
    }

    let mut args = ALL_ON.to_vec();
    args.extend(["--api-versions", MONITORING_API, "--set", "monitoring.labels.release=prom"]);
    let output = render(&args).unwrap();
    for kind in kinds {
        assert_eq!(one(&output, kind)["metadata"]["labels"]["release"], "prom", "{kind} carries monitoring.labels");
    }
    // The PodMonitor finds what the webhook makes: the label and the named port.
    let pods = one(&output, "PodMonitor");
    assert_eq!(pods["spec"]["selector"]["matchLabels"], serde_json::json!({ SIDECAR_LABEL: "injected" }));
    assert_eq!(pods["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(pods["spec"]["podMetricsEndpoints"][0]["port"], HEALTH_PORT_NAME);
    // The ServiceMonitor selects the operator's metrics Service, not the webhook's, by
    // labels it has, and names a port of it.
    let monitor = one(&output, "ServiceMonitor");
    let selector = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
    let services = of_kind(&output, "Service");
    let selected: Vec<&Value> =
        services.iter().filter(|s| selector.iter().all(|(k, v)| &s["metadata"]["labels"][k] == v)).collect();
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert!(selected[0]["metadata"]["name"].as_str().unwrap().ends_with("-metrics"));
    let port = &monitor["spec"]["endpoints"][0]["port"];
    assert!(selected[0]["spec"]["ports"].as_array().unwrap().iter().any(|p| &p["name"] == port), "{port}");
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true, "the status gauges' namespace label wins");
    // The dashboard: Grafana's label, and JSON with panels.
    let dashboard = of_kind(&output, "ConfigMap").into_iter().find(|c| c["data"]["paddock.json"].is_string()).unwrap();
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(dashboard["data"]["paddock.json"].as_str().unwrap()).unwrap();
    assert!(json["panels"].as_array().unwrap().len() >= 8);
}

#[test]
fn the_alerting_rules_pass_promtool_and_fire_on_trouble_only() {
    let output =
        render(&["--api-versions", MONITORING_API, "--set", "monitoring.prometheusRule.enabled=true"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules_file(&output)).unwrap();
    let checked = promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    std::fs::copy(repo().join("tools/helm-render/tests/alerts.test.yaml"), dir.path().join("alerts.test.yaml"))
        .unwrap();
    promtool(dir.path(), &["test", "rules", "alerts.test.yaml"]);
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, config: &Value) -> Prometheus {
        let port = free_ports(1).unwrap()[0];
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, serde_yaml::to_string(config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (scripts/install-deps.sh installs it)");
        Prometheus { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// An instant query: Ok(result vector) or Err(the error Prometheus gave).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        match body["status"].as_str() {
            Some("success") => Ok(body["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(body.to_string()),
        }
    }
}

/// A scrape job as the Prometheus Operator makes it from a monitor's endpoint: its path,
/// interval and honorLabels; the target is where the test's process listens (a cluster's
/// service discovery would resolve the named port to it), labelled as the pod would be.
fn scrape_job(name: &str, endpoint: &Value, target: &str, labels: BTreeMap<&str, &str>) -> Value {
    serde_json::json!({
        "job_name": name,
        "metrics_path": endpoint["path"],
        "scrape_interval": endpoint["interval"],
        "honor_labels": endpoint["honorLabels"].as_bool().unwrap_or(false),
        "static_configs": [{ "targets": [target], "labels": labels }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_sidecar_and_the_operator_as_the_chart_says() {
    init_tracing();
    let mut args = ALL_ON.to_vec();
    args.extend([
        "--api-versions",
        MONITORING_API,
        "--set",
        "monitoring.podMonitor.interval=1s",
        "--set",
        "monitoring.serviceMonitor.interval=1s",
    ]);
    let output = render(&args).unwrap();
    let pod_endpoint = one(&output, "PodMonitor")["spec"]["podMetricsEndpoints"][0].clone();
    let operator_endpoint = one(&output, "ServiceMonitor")["spec"]["endpoints"][0].clone();

    // A sidecar (health port = the webhook's named port) that consumes a queue and holds
    // a lock, and an operator against the Kubernetes API stand-in.
    let ensemble = Ensemble::start_single().await.unwrap();
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::queue(&admin, "shop", "jobs", QueueConfig::default()).await.unwrap();
    provision::lock(&admin, "shop", "orders", LockConfig::default()).await.unwrap();
    let health = free_ports(1).unwrap()[0];
    let options =
        SidecarOptions::new(workspace_binary("paddock-sidecar"), ensemble.connect_string(), "worker-1", "shop")
            .env("PADDOCK_HEALTH_LISTEN", &format!("127.0.0.1:{health}"));
    let sidecar = Sidecar::start(options).await.unwrap();
    let pod = PodClient::new(sidecar.url(""));
    assert!(pod.next("jobs", "0s").await.unwrap().is_none());
    assert_eq!(pod.enqueue("jobs", "waits").await.unwrap().0, 201);
    assert!(matches!(pod.acquire("orders", "worker", "5s").await.unwrap(), Acquire::Acquired { .. }));
    let api = paddock_kube_standin::ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
    paddock_testkit::kubectl(&kubeconfig, &["apply", "-f", "crds/"]).unwrap();
    let identity = DigestIdentity::generate("paddock-operator");
    let operator = Operator::spawn(OperatorOptions::new(
        workspace_binary("paddock-operator"),
        &kubeconfig,
        &ensemble.connect_string(),
        &identity.credentials(),
    ))
    .unwrap();

    let config = serde_json::json!({
        "global": { "evaluation_interval": "1s" },
        "scrape_configs": [
            scrape_job("sidecars", &pod_endpoint, &format!("127.0.0.1:{health}"),
                BTreeMap::from([("namespace", "shop"), ("pod", "worker-1")])),
            scrape_job("operator", &operator_endpoint, &operator.metrics_addr.to_string(),
                BTreeMap::from([("namespace", NAMESPACE), ("pod", "paddock-operator-0")])),
        ],
    });
    let prometheus = Prometheus::start(dir.path(), &config);
    eventually(Duration::from_secs(60), "both targets are up", || async {
        prometheus.query("sum(up)").await.is_ok_and(|r| r.first().is_some_and(|s| s["value"][1] == "2"))
    })
    .await;
    eventually(Duration::from_secs(30), "the sidecar's series are there", || async {
        prometheus
            .query(r#"paddock_zookeeper_connected{pod="worker-1",namespace="shop"}"#)
            .await
            .is_ok_and(|r| r.len() == 1 && r[0]["value"][1] == "1")
    })
    .await;
    for series in [
        r#"paddock_queue_oldest_ready_age_seconds{queue="jobs"}"#,
        r#"paddock_lock_held_seconds{lock="orders"}"#,
        "paddock_operator_reconcile_duration_seconds_count",
    ] {
        let result = prometheus.query(series).await.unwrap();
        assert_eq!(result.len(), 1, "{series}: {result:?}");
    }

    // Every expression of the rules and the dashboard runs.
    let mut exprs: Vec<String> = Vec::new();
    let rules: Value = serde_yaml::from_str(&rules_file(&output)).unwrap();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        exprs.push(rule["expr"].as_str().unwrap().to_owned());
    }
    let dashboard = of_kind(&output, "ConfigMap").into_iter().find(|c| c["data"]["paddock.json"].is_string()).unwrap();
    let dashboard: Value = serde_json::from_str(dashboard["data"]["paddock.json"].as_str().unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 20, "{exprs:?}");
    for expr in &exprs {
        if let Err(err) = prometheus.query(expr).await {
            panic!("{expr}: {err}");
        }
    }
    drop(sidecar);
}
