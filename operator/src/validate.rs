//! Validate a spec into the config its znode holds: plain functions, no client. What the
//! schema and CEL rules already enforce is checked again here, because an API server may
//! be older than the CRD (and tests need no server).

use std::time::Duration;

use paddock_recipes::config::MAX_LOCK_DELAY;
use paddock_recipes::{LockConfig, QueueConfig, RetryPolicy};

use crate::crd::{DistributedLockSpec, WorkQueueSpec};

/// A spec the operator cannot use; it waits for a change instead of retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn duration(field: &'static str, value: &str, min: Duration) -> Result<Duration, Invalid> {
    let parsed = humantime::parse_duration(value)
        .map_err(|e| Invalid { field, reason: format!("{value:?} is not a duration like 30s or 5m ({e})") })?;
    if parsed < min {
        return Err(Invalid {
            field,
            reason: format!("{value} is below the minimum {}", humantime::format_duration(min)),
        });
    }
    Ok(parsed)
}

pub fn lock(spec: &DistributedLockSpec) -> Result<LockConfig, Invalid> {
    if spec.max_holders == 0 {
        return Err(Invalid { field: "spec.maxHolders", reason: "must be at least 1".into() });
    }
    let default_ttl = spec.ttl.as_deref().map(|t| duration("spec.ttl", t, Duration::from_millis(100))).transpose()?;
    let lock_delay = spec.lock_delay.as_deref().map(|d| duration("spec.lockDelay", d, Duration::ZERO)).transpose()?;
    if let Some(delay) = lock_delay
        && delay > MAX_LOCK_DELAY
    {
        let value = spec.lock_delay.as_deref().unwrap_or_default();
        return Err(Invalid { field: "spec.lockDelay", reason: format!("{value} is above the maximum 60s") });
    }
    // Only when set and not zero: a 0.1.0 sidecar rejects keys it does not know.
    let lock_delay = lock_delay.filter(|d| !d.is_zero());
    Ok(LockConfig { max_holders: spec.max_holders, default_ttl, lock_delay })
}

pub fn queue(spec: &WorkQueueSpec) -> Result<QueueConfig, Invalid> {
    if spec.max_attempts == 0 {
        return Err(Invalid { field: "spec.maxAttempts", reason: "must be at least 1".into() });
    }
    let visibility_timeout = duration("spec.visibilityTimeout", &spec.visibility_timeout, Duration::from_secs(1))?;
    if let Some(limit) = spec.max_payload_bytes
        && (limit == 0 || limit as usize > paddock_recipes::queue::item::MAX_PAYLOAD_BYTES)
    {
        return Err(Invalid { field: "spec.maxPayloadBytes", reason: format!("{limit} is not between 1 and 1000000") });
    }
    let max_visibility = spec
        .max_visibility
        .as_deref()
        .map(|d| duration("spec.maxVisibility", d, Duration::from_secs(1)))
        .transpose()?;
    let deduplication_window = spec
        .deduplication_window
        .as_deref()
        .map(|d| duration("spec.deduplicationWindow", d, Duration::from_secs(1)))
        .transpose()?;
    let retry = spec.retry.as_ref().map(retry).transpose()?;
    // Each key only when set: a 0.1.0 sidecar rejects keys it does not know.
    Ok(QueueConfig {
        max_attempts: spec.max_attempts,
        visibility_timeout,
        max_payload_bytes: spec.max_payload_bytes,
        max_visibility,
        deduplication_window,
        retry,
    })
}

fn retry(spec: &crate::crd::RetryPolicy) -> Result<RetryPolicy, Invalid> {
    let initial_delay = duration("spec.retry.initialDelay", &spec.initial_delay, Duration::ZERO)?;
    let max_delay = duration("spec.retry.maxDelay", &spec.max_delay, Duration::ZERO)?;
    if max_delay < initial_delay {
        return Err(Invalid {
            field: "spec.retry.maxDelay",
            reason: format!("{} is shorter than initialDelay {}", spec.max_delay, spec.initial_delay),
        });
    }
    if !(spec.multiplier.is_finite() && spec.multiplier >= 1.0) {
        return Err(Invalid {
            field: "spec.retry.multiplier",
            reason: format!("must be a number of at least 1, not {}", spec.multiplier),
        });
    }
    Ok(RetryPolicy { initial_delay, max_delay, multiplier: spec.multiplier })
}

#[cfg(test)]
mod tests {
    use paddock_recipes::config::to_znode;

    use super::*;
    use crate::crd::DeletionPolicy;

