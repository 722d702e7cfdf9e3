//! Why a connection failed. The ZooKeeper client reports only "no available hosts" when
//! every server refused it, TLS or not; after such a failure the session makes one TLS
//! handshake of its own with the first server and says what it found: the server's
//! certificate not signed by the CA, not naming the host, the server refusing this
//! client's certificate, or — without TLS settings — the port serving TLS only.
//!
//! [`served_certificate`] reads the certificate a server presents, without trusting or
//! completing anything: what the operator compares with the servers' Secret to tell that
//! a server still serves a certificate replaced since it started.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use super::{CA_SETTING, CERT_SETTING, ZkTls};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// What the plain-text probe's verifier answers: the server did present a certificate.
const SPEAKS_TLS: &str = "paddock probe: the server presented a certificate";

/// A sentence on why connecting to the first host of `connect` fails, when a handshake
/// tells; None when it does not (the server is down, or TLS is fine).
pub async fn diagnose(tls: Option<&ZkTls>, connect: &str) -> Option<String> {
    let (host, port) = first_host(connect)?;
    let config = match tls {
        Some(tls) => tls.probe_config(),
        None => plain_probe_config(),
    };
    let with_tls = tls.is_some();
    tokio::task::spawn_blocking(move || {
        let outcome = handshake(config, &host, port);
        explain(with_tls, &host, port, outcome)
    })
    .await
    .ok()
    .flatten()
}

/// The certificate (DER) the server at `host:port` presents in a TLS handshake; None when
/// it cannot be reached or presents none (it does not serve TLS). The handshake stops
/// once the certificate is seen: no client certificate is sent and nothing is trusted.
pub async fn served_certificate(host: &str, port: u16) -> Option<Vec<u8>> {
    let (config, seen) = capture_config();
    let host = host.to_owned();
    tokio::task::spawn_blocking(move || {
        handshake(config, &host, port);
        seen.lock().expect("not poisoned").take()
    })
    .await
    .ok()
    .flatten()
}

/// The server entries of a connect string: `[tcp+tls://]host:port[,...][/chroot]`.
fn server_entries(connect: &str) -> impl Iterator<Item = &str> {
    connect.split('/').find(|s| !s.is_empty() && !s.ends_with(':')).into_iter().flat_map(|list| list.split(','))
}

/// Host and port of one entry, `host:port` (`[v6]:port` too).
fn host_port(entry: &str) -> Option<(String, u16)> {
    let (host, port) = entry.trim().rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

/// Host and port of the first server of a connect string.
fn first_host(connect: &str) -> Option<(String, u16)> {
    host_port(server_entries(connect).next()?)
}

/// Host and port of every server of a connect string; None when one is not `host:port`
/// or there is none.
pub fn servers(connect: &str) -> Option<Vec<(String, u16)>> {
    server_entries(connect).map(host_port).collect::<Option<Vec<_>>>().filter(|servers| !servers.is_empty())
}

/// What a handshake came to.
enum Outcome {
    /// No TCP connection: nothing TLS can tell.
    Unreachable,
    Failed(Error),
    /// The handshake failed below TLS (the server closed or reset the connection).
    Io(std::io::Error),
    /// Done, and the server kept the connection open for a moment after.
    Accepted,
}

fn handshake(config: Arc<rustls::ClientConfig>, host: &str, port: u16) -> Outcome {
    let Some(addr) = (host, port).to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return Outcome::Unreachable;
    };
    let Ok(mut socket) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return Outcome::Unreachable;
    };
    let _ = socket.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = socket.set_write_timeout(Some(PROBE_TIMEOUT));
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return Outcome::Unreachable;
    };
    let mut conn = match rustls::ClientConnection::new(config, name) {
        Ok(conn) => conn,
        Err(err) => return Outcome::Failed(err),
    };
    while conn.is_handshaking() {
        if let Err(err) = conn.complete_io(&mut socket) {
            return io_outcome(err);
        }
    }
    // With TLS 1.3 the server judges the client's certificate after the client is done:
    // a refusal arrives as an alert on the first read.
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    let mut byte = [0u8; 1];
    match rustls::Stream::new(&mut conn, &mut socket).read(&mut byte) {
        Ok(0) => Outcome::Io(std::io::ErrorKind::UnexpectedEof.into()),
        Err(err) if !matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            io_outcome(err)
        }
        _ => Outcome::Accepted,
    }
}

