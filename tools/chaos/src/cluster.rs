//! The system under test, all real processes: the stack (a 3-node ensemble on hosts of
//! its own, the Kubernetes API stand-in, two operator replicas, CRDs and resources applied
//! with kubectl) and sidecars standing for pods of two namespaces, each with the
//! credentials the operator made for its namespace. Each sidecar reaches the ensemble
//! through a fault proxy of its own (its node's network, so to speak): the nemesis loses
//! a reply there or cuts the pod off.
//!
//! With TLS (`ChaosOptions::tls`) the ensemble serves TLS only; the operators get the CA
//! and a certificate each (`paddock_local`), each pod a certificate of its own
//! (`CN=<pod>,O=<namespace>`) that its sidecar presents to its fault proxy and the proxy
//! to the servers. The proxy terminates TLS on both sides to read ZooKeeper's frames, so
//! `LostReply` loses exactly the reply it means to over TLS as over plain text.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use paddock_local::{Stack, StackOptions};
use paddock_recipes::zk;
use paddock_testkit::client::PodClient;
use paddock_testkit::{EnsembleOptions, FaultProxy, Sidecar, SidecarOptions, find_binary};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::workloads::{PodHandle, Role, Workloads};

/// Session timeout of sidecars and operators: short, so faults play out in seconds.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
/// The operators' leader lease (their renew deadline is shorter).
pub const LEASE_DURATION: Duration = Duration::from_secs(3);
/// The second namespace, with its own resources (`tools/chaos/team-b.yaml`).
pub const TEAM_B: &str = "team-b";

/// A sidecar process standing for a pod, and its app's tasks.
pub struct SimPod {
    pub name: String,
    pub namespace: String,
    pub sidecar: Sidecar,
    /// Between the sidecar and every ZooKeeper server.
    pub proxy: FaultProxy,
    pub credentials: String,
    roles: Vec<Role>,
    paused: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl SimPod {
    pub fn client(&self) -> PodClient {
        PodClient::new(self.sidecar.url(""))
    }

    fn handle(&self) -> PodHandle {
        PodHandle { name: self.name.clone(), client: self.client(), paused: self.paused.subscribe() }
    }

    /// Starts the app's tasks.
    pub fn start_app(&mut self, workloads: &Arc<Workloads>) {
        for (worker, role) in self.roles.clone().into_iter().enumerate() {
            let (workloads, handle) = (workloads.clone(), self.handle());
            self.tasks.spawn(async move { workloads.run(role, handle, worker).await });
        }
    }

    /// SIGSTOPs the sidecar; the app stops at its next checkpoint too.
    pub fn pause(&mut self) -> Result<()> {
        self.paused.send_replace(true);
        self.sidecar.process.pause()
    }

    pub fn resume(&mut self) -> Result<()> {
        self.sidecar.process.resume()?;
        self.paused.send_replace(false);
        Ok(())
    }

    /// SIGKILLs the sidecar and aborts the app (the pod crashed).
    pub fn kill(&mut self) {
        self.tasks.abort_all();
        self.sidecar.process.kill();
        self.paused.send_replace(false);
    }

    /// Starts the sidecar again on its address, then the app.
    pub async fn restart(&mut self, workloads: &Arc<Workloads>) -> Result<()> {
        self.sidecar.restart().await?;
        self.start_app(workloads);
        Ok(())
    }

    /// Stops the app's tasks (the end of a run).
    pub fn stop_app(&mut self) {
        self.tasks.abort_all();
    }
}

/// How the suite's own clients (the checkers, the durability ledger) reach the ensemble,
/// directly: plain, or over TLS with the testkit's certificate.
#[derive(Clone)]
pub struct ZkAccess {
    pub connect_string: String,
    tls: Option<zk::TlsOptions>,
}

impl ZkAccess {
    pub fn of(stack: &Stack) -> Result<Self> {
        let ensemble = &stack.ensemble;
        let tls = ensemble.tls().map(|tls| tls.zk_options(tls.admin())).transpose()?;
        Ok(Self { connect_string: ensemble.connect_string(), tls })
    }

