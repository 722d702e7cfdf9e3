//! Test helper: a plain ZooKeeper client in its own process that creates one ephemeral
//! node and then idles, so a test can SIGSTOP a real client past its session timeout.
//!
//! Usage: zk-hold-ephemeral CONNECT_STRING PATH SESSION_TIMEOUT_MS

use std::time::Duration;

use anyhow::{Context, Result};
use zookeeper_client as zk;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, connect, path, timeout_ms] = args.as_slice() else {
        anyhow::bail!("usage: zk-hold-ephemeral CONNECT_STRING PATH SESSION_TIMEOUT_MS");
    };
    let timeout = Duration::from_millis(timeout_ms.parse().context("SESSION_TIMEOUT_MS")?);
    let client = zk::Client::connector().with_session_timeout(timeout).connect(connect).await?;
    client
        .create(path, b"held", &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()))
        .await
        .with_context(|| format!("creating {path}"))?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
