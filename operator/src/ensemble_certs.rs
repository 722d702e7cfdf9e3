//! Keeps the managed ensemble serving its current certificate.
//!
//! ZooKeeper 3.8 reads its client port's key store once, at start: a renewed certificate
//! (cert-manager's, or a Secret of yours updated in place) is served only after the server
//! restarts, and a server left alone serves the old one until it expires — then no client
//! can connect. So the leader looks, every [`RollSettings::check_interval`], at the
//! certificate each server presents in a TLS handshake, and when one presents another
//! than the servers' Secret holds, it restarts the ensemble's StatefulSet the way
//! `kubectl rollout restart` does (an annotation of the pod template). The StatefulSet
//! controller then replaces one server at a time, each once the one before is ready, and
//! the PodDisruptionBudget keeps a quorum; clients reconnect within their sessions.
//!
//! Invariants:
//! - The decision is made from what the servers serve, not from a record of past
//!   restarts: a server restarted before its Secret's volume was refreshed, or an operator
//!   started after a renewal, is still found and restarted.
//! - One restart per certificate: while the template names the Secret's certificate, the
//!   rollout is left to finish; only after [`PATIENCE`] with a server still serving
//!   another is the ensemble restarted again.
//! - A server that cannot be reached is not judged (it is being restarted, or down).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::leader::Leadership;

/// The pod-template annotation naming the certificate (its SHA-256, hex) a restart was for.
pub const CERT_ANNOTATION: &str = "paddock.dev/server-cert-sha256";
/// The pod-template annotation with the time of that restart (RFC 3339).
pub const RESTARTED_AT_ANNOTATION: &str = "paddock.dev/restarted-at";
/// How long a restart for a certificate is left to finish before the ensemble is restarted
/// again for it.
pub const PATIENCE: Duration = Duration::from_secs(600);

/// Where the operator finds the managed ensemble and its certificate.
#[derive(Debug, Clone, clap::Args)]
pub struct RollSettings {
    /// The StatefulSet of the managed ensemble (in the operator's namespace), restarted
    /// when a server serves another certificate than `PADDOCK_ZOOKEEPER_SERVER_CERT`.
    #[arg(long, env = "PADDOCK_ZOOKEEPER_STATEFULSET", value_name = "PADDOCK_ZOOKEEPER_STATEFULSET")]
    pub statefulset: Option<String>,
    /// PEM file of the certificate the servers should serve (their Secret's `tls.crt`,
    /// mounted: the kubelet refreshes it when the Secret changes).
    #[arg(long, env = "PADDOCK_ZOOKEEPER_SERVER_CERT", value_name = "PADDOCK_ZOOKEEPER_SERVER_CERT")]
    pub server_cert: Option<PathBuf>,
    /// Each server's `host:port`, comma-separated (default: the hosts of PADDOCK_ZOOKEEPER).
    #[arg(long, env = "PADDOCK_ZOOKEEPER_SERVERS", value_name = "PADDOCK_ZOOKEEPER_SERVERS")]
    pub servers: Option<String>,
    /// How often the servers' certificates are looked at.
    #[arg(long, env = "PADDOCK_ZOOKEEPER_CERT_CHECK", value_name = "PADDOCK_ZOOKEEPER_CERT_CHECK", default_value = "60s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,
}

/// The settings checked: what to look at and what to restart.
#[derive(Debug, Clone)]
pub struct EnsembleCerts {
    statefulset: String,
    server_cert: PathBuf,
    servers: Vec<(String, u16)>,
    pub check_interval: Duration,
}

impl RollSettings {
    /// None when the operator does not manage the ensemble's restarts (no StatefulSet
    /// named); an error when the settings are half given.
    pub fn checked(self, connect: &str) -> anyhow::Result<Option<EnsembleCerts>> {
        let (statefulset, server_cert) = match (self.statefulset, self.server_cert) {
            (None, None) => return Ok(None),
            (Some(statefulset), Some(server_cert)) => (statefulset, server_cert),
            _ => anyhow::bail!(
                "PADDOCK_ZOOKEEPER_STATEFULSET and PADDOCK_ZOOKEEPER_SERVER_CERT go together: the ensemble to restart \
                 and the certificate its servers should serve (set both, or neither)"
            ),
        };
        let list = self.servers.as_deref().unwrap_or(connect);
        let servers = paddock_recipes::tls::servers(list).ok_or_else(|| {
            anyhow::anyhow!("PADDOCK_ZOOKEEPER_SERVERS {list:?}: give each server as host:port, comma-separated")
        })?;
        Ok(Some(EnsembleCerts { statefulset, server_cert, servers, check_interval: self.check_interval }))
    }
}

/// What one look found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// Every server that answered serves the Secret's certificate.
    Current,
    /// Some serve another; a restart for this certificate is under way.
    Restarting { stale: Vec<String> },
    /// Some serve another: the ensemble was restarted for it now.
    Restarted { stale: Vec<String> },
}

