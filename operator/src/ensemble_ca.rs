//! The managed ensemble's certificates from the operator's own CA (the chart's default;
//! cert-manager or Secrets of yours are the alternatives), so that a TLS ensemble needs
//! nothing installed beside Paddock.
//!
//! - **The CA**: the Secret `PADDOCK_ZOOKEEPER_CA_SECRET` (`tls.crt`, `tls.key`, `ca.crt`),
//!   made by the first replica that finds it missing (ten years; a lost create race reads
//!   the winner's), or a CA of yours put there before the install.
//! - **The servers' certificate**: the Secret `PADDOCK_ZOOKEEPER_SERVER_SECRET` (`ca.crt`,
//!   `tls.crt`, `tls.key`, the key PKCS#8) for `PADDOCK_ZOOKEEPER_SERVER_NAMES`, issued
//!   again after two thirds of `PADDOCK_ZOOKEEPER_CERT_LIFETIME`, or when the names or the
//!   CA changed. Whichever replica sees it due replaces it, guarded by the Secret's
//!   version. The servers mount it; the restart that makes them serve a renewed one is
//!   [`crate::ensemble_certs`]'s, which reads the copy of `tls.crt` written here to
//!   `PADDOCK_ZOOKEEPER_SERVER_CERT`.
//! - **The operator's own client certificate** (`CN=paddock-operator`): each replica
//!   issues its own, kept out of the API, writes it to `PADDOCK_ZK_TLS_CERT` and
//!   `PADDOCK_ZK_TLS_KEY` with the CA as `PADDOCK_ZK_TLS_CA` (the session reads them again
//!   on every connection) and renews it the same way.
//! - The CA signs the namespaces' certificates too, unless `PADDOCK_CLIENT_CA_CERT` names
//!   another one.
//!
//! Invariants: the Secrets are the truth and files follow them (a replica serves what the
//! Secret holds now, also when another replica renewed it); a file is replaced whole
//! (written aside, then renamed), so a reader never sees half of one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};

use crate::reconcile::certificate::{self, IssuingCa, RENEW_AFTER_ANNOTATION};
use crate::shared_secret::{self, Found};

/// The annotation on the servers' Secret naming what its certificate covers.
pub const NAMES_ANNOTATION: &str = "paddock.dev/server-names";
/// The operator's x509 identity.
pub const OPERATOR_COMMON_NAME: &str = "paddock-operator";
/// The longest pause between two looks at the Secrets.
const RECHECK: Duration = Duration::from_secs(30);

/// Where the operator's own CA lives and what it issues.
#[derive(Debug, Clone, clap::Args)]
pub struct EnsembleCaSettings {
    /// Secret (the operator's namespace) with the CA the operator issues the managed
    /// ensemble's certificates from, made when missing. Set, the operator writes its own
    /// client certificate to PADDOCK_ZK_TLS_CERT/KEY and the CA to PADDOCK_ZK_TLS_CA.
    #[arg(long, env = "PADDOCK_ZOOKEEPER_CA_SECRET", value_name = "PADDOCK_ZOOKEEPER_CA_SECRET")]
    pub ca_secret: Option<String>,
    /// Secret (the operator's namespace) the servers' certificate is issued into.
    #[arg(long, env = "PADDOCK_ZOOKEEPER_SERVER_SECRET", value_name = "PADDOCK_ZOOKEEPER_SERVER_SECRET")]
    pub server_secret: Option<String>,
    /// The names the servers' certificate covers (DNS names or IP addresses), comma-separated.
    #[arg(
        long,
        env = "PADDOCK_ZOOKEEPER_SERVER_NAMES",
        value_name = "PADDOCK_ZOOKEEPER_SERVER_NAMES",
        value_delimiter = ','
    )]
    pub server_names: Vec<String>,
    /// How long the servers' and the operator's certificates are valid; they are renewed
    /// after two thirds of it.
    #[arg(long, env = "PADDOCK_ZOOKEEPER_CERT_LIFETIME", value_name = "PADDOCK_ZOOKEEPER_CERT_LIFETIME", default_value = "2160h", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
}

