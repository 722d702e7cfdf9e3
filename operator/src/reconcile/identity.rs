//! The namespace identity step. Each namespace has its own ZooKeeper identity, kept in its
//! Secret [`CREDENTIALS_SECRET`], which the injected sidecars read:
//! - **digest** (`PADDOCK_NAMESPACE_AUTH=digest`): `user:password` (a digest user
//!   `paddock-ns-<namespace>`, key [`CREDENTIALS_KEY`]); the operator adds it to its own
//!   session, so it can read and remove what the namespace's sidecars create;
//! - **x509** (the default with TLS): a client certificate the operator signs with its
//!   client CA (`tls.crt`, `tls.key`, `ca.crt`, and `operator-id`, the operator's own x509
//!   id, which the sidecars add to the ACL of what they create, see
//!   [`certificate`](super::certificate)); renewed once two thirds of its lifetime passed.
//!
//! Invariants: a Secret is created or renewed only while this replica leads; a digest
//! identity is never replaced — a concurrent create wins and is read back; one that holds
//! no `user:password` is an error saying to delete it. Each namespace's digest credentials
//! are added to a session once, and again to every new session (after an expiry).

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use paddock_recipes::identity::{DigestIdentity, ZkId};
use paddock_recipes::{Session, zk};
use serde_json::json;

use super::certificate::{self, IssuingCa, RENEW_AFTER_ANNOTATION};
use crate::error::{At, Error, Step};
use crate::leader::Leadership;
use crate::shared_secret;

/// The Secret in each namespace that holds its ZooKeeper identity.
pub const CREDENTIALS_SECRET: &str = "paddock-zookeeper-credentials";
/// The Secret's key holding `user:password` (digest).
pub const CREDENTIALS_KEY: &str = "credentials";
/// The Secret's keys of a certificate identity (x509).
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";
pub const OPERATOR_ID_KEY: &str = "operator-id";

/// How namespaces authenticate to ZooKeeper.
#[derive(Debug)]
pub enum NamespaceAuth {
    Digest,
    X509(Box<IssuingCa>),
}

/// The identities a namespace's znodes are protected for.
#[derive(Debug, Clone)]
pub struct Identities {
    pub namespace: ZkId,
    pub operator: ZkId,
    /// With a certificate: the namespace's digest identity from before TLS, while its
    /// Secret keeps it. Named in the ACL of what the operator provisions too, so the pods
    /// not yet moved to the certificate keep working (see [`NamespaceIdentities::get`]).
    pub legacy: Option<ZkId>,
}

/// The step's state: the clients it uses and the namespaces each session carries.
pub struct NamespaceIdentities {
    client: kube::Client,
    session: Session,
    /// Paddock's root, for the path errors name.
    root: String,
    /// The operator's digest identity (required for digest namespaces).
    operator: Option<DigestIdentity>,
    auth: NamespaceAuth,
    leadership: Leadership,
    /// (session generation, namespace) whose digest credentials that session carries.
    authed: Mutex<HashSet<(u64, String)>>,
    /// The operator's x509 id, as ZooKeeper's `whoami` says (learned once).
    operator_x509: Mutex<Option<String>>,
    /// Namespaces with a certificate identity, renewed in the background.
    certified: Mutex<BTreeSet<String>>,
    /// Namespaces told (by an Event) that their credentials cross the network in the clear.
    warned: Mutex<HashSet<String>>,
    cleartext: bool,
}

/// Settings of the step beyond the clients.
pub struct IdentitySettings {
    pub root: String,
    pub operator: Option<DigestIdentity>,
    pub auth: NamespaceAuth,
    /// Digest over a plain connection: warn in each namespace.
    pub cleartext: bool,
}

impl NamespaceIdentities {
    pub fn new(client: kube::Client, session: Session, settings: IdentitySettings, leadership: Leadership) -> Self {
        let IdentitySettings { root, operator, auth, cleartext } = settings;
        Self {
            client,
            session,
            root,
            operator,
            auth,
            leadership,
            authed: Mutex::default(),
            operator_x509: Mutex::default(),
            certified: Mutex::default(),
            warned: Mutex::default(),
            cleartext,
        }
    }

