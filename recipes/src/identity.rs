//! Who may touch a namespace's znodes. Each namespace has its own ZooKeeper identity —
//! digest (`user:password`, kept in a Secret in that namespace) or, with TLS, x509 (a client
//! certificate whose subject is the id, see [`ZkId`]); its znodes carry an ACL for that
//! identity and the operator's only, so one namespace's sidecar cannot read or change
//! another's locks and queues.
//!
//! ZooKeeper ACLs are per node, not inherited: the operator provisions each namespace's
//! nodes with [`acl_for`] (or [`namespace_acl`] for digest), and a sidecar authenticated as
//! its namespace creates its nodes (contenders, items, claims) with [`NodeAcl::Creator`] —
//! full rights for its own identity alone; the operator reads those by adding the
//! namespace's digest credentials to its own session. A certificate cannot be added to
//! another session, so a sidecar with a certificate uses [`NodeAcl::CreatorAnd`] naming
//! the operator's x509 id instead.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::zk;

/// A digest identity: `user:password`.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestIdentity {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for DigestIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DigestIdentity({}:***)", self.user)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("digest credentials must be user:password with neither empty")]
pub struct IdentityError;

impl DigestIdentity {
    pub fn parse(credentials: &str) -> Result<Self, IdentityError> {
        match credentials.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(Self { user: user.to_owned(), password: password.to_owned() })
            }
            _ => Err(IdentityError),
        }
    }

    /// A new identity with a random 244-bit password.
    pub fn generate(user: &str) -> Self {
        let password = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        Self { user: user.to_owned(), password }
    }

    /// `user:password`, for `addauth digest` and `PADDOCK_ZK_AUTH`.
    pub fn credentials(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }

    /// The id ZooKeeper's digest scheme matches: `user:base64(sha1(user:password))`.
    pub fn acl_id(&self) -> String {
        let hash = Sha1::digest(self.credentials().as_bytes());
        format!("{}:{}", self.user, base64::engine::general_purpose::STANDARD.encode(hash))
    }
}

/// The ACL of a namespace's provisioned nodes: its identity and the operator's, all rights.
pub fn namespace_acl(namespace: &DigestIdentity, operator: &DigestIdentity) -> Vec<zk::Acl> {
    vec![
        zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("digest", &namespace.acl_id())),
        zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("digest", &operator.acl_id())),
    ]
}

/// A ZooKeeper identity an ACL can name: a digest user, or an x509 certificate subject as
/// ZooKeeper's `X509AuthenticationProvider` writes it (RFC 2253, e.g. `CN=paddock-ns-shop,O=paddock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZkId {
    Digest(DigestIdentity),
    X509(String),
}

impl ZkId {
    pub fn auth_id(&self) -> zk::AuthId {
        match self {
            ZkId::Digest(identity) => zk::AuthId::new("digest", &identity.acl_id()),
            ZkId::X509(subject) => zk::AuthId::new("x509", subject),
        }
    }

    /// How errors and logs name it: the digest user, or the certificate subject.
    pub fn name(&self) -> String {
        match self {
            ZkId::Digest(identity) => identity.user.clone(),
            ZkId::X509(subject) => format!("x509 {subject}"),
        }
    }
}

/// All rights for each of `ids`.
pub fn acl_for(ids: &[&ZkId]) -> Vec<zk::Acl> {
    ids.iter().map(|id| zk::Acl::new(zk::Permission::ALL, id.auth_id())).collect()
}

/// How nodes that a sidecar or consumer creates are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeAcl {
    /// World-readable and writable: a deployment without per-namespace identities.
    #[default]
    Open,
    /// Full rights for the creating session's authenticated identity only.
    Creator,
    /// Full rights for the creating session's identity and the ids listed after the first
    /// entry (the operator's x509 subject: ZooKeeper cannot add a certificate identity to
    /// another session, so the operator can read a namespace's nodes only if they name it).
    CreatorAnd(&'static [zk::Acl]),
}

impl NodeAcl {
    /// Creator when the session is authenticated, else open.
    pub fn for_session(authenticated: bool) -> Self {
        if authenticated { NodeAcl::Creator } else { NodeAcl::Open }
    }

    /// The creator and `x509` subject `also`, full rights each (made once per process).
    pub fn creator_and_x509(also: &str) -> Self {
        let acl = vec![
            zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()),
            zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("x509", also)),
        ];
        NodeAcl::CreatorAnd(Vec::leak(acl))
    }

    pub fn acls(self) -> zk::Acls<'static> {
        match self {
            NodeAcl::Open => zk::Acls::anyone_all(),
            NodeAcl::Creator => zk::Acls::creator_all(),
            NodeAcl::CreatorAnd(acl) => zk::Acls::new(acl),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_ids_are_zookeepers_digest() {
        // `DigestAuthenticationProvider.generateDigest("super:test")` in ZooKeeper's docs.
        let id = DigestIdentity::parse("super:test").unwrap();
        assert_eq!(id.acl_id(), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
        assert!(DigestIdentity::parse("nopassword").is_err());
        assert!(!format!("{id:?}").contains("test"), "passwords stay out of logs");
    }

    #[test]
    fn x509_ids_name_the_subject() {
        let ids =
            [ZkId::X509("CN=paddock-ns-shop,O=paddock".into()), ZkId::Digest(DigestIdentity::parse("op:pw").unwrap())];
        let acl = acl_for(&[&ids[0], &ids[1]]);
        assert_eq!((acl[0].scheme(), acl[0].id()), ("x509", "CN=paddock-ns-shop,O=paddock"));
        assert_eq!(acl[1].scheme(), "digest");
        let NodeAcl::CreatorAnd(node) = NodeAcl::creator_and_x509("CN=op") else { panic!() };
        assert_eq!((node[0].scheme(), node[1].id()), ("auth", "CN=op"));
    }
}
