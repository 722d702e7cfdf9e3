//! The reconcile pipeline, one step a file (STYLE.md): validate (`crate::validate`, no
//! client) -> build the desired znodes (no client) -> apply them -> observe status from
//! ZooKeeper; and cleanup for the finalizer. The controllers that drive these steps from
//! Kubernetes watches are not built yet.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod identity;
pub mod kind;
pub mod observe;
pub mod status;

pub use self::identity::Identities;