    fn lock_spec() -> DistributedLockSpec {
        DistributedLockSpec { max_holders: 1, ttl: None, lock_delay: None, deletion_policy: DeletionPolicy::Retain }
    }

    fn queue_spec() -> WorkQueueSpec {
        WorkQueueSpec { deletion_policy: DeletionPolicy::Retain, ..WorkQueueSpec::default() }
    }

    fn retry_spec(initial_delay: &str, max_delay: &str, multiplier: f64) -> Option<crate::crd::RetryPolicy> {
        Some(crate::crd::RetryPolicy { initial_delay: initial_delay.into(), max_delay: max_delay.into(), multiplier })
    }

    #[test]
    fn a_lock_spec_becomes_its_znode_config() {
        let config = lock(&DistributedLockSpec { max_holders: 3, ttl: Some("30s".into()), ..lock_spec() }).unwrap();
        let expected = LockConfig { max_holders: 3, default_ttl: Some(Duration::from_secs(30)), lock_delay: None };
        assert_eq!(config, expected);
        assert_eq!(lock(&lock_spec()).unwrap(), LockConfig::default());
    }

    /// `lockDelay` reaches the znode when set and not zero; a lock without it writes only
    /// the keys a 0.1.0 sidecar reads.
    #[test]
    fn lock_delay_is_written_only_when_set() {
        let written = |spec: &DistributedLockSpec| String::from_utf8(to_znode(&lock(spec).unwrap())).unwrap();
        assert_eq!(written(&lock_spec()), r#"{"maxHolders":1}"#);
        assert_eq!(
            written(&DistributedLockSpec { lock_delay: Some("0s".into()), ..lock_spec() }),
            r#"{"maxHolders":1}"#
        );
        let spec = DistributedLockSpec { lock_delay: Some("3s".into()), ..lock_spec() };
        assert_eq!(written(&spec), r#"{"maxHolders":1,"lockDelay":"3s"}"#);
        assert_eq!(lock(&spec).unwrap().lock_delay, Some(Duration::from_secs(3)));
        let spec = DistributedLockSpec { lock_delay: Some("60s".into()), ..lock_spec() };
        assert_eq!(lock(&spec).unwrap().lock_delay, Some(MAX_LOCK_DELAY));
        assert_eq!(LockConfig::from_znode("/l", written(&spec).as_bytes()).unwrap(), lock(&spec).unwrap());
    }

    #[test]
    fn bad_lock_specs_name_the_field() {
        let err = lock(&DistributedLockSpec { max_holders: 0, ..lock_spec() }).unwrap_err();
        assert_eq!(err.field, "spec.maxHolders");
        let err = lock(&DistributedLockSpec { ttl: Some("soon".into()), ..lock_spec() }).unwrap_err();
        assert_eq!(err.field, "spec.ttl");
        let err = lock(&DistributedLockSpec { ttl: Some("5ms".into()), ..lock_spec() }).unwrap_err();
        assert!(err.reason.contains("minimum"), "{err}");
        let err = lock(&DistributedLockSpec { lock_delay: Some("61s".into()), ..lock_spec() }).unwrap_err();
        assert_eq!(
            (err.field, err.to_string().as_str()),
            ("spec.lockDelay", "spec.lockDelay: 61s is above the maximum 60s")
        );
        let err = lock(&DistributedLockSpec { lock_delay: Some("2m".into()), ..lock_spec() }).unwrap_err();
        assert_eq!(err.field, "spec.lockDelay");
        let err = lock(&DistributedLockSpec { lock_delay: Some("a while".into()), ..lock_spec() }).unwrap_err();
        assert!(err.to_string().starts_with("spec.lockDelay: \"a while\" is not a duration"), "{err}");
    }

    #[test]
    fn a_queue_spec_becomes_its_znode_config() {
        let config = queue(&queue_spec()).unwrap();
        assert_eq!(config, QueueConfig::default(), "the CRD's defaults are the znode's defaults");
        let config = queue(&WorkQueueSpec { max_payload_bytes: Some(4096), ..queue_spec() }).unwrap();
        assert_eq!(config.max_payload_bytes, Some(4096));
    }

    /// A 0.1.0 sidecar rejects keys it does not know: a resource that sets none of the newer
    /// fields must write exactly the keys 0.1.0 reads.
    #[test]
    fn a_queue_without_the_newer_fields_writes_only_0_1_0_keys() {
        let written = String::from_utf8(to_znode(&queue(&queue_spec()).unwrap())).unwrap();
        assert_eq!(written, r#"{"maxAttempts":5,"visibilityTimeout":"5m"}"#);
        let spec = WorkQueueSpec { max_attempts: 3, visibility_timeout: "30s".into(), ..queue_spec() };
        let written = String::from_utf8(to_znode(&queue(&spec).unwrap())).unwrap();
        assert_eq!(written, r#"{"maxAttempts":3,"visibilityTimeout":"30s"}"#);
    }

    #[test]
    fn the_newer_queue_fields_reach_the_znode_when_set() {
        let spec = WorkQueueSpec { max_visibility: Some("1h".into()), ..queue_spec() };
        let config = queue(&spec).unwrap();
        assert_eq!(config, QueueConfig { max_visibility: Some(Duration::from_secs(3600)), ..QueueConfig::default() });
        assert_eq!(QueueConfig::from_znode("/q", &to_znode(&config)).unwrap(), config);

        let spec = WorkQueueSpec { deduplication_window: Some("90s".into()), ..queue_spec() };
        let config = queue(&spec).unwrap();
        assert_eq!(config.deduplication_window, Some(Duration::from_secs(90)));
        assert_eq!((config.max_visibility, config.retry.as_ref()), (None, None));
        assert_eq!(QueueConfig::from_znode("/q", &to_znode(&config)).unwrap(), config);

        let spec = WorkQueueSpec { retry: retry_spec("500ms", "1m", 3.0), ..queue_spec() };
        let config = queue(&spec).unwrap();
        let expected = RetryPolicy {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            multiplier: 3.0,
        };
        assert_eq!(config.retry, Some(expected));
        assert_eq!((config.max_visibility, config.deduplication_window), (None, None));
        assert_eq!(QueueConfig::from_znode("/q", &to_znode(&config)).unwrap(), config);
        let written = String::from_utf8(to_znode(&config)).unwrap();
        assert!(written.contains(r#""retry":{"initialDelay":"500ms","maxDelay":"1m","multiplier":3.0}"#), "{written}");

        // Equal delays are a fixed back-off.
        assert!(queue(&WorkQueueSpec { retry: retry_spec("2s", "2s", 1.0), ..queue_spec() }).is_ok());
    }

    /// A multiplier the resource leaves out is the CRD's default, and the znode's.
    #[test]
    fn a_retry_without_a_multiplier_doubles() {
        let spec: WorkQueueSpec = serde_json::from_str(r#"{"retry":{"initialDelay":"1s","maxDelay":"10s"}}"#).unwrap();
        assert_eq!(spec.retry.as_ref().map(|r| r.multiplier), Some(2.0));
        let unset: RetryPolicy = serde_json::from_str(r#"{"initialDelay":"1s","maxDelay":"10s"}"#).unwrap();
        assert_eq!(queue(&spec).unwrap().retry, Some(unset));
    }

    #[test]
    fn bad_queue_specs_name_the_field() {
        for (spec, field) in [
            (WorkQueueSpec { max_attempts: 0, ..queue_spec() }, "spec.maxAttempts"),
            (WorkQueueSpec { visibility_timeout: "500ms".into(), ..queue_spec() }, "spec.visibilityTimeout"),
            (WorkQueueSpec { visibility_timeout: "later".into(), ..queue_spec() }, "spec.visibilityTimeout"),
            (WorkQueueSpec { max_payload_bytes: Some(2_000_000), ..queue_spec() }, "spec.maxPayloadBytes"),
            (WorkQueueSpec { max_visibility: Some("500ms".into()), ..queue_spec() }, "spec.maxVisibility"),
            (WorkQueueSpec { max_visibility: Some("forever".into()), ..queue_spec() }, "spec.maxVisibility"),
            (WorkQueueSpec { deduplication_window: Some("0s".into()), ..queue_spec() }, "spec.deduplicationWindow"),
            (WorkQueueSpec { deduplication_window: Some("5".into()), ..queue_spec() }, "spec.deduplicationWindow"),
            (WorkQueueSpec { retry: retry_spec("soon", "1m", 2.0), ..queue_spec() }, "spec.retry.initialDelay"),
            (WorkQueueSpec { retry: retry_spec("1s", "later", 2.0), ..queue_spec() }, "spec.retry.maxDelay"),
            (WorkQueueSpec { retry: retry_spec("10s", "5s", 2.0), ..queue_spec() }, "spec.retry.maxDelay"),
            (WorkQueueSpec { retry: retry_spec("1s", "5s", 0.5), ..queue_spec() }, "spec.retry.multiplier"),
            (WorkQueueSpec { retry: retry_spec("1s", "5s", f64::NAN), ..queue_spec() }, "spec.retry.multiplier"),
        ] {
            assert_eq!(queue(&spec).unwrap_err().field, field);
        }
    }
}
