//! Validate a spec into the config its znode holds: plain functions, no client. What the
//! schema and CEL rules already enforce is checked again here, because an API server may
//! be older than the CRD (and tests need no server).

use std::time::Duration;

use paddock_recipes::{LockConfig, QueueConfig};

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
    Ok(LockConfig { max_holders: spec.max_holders, default_ttl })
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
    Ok(QueueConfig {
        max_attempts: spec.max_attempts,
        visibility_timeout,
        max_payload_bytes: spec.max_payload_bytes,
        ..QueueConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DeletionPolicy;

    fn lock_spec() -> DistributedLockSpec {
        DistributedLockSpec { max_holders: 1, ttl: None, deletion_policy: DeletionPolicy::Retain }
    }

    fn queue_spec() -> WorkQueueSpec {
        WorkQueueSpec {
            max_attempts: 5,
            visibility_timeout: "5m".into(),
            max_payload_bytes: None,
            deletion_policy: DeletionPolicy::Retain,
        }
    }

    #[test]
    fn a_lock_spec_becomes_its_znode_config() {
        let config = lock(&DistributedLockSpec { max_holders: 3, ttl: Some("30s".into()), ..lock_spec() }).unwrap();
        assert_eq!(config, LockConfig { max_holders: 3, default_ttl: Some(Duration::from_secs(30)) });
        assert_eq!(lock(&lock_spec()).unwrap(), LockConfig::default());
    }

    #[test]
    fn bad_lock_specs_name_the_field() {
        let err = lock(&DistributedLockSpec { max_holders: 0, ..lock_spec() }).unwrap_err();
        assert_eq!(err.field, "spec.maxHolders");
        let err = lock(&DistributedLockSpec { ttl: Some("soon".into()), ..lock_spec() }).unwrap_err();
        assert_eq!(err.field, "spec.ttl");
        let err = lock(&DistributedLockSpec { ttl: Some("5ms".into()), ..lock_spec() }).unwrap_err();
        assert!(err.reason.contains("minimum"), "{err}");
    }

    #[test]
    fn a_queue_spec_becomes_its_znode_config() {
        let config = queue(&queue_spec()).unwrap();
        assert_eq!(config, QueueConfig::default(), "the CRD's defaults are the znode's defaults");
        let config = queue(&WorkQueueSpec { max_payload_bytes: Some(4096), ..queue_spec() }).unwrap();
        assert_eq!(config.max_payload_bytes, Some(4096));
    }

    #[test]
    fn bad_queue_specs_name_the_field() {
        for (spec, field) in [
            (WorkQueueSpec { max_attempts: 0, ..queue_spec() }, "spec.maxAttempts"),
            (WorkQueueSpec { visibility_timeout: "500ms".into(), ..queue_spec() }, "spec.visibilityTimeout"),
            (WorkQueueSpec { visibility_timeout: "later".into(), ..queue_spec() }, "spec.visibilityTimeout"),
            (WorkQueueSpec { max_payload_bytes: Some(2_000_000), ..queue_spec() }, "spec.maxPayloadBytes"),
        ] {
            assert_eq!(queue(&spec).unwrap_err().field, field);
        }
    }
}
