//! The images `scripts/images.sh` built, run as real containers with podman, configured as
//! the chart and the webhook configure them in a cluster: three paddock-zookeeper
//! containers form an ensemble from the chart's default zoo.cfg and start script — TLS
//! only, certificates the operator issues from its CA, as by default — and the chart's
//! probes pass; the paddock-operator container reconciles `examples/` through the
//! Kubernetes API stand-in against that ensemble, issuing namespace `demo` its client
//! certificate; a paddock-sidecar container started with exactly the environment and
//! volumes the webhook's patch gives it serves a lock and a queue over TLS to a client on
//! the host; for the example CronJob's pod (`paddock.dev/cli`) the patch's
//! init container installs the `paddock` command from the sidecar image, and the app
//! container finds it through the PATH the patch gives it and runs the report under its
//! lock. Every container runs as 65532 on a read-only root filesystem (the app's as the
//! example says).
//!
//! Only what cannot work outside a cluster is changed, each named where it is done: DNS
//! names and fixed ports become 127.0.0.1 and free ports (the containers share the host's
//! network), the operator finds the API through a kubeconfig instead of a service
//! account, the servers' certificate names 127.0.0.1, and the operator's CA is one the
//! test put into its Secret (so that it can make a client certificate of its own). The tests need the archives (`bash scripts/images.sh`), so they are ignored
//! by a plain `cargo test`; `scripts/test.sh` builds the images and runs them.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use paddock_images_test::cluster::{HostVolume, Standin, admission_review, resolve_env, run_args, strings};
use paddock_images_test::*;
use serde::Deserialize as _;
use serde_json::{Value, json};