impl EnsembleCerts {
    /// Runs [`Self::run`] in a task of its own, until the guard it returns is dropped.
    pub fn spawn(self, client: kube::Client, namespace: String, leadership: Leadership) -> DropGuard {
        let stop = CancellationToken::new();
        let guard = stop.clone().drop_guard();
        tokio::spawn(async move {
            tokio::select! {
                _ = self.run(client, &namespace, &leadership) => {}
                _ = stop.cancelled() => {}
            }
        });
        guard
    }

    /// Looks every [`Self::check_interval`] while this replica leads, until dropped.
    pub async fn run(&self, client: kube::Client, namespace: &str, leadership: &Leadership) {
        let api: Api<StatefulSet> = Api::namespaced(client, namespace);
        loop {
            tokio::time::sleep(self.check_interval).await;
            if !leadership.is_leading() {
                continue;
            }
            match self.look(&api).await {
                Ok(Look::Current) => tracing::debug!("every ZooKeeper server serves the current certificate"),
                Ok(Look::Restarting { stale }) => {
                    tracing::info!(
                        ?stale,
                        "ZooKeeper servers still serve a replaced certificate; their restart is under way"
                    )
                }
                Ok(Look::Restarted { stale }) => tracing::info!(
                    ?stale,
                    statefulset = self.statefulset,
                    "ZooKeeper servers serve a replaced certificate (ZooKeeper reads it only at start): \
                     restarting the ensemble one server at a time"
                ),
                Err(err) => tracing::warn!(error = format!("{err:#}"), "checking the ZooKeeper servers' certificates"),
            }
        }
    }

    /// One look: the servers' certificates against the Secret's, and a restart if needed.
    pub async fn look(&self, api: &Api<StatefulSet>) -> anyhow::Result<Look> {
        let expected = self.expected()?;
        let mut stale = Vec::new();
        for (host, port) in &self.servers {
            match paddock_recipes::tls::served_certificate(host, *port).await {
                Some(served) if served != expected => stale.push(format!("{host}:{port}")),
                _ => {}
            }
        }
        if stale.is_empty() {
            return Ok(Look::Current);
        }
        let fingerprint = sha256_hex(&expected);
        let statefulset = api.get(&self.statefulset).await.map_err(|err| {
            anyhow::anyhow!("reading StatefulSet {} (to restart it for a new certificate): {err}", self.statefulset)
        })?;
        let annotations = statefulset.spec.template.metadata.and_then(|m| m.annotations);
        let annotation = |key: &str| annotations.as_ref().and_then(|a| a.get(key)).cloned();
        let restarted_at = annotation(RESTARTED_AT_ANNOTATION)
            .and_then(|at: String| humantime::parse_rfc3339(&at).ok())
            .and_then(|at| at.elapsed().ok());
        if annotation(CERT_ANNOTATION).as_deref() == Some(fingerprint.as_str())
            && restarted_at.is_some_and(|ago| ago < PATIENCE)
        {
            return Ok(Look::Restarting { stale });
        }
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let patch = serde_json::json!({
            "spec": {"template": {"metadata": {"annotations": {
                CERT_ANNOTATION: fingerprint,
                RESTARTED_AT_ANNOTATION: now,
            }}}}
        });
        api.patch(&self.statefulset, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|err| {
            anyhow::anyhow!("restarting StatefulSet {} for a new certificate: {err}", self.statefulset)
        })?;
        Ok(Look::Restarted { stale })
    }

    /// The certificate the servers should serve (DER): the first of the file.
    fn expected(&self) -> anyhow::Result<Vec<u8>> {
        let path = &self.server_cert;
        let pem = std::fs::read(path)
            .map_err(|err| anyhow::anyhow!("PADDOCK_ZOOKEEPER_SERVER_CERT ({}): {err}", path.display()))?;
        let cert = CertificateDer::pem_slice_iter(&pem).next().and_then(Result::ok).ok_or_else(|| {
            anyhow::anyhow!("PADDOCK_ZOOKEEPER_SERVER_CERT ({}): no PEM certificate in it", path.display())
        })?;
        Ok(cert.to_vec())
    }
}

/// SHA-256 of `bytes`, hex: the name of a certificate in an annotation.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_go_together() {
        let settings = |statefulset: Option<&str>, cert: Option<&str>| RollSettings {
            statefulset: statefulset.map(str::to_owned),
            server_cert: cert.map(PathBuf::from),
            servers: None,
            check_interval: Duration::from_secs(60),
        };
        assert!(settings(None, None).checked("a:1").unwrap().is_none());
        assert!(settings(Some("zk"), None).checked("a:1").is_err());
        assert!(settings(None, Some("/c")).checked("a:1").is_err());
        let checked = settings(Some("zk"), Some("/c")).checked("a:1,b:2").unwrap().unwrap();
        assert_eq!(checked.servers.len(), 2);
    }
}
