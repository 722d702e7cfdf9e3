//! TLS to ZooKeeper: the CA that signed the servers' certificates and, optionally, this
//! client's certificate and key, all PEM files (`PADDOCK_ZK_TLS_CA`, `PADDOCK_ZK_TLS_CERT`,
//! `PADDOCK_ZK_TLS_KEY` in the sidecar and the operator alike).
//!
//! Invariants:
//! - [`ZkTls::load`] checks everything a connection would trip over later (files readable
//!   and PEM, a certificate with its key and the key matching it, the certificate not
//!   expired) and names the setting at fault, so a bad setting fails at start.
//! - Server names are always verified: each host of the connect string must be named by
//!   its server's certificate (an IP address as an IP SAN).
//! - The files are read again every [`RELOAD_INTERVAL`]; changed and valid, they replace
//!   the loaded certificates, which every later TLS connection (a reconnect within the
//!   session or a new session) uses. Changed but invalid, they are logged and the previous
//!   certificates stay (a half-written rotation does not cut the client off).

mod probe;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_util::sync::CancellationToken;

pub use self::probe::{diagnose, served_certificate, servers};
use crate::zk;

pub const CA_SETTING: &str = "PADDOCK_ZK_TLS_CA";
pub const CERT_SETTING: &str = "PADDOCK_ZK_TLS_CERT";
pub const KEY_SETTING: &str = "PADDOCK_ZK_TLS_KEY";

/// How often the files are read again for a rotated certificate.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// The TLS settings as given: paths of PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    /// This client's certificate and key; both or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A TLS setting that cannot be used: which one, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}{path}: {problem}; {fix}")]
pub struct TlsError {
    pub setting: &'static str,
    path: String,
    problem: String,
    fix: String,
}

impl TlsError {
    fn new(setting: &'static str, path: Option<&Path>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        let path = path.map(|p| format!(" ({})", p.display())).unwrap_or_default();
        Self { setting, path, problem: problem.into(), fix: fix.into() }
    }
}

impl TlsFiles {
    /// The settings, or None when none is set (plain connections).
    pub fn from_settings(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(TlsError::new(
                    CERT_SETTING,
                    Some(&cert),
                    format!("a client certificate without its key ({KEY_SETTING} is not set)"),
                    format!("set {KEY_SETTING} to the certificate's private key (PEM), or unset both"),
                ));
            }
            (None, Some(key)) => {
                return Err(TlsError::new(
                    KEY_SETTING,
                    Some(&key),
                    format!("a client key without its certificate ({CERT_SETTING} is not set)"),
                    format!("set {CERT_SETTING} to the client certificate (PEM), or unset both"),
                ));
            }
        };
        match ca {
            Some(ca) => Ok(Some(Self { ca, identity })),
            None if identity.is_some() => Err(TlsError::new(
                CA_SETTING,
                None,
                format!("not set, but {CERT_SETTING} and {KEY_SETTING} are"),
                "set it to the CA certificate (PEM) that signed the ZooKeeper servers' certificates",
            )),
            None => Ok(None),
        }
    }
}

/// The files' contents as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pems {
    ca: String,
    identity: Option<(String, String)>,
}

/// Loaded TLS settings, shared by every connection of a session; cheap to clone.
#[derive(Debug, Clone)]
pub struct ZkTls {
    files: TlsFiles,
    certs: zk::TlsDynamicCerts,
    state: Arc<Mutex<Loaded>>,
}

#[derive(Debug)]
struct Loaded {
    pems: Pems,
    /// The same settings as a rustls config, for [`diagnose`]'s own handshake.
    probe: Arc<rustls::ClientConfig>,
}

impl ZkTls {
    /// Reads and checks the files; an error names the setting at fault.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let pems = read(&files)?;
        let (certs, probe) = check(&files, &pems)?;
        let state = Arc::new(Mutex::new(Loaded { pems, probe }));
        Ok(Self { files, certs: zk::TlsDynamicCerts::new(certs), state })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Options for `Connector::with_tls`: they follow every reload.
    pub fn options(&self) -> zk::TlsOptions {
        zk::TlsOptions::new().with_certs(self.certs.clone())
    }

    fn probe_config(&self) -> Arc<rustls::ClientConfig> {
        self.state.lock().expect("not poisoned").probe.clone()
    }

    /// Reads the files again; returns whether they changed and were taken. Changed but
    /// invalid files are an error and the previous certificates stay.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let pems = read(&self.files)?;
        if self.state.lock().expect("not poisoned").pems == pems {
            return Ok(false);
        }
        let (certs, probe) = check(&self.files, &pems)?;
        self.certs.update(certs);
        *self.state.lock().expect("not poisoned") = Loaded { pems, probe };
        Ok(true)
    }

    /// Reloads every `interval` until `stop`.
    pub async fn follow_files(self, interval: Duration, stop: CancellationToken) {
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
            match self.reload() {
                Ok(true) => {
                    tracing::info!("TLS files changed; new ZooKeeper connections use the new certificates");
                    last_error = None;
                }
                Ok(false) => last_error = None,
                Err(err) => {
                    if last_error.as_ref() != Some(&err) {
                        tracing::warn!(error = %err, "TLS files changed but cannot be used; keeping the previous ones");
                    }
                    last_error = Some(err);
                }
            }
        }
    }
}