/// The files the operator writes for its own ZooKeeper session (`PADDOCK_ZK_TLS_CA`,
/// `_CERT`, `_KEY`) and for the restart check (`PADDOCK_ZOOKEEPER_SERVER_CERT`).
#[derive(Debug, Clone, Default)]
pub struct OwnFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The copy of the servers' `tls.crt` ([`crate::ensemble_certs`] compares with it).
    pub server_cert: Option<PathBuf>,
}

/// [`OwnFiles`] with the session's three given.
#[derive(Debug, Clone)]
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    server_cert: Option<PathBuf>,
}

/// The CA and the Secrets it keeps current.
pub struct EnsembleCa {
    secrets: Api<Secret>,
    ca_secret: String,
    server_secret: String,
    server_names: Vec<String>,
    files: Files,
    /// The CA's certificate and key, PEM.
    ca_pem: String,
    ca_key_pem: String,
    ca: IssuingCa,
    /// When this replica's own certificate is due.
    own_renew_after: SystemTime,
}

impl EnsembleCaSettings {
    /// None when the operator does not issue the ensemble's certificates; an error when the
    /// settings are half given.
    pub fn checked(&self) -> anyhow::Result<Option<(&str, &str)>> {
        match (&self.ca_secret, &self.server_secret) {
            (None, None) => Ok(None),
            (Some(ca), Some(server)) => {
                anyhow::ensure!(
                    !self.server_names.is_empty(),
                    "PADDOCK_ZOOKEEPER_SERVER_NAMES: the names the servers' certificate covers (their DNS names, \
                     comma-separated) are needed with PADDOCK_ZOOKEEPER_SERVER_SECRET"
                );
                Ok(Some((ca, server)))
            }
            _ => anyhow::bail!(
                "PADDOCK_ZOOKEEPER_CA_SECRET and PADDOCK_ZOOKEEPER_SERVER_SECRET go together: the operator's CA and the \
                 Secret it issues the servers' certificate into (set both, or neither)"
            ),
        }
    }
}

impl EnsembleCa {
    /// Reads (or makes) the CA, issues what is missing or due, and writes the operator's
    /// files: after this the operator can connect. None when the settings do not ask for it.
    pub async fn start(
        settings: &EnsembleCaSettings,
        client: kube::Client,
        namespace: &str,
        files: OwnFiles,
    ) -> anyhow::Result<Option<Self>> {
        let Some((ca_secret, server_secret)) = settings.checked()? else { return Ok(None) };
        let (Some(ca), Some(cert), Some(key)) = (files.ca, files.cert, files.key) else {
            anyhow::bail!(
                "PADDOCK_ZOOKEEPER_CA_SECRET needs PADDOCK_ZK_TLS_CA, PADDOCK_ZK_TLS_CERT and PADDOCK_ZK_TLS_KEY: \
                 the files (in a writable directory) the operator writes its CA and its own certificate to"
            )
        };
        let files = Files { ca, cert, key, server_cert: files.server_cert };
        let secrets: Api<Secret> = Api::namespaced(client, namespace);
        let (ca_pem, ca_key_pem) = shared_ca(&secrets, ca_secret).await?;
        let ca = IssuingCa::new(&ca_pem, &ca_key_pem, ca_pem.clone(), settings.lifetime)
            .with_context(|| format!("the CA in Secret {namespace}/{ca_secret}"))?;
        let mut this = Self {
            secrets,
            ca_secret: ca_secret.to_owned(),
            server_secret: server_secret.to_owned(),
            server_names: settings.server_names.clone(),
            files,
            ca_pem,
            ca_key_pem,
            ca,
            own_renew_after: SystemTime::UNIX_EPOCH,
        };
        this.renew_own()?;
        // The servers' Secret may wait (an API hiccup, a Secret to fix by hand): the
        // operator runs meanwhile and tries again on every look.
        if let Err(err) = this.keep_server_secret().await {
            tracing::warn!(error = format!("{err:#}"), secret = this.server_secret, "keeping the servers' certificate");
        }
        tracing::info!(
            ca = this.ca_secret,
            servers = this.server_secret,
            "the managed ensemble's certificates come from the operator's own CA"
        );
        Ok(Some(this))
    }

