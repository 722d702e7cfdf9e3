//! Provisioning for tests and the benchmarks, through the same recipes code the operator
//! uses (`paddock_recipes::provision`), with open ACLs.

use anyhow::{Context, Result};
use paddock_recipes::provision::{ensure_lock, ensure_queue};
use paddock_recipes::{Layout, LockConfig, Name, QueueConfig, zk};

/// A client for provisioning.
pub async fn admin(connect: &str) -> Result<zk::Client> {
    zk::Client::connect(connect).await.with_context(|| format!("connecting to ZooKeeper at {connect}"))
}

/// A client for provisioning over TLS (`options` from `EnsembleTls::zk_options`).
pub async fn admin_tls(connect: &str, options: zk::TlsOptions) -> Result<zk::Client> {
    zk::Client::connector()
        .with_tls(options)
        .secure_connect(connect)
        .await
        .with_context(|| format!("connecting to ZooKeeper at {connect} over TLS"))
}

pub async fn lock(client: &zk::Client, namespace: &str, name: &str, config: LockConfig) -> Result<String> {
    let layout = Layout::new("/paddock")?;
    Ok(ensure_lock(
        client,
        &layout,
        &Name::new("namespace", namespace)?,
        &Name::new("lock", name)?,
        &config,
        zk::Acls::anyone_all(),
    )
    .await?)
}

pub async fn queue(client: &zk::Client, namespace: &str, name: &str, config: QueueConfig) -> Result<String> {
    let layout = Layout::new("/paddock")?;
    Ok(ensure_queue(
        client,
        &layout,
        &Name::new("namespace", namespace)?,
        &Name::new("queue", name)?,
        &config,
        zk::Acls::anyone_all(),
    )
    .await?)
}