fn read_file(setting: &'static str, path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| {
        TlsError::new(setting, Some(path), format!("cannot read it: {e}"), "mount the PEM file there, or fix the path")
    })
}

fn read(files: &TlsFiles) -> Result<Pems, TlsError> {
    let ca = read_file(CA_SETTING, &files.ca)?;
    let identity = match &files.identity {
        Some((cert, key)) => Some((read_file(CERT_SETTING, cert)?, read_file(KEY_SETTING, key)?)),
        None => None,
    };
    Ok(Pems { ca, identity })
}

fn not_pem(setting: &'static str, path: &Path, what: &str) -> TlsError {
    TlsError::new(
        setting,
        Some(path),
        format!("no {what} in it (not PEM?)"),
        format!("give a PEM file with the {what}"),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks the contents; returns them as the ZooKeeper client's certificates and as a
/// rustls config for probes.
fn check(files: &TlsFiles, pems: &Pems) -> Result<(zk::TlsCerts, Arc<rustls::ClientConfig>), TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pems.ca.as_bytes()).flatten() {
        roots.add(cert).map_err(|e| {
            TlsError::new(CA_SETTING, Some(&files.ca), format!("not a usable CA certificate: {e}"), "give the CA's PEM")
        })?;
    }
    if roots.is_empty() {
        return Err(not_pem(CA_SETTING, &files.ca, "CA certificate"));
    }
    let ca =
        zk::TlsCa::from_pem(&pems.ca).map_err(|e| not_pem(CA_SETTING, &files.ca, &format!("CA certificate ({e})")))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots.clone());
    let mut certs = zk::TlsCerts::builder().with_ca(ca);
    let config = match (&files.identity, &pems.identity) {
        (Some((cert_path, key_path)), Some((cert_pem, key_pem))) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).flatten().collect();
            if chain.is_empty() {
                return Err(not_pem(CERT_SETTING, cert_path, "certificate"));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|_| not_pem(KEY_SETTING, key_path, "private key"))?;
            check_validity(cert_path, &chain, roots)?;
            let config = builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsError::new(
                    KEY_SETTING,
                    Some(key_path),
                    format!("not the key of {CERT_SETTING}'s certificate ({e})"),
                    "give the key the certificate was issued for",
                )
            })?;
            let identity = zk::TlsIdentity::from_pem(cert_pem, key_pem)
                .map_err(|e| TlsError::new(CERT_SETTING, Some(cert_path), e.to_string(), "give a PEM certificate"))?;
            certs = certs.with_identity(identity);
            config
        }
        _ => builder.with_no_client_auth(),
    };
    let certs = certs.build().expect("a CA is set");
    Ok((certs, Arc::new(config)))
}

/// Fails when the client certificate has expired or is not valid yet. Whether the servers
/// trust its issuer only they can tell; that is not checked here.
fn check_validity(
    path: &Path,
    chain: &[CertificateDer<'static>],
    roots: rustls::RootCertStore,
) -> Result<(), TlsError> {
    use rustls::CertificateError as E;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .expect("the root store is not empty");
    let problem = match verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()) {
        Err(rustls::Error::InvalidCertificate(E::ExpiredContext { not_after, .. })) => {
            format!("the client certificate expired at {} (Unix time)", not_after.as_secs())
        }
        Err(rustls::Error::InvalidCertificate(E::Expired)) => "the client certificate has expired".to_owned(),
        Err(rustls::Error::InvalidCertificate(E::NotValidYet | E::NotValidYetContext { .. })) => {
            "the client certificate is not valid yet (is the clock right?)".to_owned()
        }
        _ => return Ok(()),
    };
    Err(TlsError::new(CERT_SETTING, Some(path), problem, "issue a new certificate and key, then restart"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_an_identity_names_the_missing_setting() {
        let p = |s: &str| Some(PathBuf::from(s));
        let err = TlsFiles::from_settings(p("ca.pem"), p("c.pem"), None).unwrap_err();
        assert!(err.to_string().starts_with(CERT_SETTING) && err.to_string().contains(KEY_SETTING), "{err}");
        let err = TlsFiles::from_settings(p("ca.pem"), None, p("k.pem")).unwrap_err();
        assert!(err.to_string().starts_with(KEY_SETTING), "{err}");
        let err = TlsFiles::from_settings(None, p("c.pem"), p("k.pem")).unwrap_err();
        assert!(err.to_string().starts_with(CA_SETTING), "{err}");
        assert_eq!(TlsFiles::from_settings(None, None, None).unwrap(), None);
    }

    #[test]
    fn unreadable_and_non_pem_files_name_their_setting() {
        let dir = std::env::temp_dir().join(format!("paddock-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let missing = ZkTls::load(TlsFiles { ca: dir.join("missing.pem"), identity: None }).unwrap_err();
        assert!(missing.to_string().starts_with(CA_SETTING) && missing.to_string().contains("cannot read"));
        let junk_ca = ZkTls::load(TlsFiles { ca: junk.clone(), identity: None }).unwrap_err();
        assert!(junk_ca.to_string().starts_with(CA_SETTING) && junk_ca.to_string().contains("not PEM"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