    /// The CA's certificate and key, PEM: what signs the namespaces' certificates.
    pub fn ca_material(&self) -> (&str, &str) {
        (&self.ca_pem, &self.ca_key_pem)
    }

    /// Renews what is due, every [`RECHECK`] (sooner with short lifetimes), until the CA's
    /// Secret no longer holds this replica's CA (replaced or deleted by hand): then it
    /// returns, and the operator stops and is restarted with the Secret's CA, so that no
    /// replica goes on signing with a CA the others no longer use.
    pub async fn run(mut self) {
        let pause = RECHECK.min(self.ca.lifetime / 10);
        loop {
            tokio::time::sleep(pause).await;
            match self.secrets.get_opt(&self.ca_secret).await {
                Ok(secret)
                    if secret.as_ref().and_then(ca_of) != Some((self.ca_pem.clone(), self.ca_key_pem.clone())) =>
                {
                    tracing::error!(
                        secret = self.ca_secret,
                        "the CA's Secret no longer holds the CA this operator signs with: stopping, to start again \
                         with the Secret's (a CA of the servers' choosing is not switched to by itself: see the \
                         servers' Secret)"
                    );
                    return;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, secret = self.ca_secret, "reading the CA's Secret"),
            }
            if SystemTime::now() >= self.own_renew_after
                && let Err(err) = self.renew_own()
            {
                tracing::warn!(error = format!("{err:#}"), "renewing the operator's own ZooKeeper certificate");
            }
            if let Err(err) = self.keep_server_secret().await {
                tracing::warn!(
                    error = format!("{err:#}"),
                    secret = self.server_secret,
                    "keeping the servers' certificate"
                );
            }
        }
    }

    /// Issues this replica's own client certificate and writes it with the CA.
    fn renew_own(&mut self) -> anyhow::Result<()> {
        let issued = self.ca.issue_client(OPERATOR_COMMON_NAME)?;
        write_replacing(&self.files.ca, &self.ca_pem)?;
        write_replacing(&self.files.key, &issued.key_pem)?;
        write_replacing(&self.files.cert, &issued.cert_pem)?;
        self.own_renew_after = issued.renew_after;
        tracing::info!(cert = %self.files.cert.display(), "issued the operator's own ZooKeeper client certificate");
        Ok(())
    }

    /// The servers' Secret made or renewed when it is missing, due, or for other names; its
    /// `tls.crt` copied to the restart check's file. One whose `ca.crt` does not hold this
    /// CA is left alone (an error each look): switching the servers to another CA at once
    /// would leave them and every client trusting different CAs.
    async fn keep_server_secret(&self) -> anyhow::Result<()> {
        let name = &self.server_secret;
        let existing = self.secrets.get_opt(name).await.with_context(|| format!("reading Secret {name}"))?;
        let trusted = match &existing {
            None => self.ca_pem.clone(),
            Some(secret) => {
                let bundle = shared_secret::text(secret, "ca.crt").unwrap_or_default();
                anyhow::ensure!(
                    holds(&bundle, &self.ca_pem),
                    "the servers' Secret {name} holds certificates of another CA (its ca.crt does not hold the CA in \
                     Secret {}): the operator does not switch the servers' CA by itself. Add that CA to ca.crt of \
                     the servers and of the clients first, then delete Secret {name} to have one issued from it",
                    self.ca_secret
                );
                bundle
            }
        };
        let current = existing.as_ref().and_then(|s| self.current_cert(s));
        let cert_pem = match current {
            Some(cert_pem) => cert_pem,
            None => {
                let issued = self.ca.issue_server(&self.server_names)?;
                // The trust bundle as it is (it may hold a CA being rotated in beside this one).
                let mut object = server_secret(name, &trusted, &issued, &self.server_names.join(","));
                let written = match existing {
                    Some(existing) => {
                        object.metadata.resource_version = existing.metadata.resource_version;
                        self.secrets.replace(name, &PostParams::default(), &object).await
                    }
                    None => self.secrets.create(&PostParams::default(), &object).await,
                };
                match written {
                    Ok(_) => {
                        tracing::info!(secret = name, names = ?self.server_names, "issued the ZooKeeper servers' certificate")
                    }
                    // Another replica wrote first: follow it on the next look.
                    Err(kube::Error::Api(status)) if status.code == 409 => return Ok(()),
                    Err(err) => return Err(err).with_context(|| format!("writing Secret {name}")),
                }
                issued.cert_pem
            }
        };
        if let Some(path) = &self.files.server_cert {
            write_replacing(path, &cert_pem)?;
        }
        Ok(())
    }

