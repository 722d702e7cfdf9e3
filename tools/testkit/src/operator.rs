//! The operator binary as a process standing for one replica's pod: its kubeconfig, its
//! ZooKeeper identity, its Lease name and a free metrics port. Dropping it kills it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::ProcessHandle;
use crate::ensemble::free_ports;

/// How to start one operator replica.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
    pub zookeeper: String,
    /// The operator's digest identity `user:password` (empty: `PADDOCK_ZK_AUTH` not set).
    pub credentials: String,
    /// `POD_NAME`; empty: not set (the operator makes an identity of its own).
    pub pod_name: String,
    pub namespace: String,
    pub lease_duration: Duration,
    pub session_timeout: Duration,
    /// Extra environment (the webhook's settings, say).
    pub env: Vec<(String, String)>,
    /// Where stdout/stderr go; None inherits the test's.
    pub log_file: Option<PathBuf>,
}

impl OperatorOptions {
    pub fn new(binary: impl AsRef<Path>, kubeconfig: impl AsRef<Path>, zookeeper: &str, credentials: &str) -> Self {
        Self {
            binary: binary.as_ref().to_owned(),
            kubeconfig: kubeconfig.as_ref().to_owned(),
            zookeeper: zookeeper.to_owned(),
            credentials: credentials.to_owned(),
            pod_name: "paddock-operator-0".to_owned(),
            namespace: "default".to_owned(),
            lease_duration: Duration::from_secs(15),
            session_timeout: Duration::from_secs(10),
            env: Vec::new(),
            log_file: None,
        }
    }

    pub fn pod(mut self, name: &str, namespace: &str) -> Self {
        self.pod_name = name.to_owned();
        self.namespace = namespace.to_owned();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// A running operator replica.
#[derive(Debug)]
pub struct Operator {
    pub process: ProcessHandle,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    options: OperatorOptions,
}

impl Operator {
    /// Starts the replica on a free metrics port (it does not wait for leadership).
    pub fn spawn(options: OperatorOptions) -> Result<Self> {
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_ports(1)?[0]));
        let process = spawn(&options, metrics_addr)?;
        Ok(Self { process, metrics_addr, options })
    }

    pub fn pod_name(&self) -> &str {
        &self.options.pod_name
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// SIGKILLs the replica (if it still runs) and starts it again with the same settings.
    pub fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process = spawn(&self.options, self.metrics_addr)?;
        Ok(())
    }
}

fn spawn(options: &OperatorOptions, metrics_addr: SocketAddr) -> Result<ProcessHandle> {
    let mut command = Command::new(&options.binary);
    command
        .arg("run")
        .env("KUBECONFIG", &options.kubeconfig)
        .env("PADDOCK_ZOOKEEPER", &options.zookeeper)
        .env("POD_NAMESPACE", &options.namespace)
        .env("PADDOCK_LEASE_DURATION", format!("{}ms", options.lease_duration.as_millis()))
        .env("PADDOCK_SESSION_TIMEOUT", format!("{}ms", options.session_timeout.as_millis()))
        .env("PADDOCK_METRICS_LISTEN", metrics_addr.to_string())
        // Operator logs in tests: warnings only unless PADDOCK_TEST_OPERATOR_LOG says otherwise.
        .env("RUST_LOG", std::env::var("PADDOCK_TEST_OPERATOR_LOG").unwrap_or_else(|_| "warn".to_owned()))
        .envs(options.env.iter().map(|(k, v)| (k, v)));
    if !options.credentials.is_empty() {
        command.env("PADDOCK_ZK_AUTH", &options.credentials);
    }
    if options.pod_name.is_empty() {
        command.env_remove("POD_NAME");
    } else {
        command.env("POD_NAME", &options.pod_name);
    }
    if let Some(path) = &options.log_file {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        command.stdout(log.try_clone()?).stderr(log);
    }
    ProcessHandle::spawn(format!("operator {}", options.pod_name), command)
}