/// The archives: one image each, named and tagged as the chart's defaults name them, with
/// a non-root user, OCI labels, and the entrypoint the chart and the webhook rely on.
#[test]
#[ignore = "needs the images: bash scripts/images.sh (scripts/test.sh runs it, then these)"]
fn the_archives_hold_the_images_the_chart_names_with_a_non_root_user_and_labels() {
    let version = app_version();
    let docs = render_chart(&[]).unwrap();
    let (operator_pod, operator) = pod_spec(object(&docs, "Deployment", None));
    let (zookeeper_pod, zookeeper) = pod_spec(object(&docs, "StatefulSet", None));
    let mut configs = BTreeMap::new();
    for (image, reference) in chart_images(&docs) {
        let archived = read_archive(&archive(image)).unwrap();
        let built = format!("docker.io/library/{image}:{version}");
        assert_eq!(archived.tags, [built.as_str()], "{image}: one image, tagged with the chart's appVersion");
        assert_eq!(normalize(&reference), built, "the chart's default {reference} is the image the build made");
        let config = archived.config;
        assert_eq!(config["User"], format!("{NON_ROOT}:{NON_ROOT}"), "{image} runs as a non-root user");
        let labels = &config["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], image);
        assert_eq!(labels["org.opencontainers.image.version"], version.as_str());
        assert!(labels["org.opencontainers.image.source"].as_str().unwrap().starts_with("https://"), "{labels}");
        assert!(labels["org.opencontainers.image.licenses"].as_str().unwrap().contains("Apache-2.0"), "{labels}");
        if image != "paddock-zookeeper" {
            // The issue's goal for the two binaries' images (uncompressed: the archive's size).
            let size = std::fs::metadata(archive(image)).unwrap().len();
            assert!(size < 40_000_000, "{image} is {size} bytes, over 40 MB");
        }
        configs.insert(image, config);
    }
    // The operator's entrypoint with the chart's args; the sidecar's entrypoint alone (the
    // webhook's patch gives no command or args); ZooKeeper's own start script by default.
    assert_eq!(configs["paddock-operator"]["Entrypoint"], json!(["/usr/local/bin/paddock-operator"]));
    assert_eq!(configs["paddock-operator"]["Cmd"], operator["args"], "the image's default is what the chart runs");
    assert_eq!(configs["paddock-sidecar"]["Entrypoint"], json!(["/usr/local/bin/paddock-sidecar"]));
    assert!(strings(&configs["paddock-sidecar"]["Cmd"]).is_empty(), "the sidecar needs no arguments");
    assert_eq!(configs["paddock-zookeeper"]["Cmd"], json!(["/bin/bash", "/opt/paddock/zookeeper/start.sh"]));
    // The chart runs each as that user, on a read-only root filesystem.
    for (what, pod, container) in [("operator", operator_pod, operator), ("zookeeper", zookeeper_pod, zookeeper)] {
        assert_eq!(pod["securityContext"]["runAsUser"], NON_ROOT, "the {what} pod runs as the image's user");
        assert_eq!(pod["securityContext"]["runAsGroup"], NON_ROOT, "{what}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{what}");
    }
    assert_eq!(zookeeper_pod["securityContext"]["fsGroup"], NON_ROOT, "the data volume is the server's to write");
}

/// Each image, as its configuration says (no --user), on a read-only root: the operator
/// prints its CRDs, the sidecar serves, bash in the ZooKeeper image runs as 65532, cannot
/// write to / and finds Debian's JRE; the chart's scripts are in that image as rendered.
#[test]
#[ignore = "needs the images: bash scripts/images.sh (scripts/test.sh runs it, then these)"]
fn each_image_runs_as_its_non_root_user_on_a_read_only_root() {
    let version = app_version();
    let docs = render_chart(&[]).unwrap();
    let [operator, sidecar, zookeeper] = chart_images(&docs).map(|(_, reference)| reference);
    let podman = Podman::new().unwrap();
    for image in IMAGES {
        podman.load(image).unwrap();
    }
    let run = |args: &[&str]| {
        let mut all: Vec<String> = ["run", "--rm", "--read-only"].map(str::to_owned).to_vec();
        all.extend(host_flags());
        all.extend(args.iter().map(|a| a.to_string()));
        podman.run(&all).unwrap()
    };
    let crds = run(&[&operator, "crd"]);
    assert_eq!(crds.trim(), std::fs::read_to_string(repo().join("crds/paddock.dev.yaml")).unwrap().trim());
    assert_eq!(run(&[&sidecar, "--version"]), format!("paddock-sidecar {version}"));
    let script = "echo \"uid $EUID\"; if : 2>/dev/null >/written; then echo writable; else echo read-only; fi; \
                  java -version 2>&1";
    let shell = run(&["--entrypoint=/bin/bash", &zookeeper, "-c", script]);
    assert!(shell.starts_with(&format!("uid {NON_ROOT}\nread-only\n")), "{shell}");
    assert!(shell.contains("openjdk version \"17."), "Debian's JRE 17: {shell}");

    // The sidecar, long-running (with no ZooKeeper to reach it serves /healthz and
    // waits), seen from the host: its process runs as 65532, its root is mounted read-only.
    let [listen, health, nowhere] = free_ports(3).unwrap()[..] else { unreachable!() };
    let mut args: Vec<String> = ["run", "-d", "--name=sidecar-alone", "--read-only"].map(str::to_owned).to_vec();
    args.extend(host_flags());
    args.extend([
        format!("--env=PADDOCK_ZOOKEEPER=127.0.0.1:{nowhere}"),
        format!("--env=PADDOCK_LISTEN=127.0.0.1:{listen}"),
        format!("--env=PADDOCK_HEALTH_LISTEN=127.0.0.1:{health}"),
        "--env=POD_NAME=alone".to_owned(),
        "--env=POD_NAMESPACE=default".to_owned(),
        sidecar,
    ]);
    podman.run(&args).unwrap();
    let url = format!("http://127.0.0.1:{health}/healthz");
    eventually(Duration::from_secs(30), "the sidecar answers /healthz", || http_ok(&url))
        .unwrap_or_else(|e| panic!("{e}\n{}", podman.all_logs()));
    let pid = podman.pid("sidecar-alone").unwrap();
    assert_eq!(process_uids(pid).unwrap(), [NON_ROOT; 4]);
    assert!(root_is_read_only(pid).unwrap());

    // The chart's start script and probe, in the ZooKeeper image as the chart renders them.
    let config = object(&docs, "ConfigMap", Some("paddock-zookeeper"));
    podman.run(&["create", "--name=zk-files", &zookeeper]).unwrap();
    let copies = podman.scratch("zk-files").unwrap();
    for script in ["start.sh", "probe.sh"] {
        let from = format!("zk-files:/opt/paddock/zookeeper/{script}");
        podman.run(&["cp", &from, copies.to_str().unwrap()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(copies.join(script)).unwrap(),
            config["data"][script].as_str().unwrap(),
            "{script} in the image is the chart's"
        );
    }
}

/// The three images together, as the chart and the webhook run them.
#[test]
#[ignore = "needs the images: bash scripts/images.sh (scripts/test.sh runs it, then these)"]
fn the_chart_s_ensemble_the_operator_and_an_injected_sidecar_run_from_the_images() {
    let podman = Podman::new().unwrap();
    if let Err(error) = run_the_stack(&podman) {
        panic!("{error:#}\n{}", podman.all_logs());
    }
}

fn run_the_stack(podman: &Podman) -> Result<()> {
    for image in IMAGES {
        podman.load(image)?;
    }
    // Small heaps: three JVMs on a shared test machine. TLS as the chart's default, its
    // certificates from the operator's own CA: the operator starts first and issues the
    // servers' certificate into the Secret their containers mount.
    let docs = render_chart(&["--set", "zookeeper.heapMb=128", "--set", "zookeeper.jvmFlags=-XX:+UseSerialGC"])?;
    let api = api_with_the_chart(podman, &docs)?;
    let tls = a_ca_of_the_user_s(&docs, &api)?;
    let ports = free_ports(3 * Ensemble::SERVERS)?;
    let operator = start_operator(podman, &docs, &api, &Ensemble::connect_string_of(&ports))?;
    let ensemble = Ensemble::start(podman, &docs, &api, ports)?;
    ensemble.serves(&tls)?;
    examples_are_reconciled(&api)?;
    let pod = inject_the_app_pod(&docs, &api, &operator)?;
    let paddock_url = start_the_sidecar(podman, &api, &pod, &operator, &ensemble.connect_string())?;
    take_a_lock_and_move_an_item_through_a_queue(&paddock_url)?;
    the_example_cronjob_s_report_runs_under_its_lock_by_the_paddock_command(podman, &docs, &api, &operator)?;
    // Every container: uid 65532, its root filesystem mounted read-only.
    for name in ["zk-0", "zk-1", "zk-2", "operator", "sidecar"] {
        let pid = podman.pid(name)?;
        ensure!(process_uids(pid)? == [NON_ROOT; 4], "{name} runs as {:?}", process_uids(pid)?);
        ensure!(root_is_read_only(pid)?, "{name}'s root filesystem is read-only");
    }
    the_operator_restarts_the_ensemble_only_for_a_replaced_certificate(&docs, &api, podman)?;
    ensemble.a_server_without_quorum_is_live_but_not_ready()
}

/// The StatefulSet's pods 0..2 as containers, each on ports of its own.
struct Ensemble<'a> {
    podman: &'a Podman,
    /// The StatefulSet's container, as the chart renders it.
    container: &'a Value,
    /// Client, peer and election port of each server.
    ports: Vec<u16>,
}

impl<'a> Ensemble<'a> {
    const SERVERS: usize = 3;

    fn start(podman: &'a Podman, docs: &'a [Value], api: &Standin, ports: Vec<u16>) -> Result<Self> {
        let set = object(docs, "StatefulSet", None);
        let set_name = set["metadata"]["name"].as_str().context("name")?;
        ensure!(set["spec"]["replicas"] == Self::SERVERS, "the chart's default ensemble has 3 servers");
        let (pod, container) = pod_spec(set);
        let config = &object(docs, "ConfigMap", Some(set_name))["data"];
        // The servers' certificate, which the operator issues into their Secret.
        let secret_name = pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == "tls");
        let secret_name = secret_name.and_then(|v| v["secret"]["secretName"].as_str()).context("the tls volume")?;
        eventually(Duration::from_secs(60), "the operator issues the servers' certificate", || {
            api.secret(NAMESPACE, secret_name, "tls.crt").is_ok()
        })?;
        for i in 0..Self::SERVERS {
            let dir = podman.scratch(&format!("zk-{i}"))?;
            let (config_dir, data) = (dir.join("config"), dir.join("data"));
            std::fs::create_dir_all(&config_dir)?;
            std::fs::create_dir_all(&data)?;
            // fsGroup makes the volume the server's in a cluster; here it is chowned.
            std::os::unix::fs::chown(&data, Some(NON_ROOT), Some(NON_ROOT))?;
            let zoo_cfg = on_loopback(config["zoo.cfg"].as_str().context("zoo.cfg")?, &ports, i);
            std::fs::write(config_dir.join("zoo.cfg"), zoo_cfg)?;
            for script in ["start.sh", "probe.sh"] {
                std::fs::write(config_dir.join(script), config[script].as_str().context("a script")?)?;
            }
            let env = resolve_env(container, &format!("{set_name}-{i}"), NAMESPACE, |_, _| unreachable!("no Secret"))?;
            // The servers' certificate (Secret volume `tls`), as the kubelet mounts it.
            let secrets = api.secret_volumes(pod, container, NAMESPACE, &dir)?;
            ensure!(secrets.iter().any(|(name, _)| name == "tls"), "the chart mounts the servers' certificate");
            let mut volumes =
                vec![HostVolume { name: "config", dir: &config_dir }, HostVolume { name: "data", dir: &data }];
            volumes.extend(secrets.iter().map(|(name, dir)| HostVolume { name, dir }));
            podman.run(&run_args(&format!("zk-{i}"), pod, container, &env, &volumes, &[])?)?;
        }
        // start.sh gave each server the id of its pod's ordinal plus one. Its `echo >` creates
        // the file before it writes the id: wait for the id, not for the file.
        for i in 0..Self::SERVERS {
            let myid = podman.scratch(&format!("zk-{i}"))?.join("data/myid");
            let written = || std::fs::read_to_string(&myid).is_ok_and(|id| id.ends_with('\n'));
            eventually(Duration::from_secs(30), "start.sh writes myid", written)?;
            let id = std::fs::read_to_string(&myid)?;
            ensure!(id.trim() == (i + 1).to_string(), "myid of server {i} is {id:?}");
        }
        Ok(Self { podman, container, ports })
    }

    fn client_port(&self, server: usize) -> u16 {
        self.ports[3 * server]
    }

    fn connect_string_of(ports: &[u16]) -> String {
        (0..Self::SERVERS).map(|i| format!("127.0.0.1:{}", ports[3 * i])).collect::<Vec<_>>().join(",")
    }

    fn connect_string(&self) -> String {
        Self::connect_string_of(&self.ports)
    }

    /// The chart's exec probe `which` in server `server`'s container, as the kubelet runs
    /// it; the one change: the server's client port as probe.sh's second argument.
    fn probe(&self, server: usize, which: &str) -> Result<bool> {
        let command = strings(&self.container[which]["exec"]["command"]);
        ensure!(command.len() == 3 && command[1] == "/config/probe.sh", "{which}: {command:?}");
        let mut args = vec!["exec".to_owned(), format!("zk-{server}")];
        args.extend(command);
        args.push(self.client_port(server).to_string());
        Ok(self.podman.succeeds(&args))
    }

    /// Every server ready and live by the chart's probes, one quorum, the chart's words,
    /// over TLS only.
    fn serves(&self, tls: &TestTls) -> Result<()> {
        for i in 0..Self::SERVERS {
            eventually(Duration::from_secs(120), &format!("server {i} is ready (readinessProbe)"), || {
                self.probe(i, "readinessProbe").unwrap_or(false)
            })?;
            ensure!(self.probe(i, "livenessProbe")?, "server {i} is live (livenessProbe)");
        }
        let mut modes = Vec::new();
        for i in 0..Self::SERVERS {
            let reply = tls.four_letter_word(self.client_port(i), "srvr")?;
            modes.push(reply.lines().find_map(|l| l.strip_prefix("Mode: ")).context("a mode")?.to_owned());
        }
        ensure!(modes.iter().filter(|m| *m == "leader").count() == 1, "one quorum of three: {modes:?}");
        let stat = tls.four_letter_word(self.client_port(0), "stat")?;
        ensure!(stat.contains("not in the whitelist"), "the chart's word whitelist is in force: {stat}");
        let plain = four_letter_word(self.client_port(0), "srvr");
        ensure!(!plain.as_ref().is_ok_and(|r| r.contains("Mode:")), "no plain client port: {plain:?}");
        // The snapshots and logs are on the data volume (the root filesystem is read-only).
        for i in 0..Self::SERVERS {
            let data = self.podman.scratch(&format!("zk-{i}"))?.join("data/version-2");
            ensure!(data.is_dir(), "server {i} keeps its data in /data/version-2");
        }
        Ok(())
    }

    fn a_server_without_quorum_is_live_but_not_ready(&self) -> Result<()> {
        self.podman.run(&["stop", "--time=0", "zk-1", "zk-2"])?;
        eventually(Duration::from_secs(30), "server 0 without a quorum is not ready", || {
            self.probe(0, "readinessProbe").is_ok_and(|ready| !ready)
        })?;
        eventually(Duration::from_secs(15), "server 0 without a quorum is live", || {
            self.probe(0, "livenessProbe").unwrap_or(false)
        })
    }
}

