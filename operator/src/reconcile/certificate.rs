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
        let key = KeyPair::from_pem(ca_key_pem).context("not a PEM private key (PKCS#8, SEC1 or PKCS#1)")?;
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
}
