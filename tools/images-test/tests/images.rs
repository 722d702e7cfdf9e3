//! The images `scripts/images.sh` built, run as real containers with podman, configured as
//! the chart and the webhook configure them in a cluster: three paddock-zookeeper
//! containers form an ensemble from the chart's zoo.cfg and start script, and the chart's
//! probes pass; the paddock-operator container reconciles `examples/` through the
//! Kubernetes API stand-in against that ensemble; a paddock-sidecar container started
//! with exactly the environment the webhook's patch gives it serves a lock and a queue to
//! a client on the host. Every container runs as 65532 on a read-only root filesystem.
//!
//! Only what cannot work outside a cluster is changed, each named where it is done: DNS
//! names and fixed ports become 127.0.0.1 and free ports (the containers share the host's
//! network), and the operator finds the API through a kubeconfig instead of a service
//! account. The tests need the archives (`bash scripts/images.sh`), so they are ignored
//! by a plain `cargo test`; `scripts/test.sh` builds the images and runs them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use paddock_images_test::*;
use serde_json::{Value, json};

/// Every image: the names and tags the chart's defaults give, a non-root user, OCI
/// labels, and it runs on a read-only root filesystem as the user its image names.
#[test]
#[ignore = "needs the images: bash scripts/images.sh (scripts/test.sh runs it, then these)"]
fn every_image_is_named_as_the_chart_names_it_and_runs_as_non_root_on_a_read_only_root() {
    let version = app_version();
    let docs = render_chart(&[]).unwrap();
    let (operator_pod, operator) = pod_spec(object(&docs, "Deployment", None));
    let (zookeeper_pod, zookeeper) = pod_spec(object(&docs, "StatefulSet", None));
    let sidecar_image = env_value(operator, "PADDOCK_SIDECAR_IMAGE");
    let chart_images = [
        ("paddock-operator", operator["image"].as_str().unwrap()),
        ("paddock-sidecar", sidecar_image),
        ("paddock-zookeeper", zookeeper["image"].as_str().unwrap()),
    ];
    let mut configs = BTreeMap::new();
    for (image, reference) in chart_images {
        let archived = read_archive(&archive(image)).unwrap();
        let built = format!("docker.io/library/{image}:{version}");
        assert_eq!(
            archived.tags,
            std::slice::from_ref(&built),
            "{image}: one image, tagged with the chart's appVersion"
        );
        assert_eq!(normalize(reference), built, "the chart's default {reference} is the image the build made");
        let config = archived.config;
        assert_eq!(config["User"], format!("{NON_ROOT}:{NON_ROOT}"), "{image} runs as a non-root user");
        let labels = &config["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], image);
        assert_eq!(labels["org.opencontainers.image.version"], version.as_str());
        assert!(labels["org.opencontainers.image.source"].as_str().unwrap().starts_with("https://"), "{labels}");
        assert!(labels["org.opencontainers.image.licenses"].as_str().unwrap().contains("Apache-2.0"), "{labels}");
        configs.insert(image, config);
    }
    // What the chart and the webhook run: the operator's entrypoint with the chart's args,
    // the sidecar's entrypoint alone (the patch gives no command or args; test below).
    assert_eq!(configs["paddock-operator"]["Entrypoint"], json!(["/usr/local/bin/paddock-operator"]));
    assert_eq!(configs["paddock-operator"]["Cmd"], operator["args"], "the image's default is what the chart runs");
    assert_eq!(configs["paddock-sidecar"]["Entrypoint"], json!(["/usr/local/bin/paddock-sidecar"]));
    assert!(strings(&configs["paddock-sidecar"]["Cmd"]).is_empty(), "the sidecar needs no arguments");
    // The chart runs each as that user, on a read-only root filesystem.
    for (what, pod, container) in [("operator", operator_pod, operator), ("zookeeper", zookeeper_pod, zookeeper)] {
        assert_eq!(pod["securityContext"]["runAsUser"], NON_ROOT, "the {what} pod runs as the image's user");
        assert_eq!(pod["securityContext"]["runAsGroup"], NON_ROOT, "{what}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{what}");
    }
    assert_eq!(zookeeper_pod["securityContext"]["fsGroup"], NON_ROOT, "the data volume is the server's to write");

    let podman = Podman::new().unwrap();
    for image in IMAGES {
        podman.load(image).unwrap();
    }
    // No --user: as the image says. --read-only: nothing needs to write to the root.
    let run = |args: &[&str]| {
        let mut all: Vec<String> = ["run", "--rm", "--read-only"].map(str::to_owned).to_vec();
        all.extend(host_flags());
        all.extend(args.iter().map(|a| a.to_string()));
        podman.run(&all)
    };
    let crds = run(&[chart_images[0].1, "crd"]).unwrap();
    assert_eq!(crds.trim(), std::fs::read_to_string(repo().join("crds/paddock.dev.yaml")).unwrap().trim());
    assert_eq!(run(&[chart_images[1].1, "--version"]).unwrap(), format!("paddock-sidecar {version}"));
    let shell = run(&[
        "--entrypoint=/bin/bash",
        chart_images[2].1,
        "-c",
        "echo \"uid $EUID\"; if : 2>/dev/null >/written; then echo writable; else echo read-only; fi; java -version 2>&1",
    ])
    .unwrap();
    assert!(shell.starts_with(&format!("uid {NON_ROOT}\nread-only\n")), "{shell}");
    assert!(shell.contains("openjdk version \"17."), "Debian's JRE 17: {shell}");

    // The sidecar, long-running as its image's user (no ZooKeeper to reach: it serves
    // /healthz and waits), seen from the host: uid 65532, root mounted read-only.
    let [listen, health, nowhere] = free_ports(3).unwrap()[..] else { unreachable!() };
    let mut args: Vec<String> = ["run", "-d", "--name", "sidecar-alone", "--read-only"].map(str::to_owned).to_vec();
    args.extend(host_flags());
    args.extend([
        format!("--env=PADDOCK_ZOOKEEPER=127.0.0.1:{nowhere}"),
        format!("--env=PADDOCK_LISTEN=127.0.0.1:{listen}"),
        format!("--env=PADDOCK_HEALTH_LISTEN=127.0.0.1:{health}"),
        "--env=POD_NAME=alone".to_owned(),
        "--env=POD_NAMESPACE=default".to_owned(),
        sidecar_image.to_owned(),
    ]);
    podman.run(&args).unwrap();
    let url = format!("http://127.0.0.1:{health}/healthz");
    eventually(Duration::from_secs(30), "the sidecar answers /healthz", || http_ok(&url))
        .unwrap_or_else(|e| panic!("{e}\n{}", podman.logs("sidecar-alone")));
    let pid = podman.pid("sidecar-alone").unwrap();
    assert_eq!(process_uids(pid).unwrap(), [NON_ROOT; 4]);
    assert!(root_is_read_only(pid).unwrap());

    // The chart's start script and probe are in the ZooKeeper image, as the chart renders them.
    let config = object(&docs, "ConfigMap", Some("paddock-zookeeper"));
    podman.run(&["create", "--name", "zk-files", chart_images[2].1]).unwrap();
    let copies = podman.scratch("zk-files").unwrap();
    for script in ["start.sh", "probe.sh"] {
        let from = format!("zk-files:/opt/paddock/zookeeper/{script}");
        podman.run(&["cp", from.as_str(), copies.to_str().unwrap()]).unwrap();
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
    let mut containers = Vec::new();
    let outcome = run_the_stack(&podman, &mut containers);
    if let Err(error) = outcome {
        for name in &containers {
            eprintln!("==> logs of {name}:\n{}", podman.logs(name));
        }
        panic!("{error:#}");
    }
}

fn run_the_stack(podman: &Podman, containers: &mut Vec<String>) -> Result<()> {
    for image in IMAGES {
        podman.load(image)?;
    }
    // Small heaps: three JVMs on a shared test machine.
    let docs = render_chart(&["--set", "zookeeper.heapMb=128", "--set", "zookeeper.jvmFlags=-XX:+UseSerialGC"])?;

    // ZooKeeper: the StatefulSet's pods 0..2, each on ports of its own.
    let set = object(&docs, "StatefulSet", None);
    let set_name = set["metadata"]["name"].as_str().context("name")?;
    let (zk_pod, zk_container) = pod_spec(set);
    let config = &object(&docs, "ConfigMap", Some(set_name))["data"];
    let replicas = set["spec"]["replicas"].as_u64().context("replicas")? as usize;
    ensure!(replicas == 3, "the chart's default ensemble has 3 servers");
    let ports = free_ports(3 * replicas)?;
    let client_port = |i: usize| ports[3 * i];
    for i in 0..replicas {
        let dir = podman.scratch(&format!("zk-{i}"))?;
        let config_dir = dir.join("config");
        let data = dir.join("data");
        std::fs::create_dir_all(&config_dir)?;
        std::fs::create_dir_all(&data)?;
        // fsGroup makes the volume the server's in a cluster; here it is chowned.
        std::os::unix::fs::chown(&data, Some(NON_ROOT), Some(NON_ROOT))?;
        std::fs::write(
            config_dir.join("zoo.cfg"),
            on_loopback(config["zoo.cfg"].as_str().context("zoo.cfg")?, &ports, i),
        )?;
        for script in ["start.sh", "probe.sh"] {
            std::fs::write(config_dir.join(script), config[script].as_str().context("a script")?)?;
        }
        let name = format!("zk-{i}");
        let pod_name = format!("{set_name}-{i}");
        let env = resolve_env(zk_container, &pod_name, NAMESPACE, |_, _| unreachable!("no Secret"))?;
        let mut args = vec!["run".to_owned(), "-d".to_owned(), format!("--name={name}")];
        args.extend(host_flags());
        args.extend(security_flags(&zk_pod["securityContext"], &zk_container["securityContext"])?);
        args.extend(mounts(zk_container, zk_pod, &[("config", &config_dir, true), ("data", &data, false)])?);
        args.extend(env.iter().map(|(k, v)| format!("--env={k}={v}")));
        args.push(format!("--entrypoint={}", zk_container["command"]));
        args.push(zk_container["image"].as_str().context("image")?.to_owned());
        args.extend(strings(&zk_container["args"]));
        podman.run(&args)?;
        containers.push(name);
    }
    // start.sh gave each server the id of its pod's ordinal plus one.
    for i in 0..replicas {
        let myid = podman.scratch(&format!("zk-{i}"))?.join("data/myid");
        eventually(Duration::from_secs(30), "start.sh writes myid", || myid.exists())?;
        ensure!(std::fs::read_to_string(&myid)?.trim() == (i + 1).to_string(), "myid of server {i}");
    }
    // The probes as the chart renders them, run in the container as the kubelet does; the
    // one change: each server's client port as probe.sh's second argument.
    let probe = |i: usize, which: &str| -> Result<bool> {
        let command = strings(&zk_container[which]["exec"]["command"]);
        ensure!(command.len() == 3 && command[1] == "/config/probe.sh", "{which}: {command:?}");
        let mut args = vec!["exec".to_owned(), format!("zk-{i}")];
        args.extend(command);
        args.push(client_port(i).to_string());
        Ok(podman.succeeds(&args))
    };
    for i in 0..replicas {
        eventually(Duration::from_secs(120), &format!("server {i} is ready (readinessProbe)"), || {
            probe(i, "readinessProbe").unwrap_or(false)
        })?;
        ensure!(probe(i, "livenessProbe")?, "server {i} is live (livenessProbe)");
    }
    let modes: Vec<String> = (0..replicas)
        .map(|i| {
            let reply = four_letter_word(client_port(i), "srvr")?;
            Ok(reply.lines().find_map(|l| l.strip_prefix("Mode: ")).context("a mode")?.to_owned())
        })
        .collect::<Result<_>>()?;
    ensure!(modes.iter().filter(|m| *m == "leader").count() == 1, "one quorum of three: {modes:?}");
    let stat = four_letter_word(client_port(0), "stat")?;
    ensure!(stat.contains("not in the whitelist"), "the chart's word whitelist is in force: {stat}");
    let connect = (0..replicas).map(|i| format!("127.0.0.1:{}", client_port(i))).collect::<Vec<_>>().join(",");

    // The Kubernetes API stand-in, with what of the chart it can hold: the CRDs, the
    // operator's ZooKeeper credentials, the webhook configuration.
    let kube_dir = podman.scratch("kube")?;
    let kubeconfig = kube_dir.join("config");
    let _standin = Standin::start(&kubeconfig)?;
    let kube = |args: &[&str], input: Option<&str>| kubectl(&kubeconfig, args, input);
    let namespaces: Vec<Value> = [NAMESPACE, "demo"]
        .iter()
        .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        .collect();
    let held = ["CustomResourceDefinition", "Secret", "ConfigMap", "MutatingWebhookConfiguration"];
    let items: Vec<&Value> =
        namespaces.iter().chain(docs.iter().filter(|d| held.iter().any(|k| d["kind"] == *k))).collect();
    let stream: String = items.iter().map(|item| format!("---\n{item}\n")).collect();
    kube(&["apply", "-f", "-"], Some(&stream))?;
    let secret = |namespace: &str, name: &str, key: &str| -> Result<String> {
        let secret: Value =
            serde_json::from_str(&kube(&["get", "secret", "-n", namespace, name, "-o", "json"], None)?)?;
        let encoded =
            secret["data"][key].as_str().with_context(|| format!("key {key} of Secret {namespace}/{name}"))?;
        Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded)?)?)
    };

    // The operator: the Deployment's container with its environment resolved. Changed:
    // the ZooKeeper address (no cluster DNS here), listen addresses and the sidecar's
    // ports (fixed ports on a shared host network), and KUBECONFIG (no service account).
    let deployment = object(&docs, "Deployment", None);
    let (operator_pod, operator) = pod_spec(deployment);
    let pod_name = format!("{}-7c9d8-x2x4q", deployment["metadata"]["name"].as_str().context("name")?);
    let mut env = resolve_env(operator, &pod_name, NAMESPACE, |name, key| secret(NAMESPACE, name, key))?;
    let [metrics_port, webhook_port, sidecar_port, health_port] = free_ports(4)?[..] else { unreachable!() };
    for (name, value) in [
        ("PADDOCK_ZOOKEEPER", connect.clone()),
        ("PADDOCK_SIDECAR_ZOOKEEPER", connect.clone()),
        ("PADDOCK_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
        ("PADDOCK_WEBHOOK_LISTEN", format!("127.0.0.1:{webhook_port}")),
    ] {
        let var = env.get_mut(name).with_context(|| format!("the chart sets {name}"))?;
        *var = value;
    }
    env.insert("PADDOCK_SIDECAR_PORT".into(), sidecar_port.to_string());
    env.insert("PADDOCK_SIDECAR_HEALTH_PORT".into(), health_port.to_string());
    env.insert("KUBECONFIG".into(), "/kube/config".into());
    let mut args = vec!["run".to_owned(), "-d".to_owned(), "--name=operator".to_owned()];
    args.extend(host_flags());
    args.extend(security_flags(&operator_pod["securityContext"], &operator["securityContext"])?);
    args.extend(mounts(operator, operator_pod, &[])?);
    args.push(format!("--volume={}:/kube:ro", kube_dir.display()));
    args.extend(env.iter().map(|(k, v)| format!("--env={k}={v}")));
    ensure!(operator["command"].is_null(), "the chart runs the image's entrypoint");
    args.push(operator["image"].as_str().context("image")?.to_owned());
    args.extend(strings(&operator["args"]));
    podman.run(&args)?;
    containers.push("operator".into());
    // Its probes, as the chart renders them: HTTP on the metrics port.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        ensure!(operator[probe]["httpGet"]["path"] == path && operator[probe]["httpGet"]["port"] == "metrics");
        let url = format!("http://127.0.0.1:{metrics_port}{path}");
        eventually(Duration::from_secs(60), &format!("the operator's {probe} passes"), || http_ok(&url))?;
    }

    // The examples, reconciled against the ensemble: Ready, and the namespace's identity.
    kube(&["apply", "-n", "demo", "-f", "examples/"], None)?;
    const READY: &str = r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#;
    eventually(Duration::from_secs(90), "every example is Ready", || {
        ["distributedlocks", "workqueues"].iter().all(|kind| {
            kube(&["get", kind, "-n", "demo", "-o", READY], None)
                .is_ok_and(|l| !l.trim().is_empty() && l.lines().all(|s| s.trim() == "True"))
        })
    })?;
    let locks = kube(&["get", "distributedlocks", "-n", "demo", "-o", "name"], None)?;
    ensure!(locks.contains("orders") && locks.contains("workers"), "{locks}");
    eventually(Duration::from_secs(30), "the namespace's credentials", || {
        secret("demo", "paddock-zookeeper-credentials", "credentials").is_ok()
    })?;

    // The webhook: the operator wrote its CA into the chart's MutatingWebhookConfiguration;
    // an AdmissionReview of the README's app pod comes back with the patch.
    let configuration_name = object(&docs, "MutatingWebhookConfiguration", None)["metadata"]["name"].as_str().unwrap();
    let ca = || -> Option<Vec<u8>> {
        let configuration = kube(&["get", "mutatingwebhookconfiguration", configuration_name, "-o", "json"], None);
        let configuration: Value = serde_json::from_str(&configuration.ok()?).ok()?;
        let bundle = configuration["webhooks"][0]["clientConfig"]["caBundle"].as_str()?;
        base64::engine::general_purpose::STANDARD.decode(bundle).ok()
    };
    eventually(Duration::from_secs(60), "the operator writes the caBundle", || ca().is_some())?;
    let service = &object(&docs, "MutatingWebhookConfiguration", None)["webhooks"][0]["clientConfig"]["service"];
    let host = format!("{}.{}.svc", service["name"].as_str().unwrap(), service["namespace"].as_str().unwrap());
    let https = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca().unwrap())?)
        .resolve(&host, ([127, 0, 0, 1], webhook_port).into())
        .build()?;
    let app: Value = serde_yaml::from_str(&std::fs::read_to_string(repo().join("examples/pods/app.yaml"))?)?;
    let mut app = app;
    app["metadata"]["namespace"] = "demo".into();
    let url = format!("https://{host}:{webhook_port}{}", service["path"].as_str().unwrap());
    let review: Value = https.post(&url).json(&admission_review(&app)).send()?.error_for_status()?.json()?;
    let response = &review["response"];
    ensure!(response["allowed"] == true, "the webhook admits the pod: {response}");
    let patch = base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().context("a patch")?)?;
    let patch: json_patch::Patch = serde_json::from_slice(&patch)?;
    let mut injected = app.clone();
    json_patch::patch(&mut injected, &patch)?;
    kube(&["apply", "-f", "-"], Some(&injected.to_string()))?;

    // The sidecar, exactly as the patch describes it and the kubelet would start it.
    let spec = &injected["spec"];
    let sidecar = spec["initContainers"]
        .as_array()
        .into_iter()
        .chain(spec["containers"].as_array())
        .flatten()
        .find(|c| c["name"] == "paddock-sidecar")
        .context("the patch adds the sidecar")?;
    ensure!(sidecar["command"].is_null() && sidecar["args"].is_null(), "the image's entrypoint runs");
    ensure!(sidecar["image"] == env["PADDOCK_SIDECAR_IMAGE"].as_str(), "the chart's sidecar image");
    let sidecar_env = resolve_env(sidecar, "app", "demo", |name, key| secret("demo", name, key))?;
    ensure!(sidecar_env["PADDOCK_ZOOKEEPER"] == connect, "the sidecar reaches the ensemble");
    let mut args = vec!["run".to_owned(), "-d".to_owned(), "--name=sidecar".to_owned()];
    args.extend(host_flags());
    args.extend(security_flags(&spec["securityContext"], &sidecar["securityContext"])?);
    ensure!(args.contains(&"--read-only".to_owned()) && args.contains(&format!("--user={NON_ROOT}")), "{args:?}");
    args.extend(sidecar_env.iter().map(|(k, v)| format!("--env={k}={v}")));
    args.push(sidecar["image"].as_str().context("image")?.to_owned());
    podman.run(&args)?;
    containers.push("sidecar".into());
    let startup = &sidecar["startupProbe"]["httpGet"];
    ensure!(startup["port"] == "paddock-health" && sidecar["ports"][0]["containerPort"] == health_port);
    let url = format!("http://127.0.0.1:{health_port}{}", startup["path"].as_str().context("path")?);
    eventually(Duration::from_secs(30), "the sidecar's startupProbe passes", || http_ok(&url))?;

    // The app, on the host: PADDOCK_URL as the patch gives it to the app container.
    let app_container = &spec["containers"][0];
    ensure!(app_container["name"] == "app");
    let base = app_container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "PADDOCK_URL")
        .and_then(|e| e["value"].as_str())
        .context("PADDOCK_URL in the app")?
        .to_owned();
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build()?;
    eventually(Duration::from_secs(30), "the sidecar is ready", || {
        http.get(format!("{base}/readyz")).send().is_ok_and(|r| r.status().is_success())
    })?;
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
    let depth = http.get(format!("{base}/queue/jobs")).send()?.json::<Value>()?;
    ensure!(depth["stats"]["depth"] == 0, "the item is gone: {depth}");
    let released = http.delete(format!("{base}/lock/orders")).send()?;
    ensure!(released.status() == 200, "release: {}", released.text()?);

    // Every container: uid 65532, its root filesystem mounted read-only.
    for name in containers.iter() {
        let pid = podman.pid(name)?;
        ensure!(process_uids(pid)? == [NON_ROOT; 4], "{name} runs as {:?}", process_uids(pid)?);
        ensure!(root_is_read_only(pid)?, "{name}'s root filesystem is read-only");
    }

    // A server that lost its quorum is live but not ready.
    podman.run(&["stop", "--time=0", "zk-1", "zk-2"])?;
    eventually(Duration::from_secs(30), "server 0 without a quorum is not ready", || {
        probe(0, "readinessProbe").is_ok_and(|ready| !ready)
    })?;
    eventually(Duration::from_secs(15), "server 0 without a quorum is live", || {
        probe(0, "livenessProbe").unwrap_or(false)
    })?;
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
            Some(("quorumListenOnAllIPs", _)) => "quorumListenOnAllIPs=false".to_owned(),
            Some((key, _)) if key.starts_with("server.") => {
                let n: usize = key["server.".len()..].parse().expect("server.N");
                let (client, peer, election) = (ports[3 * (n - 1)], ports[3 * (n - 1) + 1], ports[3 * (n - 1) + 2]);
                format!("{key}=127.0.0.1:{peer}:{election};127.0.0.1:{client}")
            }
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The environment the kubelet gives `container` of pod `pod_name` in `namespace`: values
/// as written, downward-API fields, Secret keys through `secret(name, key)`.
fn resolve_env(
    container: &Value,
    pod_name: &str,
    namespace: &str,
    secret: impl Fn(&str, &str) -> Result<String>,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().context("env name")?;
        let from = &var["valueFrom"];
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else if let Some(field) = from["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.name" => pod_name.to_owned(),
                "metadata.namespace" => namespace.to_owned(),
                other => anyhow::bail!("{name}: the kubelet stand-in knows no field {other}"),
            }
        } else if from["secretKeyRef"].is_object() {
            let selector = &from["secretKeyRef"];
            secret(selector["name"].as_str().context("name")?, selector["key"].as_str().context("key")?)?
        } else {
            anyhow::bail!("{name} has no value the kubelet stand-in can resolve: {var}");
        };
        ensure!(env.insert(name.to_owned(), value).is_none(), "{name} is set twice");
    }
    Ok(env)
}

