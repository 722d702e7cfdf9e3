//! The operator's Prometheus metrics, served at `/metrics`, all prefixed
//! `paddock_operator_`: `reconciles_total{kind}`, `reconcile_failures_total{kind,reason}`
//! and `reconcile_duration_seconds` for the controllers, `webhook_admissions_total{result}`
//! for the injection webhook.
//!
//! The figures of each resource's status are gauges too, labelled by the resource's
//! `namespace` and `name` (one series per resource and figure):
//! `queue_depth`, `queue_in_flight`, `queue_delayed`, `queue_dead_letters`,
//! `lock_holders`, `lock_waiters`; set at each successful reconcile, removed with the
//! resource.
//!
//! One registry per process ([`Metrics`]); each part gets a handle to its own metrics only
//! ([`ReconcileMetrics`], [`AdmissionMetrics`], [`StatusMetrics`]; cheap to clone, counting
//! into the same registry). The counters' label values are stable categories — a kind, an
//! error's [`reason`](crate::error::Error::reason), an admission's result — never names
//! of objects, so the number of series stays bounded.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The registry and the handles of the parts that count into it.
pub struct Metrics {
    registry: Registry,
    pub reconciles: ReconcileMetrics,
    pub admissions: AdmissionMetrics,
    pub status: StatusMetrics,
}

/// The figures of the resources' statuses.
#[derive(Clone, Default)]
pub struct StatusMetrics {
    pub queue_depth: Family<ObjectLabel, Gauge>,
    pub queue_in_flight: Family<ObjectLabel, Gauge>,
    pub queue_delayed: Family<ObjectLabel, Gauge>,
    pub queue_dead_letters: Family<ObjectLabel, Gauge>,
    pub lock_holders: Family<ObjectLabel, Gauge>,
    pub lock_waiters: Family<ObjectLabel, Gauge>,
}

/// A resource: its namespace and name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    pub namespace: String,
    pub name: String,
}

/// The controllers' metrics.
#[derive(Clone)]
pub struct ReconcileMetrics {
    reconciles: Family<KindLabel, Counter>,
    failures: Family<FailureLabel, Counter>,
    duration: Histogram,
}

/// The injection webhook's metric.
#[derive(Clone, Default)]
pub struct AdmissionMetrics {
    admissions: Family<ResultLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    kind: String,
    reason: String,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("paddock_operator");
        let reconciles = ReconcileMetrics {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        registry.register("reconciles", "Reconciles run, by kind", reconciles.reconciles.clone());
        registry.register("reconcile_failures", "Failed reconciles, by kind and reason", reconciles.failures.clone());
        registry.register("reconcile_duration_seconds", "How long a reconcile took", reconciles.duration.clone());
        let admissions = AdmissionMetrics::default();
        registry.register(
            "webhook_admissions",
            "Pods the injection webhook answered, by result (injected, skipped, denied, invalid)",
            admissions.admissions.clone(),
        );
        let status = StatusMetrics::default();
        for (name, help, family) in [
            ("queue_depth", "Items in the WorkQueue (ready, delayed, in flight)", &status.queue_depth),
            ("queue_in_flight", "Items of the WorkQueue claimed by a consumer", &status.queue_in_flight),
            ("queue_delayed", "Items of the WorkQueue not due yet", &status.queue_delayed),
            ("queue_dead_letters", "Dead letters of the WorkQueue", &status.queue_dead_letters),
            ("lock_holders", "Holders of the DistributedLock", &status.lock_holders),
            ("lock_waiters", "Contenders waiting for the DistributedLock", &status.lock_waiters),
        ] {
            registry.register(name, format!("{help}, as its status says"), family.clone());
        }
        Self { registry, reconciles, admissions, status }
    }

    /// The Prometheus text format of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ReconcileMetrics {
    /// Counts one reconcile of `kind` that took `took`, and its failure's reason if it failed.
    pub fn observe(&self, kind: &str, took: Duration, failure: Option<&str>) {
        self.reconciles.get_or_create(&KindLabel { kind: kind.into() }).inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(reason) = failure {
            self.failures.get_or_create(&FailureLabel { kind: kind.into(), reason: reason.into() }).inc();
        }
    }
}

impl StatusMetrics {
    /// Sets a resource's figures (name, value) in the families they belong to.
    pub fn set(&self, label: &ObjectLabel, figures: &[(&Family<ObjectLabel, Gauge>, u64)]) {
        for (family, value) in figures {
            family.get_or_create(label).set(i64::try_from(*value).unwrap_or(i64::MAX));
        }
    }

    /// Removes a deleted resource's series from every family.
    pub fn forget(&self, label: &ObjectLabel) {
        for family in [
            &self.queue_depth,
            &self.queue_in_flight,
            &self.queue_delayed,
            &self.queue_dead_letters,
            &self.lock_holders,
            &self.lock_waiters,
        ] {
            family.remove(label);
        }
    }
}

impl AdmissionMetrics {
    /// Counts one answer of the injection webhook.
    pub fn admitted(&self, result: &str) {
        self.admissions.get_or_create(&ResultLabel { result: result.into() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart's alerts and dashboard name only series the operator exports (the
    /// sidecar's are checked in its crate).
    #[test]
    fn the_charts_alerts_and_dashboard_name_only_metrics_that_exist() {
        let metrics = Metrics::new();
        metrics.reconciles.observe("WorkQueue", Duration::from_millis(1), Some("ZooKeeperUnavailable"));
        metrics.admissions.admitted("injected");
        let label = ObjectLabel { namespace: "ns".into(), name: "example".into() };
        let s = &metrics.status;
        let all = [
            &s.queue_depth,
            &s.queue_in_flight,
            &s.queue_delayed,
            &s.queue_dead_letters,
            &s.lock_holders,
            &s.lock_waiters,
        ];
        s.set(&label, &all.map(|family| (family, 1)));
        let exported = metrics.encode();
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/paddock");
        let mut checked = 0;
        for file in ["templates/monitoring.yaml", "dashboards/paddock.json"] {
            let text = std::fs::read_to_string(format!("{chart}/{file}")).unwrap();
            for name in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("paddock_operator_") {
                    let found = exported
                        .lines()
                        .filter(|l| !l.starts_with('#'))
                        .any(|l| l.split(['{', ' ']).next() == Some(name));
                    assert!(found, "{file} names {name}, which the operator does not export:\n{exported}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 5, "the chart's expressions were read ({checked} names)");
    }

    #[test]
    fn the_handles_count_into_the_one_registry() {
        let metrics = Metrics::new();
        let (reconciles, admissions) = (metrics.reconciles.clone(), metrics.admissions.clone());
        reconciles.observe("WorkQueue", Duration::from_millis(3), Some("ZooKeeperUnavailable"));
        admissions.admitted("injected");
        let text = metrics.encode();
        assert!(text.contains("paddock_operator_reconciles_total{kind=\"WorkQueue\"} 1"), "{text}");
        assert!(text.contains("reason=\"ZooKeeperUnavailable\""), "{text}");
        assert!(text.contains("paddock_operator_webhook_admissions_total{result=\"injected\"} 1"), "{text}");
    }
}
