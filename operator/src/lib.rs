//! paddock-operator's library: the custom resources and the reconcile pipeline's steps.

pub mod crd;
pub mod reconcile;
pub mod validate;