    /// How errors name the operator's identity.
    pub fn operator_name(&self) -> String {
        match (&self.auth, &self.operator) {
            (NamespaceAuth::Digest, Some(operator)) => operator.user.clone(),
            _ => match self.operator_x509.lock().expect("not poisoned").as_ref() {
                Some(subject) => format!("x509 {subject}"),
                None => "the operator's certificate (PADDOCK_ZK_TLS_CERT)".to_owned(),
            },
        }
    }

    /// The namespace's identity from its Secret (created on first use; for a certificate,
    /// renewed when due), usable by the operator's ZooKeeper session; and that session's client.
    pub async fn get(&self, namespace: &str) -> Result<(Identities, zk::Client), Error> {
        match &self.auth {
            NamespaceAuth::Digest => {
                let operator = self.operator.clone().ok_or_else(|| Error::BadCredentials {
                    namespace: namespace.to_owned(),
                    reason: "digest namespaces need the operator's own PADDOCK_ZK_AUTH".to_owned(),
                })?;
                let identity = self.read_or_create(namespace).await?;
                let client = self.authenticate(namespace, &identity).await?;
                let ids =
                    Identities { namespace: ZkId::Digest(identity), operator: ZkId::Digest(operator), legacy: None };
                Ok((ids, client))
            }
            NamespaceAuth::X509(ca) => {
                let at = self.at(namespace);
                let client = self.session.client().map_err(|e| at.clone().session(e))?.client;
                let operator = self.operator_x509(namespace, &client).await?;
                let legacy = self.ensure_certificate(namespace, ca, &operator).await?;
                self.certified.lock().expect("not poisoned").insert(namespace.to_owned());
                // Moving from digest: what the namespace's sidecars made under digest names
                // that identity alone, so the operator adds it to its session to read them.
                let client = match &legacy {
                    Some(identity) => self.authenticate(namespace, identity).await?,
                    None => client,
                };
                let ids = Identities {
                    namespace: ZkId::X509(certificate::namespace_subject(namespace)),
                    operator: ZkId::X509(operator),
                    legacy: legacy.map(ZkId::Digest),
                };
                Ok((ids, client))
            }
        }
    }

    /// The note of an Event for the first reconcile in `namespace` when its digest
    /// credentials cross the network in the clear (no TLS).
    pub fn cleartext_warning(&self, namespace: &str) -> Option<String> {
        if !self.cleartext || !self.warned.lock().expect("not poisoned").insert(namespace.to_owned()) {
            return None;
        }
        Some(format!(
            "namespace {namespace} authenticates to ZooKeeper with digest credentials over a plain connection: \
             anyone on the pod network can read them and act as this namespace. Run ZooKeeper with TLS \
             (PADDOCK_ZK_TLS_CA) and PADDOCK_NAMESPACE_AUTH=x509"
        ))
    }

    /// How often certificates are checked for renewal: a twentieth of their lifetime,
    /// between 1 s and a minute; None without certificate identities.
    pub fn renew_interval(&self) -> Option<Duration> {
        match &self.auth {
            NamespaceAuth::X509(ca) => Some((ca.lifetime / 20).clamp(Duration::from_secs(1), Duration::from_secs(60))),
            NamespaceAuth::Digest => None,
        }
    }

    /// Renews the certificates that are due, of every namespace seen so far (leading only).
    pub async fn renew_due(&self) {
        let NamespaceAuth::X509(ca) = &self.auth else { return };
        let Some(operator) = self.operator_x509.lock().expect("not poisoned").clone() else { return };
        let namespaces = self.certified.lock().expect("not poisoned").clone();
        for namespace in namespaces {
            if let Err(err) = self.ensure_certificate(&namespace, ca, &operator).await {
                tracing::warn!(namespace, error = %err, "could not renew the namespace's certificate");
            }
        }
    }

    fn at(&self, namespace: &str) -> At {
        At::new(Step::Authenticate, &format!("{}/{namespace}", self.root), namespace, &self.operator_name())
    }

