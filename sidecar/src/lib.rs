//! paddock-sidecar as a library: [`Config`] → [`App`] → [`App::serve`]. The binary only
//! parses the config, sets up logging and waits for SIGTERM; a test can build an [`App`]
//! and call its [`App::router`] in-process (tower `oneshot`) against a real ensemble.
//!
//! Data flows one way: `api/` parses a request and maps errors to HTTP, over the lock
//! and queue services (`locks/`, `queues.rs`), over the recipes of `paddock-recipes`.

mod api;
pub mod config;
mod config_cache;
mod context;
mod error;
mod events;
mod locks;
mod metrics;
mod queues;
mod server;
mod state;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use paddock_recipes::identity::NodeAcl;
use paddock_recipes::{Session, SessionOptions};
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::context::ServiceContext;
use crate::events::EventBus;
use crate::locks::LockService;
use crate::metrics::Metrics;
use crate::queues::QueueService;
use crate::state::AppState;

/// A running sidecar: its ZooKeeper session (kept in the background from [`App::new`]
/// on), its lock and queue services, and the state its HTTP API serves.
pub struct App {
    config: Config,
    state: AppState,
}

impl App {
    /// Starts keeping the ZooKeeper session and the services over it. Nothing is
    /// listened on until [`App::serve`].
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let digest_auth = config.digest_auth()?;
        // Authenticated as its namespace, the sidecar's nodes belong to that identity alone
        // (and, with a certificate identity, to the operator's too).
        let acl = match &config.zk_operator_id {
            Some(operator) => NodeAcl::creator_and_x509(operator),
            None => NodeAcl::for_session(digest_auth.is_some()),
        };
        let layout = config.zk_root.clone().with_node_acl(acl);
        let session = Session::start(SessionOptions {
            connect: config.zookeeper.clone(),
            session_timeout: config.session_timeout,
            digest_auth,
            tls: config.zk_tls()?,
        });
        let ctx = ServiceContext {
            pod_name: config.pod_name.clone(),
            namespace: config.pod_namespace.clone(),
            layout,
            session: session.clone(),
            events: EventBus::new(),
            metrics: Arc::new(Metrics::new()),
        };
        ctx.metrics.follow_session(&session);
        let shutdown = CancellationToken::new();
        let state = AppState {
            session,
            locks: LockService::new(ctx.clone()),
            queues: QueueService::new(ctx.clone(), shutdown.clone()),
            default_queue: config.queue.clone(),
            events: ctx.events,
            metrics: ctx.metrics,
            shutdown,
            readiness: Arc::default(),
        };
        Ok(Self { config, state })
    }

    /// The HTTP API, as served on `PADDOCK_LISTEN`.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// Serves the API (and the probes and metrics, on `PADDOCK_HEALTH_LISTEN` if set) until `stop`
    /// resolves; then stops accepting, ends streams and long-polls, gives in-flight
    /// requests the grace period, gives back unacked items, releases locks and closes the
    /// ZooKeeper session.
    pub async fn serve(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self { config, state } = self;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("PADDOCK_LISTEN {}: cannot bind", config.listen))?;
        let limits = server::Limits {
            max_connections: config.max_connections as usize,
            header_read_timeout: config.header_read_timeout,
        };
        let shutdown = state.shutdown.clone();
        if let Some(addr) = config.health_listen {
            let health = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("PADDOCK_HEALTH_LISTEN {addr}: cannot bind"))?;
            let probes = api::probe_router(state.clone());
            tokio::spawn(server::serve(health, probes, limits, shutdown.clone()));
        }
        tracing::info!(
            listen = %config.listen,
            zookeeper = %config.zookeeper,
            tls = config.zk_tls_ca.is_some(),
            pod = %config.pod_name,
            namespace = %config.pod_namespace,
            workers = tokio::runtime::Handle::current().metrics().num_workers(),
            "paddock-sidecar serving"
        );
        let server = tokio::spawn(server::serve(listener, api::router(state.clone()), limits, shutdown.clone()));
        stop.await;
        shutdown.cancel();
        if tokio::time::timeout(config.shutdown_grace, server).await.is_err() {
            tracing::warn!(grace = ?config.shutdown_grace, "requests still in flight after the grace period");
        }
        tracing::info!("shutting down: returning unacked items, releasing locks, closing the ZooKeeper session");
        state.queues.return_all().await;
        state.locks.release_all().await;
        state.session.close().await;
        Ok(())
    }
}