/// The Kubernetes API stand-in holding what of the chart it can: the namespaces, the
/// CRDs, the operator's ZooKeeper credentials, the ConfigMap, the webhook configuration,
/// the ZooKeeper StatefulSet.
fn api_with_the_chart(podman: &Podman, docs: &[Value]) -> Result<Standin> {
    let api = Standin::start(&podman.scratch("kube")?.join("config"))?;
    let namespaces: Vec<Value> = [NAMESPACE, "demo"]
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    // The StatefulSet is stored only: the operator reads it (and would restart it).
    let held = ["CustomResourceDefinition", "Secret", "ConfigMap", "MutatingWebhookConfiguration", "StatefulSet"];
    let objects = namespaces.iter().chain(docs.iter().filter(|d| held.iter().any(|k| d["kind"] == *k)));
    let stream: String = objects.map(|object| format!("---\n{object}\n")).collect();
    api.kubectl(&["apply", "-f", "-"], Some(&stream))?;
    Ok(api)
}

/// Where the operator container's webhook serves, and the sidecar it injects.
struct OperatorPorts {
    webhook: u16,
    sidecar: u16,
    sidecar_health: u16,
    sidecar_image: String,
}

/// The operator: the Deployment's container with its environment resolved. Changed: the
/// ZooKeeper addresses (no cluster DNS here), listen addresses and the sidecar's ports
/// (fixed ports on a shared host network), KUBECONFIG (no service account), and how often
/// it looks at the servers' certificates.
fn start_operator(podman: &Podman, docs: &[Value], api: &Standin, connect: &str) -> Result<OperatorPorts> {
    let deployment = object(docs, "Deployment", None);
    let (pod, container) = pod_spec(deployment);
    let pod_name = format!("{}-7c9d8-x2x4q", deployment["metadata"]["name"].as_str().context("name")?);
    let mut env = resolve_env(container, &pod_name, NAMESPACE, |name, key| api.secret(NAMESPACE, name, key))?;
    let [metrics, webhook, sidecar, sidecar_health] = free_ports(4)?[..] else { unreachable!() };
    for (name, value) in [
        ("PADDOCK_ZOOKEEPER", connect.to_owned()),
        ("PADDOCK_SIDECAR_ZOOKEEPER", connect.to_owned()),
        ("PADDOCK_METRICS_LISTEN", format!("127.0.0.1:{metrics}")),
        ("PADDOCK_WEBHOOK_LISTEN", format!("127.0.0.1:{webhook}")),
        ("PADDOCK_ZOOKEEPER_SERVERS", connect.to_owned()),
        // The servers' certificate for the address the servers have here.
        ("PADDOCK_ZOOKEEPER_SERVER_NAMES", "127.0.0.1".to_owned()),
    ] {
        *env.get_mut(name).with_context(|| format!("the chart sets {name}"))? = value;
    }
    env.insert("PADDOCK_SIDECAR_PORT".into(), sidecar.to_string());
    env.insert("PADDOCK_SIDECAR_HEALTH_PORT".into(), sidecar_health.to_string());
    env.insert("KUBECONFIG".into(), "/kube/config".into());
    // Its servers' certificate looked at every 2 s, not every minute.
    env.insert("PADDOCK_ZOOKEEPER_CERT_CHECK".into(), "2s".into());
    ensure!(container["command"].is_null(), "the chart runs the image's entrypoint");
    let kube_dir = api.kubeconfig.parent().context("the kubeconfig's directory")?;
    let kubeconfig = [format!("--volume={}:/kube:ro", kube_dir.display())];
    // No Secret to mount: it writes its certificate, the CA and the servers' certificate
    // into an emptyDir of its own.
    let secrets = api.secret_volumes(pod, container, NAMESPACE, &podman.scratch("operator")?)?;
    ensure!(secrets.is_empty(), "the operator's Secret volumes: {secrets:?}");
    podman.run(&run_args("operator", pod, container, &env, &[], &kubeconfig)?)?;
    // Its probes, as the chart renders them: HTTP on the metrics port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        ensure!(container[probe]["httpGet"]["path"] == path && container[probe]["httpGet"]["port"] == "metrics");
        let url = format!("http://127.0.0.1:{metrics}{path}");
        eventually(Duration::from_secs(60), &format!("the operator's {probe} passes"), || http_ok(&url))?;
    }
    let sidecar_image = env["PADDOCK_SIDECAR_IMAGE"].clone();
    Ok(OperatorPorts { webhook, sidecar, sidecar_health, sidecar_image })
}