    /// Connects with `connector`'s settings (auth, session timeout), over TLS if need be.
    pub async fn connect(&self, connector: zk::Connector) -> Result<zk::Client, zk::Error> {
        match &self.tls {
            Some(tls) => connector.with_tls(tls.clone()).secure_connect(&self.connect_string).await,
            None => connector.connect(&self.connect_string).await,
        }
    }
}

pub struct Cluster {
    pub stack: Stack,
    /// The suite's own way to the ensemble.
    pub zk: ZkAccess,
    pub pods: Vec<SimPod>,
    /// Logs of every process; kept when a run found something.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(workloads: &Arc<Workloads>, tls: bool) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("paddock-chaos-").tempdir()?;
        let stack = Stack::start(StackOptions {
            ensemble: EnsembleOptions { isolated_network: true, tls, ..Default::default() },
            operators: 2,
            namespaces: vec![TEAM_B.to_owned()],
            manifests: vec![
                "examples/".to_owned(),
                "tools/chaos/team-b.yaml".to_owned(),
                "tools/chaos/election.yaml".to_owned(),
                "tools/chaos/groups.yaml".to_owned(),
            ],
            lease_duration: LEASE_DURATION,
            session_timeout: SESSION_TIMEOUT,
            dir: dir.path().to_owned(),
        })
        .await?;
        let pods: [(&str, &str, Vec<Role>); 5] = [
            (
                "web-0",
                "default",
                vec![
                    Role::Counter,
                    Role::Counter,
                    Role::Producer,
                    Role::Candidate,
                    Role::GroupProducer,
                    Role::GroupConsumer,
                ],
            ),
            (
                "web-1",
                "default",
                vec![Role::Counter, Role::KeyedProducer, Role::Consumer, Role::Candidate, Role::GroupConsumer],
            ),
            (
                "web-2",
                "default",
                vec![Role::Counter, Role::Consumer, Role::Consumer, Role::Candidate, Role::GroupConsumer],
            ),
            ("batch-0", TEAM_B, vec![Role::Semaphore, Role::Semaphore, Role::Reader, Role::Writer]),
            ("batch-1", TEAM_B, vec![Role::Semaphore, Role::Semaphore, Role::Reader, Role::Reader, Role::Writer]),
        ];
        let zk = ZkAccess::of(&stack)?;
        let mut cluster = Self { stack, zk, pods: Vec::new(), dir };
        for (name, namespace, roles) in pods {
            let credentials = cluster.stack.namespace_credentials(namespace).await?;
            let ensemble = &cluster.stack.ensemble;
            let (proxy, tls_env) = match ensemble.tls() {
                Some(tls) => {
                    let cert = tls.issue_client(name, &format!("CN={name},O={namespace}"))?;
                    (FaultProxy::for_ensemble_as(ensemble, &cert).await?, cert.env(&tls.ca_path()))
                }
                None => (FaultProxy::for_ensemble(ensemble).await?, Vec::new()),
            };
            let mut options =
                SidecarOptions::new(find_binary("paddock-sidecar")?, proxy.connect_string(), name, namespace)
                    .session_timeout(SESSION_TIMEOUT)
                    .env("PADDOCK_ZK_AUTH", &credentials);
            options.env.extend(tls_env);
            options.log_file = Some(cluster.dir.path().join(format!("sidecar-{name}.log")));
            let sidecar = Sidecar::start(options).await?;
            let mut pod = SimPod {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
                sidecar,
                proxy,
                credentials,
                roles,
                paused: watch::channel(false).0,
                tasks: JoinSet::new(),
            };
            pod.start_app(workloads);
            cluster.pods.push(pod);
        }
        Ok(cluster)
    }
}
