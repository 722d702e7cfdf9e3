//! The reconcile pipeline, one step a file: validate (`crate::validate`, no client) ->
//! build the desired znodes (no client) -> apply them -> observe status from ZooKeeper ->
//! build the status (no client); cleanup for the finalizer; and the namespace identity
//! step before any of them that talks to ZooKeeper. [`kind::Kind`] is each step for a
//! DistributedLock and for a WorkQueue; the controllers (`crate::controller`) drive the
//! steps from Kubernetes watches, through one flow for both kinds.

pub mod apply;
pub mod build;
pub mod certificate;
pub mod cleanup;
pub mod identity;
pub mod kind;
pub mod observe;
pub mod status;

pub use self::identity::Identities;