/// `examples/` applied in namespace demo: every lock and queue Ready against the
/// ensemble, and the namespace's ZooKeeper identity made (a client certificate).
fn examples_are_reconciled(api: &Standin) -> Result<()> {
    api.kubectl(&["apply", "-n", "demo", "-f", "examples/"], None)?;
    const READY: &str = r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#;
    eventually(Duration::from_secs(90), "every example is Ready", || {
        ["distributedlocks", "workqueues"].iter().all(|kind| {
            api.kubectl(&["get", kind, "-n", "demo", "-o", READY], None)
                .is_ok_and(|l| !l.trim().is_empty() && l.lines().all(|s| s.trim() == "True"))
        })
    })?;
    let locks = api.kubectl(&["get", "distributedlocks", "-n", "demo", "-o", "name"], None)?;
    ensure!(locks.contains("orders") && locks.contains("workers"), "{locks}");
    eventually(Duration::from_secs(30), "the namespace's certificate", || {
        api.secret("demo", "paddock-zookeeper-credentials", "tls.crt").is_ok()
    })
}

/// The README's app pod through the webhook, and stored.
fn inject_the_app_pod(docs: &[Value], api: &Standin, operator: &OperatorPorts) -> Result<Value> {
    let mut app: Value = serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/pods/app.yaml"))?)?;
    app["metadata"]["namespace"] = "demo".into();
    let pod = through_the_webhook(docs, api, operator, app)?;
    api.kubectl(&["apply", "-f", "-"], Some(&pod.to_string()))?;
    Ok(pod)
}

