//! Certificates the operator signs. Namespace identities: with the CA it is given
//! (`PADDOCK_CLIENT_CA_CERT`/`_KEY`, which the ZooKeeper servers trust) or its own
//! (`crate::ensemble_ca`), a client
//! certificate per namespace whose subject is `CN=paddock-ns-<namespace>,O=paddock`, the
//! id ZooKeeper's `x509` scheme gives it. It lives in the namespace's Secret (`tls.crt`,
//! `tls.key`, `ca.crt` — the CA of the ZooKeeper servers — and `operator-id`, the
//! operator's own x509 id), and is issued again once two thirds of its lifetime have passed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

/// The annotation on the Secret: when (unix seconds) its certificate is due for renewal.
pub const RENEW_AFTER_ANNOTATION: &str = "paddock.dev/renew-after";

/// The x509 id of a namespace's certificate, as ZooKeeper names it (RFC 2253).
pub fn namespace_subject(namespace: &str) -> String {
    format!("CN=paddock-ns-{namespace},O=paddock")
}

/// A CA the operator signs with (namespace certificates; with its own CA, the servers'
/// and its own too), and what goes along with them.
pub struct IssuingCa {
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// PEM of the CA that signed the ZooKeeper servers (`ca.crt` for the sidecars).
    pub server_ca_pem: String,
    pub lifetime: Duration,
}

impl std::fmt::Debug for IssuingCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuingCa").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

/// A namespace's certificate and key, PEM, and when to renew it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub renew_after: SystemTime,
}

impl IssuingCa {
    /// The CA from its PEM certificate and key. The issuer name of what it signs is the
    /// CA certificate's subject, read from its DER (rcgen cannot load a CA by itself).
    pub fn new(ca_cert_pem: &str, ca_key_pem: &str, server_ca_pem: String, lifetime: Duration) -> anyhow::Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(ca_cert_pem.as_bytes()).context("not a PEM certificate")?;
        let key = KeyPair::try_from(pkcs8_der(ca_key_pem)?.as_slice()).context("a key rcgen cannot sign with")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = subject_of(&der).context("reading the CA certificate's subject")?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Only its name and key matter: what it signs names this subject as the issuer,
        // with the key identifier of `key`, and is verified against the real CA certificate.
        let issuer = params.self_signed(&key)?;
        anyhow::ensure!(lifetime >= Duration::from_secs(3), "the certificate lifetime must be at least 3s");
        Ok(Self { issuer, key, server_ca_pem, lifetime })
    }

    /// A new certificate for `namespace`, valid from a minute ago for the lifetime.
    pub fn issue(&self, namespace: &str) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // DER order is the reverse of RFC 2253's: O first, CN last (and not rcgen's default CN).
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "paddock");
        params.distinguished_name.push(DnType::CommonName, format!("paddock-ns-{namespace}"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A client certificate whose subject is `CN=<common_name>` (the operator's own x509
    /// identity in ZooKeeper is `CN=paddock-operator`).
    pub fn issue_client(&self, common_name: &str) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// The ZooKeeper servers' certificate for `names` (DNS names or IP addresses), for
    /// server and client auth: the servers connect to each other with it.
    pub fn issue_server(&self, names: &[String]) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Signs `params`, valid from a minute ago for the lifetime; due for renewal after two
    /// thirds of it. Keys are PKCS#8, the only form ZooKeeper 3.8's PEM key store reads.
    fn sign(&self, mut params: CertificateParams) -> anyhow::Result<Issued> {
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + self.lifetime).into();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), renew_after: now + self.lifetime * 2 / 3 })
    }
}

/// A new self-signed CA (valid ten years) named `CN=<common_name>`: certificate and key, PEM.
pub fn new_ca(common_name: &str) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A PEM private key as PKCS#8 DER, the only form rcgen (with ring) signs with: SEC1 (`BEGIN
/// EC PRIVATE KEY`, what cert-manager and openssl write for an ECDSA key unless told
/// otherwise) and PKCS#1 (`BEGIN RSA PRIVATE KEY`) are wrapped as PKCS#8 wraps them.
fn pkcs8_der(key_pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    const EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
    const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("not a PEM private key (PKCS#8, SEC1 or PKCS#1)")?;
    let (algorithm, parameter, inner) = match &key {
        PrivateKeyDer::Pkcs8(key) => return Ok(key.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(key) => {
            let curve = sec1_curve(key.secret_sec1_der()).context("reading the EC key's curve")?;
            (EC_PUBLIC_KEY, Some(curve), key.secret_sec1_der())
        }
        PrivateKeyDer::Pkcs1(key) => (RSA_ENCRYPTION, None, key.secret_pkcs1_der()),
        _ => bail!("a private key of a kind that cannot be read; give it as PKCS#8 (BEGIN PRIVATE KEY)"),
    };
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_sequence(|w| {
                w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(algorithm));
                match &parameter {
                    Some(curve) => w.next().write_oid(curve),
                    None => w.next().write_null(),
                }
            });
            w.next().write_bytes(inner);
        })
    }))
}

