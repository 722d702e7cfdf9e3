//! paddock-operator's library: the custom resources and the reconcile pipeline's plain
//! steps (validate, build). The controllers that apply them are the binary's.

pub mod crd;
pub mod validate;
