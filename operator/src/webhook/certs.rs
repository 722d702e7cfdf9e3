//! The webhook's serving certificate. Either the operator makes it (a self-signed CA and
//! a certificate for the Service's DNS names, shared by all replicas through one Secret,
//! the CA written into the MutatingWebhookConfiguration's caBundle), or cert-manager
//! does and the operator reads the mounted files, reloading them when they change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::shared_secret::{self, Found};

/// Annotation on the shared Secret naming the DNS names its certificate covers.
const DNS_NAMES_ANNOTATION: &str = "paddock.dev/dns-names";
/// How often the caBundle and mounted files are checked (a `helm upgrade` resets the
/// caBundle; cert-manager renews the files).
const RECHECK: Duration = Duration::from_secs(30);

/// PEM material the webhook serves with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServingCert {
    /// A new CA (valid 10 years) and a server certificate it signs for `dns_names`.
    pub fn self_signed(dns_names: &[String]) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let now = k8s_openapi::jiff::Timestamp::now().to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC);
        let (not_before, not_after) = (
            rcgen::date_time_ymd(now.year().into(), now.month() as u8, 1),
            rcgen::date_time_ymd(i32::from(now.year()) + 10, now.month() as u8, 1),
        );
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, "paddock-webhook-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (ca.not_before, ca.not_after) = (not_before, not_after);
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;

        let mut leaf = CertificateParams::new(dns_names.to_vec())?;
        leaf.distinguished_name.push(DnType::CommonName, dns_names.first().cloned().unwrap_or_default());
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        (leaf.not_before, leaf.not_after) = (not_before, not_after);
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;
        Ok(Self { ca_pem: ca_cert.pem(), cert_pem: leaf_cert.pem(), key_pem: leaf_key.serialize_pem() })
    }

    /// The rustls configuration serving this certificate.
    pub fn rustls(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading the serving certificate (PEM)")?;
        anyhow::ensure!(!certs.is_empty(), "no certificate in the serving certificate's PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).context("reading the private key (PEM)")?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .context("the certificate does not match its key")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The DNS names the API server may use for the webhook Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

/// The certificate all replicas share: read from the Secret, or made and stored there by
/// whichever replica comes first (a lost create race reads the winner's).
pub async fn shared_self_signed(
    client: kube::Client,
    namespace: &str,
    secret: &str,
    dns_names: &[String],
) -> anyhow::Result<ServingCert> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let wanted = dns_names.join(",");
    // Made for other names (the Service was renamed) or damaged: replaced.
    let read = |existing: &Secret| {
        let names = existing.metadata.annotations.as_ref().and_then(|a| a.get(DNS_NAMES_ANNOTATION));
        Ok(match from_secret(existing) {
            Some(cert) if names == Some(&wanted) => Found::Use(cert),
            _ => Found::Replace,
        })
    };
    let make = || {
        let cert = ServingCert::self_signed(dns_names)?;
        let object = to_secret(&cert, &wanted);
        Ok((cert, object))
    };
    let (cert, made) = shared_secret::agreed(&secrets, secret, read, make)
        .await
        .with_context(|| format!("the webhook's certificate in namespace {namespace}"))?;
    if made {
        tracing::info!(secret, ?dns_names, "made the webhook's self-signed serving certificate");
    }
    Ok(cert)
}

fn from_secret(secret: &Secret) -> Option<ServingCert> {
    let text = |key: &str| shared_secret::text(secret, key);
    Some(ServingCert { ca_pem: text("ca.crt")?, cert_pem: text("tls.crt")?, key_pem: text("tls.key")? })
}

fn to_secret(cert: &ServingCert, dns_names: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            annotations: Some([(DNS_NAMES_ANNOTATION.to_owned(), dns_names.to_owned())].into()),
            labels: Some(shared_secret::managed_labels()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(shared_secret::data([
            ("ca.crt", cert.ca_pem.as_str()),
            ("tls.crt", &cert.cert_pem),
            ("tls.key", &cert.key_pem),
        ])),
        ..Default::default()
    }
}

/// Writes `ca_pem` into every webhook of the configuration whose caBundle differs.
/// Returns how many it changed.
pub async fn patch_ca_bundle(client: kube::Client, configuration: &str, ca_pem: &str) -> anyhow::Result<usize> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let current = api
        .get(configuration)
        .await
        .with_context(|| format!("reading MutatingWebhookConfiguration {configuration}"))?;
    let wanted = ByteString(ca_pem.as_bytes().to_vec());
    let operations: Vec<json_patch::PatchOperation> = current
        .webhooks
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, hook)| hook.client_config.ca_bundle.as_ref() != Some(&wanted))
        .map(|(index, _)| {
            json_patch::PatchOperation::Add(json_patch::AddOperation {
                path: json_patch::jsonptr::PointerBuf::parse(format!("/webhooks/{index}/clientConfig/caBundle"))
                    .expect("a valid pointer"),
                value: serde_json::to_value(&wanted).expect("bytes serialize"),
            })
        })
        .collect();
    if operations.is_empty() {
        return Ok(0);
    }
    let changed = operations.len();
    api.patch(configuration, &PatchParams::default(), &Patch::Json::<()>(json_patch::Patch(operations)))
        .await
        .with_context(|| format!("patching the caBundle of MutatingWebhookConfiguration {configuration}"))?;
    tracing::info!(configuration, webhooks = changed, "wrote the webhook CA into the caBundle");
    Ok(changed)
}

