//! paddock-operator's library: the custom resources (`crd`), the reconcile pipeline's
//! steps (`validate`, `reconcile`), the controllers that drive them (`controller`) and
//! the leader election that lets one replica at a time do so (`leader`), the
//! sidecar-injection webhook (`webhook`), the metrics of both (`metrics`), and the
//! restart of the managed ensemble when its servers' certificate is renewed
//! (`ensemble_certs`), its CA (`ensemble_ca`), and the Secrets the replicas share
//! (`shared_secret`).

pub mod controller;
pub mod crd;
pub mod ensemble_ca;
pub mod ensemble_certs;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod shared_secret;
pub mod throttle;
pub mod validate;
pub mod webhook;
