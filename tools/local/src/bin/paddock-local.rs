//! The README's run command: the whole stack on this machine. A real 3-node ZooKeeper
//! ensemble on 127.0.0.1, the Kubernetes API stand-in with a kubeconfig for kubectl, the
//! operator, the CRDs and `examples/` applied with kubectl (the operator provisions them
//! and makes the namespace's credentials), and a sidecar for a pod `demo-0` in namespace
//! `default` with those credentials. Ctrl-C (or SIGTERM) stops the sidecar and the
//! operator gracefully, then the rest; nothing is left running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use paddock_local::{Stack, StackOptions};
use paddock_testkit::{EnsembleOptions, ProcessHandle, find_binary};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(about = "Run Paddock locally: ZooKeeper, the Kubernetes API stand-in, the operator and a sidecar")]
struct Args {
    /// Where the sidecar listens.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Number of ZooKeeper servers.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Where the kubeconfig and the operator's log go (written over at start).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("paddock-local"))]
    dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    paddock_testkit::init_tracing();
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;

    println!("==> starting a {}-node ZooKeeper ensemble, the Kubernetes API stand-in and the operator", args.servers);
    let stack = Stack::start(StackOptions {
        ensemble: EnsembleOptions { servers: args.servers, keep_dir: true, ..Default::default() },
        operators: 1,
        namespaces: Vec::new(),
        manifests: vec!["examples/".to_owned()],
        lease_duration: Duration::from_secs(15),
        session_timeout: Duration::from_secs(10),
        dir: args.dir.clone(),
    })
    .await?;
    let connect = stack.ensemble.connect_string();
    println!("    ZooKeeper:      {connect} (data and logs in {})", stack.ensemble.dir().display());
    println!("    Kubernetes API: {} (kubeconfig {})", stack.api.url(), stack.kubeconfig.display());
    println!("    operator log:   {}", args.dir.join("paddock-operator-0.log").display());

    // The pod's sidecar, as the injection webhook would configure it.
    let credentials = stack.namespace_credentials("default").await?;
    let mut command = Command::new(find_binary("paddock-sidecar")?);
    command
        .env("PADDOCK_ZOOKEEPER", &connect)
        .env("PADDOCK_LISTEN", args.listen.to_string())
        .env("PADDOCK_ZK_AUTH", &credentials)
        .env("POD_NAME", "demo-0")
        .env("POD_NAMESPACE", "default")
        .env("PADDOCK_QUEUE", "jobs");
    let mut sidecar = ProcessHandle::spawn("paddock-sidecar", command)?;
    wait_ready(args.listen, &mut sidecar).await?;

    let base = format!("http://{}", args.listen);
    println!(
        "\n==> Paddock is running. Try:\n\
         \n  export KUBECONFIG={kubeconfig}\
         \n  kubectl get dlock,wq\
         \n  kubectl apply -f examples/\
         \n\
         \n  curl -s {base}/healthz\
         \n  curl -s -XPOST {base}/lock -d '{{\"name\":\"orders\",\"wait\":\"5s\"}}' -H 'content-type: application/json'\
         \n  curl -s {base}/lock/orders\
         \n  kubectl get dlock orders          # the holder, demo-0, and its fencing token\
         \n  curl -s -XDELETE {base}/lock/orders\
         \n  curl -s -XPOST {base}/queue/jobs -d 'hello'\
         \n  kubectl get wq jobs               # depth 1\
         \n  curl -s -i '{base}/queue/next?wait=5s'\
         \n  curl -s -XPOST {base}/queue/jobs/ITEM_ID/ack\
         \n  curl -s -N {base}/events\
         \n  curl -s {base}/metrics\
         \n\nPress Ctrl-C to stop everything.\n",
        kubeconfig = stack.kubeconfig.display(),
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = wait_exit(&mut sidecar) => println!("the sidecar exited; stopping"),
    }
    println!("==> stopping the sidecar, the operator and the ensemble");
    if sidecar.pid().is_some() {
        let _ = sidecar.terminate(Duration::from_secs(10)).await;
    }
    let mut stack = stack;
    for operator in &mut stack.operators {
        let _ = operator.process.terminate(Duration::from_secs(10)).await;
    }
    drop(stack);
    println!("==> stopped");
    Ok(())
}

async fn wait_ready(listen: SocketAddr, sidecar: &mut ProcessHandle) -> Result<()> {
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/readyz");
    for _ in 0..300 {
        anyhow::ensure!(!sidecar.has_exited(), "the sidecar exited at start; see its log above");
        if client.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the sidecar was not ready within 30 s")
}

async fn wait_exit(sidecar: &mut ProcessHandle) {
    while !sidecar.has_exited() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
