//! paddock-operator's library: the custom resources (`crd`), the reconcile pipeline's
//! steps (`validate`, `reconcile`), the controllers that drive them (`controller`) and
//! the leader election that lets one replica at a time do so (`leader`), the
//! sidecar-injection webhook (`webhook`), and the metrics of both (`metrics`).

pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod throttle;
pub mod validate;
pub mod webhook;
