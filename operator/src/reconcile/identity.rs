//! The namespace identity step: each namespace's ZooKeeper identity (`user:password`, a
//! digest user `paddock-ns-<namespace>`) lives in a Secret of that namespace,
//! [`CREDENTIALS_SECRET`] key [`CREDENTIALS_KEY`], which the injected sidecars read. The
//! operator makes the Secret on first use and adds the identity to its own ZooKeeper
//! session, so it can read and remove what the namespace's sidecars create.
//!
//! Invariants: a Secret is created only while this replica leads, and an existing one is
//! never replaced — a concurrent create wins and is read back; one that holds no
//! `user:password` is an error saying to delete it. Each namespace's credentials are added
//! to a session once, and again to every new session (after an expiry).

use std::collections::HashSet;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use paddock_recipes::identity::DigestIdentity;
use paddock_recipes::{Session, zk};
use serde_json::json;

use crate::error::{At, Error, Step};
use crate::leader::Leadership;

/// The Secret in each namespace that holds its ZooKeeper identity (key [`CREDENTIALS_KEY`]).
pub const CREDENTIALS_SECRET: &str = "paddock-zookeeper-credentials";
/// The Secret's key holding `user:password`.
pub const CREDENTIALS_KEY: &str = "credentials";

/// The identities a namespace's znodes are protected for.
#[derive(Debug, Clone)]
pub struct Identities {
    pub namespace: DigestIdentity,
    pub operator: DigestIdentity,
}

/// The operator's ZooKeeper user (the `user` of its `user:password`), as errors name it.
pub fn user(identity: &DigestIdentity) -> String {
    identity.acl_id().split(':').next().unwrap_or_default().to_owned()
}

/// The step's state: the clients it uses and the namespaces each session carries.
pub struct NamespaceIdentities {
    client: kube::Client,
    session: Session,
    /// Paddock's root, for the path errors name.
    root: String,
    operator: DigestIdentity,
    leadership: Leadership,
    /// (session generation, namespace) whose credentials that session carries.
    authed: Mutex<HashSet<(u64, String)>>,
}

impl NamespaceIdentities {
    pub fn new(
        client: kube::Client,
        session: Session,
        root: &str,
        operator: DigestIdentity,
        leadership: Leadership,
    ) -> Self {
        Self { client, session, root: root.to_owned(), operator, leadership, authed: Mutex::default() }
    }

    /// The namespace's identity from its Secret (created on first use), added to the
    /// operator's ZooKeeper session; and that session's client.
    pub async fn get(&self, namespace: &str) -> Result<(Identities, zk::Client), Error> {
        let identity = self.read_or_create(namespace).await?;
        let client = self.authenticate(namespace, &identity).await?;
        Ok((Identities { namespace: identity, operator: self.operator.clone() }, client))
    }

    /// Reads the namespace's Secret, or creates it (leading only) with a new identity.
    async fn read_or_create(&self, namespace: &str) -> Result<DigestIdentity, Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let existing = secrets
            .get_opt(CREDENTIALS_SECRET)
            .await
            .map_err(Error::kube(format!("reading Secret {CREDENTIALS_SECRET}"), namespace))?;
        if let Some(secret) = existing {
            let raw = secret.data.and_then(|d| d.get(CREDENTIALS_KEY).cloned()).map(|b| b.0).unwrap_or_default();
            return DigestIdentity::parse(&String::from_utf8_lossy(&raw))
                .map_err(|e| Error::BadCredentials { namespace: namespace.to_owned(), reason: e.to_string() });
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
        let path = format!("{}/{namespace}", self.root);
        let at = At::new(Step::Authenticate, &path, namespace, &user(&self.operator));
        let current = self.session.client().map_err(|e| at.clone().session(e))?;
        let key = (current.generation, namespace.to_owned());
        if !self.authed.lock().expect("not poisoned").contains(&key) {
            current.client.auth("digest", identity.credentials().as_bytes()).await.map_err(|e| at.zk(e))?;
            self.authed.lock().expect("not poisoned").insert(key);
        }
        Ok(current.client)
    }
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
        assert_eq!(user(&DigestIdentity::parse("paddock-operator:pw2").unwrap()), "paddock-operator");
    }
}