fn io_outcome(err: std::io::Error) -> Outcome {
    match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(tls) => Outcome::Failed(tls.clone()),
        None => Outcome::Io(err),
    }
}

fn explain(with_tls: bool, host: &str, port: u16, outcome: Outcome) -> Option<String> {
    let at = format!("{host}:{port}");
    if !with_tls {
        return match outcome {
            Outcome::Failed(Error::General(m)) if m == SPEAKS_TLS => Some(format!(
                "{at} serves TLS only: set {CA_SETTING} to the CA that signed the servers' certificates \
                 (and {CERT_SETTING}/PADDOCK_ZK_TLS_KEY when they require client certificates)"
            )),
            _ => None,
        };
    }
    let what = match outcome {
        Outcome::Unreachable | Outcome::Accepted => return None,
        Outcome::Io(err) => format!(
            "the TLS connection to {at} failed ({err}): does it serve TLS on this port, and does it accept \
             this client's certificate ({CERT_SETTING})?"
        ),
        Outcome::Failed(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "{at}'s certificate is not signed by the CA of {CA_SETTING}: refusing the server \
             (give the CA that signed the servers' certificates)"
        ),
        Outcome::Failed(Error::InvalidCertificate(
            e @ (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
        )) => format!("{at}'s certificate does not name {host} ({e:?}): connect by a name its certificate holds"),
        Outcome::Failed(Error::InvalidCertificate(e)) => format!("{at}'s certificate is refused: {e:?}"),
        Outcome::Failed(e @ Error::AlertReceived(_)) => {
            format!("{at} refused the TLS connection ({e}): does it accept this client's certificate ({CERT_SETTING})?")
        }
        Outcome::Failed(e) => format!("the TLS handshake with {at} failed: {e}"),
    };
    Some(what)
}

/// A config for probing a server without TLS settings: see [`capture_config`].
fn plain_probe_config() -> Arc<rustls::ClientConfig> {
    capture_config().0
}

/// A config whose verifier records the certificate the server presents and refuses it
/// (with [`SPEAKS_TLS`]), so the probe never carries data; and where it records it.
fn capture_config() -> (Arc<rustls::ClientConfig>, Seen) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = Arc::new(Mutex::new(None));
    let verifier = Arc::new(CaptureAndRefuse { provider: provider.clone(), seen: seen.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    (Arc::new(config), seen)
}

/// Where [`CaptureAndRefuse`] puts the certificate it was shown (DER).
type Seen = Arc<Mutex<Option<Vec<u8>>>>;

#[derive(Debug)]
struct CaptureAndRefuse {
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Seen,
}

impl ServerCertVerifier for CaptureAndRefuse {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        *self.seen.lock().expect("not poisoned") = Some(end_entity.to_vec());
        Err(Error::General(SPEAKS_TLS.to_owned()))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General(SPEAKS_TLS.to_owned()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General(SPEAKS_TLS.to_owned()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_of_connect_strings() {
        assert_eq!(first_host("a:1,b:2/chroot"), Some(("a".to_owned(), 1)));
        assert_eq!(first_host("tcp+tls://127.0.0.1:2281,x:1"), Some(("127.0.0.1".to_owned(), 2281)));
        assert_eq!(first_host("nohost"), None);
    }

    #[test]
    fn servers_of_connect_strings() {
        assert_eq!(servers("a:1,b:2/chroot"), Some(vec![("a".to_owned(), 1), ("b".to_owned(), 2)]));
        assert_eq!(servers("tcp+tls://127.0.0.1:2281"), Some(vec![("127.0.0.1".to_owned(), 2281)]));
        assert_eq!(servers("[::1]:2181"), Some(vec![("::1".to_owned(), 2181)]));
        assert_eq!(servers("nohost"), None);
        assert_eq!(servers("a:1,b"), None);
    }
}
