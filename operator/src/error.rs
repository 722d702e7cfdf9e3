//! What a reconcile can fail with. Each kind says which step failed, on which znode or
//! object, in which namespace, and has its own reason: the Ready condition's reason, the
//! Event's, and the `reason` label of `paddock_operator_reconcile_failures_total`. Where a
//! person has to act (an ACL, a Secret, a config), the message says what to do.

use std::fmt;

use paddock_recipes::config::ConfigError;
use paddock_recipes::lock::LockError;
use paddock_recipes::queue::QueueError;
use paddock_recipes::session::SessionError;
use paddock_recipes::zk;

use crate::reconcile::identity::{CREDENTIALS_KEY, CREDENTIALS_SECRET};

/// The step of a reconcile that talked to ZooKeeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Adding the namespace's identity to the operator's session.
    Authenticate,
    /// Creating the znodes, putting their config and ACL right.
    Provision,
    /// Reading holders, waiters and counts for the status.
    Observe,
    /// Removing the znodes (the finalizer).
    Cleanup,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Authenticate => "adding the namespace's ZooKeeper identity for",
            Step::Provision => "provisioning",
            Step::Observe => "observing",
            Step::Cleanup => "cleaning up",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This replica does not lead (any more): it writes nothing.
    #[error("this replica does not lead")]
    NotLeading,
    /// The spec cannot be used; nothing is retried until it changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error(
        "namespace {namespace}: Secret {CREDENTIALS_SECRET} key {CREDENTIALS_KEY} is not user:password ({reason}); \
         delete the Secret and the operator makes a new identity (then restart the namespace's sidecars)"
    )]
    BadCredentials { namespace: String, reason: String },
    #[error("{step} {path} (namespace {namespace}): {source}")]
    NoSession {
        step: Step,
        path: String,
        namespace: String,
        #[source]
        source: SessionError,
    },
    #[error("{step} {path} (namespace {namespace}): ZooKeeper unavailable: {source}")]
    Unavailable {
        step: Step,
        path: String,
        namespace: String,
        #[source]
        source: zk::Error,
    },
    #[error(
        "{step} {path} (namespace {namespace}): ZooKeeper says NoAuth: the znode's ACL leaves out the operator's \
         identity ({operator}), so it cannot read its config. It was made by someone else or under another \
         PADDOCK_ZK_AUTH. Fix: delete it as ZooKeeper's super user (zkCli.sh deleteall {path}) and the operator \
         makes it again, or give the operator's identity access to it (setAcl)"
    )]
    AccessDenied { step: Step, path: String, namespace: String, operator: String },
    #[error("{step} {path} (namespace {namespace}): the znode does not exist")]
    Missing { step: Step, path: String, namespace: String },
    #[error(
        "{step} (namespace {namespace}): {source}. Fix: correct or delete the znode's data; the operator writes \
         the config its resource describes"
    )]
    BadConfig {
        step: Step,
        namespace: String,
        #[source]
        source: ConfigError,
    },
    #[error("{step} {path} (namespace {namespace}): ZooKeeper refused the credentials (AuthFailed)")]
    AuthFailed { step: Step, path: String, namespace: String },
    #[error("{step} {path} (namespace {namespace}): ZooKeeper: {source}")]
    ZooKeeper {
        step: Step,
        path: String,
        namespace: String,
        #[source]
        source: zk::Error,
    },
    #[error("{step} {path} (namespace {namespace}): {message}")]
    Recipe { step: Step, path: String, namespace: String, message: String },
    #[error("{action} (namespace {namespace}): Kubernetes API: {source}")]
    Kube {
        action: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A short, stable category for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotLeading => "NotLeading",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::BadCredentials { .. } => "CredentialsInvalid",
            Error::NoSession { .. } | Error::Unavailable { .. } => "ZooKeeperUnavailable",
            Error::AccessDenied { .. } => "ZnodeAccessDenied",
            Error::Missing { .. } => "ZnodeMissing",
            Error::BadConfig { .. } => "ConfigUnreadable",
            Error::AuthFailed { .. } => "ZooKeeperAuthFailed",
            Error::ZooKeeper { .. } | Error::Recipe { .. } => "ZooKeeperError",
            Error::Kube { .. } => "KubernetesApiError",
        }
    }

    /// Whether retrying may help without anyone changing the resource.
    pub fn retry(&self) -> bool {
        !matches!(self, Error::InvalidSpec(_) | Error::NotLeading)
    }

    pub fn kube(action: impl Into<String>, namespace: &str) -> impl FnOnce(kube::Error) -> Error {
        let (action, namespace) = (action.into(), namespace.to_owned());
        move |source| Error::Kube { action, namespace, source }
    }
}