/// Keeps this replica in step with the shared Secret, at once and then every 30 s: serves
/// the certificate the Secret holds now (another replica may have replaced it) and writes
/// its CA into the configuration's caBundle (a `helm upgrade` may reset it). Every replica
/// follows the Secret, so they converge on one CA instead of taking turns.
pub async fn follow_shared(
    client: kube::Client,
    namespace: String,
    secret: String,
    configuration: Option<String>,
    tls: RustlsConfig,
    mut current: ServingCert,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    loop {
        match secrets.get_opt(&secret).await {
            Ok(Some(found)) => match from_secret(&found) {
                Some(cert) if cert != current => match cert.rustls() {
                    Ok(config) => {
                        tls.reload_from_config(config);
                        current = cert;
                        tracing::info!(secret, "serving the certificate the shared Secret holds now");
                    }
                    Err(err) => tracing::warn!(error = format!("{err:#}"), "the shared certificate does not load"),
                },
                _ => {}
            },
            Ok(None) => tracing::warn!(secret, "the shared certificate's Secret is gone; serving the last one"),
            Err(err) => tracing::warn!(error = %err, "could not read the shared certificate's Secret"),
        }
        if let Some(configuration) = &configuration
            && let Err(err) = patch_ca_bundle(client.clone(), configuration, &current.ca_pem).await
        {
            tracing::warn!(error = format!("{err:#}"), "could not update the webhook's caBundle; retrying");
        }
        tokio::time::sleep(RECHECK).await;
    }
}

/// A certificate from files (cert-manager's mounted Secret: `tls.crt`, `tls.key`).
pub fn from_dir(dir: &std::path::Path) -> anyhow::Result<ServingCert> {
    let read = |file: &str| {
        let path: PathBuf = dir.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("PADDOCK_WEBHOOK_CERT_DIR: reading {}", path.display()))
    };
    let ca_pem = read("ca.crt").unwrap_or_default();
    Ok(ServingCert { ca_pem, cert_pem: read("tls.crt")?, key_pem: read("tls.key")? })
}

/// Reloads the served certificate when the files in `dir` change (cert-manager renewals).
pub async fn reload_from_dir(dir: PathBuf, config: RustlsConfig, mut current: ServingCert) {
    loop {
        tokio::time::sleep(RECHECK).await;
        match from_dir(&dir).and_then(|cert| Ok((cert.rustls()?, cert))) {
            Ok((_, cert)) if cert == current => {}
            Ok((rustls, cert)) => {
                config.reload_from_config(rustls);
                current = cert;
                tracing::info!(dir = %dir.display(), "reloaded the webhook's serving certificate");
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "could not reload the serving certificate"),
        }
    }
}