/// podman flags for the container's volume mounts: `given` host directories by volume
/// name (read-only when asked), emptyDirs as tmpfs; any other volume is an error.
fn mounts(container: &Value, pod: &Value, given: &[(&str, &Path, bool)]) -> Result<Vec<String>> {
    let volumes: BTreeMap<&str, &Value> =
        pod["volumes"].as_array().into_iter().flatten().filter_map(|v| Some((v["name"].as_str()?, v))).collect();
    let mut flags = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().context("mount name")?;
        let path = mount["mountPath"].as_str().context("mountPath")?;
        if let Some((_, dir, read_only)) = given.iter().find(|(n, _, _)| *n == name) {
            ensure!(mount["readOnly"] == *read_only || (!read_only && mount["readOnly"].is_null()), "{name}");
            flags.push(format!("--volume={}:{path}{}", dir.display(), if *read_only { ":ro" } else { "" }));
        } else if volumes.get(name).is_some_and(|v| v["emptyDir"].is_object()) {
            flags.push(format!("--tmpfs={path}"));
        } else {
            anyhow::bail!("volume {name} at {path}: nothing stands for it");
        }
    }
    Ok(flags)
}

/// An AdmissionReview as the API server sends it for the CREATE of `pod`.
fn admission_review(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "images-test-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"],
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{name} is not set"))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

fn http_ok(url: &str) -> bool {
    reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .is_ok_and(|r| r.status().is_success())
}

/// The `kube-standin` binary (the Kubernetes API stand-in) on 127.0.0.1, writing the
/// kubeconfig; killed when dropped.
struct Standin(Child);

impl Standin {
    fn start(kubeconfig: &Path) -> Result<Self> {
        let child = Command::new(workspace_binary("kube-standin")?)
            .arg(kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting kube-standin")?;
        let standin = Self(child);
        eventually(Duration::from_secs(30), "kube-standin writes its kubeconfig", || {
            std::fs::read_to_string(kubeconfig).is_ok_and(|k| k.contains("current-context"))
        })?;
        Ok(standin)
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