/// Where a ZooKeeper call was made: turns its error into the kind that says what failed.
#[derive(Debug, Clone)]
pub struct At {
    pub step: Step,
    pub path: String,
    pub namespace: String,
    /// The operator's ZooKeeper user, named when its access is denied.
    pub operator: String,
}

impl At {
    pub fn new(step: Step, path: &str, namespace: &str, operator: &str) -> Self {
        Self { step, path: path.to_owned(), namespace: namespace.to_owned(), operator: operator.to_owned() }
    }

    pub fn at(&self, path: &str) -> Self {
        Self { path: path.to_owned(), ..self.clone() }
    }

    pub fn session(self, source: SessionError) -> Error {
        Error::NoSession { step: self.step, path: self.path, namespace: self.namespace, source }
    }

    pub fn zk(self, source: zk::Error) -> Error {
        let Self { step, path, namespace, operator } = self;
        match source {
            zk::Error::NoAuth => Error::AccessDenied { step, path, namespace, operator },
            zk::Error::NoNode => Error::Missing { step, path, namespace },
            zk::Error::AuthFailed => Error::AuthFailed { step, path, namespace },
            e if paddock_recipes::retry::unavailable(&e) => Error::Unavailable { step, path, namespace, source: e },
            e => Error::ZooKeeper { step, path, namespace, source: e },
        }
    }

    pub fn lock(self, source: LockError) -> Error {
        match source {
            LockError::NotProvisioned(path) => self.at(&path).zk(zk::Error::NoNode),
            LockError::Config(source) => Error::BadConfig { step: self.step, namespace: self.namespace, source },
            LockError::ZooKeeper(e) => self.zk(e),
            other => Error::Recipe {
                step: self.step,
                path: self.path,
                namespace: self.namespace,
                message: other.to_string(),
            },
        }
    }

    pub fn queue(self, source: QueueError) -> Error {
        match source {
            QueueError::NotProvisioned(path) => self.at(&path).zk(zk::Error::NoNode),
            QueueError::Config(source) => Error::BadConfig { step: self.step, namespace: self.namespace, source },
            QueueError::ZooKeeper(e) => self.zk(e),
            other => Error::Recipe {
                step: self.step,
                path: self.path,
                namespace: self.namespace,
                message: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> At {
        At::new(Step::Provision, "/paddock/shop/locks/orders", "shop", "paddock-operator")
    }

    #[test]
    fn each_kind_of_zookeeper_failure_has_its_own_reason_and_context() {
        let denied = at().zk(zk::Error::NoAuth);
        assert_eq!(denied.reason(), "ZnodeAccessDenied");
        let text = denied.to_string();
        assert!(text.contains("/paddock/shop/locks/orders") && text.contains("namespace shop"), "{text}");
        assert!(text.contains("deleteall /paddock/shop/locks/orders"), "names the fix: {text}");
        assert_eq!(at().zk(zk::Error::NoNode).reason(), "ZnodeMissing");
        assert_eq!(at().zk(zk::Error::ConnectionLoss).reason(), "ZooKeeperUnavailable");
        assert_eq!(at().zk(zk::Error::SessionExpired).reason(), "ZooKeeperUnavailable");
        assert_eq!(at().zk(zk::Error::BadVersion).reason(), "ZooKeeperError");
        let missing = at().queue(QueueError::NotProvisioned("/paddock/shop/queues/jobs".into()));
        assert!(missing.to_string().contains("/paddock/shop/queues/jobs"), "{missing}");
        let config = ConfigError { kind: "lock", path: "/paddock/shop/locks/orders".into(), reason: "bad".into() };
        assert_eq!(at().lock(LockError::Config(config)).reason(), "ConfigUnreadable");
    }
}
