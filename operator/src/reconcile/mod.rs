//! The reconcile pipeline, one step a file (STYLE.md): validate (`crate::validate`, no
//! client) -> build the desired znodes (no client) -> apply them -> observe status from
//! ZooKeeper; and cleanup for the finalizer. The controllers that drive these steps from
//! Kubernetes watches are not built yet.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod observe;

use paddock_recipes::identity::DigestIdentity;

/// The identities a namespace's znodes are protected for.
#[derive(Debug, Clone)]
pub struct Identities {
    pub namespace: DigestIdentity,
    pub operator: DigestIdentity,
}