/// `pod` through the webhook as the API server would send it (over HTTPS, trusting the CA
/// the operator wrote into the chart's MutatingWebhookConfiguration), with the patch applied.
fn through_the_webhook(docs: &[Value], api: &Standin, operator: &OperatorPorts, pod: Value) -> Result<Value> {
    let configuration = object(docs, "MutatingWebhookConfiguration", None);
    let name = configuration["metadata"]["name"].as_str().context("name")?;
    let ca = || -> Option<Vec<u8>> {
        let current = api.kubectl(&["get", "mutatingwebhookconfiguration", name, "-o", "json"], None).ok()?;
        let current: Value = serde_json::from_str(&current).ok()?;
        let bundle = current["webhooks"][0]["clientConfig"]["caBundle"].as_str()?;
        base64::engine::general_purpose::STANDARD.decode(bundle).ok()
    };
    eventually(Duration::from_secs(60), "the operator writes the caBundle", || ca().is_some())?;
    let service = &configuration["webhooks"][0]["clientConfig"]["service"];
    let host =
        format!("{}.{}.svc", service["name"].as_str().context("name")?, service["namespace"].as_str().context("ns")?);
    let https = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca().context("the CA")?)?)
        .resolve(&host, ([127, 0, 0, 1], operator.webhook).into())
        .build()?;
    let url = format!("https://{host}:{}{}", operator.webhook, service["path"].as_str().context("path")?);
    let review: Value = https.post(&url).json(&admission_review(&pod)).send()?.error_for_status()?.json()?;
    let response = &review["response"];
    ensure!(response["allowed"] == true, "the webhook admits the pod: {response}");
    let patch = base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().context("a patch")?)?;
    let mut pod = pod;
    json_patch::patch(&mut pod, &serde_json::from_slice::<json_patch::Patch>(&patch)?)?;
    Ok(pod)
}

