//! paddock-sidecar: reads its config, keeps a ZooKeeper session, serves the HTTP API on
//! loopback, and on SIGTERM drains requests and releases what the pod holds.

mod api;
mod config;
mod config_cache;
mod error;
mod events;
mod locks;
mod metrics;
mod pod;
mod queues;
mod server;
mod state;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use paddock_recipes::identity::NodeAcl;
use paddock_recipes::{Session, SessionOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::events::EventBus;
use crate::locks::LockService;
use crate::metrics::Metrics;
use crate::pod::Pod;
use crate::queues::QueueService;
use crate::state::AppState;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing(&config.log_format);
    let digest_auth = config.digest_auth()?;

    // Authenticated as its namespace, the sidecar's nodes belong to that identity alone.
    let layout = config.zk_root.clone().with_node_acl(NodeAcl::for_session(digest_auth.is_some()));
    let session = Session::start(SessionOptions {
        connect: config.zookeeper.clone(),
        session_timeout: config.session_timeout,
        digest_auth,
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("PADDOCK_LISTEN {}: cannot bind", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        zookeeper = %config.zookeeper,
        pod = %config.pod_name,
        namespace = %config.pod_namespace,
        "paddock-sidecar serving"
    );

    let ctx = Pod {
        name: config.pod_name.clone(),
        namespace: config.pod_namespace.clone(),
        layout,
        session: session.clone(),
        events: EventBus::new(),
        metrics: Arc::new(Metrics::new()),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let locks = LockService::new(ctx.clone());
    let queues = QueueService::new(ctx.clone(), shutdown.clone());
    let state = AppState {
        session: session.clone(),
        locks: locks.clone(),
        queues: queues.clone(),
        default_queue: config.queue.clone(),
        events: ctx.events,
        metrics: ctx.metrics,
        shutdown: shutdown.clone(),
        readiness: Arc::default(),
    };

    let limits = server::Limits {
        max_connections: config.max_connections as usize,
        header_read_timeout: config.header_read_timeout,
    };
    if let Some(addr) = config.health_listen {
        let health = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("PADDOCK_HEALTH_LISTEN {addr}: cannot bind"))?;
        let probes = api::health::router().with_state(state.clone());
        tokio::spawn(server::serve(health, probes, limits, shutdown.clone()));
    }
    let server = tokio::spawn(server::serve(listener, api::router(state), limits, shutdown.clone()));
    // On SIGTERM: stop accepting, end streams, give in-flight requests the grace period,
    // then release what the pod holds.
    shutdown_signal().await;
    shutdown.cancel();
    if tokio::time::timeout(config.shutdown_grace, server).await.is_err() {
        tracing::warn!(grace = ?config.shutdown_grace, "requests still in flight after the grace period");
    }
    tracing::info!("shutting down: returning unacked items, releasing locks, closing the ZooKeeper session");
    queues.return_all().await;
    locks.release_all().await;
    session.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zookeeper_client=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