/// The named curve of a SEC1 EC private key (RFC 5915: its `parameters` field).
fn sec1_curve(der: &[u8]) -> anyhow::Result<yasna::models::ObjectIdentifier> {
    let curve = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            r.next().read_u8()?; // version
            r.next().read_bytes()?; // the private key
            let curve = r.read_optional(|r| r.read_tagged(yasna::Tag::context(0), |r| r.read_oid()))?;
            r.read_optional(|r| r.read_tagged_der())?; // the public key
            Ok(curve)
        })
    })?;
    curve.context("the key names no curve; give it as PKCS#8 (BEGIN PRIVATE KEY)")
}

/// Unix seconds, for the renewal annotation.
pub fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The subject of a DER certificate as rcgen writes names: each attribute with its OID and
/// its string type, in order.
fn subject_of(der: &[u8]) -> anyhow::Result<DistinguishedName> {
    let subject = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let subject = r.next().read_sequence(|r| {
                r.read_optional(|r| r.read_tagged_der())?; // [0] version
                for _ in 0..4 {
                    r.next().read_der()?; // serial, signature, issuer, validity
                }
                let subject = r.next().read_der()?;
                while r.read_optional(|r| r.read_der())?.is_some() {}
                Ok(subject)
            })?;
            r.next().read_der()?;
            r.next().read_der()?;
            Ok(subject)
        })
    })?;
    let attributes = yasna::parse_der(&subject, |r| {
        r.collect_sequence_of(|r| {
            r.collect_set_of(|r| r.read_sequence(|r| Ok((r.next().read_oid()?, r.next().read_tagged_der()?))))
        })
    })?;
    let mut name = DistinguishedName::new();
    for (oid, value) in attributes.into_iter().flatten() {
        let text = String::from_utf8(value.value().to_vec()).context("a subject attribute that is not text")?;
        let value = match value.tag().tag_number {
            12 => DnValue::Utf8String(text),
            19 => DnValue::PrintableString(text.try_into()?),
            22 => DnValue::Ia5String(text.try_into()?),
            20 => DnValue::TeletexString(text.try_into()?),
            other => bail!("the CA's subject uses string type {other}, which cannot be copied; use UTF8String"),
        };
        name.push(DnType::from_oid(oid.components()), value);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, DnValue::PrintableString("Example".try_into().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "client-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn namespace_certificates_verify_against_the_given_ca() {
        let (cert, key) = ca();
        let client_ca = IssuingCa::new(&cert.pem(), &key.serialize_pem(), cert.pem(), Duration::from_secs(90)).unwrap();
        assert_eq!(client_ca.issuer.params().distinguished_name, cert.params().distinguished_name);
        let issued = client_ca.issue("shop").unwrap();
        let renew = issued.renew_after.duration_since(SystemTime::now()).unwrap();
        assert!(renew > Duration::from_secs(55) && renew <= Duration::from_secs(60), "{renew:?}");
        // rustls (webpki) verifies the chain: issuer name and signature.
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        verifier.verify_client_cert(&leaf, &[], UnixTime::now()).expect("signed by the CA");
        assert_eq!(namespace_subject("shop"), "CN=paddock-ns-shop,O=paddock");
    }

    /// cert-manager writes a CA's ECDSA key as SEC1 (`BEGIN EC PRIVATE KEY`) unless told
    /// PKCS#8 — the chart's cert-manager CA is such a one, and an install moving to the
    /// operator's own CA finds it in `<fullname>-zookeeper-ca`; a CA of the user's may be
    /// RSA in PKCS#1. The operator signs with both.
    #[test]
    fn cas_with_sec1_and_pkcs1_keys_made_by_openssl_sign_servers_and_clients() {
        const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEILBw4o26+DQvBjAf7HtfRELN7B+RHrh1BgH97u6VRuttoAoGCCqGSM49\nAwEHoUQDQgAENj3V8j+X3cXkmkl3CN8jtDSH9fdkfknoXxjgEj0VMMJitiaSS0Br\ng5OOyQqkSDYot+2n/iOIcc41t3i5uRtFZQ==\n-----END EC PRIVATE KEY-----";
        const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBlDCCATmgAwIBAgIUa93+dmENo7TGh4/6bDgAemRF7CcwCgYIKoZIzj0EAwIw\nHzEdMBsGA1UEAwwUcGFkZG9jay16b29rZWVwZXItY2EwHhcNMjYxMjA3MTcwMjA1\nWhcNMzYxMjA0MTcwMjA1WjAfMR0wGwYDVQQDDBRwYWRkb2NrLXpvb2tlZXBlci1j\nYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABDY91fI/l93F5JpJdwjfI7Q0h/X3\nZH5J6F8Y4BI9FTDCYrYmkktAa4OTjskKpEg2KLftp/4jiHHONbd4ubkbRWWjUzBR\nMB0GA1UdDgQWBBQHWwGZQuuapVbUlsswq0GqFGWndzAfBgNVHSMEGDAWgBQHWwGZ\nQuuapVbUlsswq0GqFGWndzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kA\nMEYCIQCECh13imiqjvlnIrLitb4tYUq5ITWurRx7MK6hWwIFAgIhAIVOlO/L3/B2\nH5Z7n8lRhYiIEwc4IZKpBbK9RTlFUG7e\n-----END CERTIFICATE-----";
        const RSA_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAm7Zrv6/KTRAj1APJ1MCHKWo7WTf7NVLWvOwGB3mXbq9KQFA+\nCaphBYsW/Ux1axW3UeT5CMBVcS04qyX1Tt4AU3edO7ywYxMfgkTZujq9CBSd8pm9\nvq0NIQGMYnay23j+iPt9ahiRWwwnGiiaNTpQgq6fztt4ctKFop7jY57qFDcZ6yqD\njhDT8C5EhpXzeptn7/4aAuoCbt1hl1dJVJJam5KvsTd93iwT2aFGNJFjquCMsahg\nNidtpfEiAOZKW3kxKaKL7wt2TafYLV80zm4jfBgzo7CfX4JS2QstW4xh5siVUCLN\nYITe5rkDweXfjNFqzVjtlGip3z+JCkk/FLe8XQIDAQABAoIBAAEhqyG6v+m8HUpY\nsXaJObhP2Ss5hPcXI0DRDnMcsbRNTFzItXGOuk3be/zCXklmHTzefeZPwuqdlDlp\nyGQi8ea1kFVd5BS4CapXGmjLISUAyt/lPveYLUk/Nd8jZWRJFbSeXJAK83hoPTNc\nLThpUskeCYvry4D9h4CAZyycMsftMfXk9sbMejMWmFc4EFTjO3VaBPiQyb3KwrrG\n1C8V9rXUCPRx8jdRr0k9BwPH7ZPb2c9HSQEgVk///GX2O04YkRldqri9sMhhrWRd\nBgYAxiXShsVMNgeK7740V9VLTydRjRfuh/Ui2/bAvDuxKDI88OW6EDeCUUGH4HLJ\nmMaR34ECgYEAz0vI8pMwcVcxw2udUJYYaBh+Jfvh4tb4yuwejQhFVxo8DnMtCB0l\ne6WZi8jKHNVLONcXeuVZJ/+sJf8JvzL6bed34sRXrbRuMjFGKBPIZnFhdTb5DVdw\nXKyG+SzJ/TA92pvGnXLCXTQ6i+yikgn2E7Gj/1iGYsHU8yDECkiEdD0CgYEAwEwN\nBAOy+eg+d/1+9Q+YpeK8eKqGLexZv8vxL6+dx+Xx/rJOcyDj6t+EorfpDUCUqTqB\nYp/SFKDckCrwhQsggq/MXS3cDGSbA8cKlYHuEpM4j/upubzOb4G8N2XsDkQMuNUS\nF0cxfpqK/iS87NJxN59tPKNrgQVpUSIXjR8lSqECgYEAunbaF9Fshtc/DSDVDjMl\nWyWE+5faNZjXjHjedlAVR2dy1DCoNh85o0JvnryLiWoXUtav6T06eG9UI42I7/Lk\nL05Bmbqxf6/IW9/U0qIQ5o1gc/ZyCp03ljUe6C5wtw3Y5bav7trWmM4tR8Yg6iqJ\nrmdhNIQlxdnDOruje/iFJKUCgYBUo6S+9ZnbYZvNWKh+2OSJb2khe30fzX4ba3q3\nUIcUK2P+hSD+j6WCBevtayGLEbfdXMECVfIz3jH2ys+e36zpmNNM2BiY49dPLFa+\nQ7g0ONSWm2CzPiVm8yWTBKuIA+/Nkwspb86bOQ6gmi8F1gK7RtLf89YnregTK/xN\nwz24wQKBgCDq7xwWNp9dhCIwSQTbEr+Xr1ZOsIVN/NUaDC2cAIkXE8JasP285oAh\n9JODRgHguSlDwn11VQXngGL0Ai/c4tDy1UtcolEplpdUbxfKwHL/prR2UNjBCDDX\nwSRm6B4k4feddW6zj/yib8Jd3se/kxp9HGXiNKiUysW7Oo9UoKvw\n-----END RSA PRIVATE KEY-----";
        const RSA_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIDKTCCAhGgAwIBAgIUJdjcHfgvKMo+9wTyh/yC0aCxgXcwDQYJKoZIhvcNAQEL\nBQAwJDEQMA4GA1UEAwwHY29ycC1jYTEQMA4GA1UECgwHRXhhbXBsZTAeFw0yNjEy\nMDcxNzA1NTFaFw0zNjEyMDQxNzA1NTFaMCQxEDAOBgNVBAMMB2NvcnAtY2ExEDAO\nBgNVBAoMB0V4YW1wbGUwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCb\ntmu/r8pNECPUA8nUwIcpajtZN/s1Uta87AYHeZdur0pAUD4JqmEFixb9THVrFbdR\n5PkIwFVxLTirJfVO3gBTd507vLBjEx+CRNm6Or0IFJ3ymb2+rQ0hAYxidrLbeP6I\n+31qGJFbDCcaKJo1OlCCrp/O23hy0oWinuNjnuoUNxnrKoOOENPwLkSGlfN6m2fv\n/hoC6gJu3WGXV0lUklqbkq+xN33eLBPZoUY0kWOq4IyxqGA2J22l8SIA5kpbeTEp\noovvC3ZNp9gtXzTObiN8GDOjsJ9fglLZCy1bjGHmyJVQIs1ghN7muQPB5d+M0WrN\nWO2UaKnfP4kKST8Ut7xdAgMBAAGjUzBRMB0GA1UdDgQWBBQodfpT0T55NmAcUKjm\njg39zpGX/jAfBgNVHSMEGDAWgBQodfpT0T55NmAcUKjmjg39zpGX/jAPBgNVHRMB\nAf8EBTADAQH/MA0GCSqGSIb3DQEBCwUAA4IBAQB0DDIW7J6j0H5QuUSjnSUN10oG\njPJ/f3EKszb/WYTYZiwbOnScRMfkSLYGB3ac/5uFijsEIqnkOKW5SVhDBVV0qvRP\nXBiMdCgcbqiP5CaOeQ9ycTYzU7DQc4esnz3xIlb491leEuPqza5nBBGIcEckWDV+\nMiiIB/SglmQQX4AukPX0MJ37Aj088Txc0gxdOTUAxMhDwE2m5tRGOOhWmuXFuaP/\n9fd2rbzkJrjwKdiNKbnChDVN+pIlfL+/vUCXnFghA7/VgaTXxVZnPmEe9HnF2ON0\nECEanByRQobMpA4JNZEVooDYdfnIIFPqVGm19eSMCijU6E1ArxsPdNTVBvRJ\n-----END CERTIFICATE-----";
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, UnixTime};
        for (cert, key) in [(CERT, KEY), (RSA_CERT, RSA_KEY)] {
            let ca = IssuingCa::new(cert, key, cert.to_owned(), Duration::from_secs(3600)).expect("the key is read");
            let server = ca.issue_server(&["zk.example".to_owned(), "127.0.0.1".to_owned()]).unwrap();
            let client = ca.issue_client("paddock-operator").unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                std::sync::Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()
            .unwrap();
            for issued in [&server, &client] {
                let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
                verifier.verify_client_cert(&leaf, &[], UnixTime::now()).expect("signed by the CA");
                assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 for ZooKeeper");
            }
        }
    }
}