/// The sidecar exactly as the patch describes it and the kubelet would start it; the
/// app's PADDOCK_URL, as the patch gives it to the app container.
fn start_the_sidecar(
    podman: &Podman,
    api: &Standin,
    pod: &Value,
    operator: &OperatorPorts,
    connect: &str,
) -> Result<String> {
    let spec = &pod["spec"];
    let sidecar = spec["initContainers"]
        .as_array()
        .into_iter()
        .chain(spec["containers"].as_array())
        .flatten()
        .find(|c| c["name"] == "paddock-sidecar")
        .context("the patch adds the sidecar")?;
    ensure!(sidecar["command"].is_null() && sidecar["args"].is_null(), "the image's entrypoint runs");
    ensure!(sidecar["image"] == operator.sidecar_image.as_str(), "the chart's sidecar image");
    let env = resolve_env(sidecar, "app", "demo", |name, key| api.secret("demo", name, key))?;
    ensure!(env["PADDOCK_ZOOKEEPER"] == connect, "the sidecar reaches the ensemble");
    ensure!(env.contains_key("PADDOCK_ZK_TLS_CA"), "the patch gives the sidecar ZooKeeper's TLS settings: {env:?}");
    let secrets = api.secret_volumes(spec, sidecar, "demo", &podman.scratch("sidecar")?)?;
    ensure!(secrets.len() == 1, "the namespace's certificate, mounted: {secrets:?}");
    let volumes: Vec<HostVolume> = secrets.iter().map(|(name, dir)| HostVolume { name, dir }).collect();
    let args = run_args("sidecar", spec, sidecar, &env, &volumes, &[])?;
    ensure!(args.contains(&"--read-only".to_owned()) && args.contains(&format!("--user={NON_ROOT}")), "{args:?}");
    podman.run(&args)?;
    let startup = &sidecar["startupProbe"]["httpGet"];
    ensure!(startup["port"] == "paddock-health" && sidecar["ports"][0]["containerPort"] == operator.sidecar_health);
    let url = format!("http://127.0.0.1:{}{}", operator.sidecar_health, startup["path"].as_str().context("path")?);
    eventually(Duration::from_secs(30), "the sidecar's startupProbe passes", || http_ok(&url))?;

    let app = &spec["containers"][0];
    ensure!(app["name"] == "app");
    let url = app["env"].as_array().into_iter().flatten().find(|e| e["name"] == "PADDOCK_URL");
    let url = url.and_then(|e| e["value"].as_str()).context("PADDOCK_URL in the app")?;
    ensure!(url == format!("http://127.0.0.1:{}", operator.sidecar), "{url}");
    Ok(url.to_owned())
}

/// examples/cronjob-under-lock.yaml: its CronJob's pod (annotated `paddock.dev/cli`)
/// through the webhook. The `paddock-cli` init container of the patch runs from the
/// sidecar image exactly as the patch says, into a host directory standing for its
/// emptyDir; then the app container as the patch leaves it (volume mounts, PATH) finds
/// `paddock` by name through its PATH and runs the example's own command: the report,
/// under the lock `nightly-report`, through the sidecar. Changed: the app's image (no
/// image is pulled here: the ZooKeeper image stands in for busybox; it has bash but no
/// /bin/sh, so the script's `#!/bin/sh` becomes `#!/bin/bash`), and the sidecar is the app
/// pod's, on the same port of the shared host network, in the same namespace.
fn the_example_cronjob_s_report_runs_under_its_lock_by_the_paddock_command(
    podman: &Podman,
    docs: &[Value],
    api: &Standin,
    operator: &OperatorPorts,
) -> Result<()> {
    let example = repo().join("examples/cronjob-under-lock.yaml");
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&std::fs::read_to_string(&example)?)
        .map(Value::deserialize)
        .collect::<Result<_, _>>()?;
    let find =
        |kind: &str| objects.iter().find(|o| o["kind"] == kind).with_context(|| format!("a {kind} in the example"));
    let template = &find("CronJob")?["spec"]["jobTemplate"]["spec"]["template"];
    let name = "nightly-report-29400120-x7k2p";
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
                     "metadata": {"name": name, "namespace": "demo", "annotations": template["metadata"]["annotations"]}});
    let pod = through_the_webhook(docs, api, operator, pod)?;
    let spec = &pod["spec"];

    // The installer, first of the init containers: a host directory for its emptyDir,
    // writable by anyone as the kubelet makes one.
    let installer = &spec["initContainers"][0];
    ensure!(installer["name"] == "paddock-cli", "the installer runs first: {}", spec["initContainers"]);
    ensure!(installer["image"] == operator.sidecar_image.as_str(), "from the sidecar's image: {installer}");
    let bin = podman.scratch("paddock-cli")?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o777))?;
    let env = resolve_env(installer, name, "demo", |_, _| unreachable!("no Secret"))?;
    let args = run_args("paddock-cli", spec, installer, &env, &[HostVolume { name: "paddock-cli", dir: &bin }], &[])?;
    // Its own user; the group is the pod's (runAsGroup), as the kubelet gives it.
    let user = args.iter().any(|a| a.starts_with(&format!("--user={NON_ROOT}")));
    ensure!(user && args.contains(&"--read-only".to_owned()), "{args:?}");
    let printed = run_to_completion(podman, "paddock-cli", &args)?;
    let mount = installer["volumeMounts"][0]["mountPath"].as_str().context("the installer's mount")?;
    ensure!(printed == format!("{mount}/paddock"), "the installer prints where it installed: {printed}");
    let installed = std::fs::metadata(bin.join("paddock"))?;
    ensure!(installed.permissions().mode() & 0o7777 == 0o755 && installed.uid() == NON_ROOT, "{installed:?}");

    // The app container: the ConfigMap's script where its volume puts it.
    let report = spec["containers"].as_array().into_iter().flatten().find(|c| c["name"] == "report");
    let mut report = report.context("the example's container")?.clone();
    let [.., (_, zookeeper)] = chart_images(docs);
    report["image"] = zookeeper.into();
    let scripts = podman.scratch("nightly-report")?;
    for (file, content) in find("ConfigMap")?["data"].as_object().context("the ConfigMap's data")? {
        let content = content.as_str().context("a script")?;
        let content =
            content.strip_prefix("#!/bin/sh\n").map_or(content.to_owned(), |rest| format!("#!/bin/bash\n{rest}"));
        std::fs::write(scripts.join(file), content)?;
        std::fs::set_permissions(scripts.join(file), std::fs::Permissions::from_mode(0o555))?;
    }
    let volumes = [HostVolume { name: "paddock-cli", dir: &bin }, HostVolume { name: "app", dir: &scripts }];
    let env = resolve_env(&report, name, "demo", |_, _| unreachable!("no Secret"))?;
    ensure!(env["PATH"].starts_with("/paddock/bin:"), "the patch puts the command first in PATH: {env:?}");
    let run = |container: &str, command: Value| {
        let mut app = report.clone();
        if !command.is_null() {
            app["command"] = command;
        }
        run_to_completion(podman, container, &run_args(container, spec, &app, &env, &volumes, &[])?)
    };
    let version = run("report-version", json!(["paddock", "--version"]))?;
    ensure!(version == format!("paddock {}", app_version()), "paddock --version by name: {version}");
    let found = run("report-which", json!(["/bin/bash", "-c", "command -v paddock"]))?;
    ensure!(found == "/paddock/bin/paddock", "bash finds it first in PATH: {found}");
    let printed = run("report", Value::Null)?;
    ensure!(printed.contains("under nightly-report, fencing token ") && printed.contains("report done"), "{printed}");
    Ok(())
}

