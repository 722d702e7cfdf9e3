//! Runs the Kubernetes API stand-in (a test tool, see the library of this crate) on
//! 127.0.0.1 and writes a kubeconfig for kubectl. Ctrl-C stops it.
//!
//! Usage: kube-standin KUBECONFIG_PATH

use anyhow::Context;
use paddock_kube_standin::ApiServer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).context("usage: kube-standin KUBECONFIG_PATH")?;
    let server = ApiServer::start().await?;
    std::fs::write(&path, server.kubeconfig()).with_context(|| format!("writing {path}"))?;
    println!("Kubernetes API stand-in on {} (kubeconfig: {path})", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
