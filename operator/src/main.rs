//! paddock-operator: reconciles DistributedLock and WorkQueue resources into ZooKeeper.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use paddock_operator::controller::{self, Context};
use paddock_recipes::identity::DigestIdentity;
use paddock_recipes::{Layout, Session, SessionOptions};

#[derive(Debug, Parser)]
#[command(name = "paddock-operator", version, about = "Reconciles DistributedLock and WorkQueue into ZooKeeper")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML), as `crds/` holds them.
    Crd,
    /// Run the controllers (the Kubernetes API from KUBECONFIG or the pod's service account).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// ZooKeeper connect string.
    #[arg(long, env = "PADDOCK_ZOOKEEPER", value_name = "PADDOCK_ZOOKEEPER")]
    zookeeper: String,
    /// Root of Paddock's subtree.
    #[arg(long, env = "PADDOCK_ZK_ROOT", value_name = "PADDOCK_ZK_ROOT", default_value = "/paddock")]
    zk_root: String,
    /// The operator's own digest identity `user:password` (its admin identity).
    #[arg(long, env = "PADDOCK_ZK_AUTH", value_name = "PADDOCK_ZK_AUTH", hide_env_values = true)]
    zk_auth: String,
    /// ZooKeeper session timeout.
    #[arg(long, env = "PADDOCK_SESSION_TIMEOUT", value_name = "PADDOCK_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    session_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Crd => {
            print!("{}", paddock_operator::crd::crds_yaml());
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zookeeper_client=warn,kube=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let operator = DigestIdentity::parse(&args.zk_auth).context("PADDOCK_ZK_AUTH")?;
    let layout = Layout::new(&args.zk_root).context("PADDOCK_ZK_ROOT")?;
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let session = Session::start(SessionOptions {
        connect: args.zookeeper.clone(),
        session_timeout: args.session_timeout,
        digest_auth: Some(operator.credentials()),
    });
    tracing::info!(zookeeper = %args.zookeeper, root = %args.zk_root, "paddock-operator running");
    let ctx = Arc::new(Context::new(client, session.clone(), layout, operator));
    controller::run(ctx, shutdown_signal()).await;
    session.close().await;
    tracing::info!("paddock-operator stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