/// Starts a container with `args` (`run -d ...`), waits for it to exit 0, and returns
/// what it printed, trimmed.
fn run_to_completion(podman: &Podman, name: &str, args: &[String]) -> Result<String> {
    podman.run(args)?;
    let code = podman.run(&["wait", name])?;
    let printed = podman.logs(name);
    ensure!(code == "0", "{name} exited {code}:\n{printed}");
    Ok(printed.trim().to_owned())
}

/// What the README's app does through the sidecar, from the host.
fn take_a_lock_and_move_an_item_through_a_queue(base: &str) -> Result<()> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build()?;
    eventually(Duration::from_secs(30), "the sidecar is ready", || http_ok(&format!("{base}/readyz")))?;
    let grant = http.post(format!("{base}/lock")).json(&json!({"name": "orders", "wait": "5s"})).send()?;
    ensure!(grant.status() == 200, "the lock: {}", grant.text()?);
    let grant: Value = grant.json()?;
    ensure!(grant["pod"] == "app" && grant["token"].as_u64().is_some(), "{grant}");
    let enqueued = http.post(format!("{base}/queue/jobs")).body("resize 42.jpg").send()?;
    ensure!(enqueued.status() == 201, "enqueue: {}", enqueued.text()?);
    let id = enqueued.json::<Value>()?["id"].as_str().context("an id")?.to_owned();
    // No queue named: the pod's paddock.dev/queue annotation, through PADDOCK_QUEUE.
    let next = http.get(format!("{base}/queue/next?wait=5s")).send()?;
    ensure!(next.status() == 200, "next: {}", next.status());
    ensure!(next.headers()["paddock-queue"] == "jobs" && next.headers()["paddock-item-id"] == id.as_str());
    ensure!(next.bytes()?.as_ref() == b"resize 42.jpg");
    let ack = http.post(format!("{base}/queue/jobs/{id}/ack")).send()?;
    ensure!(ack.status() == 200, "ack: {}", ack.text()?);
    let queue = http.get(format!("{base}/queue/jobs")).send()?.json::<Value>()?;
    ensure!(queue["stats"]["depth"] == 0, "the item is gone: {queue}");
    let released = http.delete(format!("{base}/lock/orders")).send()?;
    ensure!(released.status() == 200, "release: {}", released.text()?);
    Ok(())
}