    /// The Secret's certificate when it is still good: for these names, not due.
    fn current_cert(&self, secret: &Secret) -> Option<String> {
        let annotations = secret.metadata.annotations.as_ref()?;
        let renew_after: u64 = annotations.get(RENEW_AFTER_ANNOTATION)?.parse().ok()?;
        let names_match = annotations.get(NAMES_ANNOTATION) == Some(&self.server_names.join(","));
        let due = certificate::unix_seconds(SystemTime::now()) >= renew_after;
        (names_match && !due && shared_secret::text(secret, "tls.key").is_some())
            .then(|| shared_secret::text(secret, "tls.crt"))
            .flatten()
    }
}

/// A CA Secret's certificate and key.
fn ca_of(secret: &Secret) -> Option<(String, String)> {
    Some((shared_secret::text(secret, "tls.crt")?, shared_secret::text(secret, "tls.key")?))
}

/// Whether the PEM bundle holds the certificate `pem` (compared as DER).
fn holds(bundle: &str, pem: &str) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Ok(wanted) = CertificateDer::from_pem_slice(pem.as_bytes()) else { return false };
    CertificateDer::pem_slice_iter(bundle.as_bytes()).flatten().any(|cert| cert == wanted)
}

/// The CA all replicas share: read from its Secret, or made and stored there by whichever
/// replica comes first.
async fn shared_ca(secrets: &Api<Secret>, name: &str) -> anyhow::Result<(String, String)> {
    let read = |existing: &Secret| match ca_of(existing) {
        Some(ca) => Ok(Found::Use(ca)),
        None => anyhow::bail!(
            "Secret {name} holds no CA: it needs tls.crt and tls.key (PEM), the CA's certificate and key; \
             delete it to let the operator make one"
        ),
    };
    let make = || {
        let (cert, key) = certificate::new_ca("paddock-zookeeper-ca")?;
        let object = Secret {
            metadata: kube::api::ObjectMeta { labels: Some(shared_secret::managed_labels()), ..Default::default() },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(shared_secret::data([("tls.crt", cert.as_str()), ("tls.key", &key), ("ca.crt", &cert)])),
            ..Default::default()
        };
        Ok(((cert, key), object))
    };
    let (ca, made) = shared_secret::agreed(secrets, name, read, make).await?;
    if made {
        tracing::info!(secret = name, "made the operator's CA for the ZooKeeper ensemble");
    }
    Ok(ca)
}

fn server_secret(name: &str, ca_pem: &str, issued: &certificate::Issued, names: &str) -> Secret {
    let renew_after = certificate::unix_seconds(issued.renew_after).to_string();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            annotations: Some(
                [(RENEW_AFTER_ANNOTATION.to_owned(), renew_after), (NAMES_ANNOTATION.to_owned(), names.to_owned())]
                    .into(),
            ),
            labels: Some(shared_secret::managed_labels()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(shared_secret::data([
            ("ca.crt", ca_pem),
            ("tls.crt", &issued.cert_pem),
            ("tls.key", &issued.key_pem),
        ])),
        ..Default::default()
    }
}

/// Replaces `path` whole: written aside, then renamed over it.
fn write_replacing(path: &Path, contents: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    // Keys among them: readable by the operator alone, from the file's creation on.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(file.write(true).create_new(true), 0o600);
    let write = |mut file: std::fs::File| std::io::Write::write_all(&mut file, contents.as_bytes());
    file.open(&tmp).and_then(write).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
