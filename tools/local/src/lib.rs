//! The whole stack as processes on this machine, as the local run and the fault suite
//! bring it up: a real ZooKeeper ensemble, the Kubernetes API stand-in (with a kubeconfig
//! written for kubectl), operator replicas with leader election, the CRDs and resources
//! applied with kubectl, and the credentials the operator makes for each namespace.
//!
//! With `ensemble.tls` the ensemble serves TLS only, and each operator replica is given
//! its CA and a client certificate of its own (`CN=paddock-operator`) through
//! `PADDOCK_ZK_TLS_CA/CERT/KEY`, as the chart gives them; namespaces keep digest identities
//! (`PADDOCK_NAMESPACE_AUTH=digest`), sent inside TLS.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use paddock_recipes::identity::DigestIdentity;
use paddock_testkit::{Ensemble, EnsembleOptions, Operator, OperatorOptions, find_binary, kubectl};

use paddock_kube_standin::ApiServer;

/// The namespace the operators run in (their Lease lives there).
pub const OPERATOR_NAMESPACE: &str = "paddock-system";

#[derive(Debug, Clone)]
pub struct StackOptions {
    pub ensemble: EnsembleOptions,
    pub operators: usize,
    /// Namespaces to create besides `default` (the stand-in has `default` already).
    pub namespaces: Vec<String>,
    /// Manifests applied after the CRDs, paths relative to the workspace root.
    pub manifests: Vec<String>,
    pub lease_duration: Duration,
    pub session_timeout: Duration,
    /// Where the kubeconfig and the operators' logs go.
    pub dir: PathBuf,
}

pub struct Stack {
    pub ensemble: Ensemble,
    pub api: ApiServer,
    pub kubeconfig: PathBuf,
    pub operators: Vec<Operator>,
}

impl Stack {
    /// Brings the stack up and waits until every applied resource is Ready.
    pub async fn start(options: StackOptions) -> Result<Self> {
        let ensemble = Ensemble::start_with(options.ensemble.clone()).await?;
        let api = ApiServer::start().await.context("starting the Kubernetes API stand-in")?;
        let kubeconfig = options.dir.join("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig())?;
        let namespaces: Api<Namespace> = Api::all(api.client()?);
        for name in options.namespaces.iter().map(String::as_str).chain([OPERATOR_NAMESPACE]) {
            let namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?;
            namespaces.create(&PostParams::default(), &namespace).await.with_context(|| format!("namespace {name}"))?;
        }
        kubectl(&kubeconfig, &["apply", "-f", "crds/"])?;
        for manifest in &options.manifests {
            kubectl(&kubeconfig, &["apply", "-f", manifest])?;
        }

        let credentials = DigestIdentity::generate("paddock-operator").credentials();
        let mut operators = Vec::new();
        for index in 0..options.operators {
            let name = format!("paddock-operator-{index}");
            let mut replica = OperatorOptions::new(
                find_binary("paddock-operator")?,
                &kubeconfig,
                &ensemble.connect_string(),
                &credentials,
            )
            .pod(&name, OPERATOR_NAMESPACE);
            replica.lease_duration = options.lease_duration;
            replica.session_timeout = options.session_timeout;
            replica.log_file = Some(options.dir.join(format!("{name}.log")));
            if let Some(tls) = ensemble.tls() {
                let cert = tls.issue_client(&name, "CN=paddock-operator")?;
                replica.env.extend(cert.env(&tls.ca_path()));
                // The stack's pods keep digest identities (they read the credentials the
                // operator makes), inside TLS; certificate identities have tests of their own
                // (operator/tests/x509.rs). Over TLS the operator would otherwise default to x509.
                replica.env.push(("PADDOCK_NAMESPACE_AUTH".to_owned(), "digest".to_owned()));
            }
            operators.push(Operator::spawn(replica)?);
        }
        let stack = Self { ensemble, api, kubeconfig, operators };
        for namespace in options.namespaces.iter().map(String::as_str).chain(["default"]) {
            stack.wait_ready(namespace, Duration::from_secs(90)).await?;
        }
        Ok(stack)
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl(&self.kubeconfig, args)
    }

    /// The credentials the operator made for `namespace` (its Secret).
    pub async fn namespace_credentials(&self, namespace: &str) -> Result<String> {
        let secrets: Api<Secret> = Api::namespaced(self.api.client()?, namespace);
        let secret = secrets.get("paddock-zookeeper-credentials").await.context("the namespace's credentials")?;
        let bytes = secret.data.and_then(|d| d.get("credentials").cloned()).context("key credentials")?;
        Ok(String::from_utf8(bytes.0)?)
    }

    /// Waits until every lock and queue of `namespace` is Ready.
    pub async fn wait_ready(&self, namespace: &str, timeout: Duration) -> Result<()> {
        const READY: &str = r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut all_ready = true;
            for kind in ["distributedlocks", "workqueues"] {
                let listing = self.kubectl(&["get", kind, "-n", namespace, "-o", READY])?;
                all_ready &= listing.lines().all(|l| l.trim() == "True");
            }
            if all_ready {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the resources of {namespace} were not Ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The operator replica holding the Lease, if any.
    pub async fn operator_leader(&self) -> Option<usize> {
        let leases: Api<Lease> = Api::namespaced(self.api.client().ok()?, OPERATOR_NAMESPACE);
        let holder = leases.get_opt("paddock-operator").await.ok()??.spec?.holder_identity?;
        self.operators.iter().position(|o| o.pod_name() == holder)
    }
}
