//! Certificates for an ensemble that serves TLS only: a CA of the test's own, a certificate
//! per server (SANs 127.0.0.1, localhost and the server's address) in PEM key stores as
//! ZooKeeper 3.8 reads them, and client certificates with a chosen subject (what
//! ZooKeeper's `x509` scheme takes as the identity).
//!
//! Layout under the ensemble's directory: `tls/ca.pem` (the trust store of every server
//! and client; its key `tls/ca.key`), `server-N/keystore.pem` (certificate and key in one file), and
//! `tls/clients/<name>.crt|.key`.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate authority made by the test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("subject", &self.cert.params().distinguished_name).finish_non_exhaustive()
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key, PEM (PKCS#8): what a CA Secret holds as `tls.key`.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A server certificate naming 127.0.0.1, localhost and `host` (no extended key usage,
    /// so the quorum may use it as a client certificate too).
    pub fn issue_server(&self, host: IpAddr) -> Result<Issued> {
        self.issue_servers(&[host], &format!("zookeeper-{host}"))
    }

    /// One server certificate for all of `hosts` (and 127.0.0.1, localhost), as a chart's
    /// ensemble shares one; `common_name` tells certificates apart.
    pub fn issue_servers(&self, hosts: &[IpAddr], common_name: &str) -> Result<Issued> {
        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        names.extend(hosts.iter().filter(|h| !h.is_loopback()).map(IpAddr::to_string));
        names.dedup();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        self.sign(params)
    }

    /// A client certificate with `subject`, written as ZooKeeper's x509 scheme will name it
    /// (`CN=name,O=org`: RFC 2253, the most specific part first); `expired` makes one whose
    /// validity ended in 2001.
    pub fn issue_client(&self, subject: &str, expired: bool) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = parse_subject(subject)?;
        if expired {
            (params.not_before, params.not_after) =
                (rcgen::date_time_ymd(2000, 1, 1), rcgen::date_time_ymd(2001, 1, 1));
        }
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn parse_subject(subject: &str) -> Result<DistinguishedName> {
    let mut name = DistinguishedName::new();
    // RFC 2253, which ZooKeeper's x509 ids follow, writes the last RDN first.
    for part in subject.split(',').rev() {
        let (key, value) = part.split_once('=').with_context(|| format!("subject part {part:?} is not KEY=value"))?;
        let key = match key.trim() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "L" => DnType::LocalityName,
            other => bail!("subject key {other:?}: use CN, O, OU, C or L"),
        };
        name.push(key, value.trim());
    }
    Ok(name)
}

/// A client certificate written to files, as a sidecar's settings name them.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub subject: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub issued: Issued,
}

impl ClientCert {
    /// The sidecar's (or operator's) environment for this certificate and `ca`.
    pub fn env(&self, ca: &Path) -> Vec<(String, String)> {
        vec![
            ("PADDOCK_ZK_TLS_CA".to_owned(), ca.display().to_string()),
            ("PADDOCK_ZK_TLS_CERT".to_owned(), self.cert.display().to_string()),
            ("PADDOCK_ZK_TLS_KEY".to_owned(), self.key.display().to_string()),
        ]
    }
}

/// The TLS side of a running ensemble: its CA, and the testkit's own client certificate
/// (`CN=paddock-testkit`) for four-letter words and admin connections.
#[derive(Debug)]
pub struct EnsembleTls {
    ca: TestCa,
    dir: PathBuf,
    admin: ClientCert,
    probe: Arc<rustls::ClientConfig>,
}

impl EnsembleTls {
    pub(crate) fn create(ensemble_dir: &Path) -> Result<Self> {
        let dir = ensemble_dir.join("tls");
        fs::create_dir_all(dir.join("clients"))?;
        let ca = TestCa::new("paddock-test-ca")?;
        fs::write(dir.join("ca.pem"), ca.pem())?;
        fs::write(dir.join("ca.key"), ca.key_pem())?;
        let admin = write_client(&dir, "testkit", "CN=paddock-testkit", ca.issue_client("CN=paddock-testkit", false)?)?;
        let probe = rustls_config(&ca.pem(), &admin.issued)?;
        Ok(Self { ca, dir, admin, probe })
    }

    /// The CA's PEM file: `PADDOCK_ZK_TLS_CA`, and every server's trust store.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA's private key (PEM file): what an operator signs namespace certificates
    /// with (`PADDOCK_CLIENT_CA_KEY`, with [`Self::ca_path`] as `PADDOCK_CLIENT_CA_CERT`),
    /// so that every server trusts them.
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Issues a client certificate with `subject` (`CN=...,O=...`), written as
    /// `tls/clients/<name>.crt` and `.key`.
    pub fn issue_client(&self, name: &str, subject: &str) -> Result<ClientCert> {
        write_client(&self.dir, name, subject, self.ca.issue_client(subject, false)?)
    }

    /// As `issue_client`, with a certificate that expired long ago.
    pub fn issue_expired_client(&self, name: &str, subject: &str) -> Result<ClientCert> {
        write_client(&self.dir, name, subject, self.ca.issue_client(subject, true)?)
    }

