//! Paddock's test kit, what the crates' tests share: a real ZooKeeper ensemble on demand
//! (on network namespaces of its own if asked), a fault proxy between clients and servers,
//! sidecar and operator processes standing for pods, an HTTP client for the sidecar's API,
//! provisioning, a fenced store and Apache Curator as a peer. Never shipped; the
//! benchmarks, the fault suite and the local run build on it too.

pub mod client;
pub mod curator;
pub mod ensemble;
pub mod fault_proxy;
pub mod fenced;
pub mod netns;
pub mod operator;
pub mod process;
pub mod provision;
pub mod tls;

pub use client::{Acquire, PodClient};
pub use ensemble::{Ensemble, EnsembleOptions, Mode};
pub use fault_proxy::FaultProxy;
pub use operator::{Operator, OperatorOptions};
pub use process::{ProcessHandle, Sidecar, SidecarOptions};
pub use tls::{ClientCert, EnsembleTls, TestCa};

/// Structured logs for tests and tools; `RUST_LOG` overrides the default level.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// Waits until `check` holds, polling every 100 ms; panics naming `what` after `timeout`.
/// For tests that wait on a condition (never a bare sleep).
pub async fn eventually<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A binary of the workspace, beside the running test's own directory (`cargo test
/// --workspace` builds every binary before it runs tests).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    find_binary(name).unwrap_or_else(|e| panic!("{e:#}: run the tests with `cargo test --workspace`"))
}

/// A binary of the workspace beside the running executable: a bin of this crate runs in
/// `target/<profile>/`, a test in `target/<profile>/deps/`.
pub fn find_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let exe = std::env::current_exe().context("the running executable's path")?;
    let dir = exe.parent().context("the executable's directory")?;
    [Some(dir.join(name)), dir.parent().map(|p| p.join(name))]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found beside {}; build it with `cargo build --workspace`", exe.display()))
}

/// `kubectl` against a kubeconfig, from the workspace root (so `-f crds/` works).
pub fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    run_kubectl(kubeconfig, args, None)
}

/// `kubectl apply` of a manifest given as text (YAML documents), against a kubeconfig.
pub fn kubectl_apply(kubeconfig: &std::path::Path, manifest: &str) -> anyhow::Result<String> {
    run_kubectl(kubeconfig, &["apply", "-f", "-"], Some(manifest))
}

/// `kubectl` from the workspace root, `stdin` written to it; its output, or its error.
fn run_kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::process::Stdio;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut child = std::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(root)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    if let Some(text) = stdin {
        child.stdin.take().context("kubectl's stdin")?.write_all(text.as_bytes()).context("writing to kubectl")?;
    }
    let output = child.wait_with_output().context("waiting for kubectl")?;
    anyhow::ensure!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The chart's ZooKeeper StatefulSet (`paddock-zookeeper` in `default`) as the API
/// stand-in stores it for the operator to restart: nothing runs it, a test restarts the
/// servers as its controller would ([`Ensemble::restart_one_at_a_time`]).
pub const MANAGED_STATEFULSET: &str = "
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: paddock-zookeeper, namespace: default}
spec:
  serviceName: paddock-zookeeper-headless
  replicas: 3
  selector: {matchLabels: {app: zookeeper}}
  template:
    metadata: {labels: {app: zookeeper}}
    spec: {containers: [{name: zookeeper, image: paddock-zookeeper}]}
";
