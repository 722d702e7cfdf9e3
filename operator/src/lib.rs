//! paddock-operator's library: the custom resources, the reconcile pipeline's steps and
//! the controllers that drive them, and the sidecar-injection webhook.

pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod throttle;
pub mod validate;
pub mod webhook;
