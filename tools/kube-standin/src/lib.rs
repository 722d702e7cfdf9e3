//! A Kubernetes API stand-in for tests — never shipped, never a production dependency.
//!
//! No kube-apiserver can be installed on these machines, so the operator (through
//! `kube::Client`) and kubectl run against this instead. It is faithful where they depend
//! on it: discovery, CRD registration (serving the new resources), create / get / list /
//! update / patch (merge, JSON; server-side apply treated as a merge of the applied
//! object) / delete, the status subresource, resourceVersion with 409 conflicts,
//! finalizers and deletionTimestamp, and watch from a resourceVersion (410 when the
//! history no longer reaches back; a test may make live watches lag the writes, as a loaded
//! API server's do, with [`Store::watch_lag`]), Table output with a CRD's printer columns for
//! `kubectl get`, and validation and defaulting of custom resources against their CRD's
//! structural schema. Not modelled: CEL rules, field managers, admission webhooks.

mod routes;
mod schema;
pub mod store;
mod table;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;

pub use store::Store;

/// A running stand-in on 127.0.0.1; stops when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub store: Arc<Mutex<Store>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    pub async fn start() -> Result<Self> {
        let store = Arc::new(Mutex::new(Store::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = routes::router(store.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, store, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (plain HTTP, no auth).
    pub fn client(&self) -> Result<kube::Client> {
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// A kubeconfig for kubectl pointing here.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\n\
             current-context: standin\nusers:\n- name: standin\n  user: {{}}\n",
            self.url()
        )
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