    /// The operator's x509 id: what ZooKeeper's `whoami` says of its session.
    async fn operator_x509(&self, namespace: &str, client: &zk::Client) -> Result<String, Error> {
        if let Some(known) = self.operator_x509.lock().expect("not poisoned").clone() {
            return Ok(known);
        }
        let users = client.list_auth_users().await.map_err(|e| self.at(namespace).zk(e))?;
        let Some(user) = users.iter().find(|u| u.scheme() == "x509") else {
            return Err(Error::BadCredentials {
                namespace: namespace.to_owned(),
                reason: "the operator's ZooKeeper session has no x509 identity: give it a client certificate \
                         (PADDOCK_ZK_TLS_CERT, PADDOCK_ZK_TLS_KEY) and run the servers with \
                         authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider"
                    .to_owned(),
            });
        };
        tracing::info!(id = user.user(), "the operator's x509 identity");
        *self.operator_x509.lock().expect("not poisoned") = Some(user.user().to_owned());
        Ok(user.user().to_owned())
    }

    /// Issues the namespace's certificate into its Secret unless the Secret holds a current
    /// one; the digest identity the Secret keeps from before TLS, if any.
    async fn ensure_certificate(
        &self,
        namespace: &str,
        ca: &IssuingCa,
        operator: &str,
    ) -> Result<Option<DigestIdentity>, Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let existing = secrets
            .get_opt(CREDENTIALS_SECRET)
            .await
            .map_err(Error::kube(format!("reading Secret {CREDENTIALS_SECRET}"), namespace))?;
        let legacy = existing
            .as_ref()
            .and_then(|s| shared_secret::text(s, CREDENTIALS_KEY))
            .and_then(|c| DigestIdentity::parse(&c).ok());
        let current = existing.as_ref().is_some_and(|s| is_current(s, ca, operator));
        if current {
            return Ok(legacy);
        }
        if !self.leadership.is_leading() {
            // A follower uses what the leader wrote; it never writes.
            let has_cert = existing.as_ref().is_some_and(|s| s.data.as_ref().is_some_and(|d| d.contains_key(CERT_KEY)));
            return if has_cert { Ok(legacy) } else { Err(Error::NotLeading) };
        }
        let issued = ca.issue(namespace).map_err(|e| Error::BadCredentials {
            namespace: namespace.to_owned(),
            reason: format!("issuing its certificate: {e:#}"),
        })?;
        let secret = certificate_secret(existing, &issued, &ca.server_ca_pem, operator);
        let written = match secret.metadata.resource_version {
            Some(_) => secrets.replace(CREDENTIALS_SECRET, &PostParams::default(), &secret).await,
            None => secrets.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    namespace,
                    subject = certificate::namespace_subject(namespace),
                    "issued the namespace's certificate"
                );
                Ok(legacy)
            }
            // Written by a concurrent reconcile: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Box::pin(self.ensure_certificate(namespace, ca, operator)).await
            }
            Err(e) => Err(Error::kube(format!("writing Secret {CREDENTIALS_SECRET}"), namespace)(e)),
        }
    }

    /// Reads the namespace's Secret, or creates it (leading only) with a new digest identity.
    async fn read_or_create(&self, namespace: &str) -> Result<DigestIdentity, Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let existing = secrets
            .get_opt(CREDENTIALS_SECRET)
            .await
            .map_err(Error::kube(format!("reading Secret {CREDENTIALS_SECRET}"), namespace))?;
        if let Some(secret) = existing {
            let bad = |reason: String| Error::BadCredentials { namespace: namespace.to_owned(), reason };
            let text = shared_secret::text(&secret, CREDENTIALS_KEY)
                .ok_or_else(|| bad(format!("key {CREDENTIALS_KEY} is missing or not text")))?;
            return DigestIdentity::parse(&text).map_err(|e| bad(e.to_string()));
        }
        if !self.leadership.is_leading() {
            return Err(Error::NotLeading);
        }
        let identity = DigestIdentity::generate(&format!("paddock-ns-{namespace}"));
        match secrets.create(&PostParams::default(), &credentials_secret(&identity)).await {
            Ok(_) => Ok(identity),
            // Created by a concurrent reconcile: use that one.
            Err(kube::Error::Api(e)) if e.code == 409 => Box::pin(self.read_or_create(namespace)).await,
            Err(e) => Err(Error::kube(format!("creating Secret {CREDENTIALS_SECRET}"), namespace)(e)),
        }
    }

    /// Adds `identity` to the current session unless it carries it already.
    async fn authenticate(&self, namespace: &str, identity: &DigestIdentity) -> Result<zk::Client, Error> {
        let at = self.at(namespace);
        let current = self.session.client().map_err(|e| at.clone().session(e))?;
        let key = (current.generation, namespace.to_owned());
        if !self.authed.lock().expect("not poisoned").contains(&key) {
            current.client.auth("digest", identity.credentials().as_bytes()).await.map_err(|e| at.zk(e))?;
            self.authed.lock().expect("not poisoned").insert(key);
        }
        Ok(current.client)
    }
}