/// Server `index`'s zoo.cfg with the servers on 127.0.0.1 and `ports` (client, peer,
/// election per server) instead of their pods' DNS names: every other line as the chart
/// renders it.
fn on_loopback(config: &str, ports: &[u16], index: usize) -> String {
    let mut out = String::new();
    for line in config.lines() {
        let line = match line.split_once('=') {
            Some(("clientPort", _)) => format!("clientPort={}\nclientPortAddress=127.0.0.1", ports[3 * index]),
            Some(("secureClientPort", _)) => {
                format!("secureClientPort={}\nsecureClientPortAddress=127.0.0.1", ports[3 * index])
            }
            Some(("quorumListenOnAllIPs", _)) => "quorumListenOnAllIPs=false".to_owned(),
            // A plain client port only where the chart opens one (`;host:port`).
            Some((key, value)) if key.starts_with("server.") => {
                let n: usize = key["server.".len()..].parse().expect("server.N");
                let (client, peer, election) = (ports[3 * (n - 1)], ports[3 * (n - 1) + 1], ports[3 * (n - 1) + 2]);
                let client = if value.contains(';') { format!(";127.0.0.1:{client}") } else { String::new() };
                format!("{key}=127.0.0.1:{peer}:{election}{client}")
            }
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// (image, reference) of the three images as the chart's defaults name them: the
/// operator's and ZooKeeper's containers, and the sidecar the operator injects.
fn chart_images(docs: &[Value]) -> [(&'static str, String); 3] {
    let (_, operator) = pod_spec(object(docs, "Deployment", None));
    let (_, zookeeper) = pod_spec(object(docs, "StatefulSet", None));
    let sidecar = operator["env"].as_array().into_iter().flatten().find(|e| e["name"] == "PADDOCK_SIDECAR_IMAGE");
    let reference = |v: &Value| v.as_str().expect("an image reference").to_owned();
    [
        ("paddock-operator", reference(&operator["image"])),
        ("paddock-sidecar", reference(&sidecar.expect("PADDOCK_SIDECAR_IMAGE")["value"])),
        ("paddock-zookeeper", reference(&zookeeper["image"])),
    ]
}

fn http_ok(url: &str) -> bool {
    reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

/// The CA standing for cert-manager's, and the test's own client certificate.
struct TestTls {
    ca: paddock_testkit::TestCa,
    client: paddock_testkit::tls::Issued,
}

impl TestTls {
    /// A four-letter word over TLS to the server on `port`.
    fn four_letter_word(&self, port: u16, word: &str) -> Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(paddock_testkit::tls::four_letter_word(
            &self.ca.pem(),
            &self.client,
            ([127, 0, 0, 1], port).into(),
            word,
        ))
    }
}

/// A CA of the user's in the Secret where the operator keeps its own CA (it makes one
/// when there is none, as `operator/tests/own_ca.rs` shows; the test needs the CA's key to
/// make a client certificate of its own), and the test's client certificate from it.
fn a_ca_of_the_user_s(docs: &[Value], api: &Standin) -> Result<TestTls> {
    let (_, operator) = pod_spec(object(docs, "Deployment", None));
    let setting = operator["env"].as_array().into_iter().flatten().find(|e| e["name"] == "PADDOCK_ZOOKEEPER_CA_SECRET");
    let name = setting.and_then(|e| e["value"].as_str()).context("the chart gives the operator its own CA")?;
    let ca = paddock_testkit::TestCa::new("paddock-images-test-ca")?;
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": {"tls.crt": encode(&ca.pem()), "tls.key": encode(&ca.key_pem())},
    });
    api.kubectl(&["apply", "-f", "-"], Some(&secret.to_string()))?;
    let client = ca.issue_client("CN=paddock-images-test", false)?;
    Ok(TestTls { ca, client })
}

/// The operator looks at the certificate each server serves (every 2 s here): while they
/// serve their Secret's, it leaves the StatefulSet alone and says nothing about it; once
/// it renews the certificate in the Secret (here: told it is due), it restarts the
/// StatefulSet (a pod-template annotation) for it.
fn the_operator_restarts_the_ensemble_only_for_a_replaced_certificate(
    docs: &[Value],
    api: &Standin,
    podman: &Podman,
) -> Result<()> {
    let (pod, _) = pod_spec(object(docs, "StatefulSet", None));
    let set = object(docs, "StatefulSet", None)["metadata"]["name"].as_str().context("name")?;
    let restarted_at = || -> Result<Option<String>> {
        let stored = api.kubectl(&["get", "statefulset", "-n", NAMESPACE, set, "-o", "json"], None)?;
        let stored: Value = serde_json::from_str(&stored)?;
        let at = &stored["spec"]["template"]["metadata"]["annotations"]["paddock.dev/restarted-at"];
        Ok(at.as_str().map(str::to_owned))
    };
    std::thread::sleep(Duration::from_secs(5));
    ensure!(restarted_at()?.is_none(), "not restarted while the servers serve their Secret's certificate");
    let logs = podman.logs("operator");
    for trouble in ["servers' certificates", "replaced certificate"] {
        ensure!(!logs.contains(trouble), "nothing to say about the servers' certificates ({trouble}):\n{logs}");
    }
    let secret = pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == "tls");
    let secret = secret.and_then(|v| v["secret"]["secretName"].as_str()).context("the tls volume")?;
    let first = api.secret(NAMESPACE, secret, "tls.crt")?;
    api.kubectl(&["annotate", "--overwrite", "secret", "-n", NAMESPACE, secret, "paddock.dev/renew-after=0"], None)?;
    eventually(
        Duration::from_secs(90),
        "the operator renews the servers' certificate and restarts the StatefulSet",
        || {
            api.secret(NAMESPACE, secret, "tls.crt").is_ok_and(|now| now != first)
                && restarted_at().is_ok_and(|at| at.is_some())
        },
    )
}