    /// The testkit's own client certificate.
    pub fn admin(&self) -> &ClientCert {
        &self.admin
    }

    /// Options for a ZooKeeper client with `cert` (`Connector::with_tls`, then `secure_connect`).
    pub fn zk_options(&self, cert: &ClientCert) -> Result<zookeeper_client::TlsOptions> {
        zookeeper_client::TlsOptions::new()
            .with_pem_ca(&self.ca.pem())?
            .with_pem_identity(&cert.issued.cert_pem, &cert.issued.key_pem)
            .context("client certificate for ZooKeeper")
    }

    /// TLS for a fault proxy that stands between `client`'s owner and the servers and must
    /// read ZooKeeper's frames: it serves its clients a certificate of its own from this
    /// CA (for 127.0.0.1, and it asks for theirs, as the servers do), and connects to each
    /// server presenting `client`'s certificate, so the servers see the same x509 identity
    /// as without the proxy.
    pub fn proxy_tls(&self, client: &ClientCert) -> Result<crate::fault_proxy::ProxyTls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.pem().as_bytes()) {
            roots.add(cert?)?;
        }
        let roots = Arc::new(roots);
        let own = self.ca.issue_server(IpAddr::from([127, 0, 0, 1]))?;
        let chain = CertificateDer::pem_slice_iter(own.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(own.key_pem.as_bytes())?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        let upstream = rustls_config(&self.ca.pem(), &client.issued)?;
        Ok(crate::fault_proxy::ProxyTls { server: Arc::new(server), upstream })
    }

    /// Writes one server's key store (certificate and key, PEM) into its directory;
    /// returns its path.
    pub(crate) fn write_server_store(&self, server_dir: &Path, host: IpAddr) -> Result<PathBuf> {
        self.replace_server_store(server_dir, &self.ca.issue_server(host)?)
    }

    /// Writes `issued` as one server's key store (certificate and key in one file),
    /// replacing any it had (a server reads its key store only at start); returns its path.
    pub(crate) fn replace_server_store(&self, server_dir: &Path, issued: &Issued) -> Result<PathBuf> {
        let path = server_dir.join("keystore.pem");
        let tmp = server_dir.join(".keystore.pem.tmp");
        fs::write(&tmp, format!("{}{}", issued.key_pem, issued.cert_pem))?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// A four-letter word over TLS, with the testkit's certificate.
    pub(crate) async fn four_letter_word(&self, addr: SocketAddr, word: &str) -> Result<String> {
        let (config, word) = (self.probe.clone(), word.to_owned());
        tokio::task::spawn_blocking(move || four_letter_word_tls(config, addr, &word)).await?
    }

    /// The lines of zoo.cfg that make a server serve TLS only, quorum included.
    pub(crate) fn server_config(&self, keystore: &Path, secure_port: u16, host: IpAddr) -> String {
        let (keystore, truststore) = (keystore.display(), self.ca_path().display().to_string());
        format!(
            "secureClientPort={secure_port}\n\
             secureClientPortAddress={host}\n\
             serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
             ssl.keyStore.location={keystore}\n\
             ssl.keyStore.type=PEM\n\
             ssl.trustStore.location={truststore}\n\
             ssl.trustStore.type=PEM\n\
             ssl.clientAuth=need\n\
             authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider\n\
             sslQuorum=true\n\
             ssl.quorum.keyStore.location={keystore}\n\
             ssl.quorum.keyStore.type=PEM\n\
             ssl.quorum.trustStore.location={truststore}\n\
             ssl.quorum.trustStore.type=PEM\n"
        )
    }
}

fn write_client(dir: &Path, name: &str, subject: &str, issued: Issued) -> Result<ClientCert> {
    let (cert, key) = (dir.join(format!("clients/{name}.crt")), dir.join(format!("clients/{name}.key")));
    fs::write(&cert, &issued.cert_pem)?;
    fs::write(&key, &issued.key_pem)?;
    Ok(ClientCert { subject: subject.to_owned(), cert, key, issued })
}

fn rustls_config(ca_pem: &str, client: &Issued) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A four-letter word over TLS to a server of `ca`, presenting `client` (for servers not
/// started by [`crate::Ensemble`], e.g. the chart's configuration run by its test).
pub async fn four_letter_word(ca_pem: &str, client: &Issued, addr: SocketAddr, word: &str) -> Result<String> {
    let (config, word) = (rustls_config(ca_pem, client)?, word.to_owned());
    tokio::task::spawn_blocking(move || four_letter_word_tls(config, addr, &word)).await?
}

fn four_letter_word_tls(config: Arc<rustls::ClientConfig>, addr: SocketAddr, word: &str) -> Result<String> {
    let mut socket = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut conn = rustls::ClientConnection::new(config, ServerName::from(addr.ip()))?;
    let mut stream = rustls::Stream::new(&mut conn, &mut socket);
    stream.write_all(word.as_bytes())?;
    let mut reply = Vec::new();
    // The server closes the connection after its reply, not always with a close_notify.
    match stream.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
        Err(err) => return Err(err.into()),
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}