/// Whether the Secret holds a certificate not yet due for renewal, for this CA and operator.
fn is_current(secret: &Secret, ca: &IssuingCa, operator: &str) -> bool {
    let renew_after = secret.metadata.annotations.as_ref().and_then(|a| a.get(RENEW_AFTER_ANNOTATION));
    let due = renew_after
        .and_then(|s| s.parse::<u64>().ok())
        .is_none_or(|at| at <= certificate::unix_seconds(SystemTime::now()));
    !due && shared_secret::text(secret, CERT_KEY).is_some()
        && shared_secret::text(secret, KEY_KEY).is_some()
        && shared_secret::text(secret, CA_KEY).as_deref() == Some(ca.server_ca_pem.as_str())
        && shared_secret::text(secret, OPERATOR_ID_KEY).as_deref() == Some(operator)
}

/// The Secret with a new certificate: `existing`'s other keys (digest credentials from
/// before TLS) kept, its resourceVersion kept for the replace.
fn certificate_secret(existing: Option<Secret>, issued: &certificate::Issued, ca_pem: &str, operator: &str) -> Secret {
    use k8s_openapi::ByteString;
    let mut secret = existing.unwrap_or_else(|| {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": CREDENTIALS_SECRET, "labels": {"app.kubernetes.io/managed-by": "paddock-operator"}},
        }))
        .expect("a valid Secret")
    });
    let data = secret.data.get_or_insert_with(Default::default);
    for (key, value) in [
        (CERT_KEY, &issued.cert_pem),
        (KEY_KEY, &issued.key_pem),
        (CA_KEY, &ca_pem.to_owned()),
        (OPERATOR_ID_KEY, &operator.to_owned()),
    ] {
        data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    }
    let renew = certificate::unix_seconds(issued.renew_after).to_string();
    secret.metadata.annotations.get_or_insert_with(Default::default).insert(RENEW_AFTER_ANNOTATION.to_owned(), renew);
    secret
}

/// The Secret holding `identity`, as the sidecars read it.
fn credentials_secret(identity: &DigestIdentity) -> Secret {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(identity.credentials().as_bytes());
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": CREDENTIALS_SECRET, "labels": {"app.kubernetes.io/managed-by": "paddock-operator"}},
        "data": {CREDENTIALS_KEY: encoded},
    }))
    .expect("a valid Secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_holds_the_credentials_the_sidecars_read() {
        let identity = DigestIdentity::parse("paddock-ns-shop:pw1").unwrap();
        let secret = credentials_secret(&identity);
        assert_eq!(secret.metadata.name.as_deref(), Some(CREDENTIALS_SECRET));
        assert_eq!(secret.data.unwrap()[CREDENTIALS_KEY].0, b"paddock-ns-shop:pw1");
    }

    #[test]
    fn a_certificate_secret_is_current_until_its_renewal_time() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca =
            IssuingCa::new(&ca_cert.pem(), &ca_key.serialize_pem(), "servers".into(), Duration::from_secs(60)).unwrap();
        let issued = ca.issue("shop").unwrap();
        let old = credentials_secret(&DigestIdentity::parse("paddock-ns-shop:pw1").unwrap());
        let secret = certificate_secret(Some(old), &issued, "servers", "CN=op");
        assert!(is_current(&secret, &ca, "CN=op"));
        assert!(!is_current(&secret, &ca, "CN=another-operator"), "the sidecars must name this operator");
        assert_eq!(
            shared_secret::text(&secret, CREDENTIALS_KEY).as_deref(),
            Some("paddock-ns-shop:pw1"),
            "digest kept"
        );
        let mut due = secret.clone();
        due.metadata.annotations.as_mut().unwrap().insert(RENEW_AFTER_ANNOTATION.into(), "1".into());
        assert!(!is_current(&due, &ca, "CN=op"));
    }
}
