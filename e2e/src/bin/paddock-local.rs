//! The README's run command: a real 3-node ZooKeeper ensemble on 127.0.0.1, the example
//! resources provisioned, and a sidecar for a pod `demo-0` in namespace `default`.
//! Ctrl-C (or SIGTERM) stops the sidecar gracefully, then the ensemble; nothing is left.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use paddock_e2e::{Ensemble, EnsembleOptions, ProcessHandle, provision};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(about = "Run Paddock locally against a real ZooKeeper ensemble")]
struct Args {
    /// Where the sidecar listens.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Number of ZooKeeper servers.
    #[arg(long, default_value_t = 3)]
    servers: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    paddock_e2e::init_tracing();
    let args = Args::parse();
    println!("==> starting a {}-node ZooKeeper ensemble on 127.0.0.1", args.servers);
    let ensemble =
        Ensemble::start_with(EnsembleOptions { servers: args.servers, keep_dir: true, ..Default::default() }).await?;
    let connect = ensemble.connect_string();
    println!("    connect string: {connect}\n    data and logs:  {}", ensemble.dir().display());

    provision::examples(&connect).await.context("provisioning the example lock and queue")?;

    let sidecar_bin = sibling_binary("paddock-sidecar")?;
    let mut command = Command::new(&sidecar_bin);
    command
        .env("PADDOCK_ZOOKEEPER", &connect)
        .env("PADDOCK_LISTEN", args.listen.to_string())
        .env("POD_NAME", "demo-0")
        .env("POD_NAMESPACE", "default")
        .env("PADDOCK_QUEUE", "jobs");
    let mut sidecar = ProcessHandle::spawn("paddock-sidecar", command)?;
    wait_ready(args.listen, &mut sidecar).await?;

    let base = format!("http://{}", args.listen);
    println!(
        "\n==> Paddock is running. Try:\n\
         \n  curl -s {base}/healthz\
         \n  curl -s -XPOST {base}/lock -d '{{\"name\":\"orders\",\"wait\":\"5s\"}}' -H 'content-type: application/json'\
         \n  curl -s {base}/lock/orders\
         \n  curl -s -XDELETE {base}/lock/orders\
         \n  curl -s -XPOST {base}/queue/jobs -d 'hello'\
         \n  curl -s -i '{base}/queue/next?wait=5s'\
         \n  curl -s -XPOST {base}/queue/jobs/ITEM_ID/ack\
         \n  curl -s -N {base}/events\
         \n  curl -s {base}/metrics\
         \n\nPress Ctrl-C to stop everything.\n"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = wait_exit(&mut sidecar) => println!("the sidecar exited; stopping"),
    }
    println!("==> stopping the sidecar and the ensemble");
    if sidecar.pid().is_some() {
        let _ = sidecar.terminate(Duration::from_secs(10)).await;
    }
    drop(ensemble);
    println!("==> stopped");
    Ok(())
}

fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    anyhow::ensure!(path.exists(), "{} not found: build it with `cargo build -p paddock-sidecar`", path.display());
    Ok(path)
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
