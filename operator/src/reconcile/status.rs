//! Status building: the Ready condition a reconcile leaves on its resource. Plain
//! functions, no client; the kind-specific fields come with the observe step
//! ([`super::kind::Kind::observe`]).
//!
//! Invariants: a status holds one condition, `Ready`, whose `observedGeneration` is the
//! generation reconciled and whose `lastTransitionTime` is kept unless its status changes
//! (Kubernetes API conventions), so an unchanged outcome builds an equal status and the
//! controller writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready=True`: the znodes are in place.
pub fn ready(previous: &[Condition], generation: Option<i64>) -> Condition {
    ready_condition(previous, true, "Provisioned", "znodes in place".into(), generation)
}

/// `Ready=False` with the failure's reason and message.
pub fn not_ready(previous: &[Condition], reason: &str, message: String, generation: Option<i64>) -> Condition {
    ready_condition(previous, false, reason, message, generation)
}

/// The Ready condition, keeping the lastTransitionTime of `previous` unless its status
/// changes.
pub fn ready_condition(
    previous: &[Condition],
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ready { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Provisioned".into(),
            message: "znodes in place".into(),
            observed_generation: Some(1),
            last_transition_time: Time(time.parse().unwrap()),
        }
    }

    #[test]
    fn ready_keeps_its_transition_time_unless_its_status_changes() {
        let before = [at("2026-01-01T00:00:00Z")];
        let same = ready_condition(&before, true, "Provisioned", "znodes in place".into(), Some(2));
        assert_eq!(same.last_transition_time, before[0].last_transition_time);
        let changed = ready_condition(&before, false, "ZooKeeperUnavailable", "down".into(), Some(2));
        assert!(changed.last_transition_time.0 > before[0].last_transition_time.0);
    }
}
