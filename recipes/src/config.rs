//! The config the operator writes into a lock's or queue's znode and the sidecar reads.
//! JSON with camelCase keys and durations as strings (`"30s"`, `"5m"`); empty data means
//! all defaults, and unknown keys are rejected so a typo is not silently ignored.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} config in znode {path}: {reason}")]
pub struct ConfigError {
    pub kind: &'static str,
    pub path: String,
    pub reason: String,
}

/// A lock's config: data of `<root>/<ns>/locks/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LockConfig {
    /// How many may hold the lock at once: 1 is a mutex, N > 1 a semaphore.
    pub max_holders: u32,
    /// Lease for acquires that do not name a `ttl`; none means held until released or
    /// until the holder's session ends.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<Duration>,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self { max_holders: 1, default_ttl: None }
    }
}

/// A queue's config: data of `<root>/<ns>/queues/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Deliveries before an item is dead-lettered.
    pub max_attempts: u32,
    /// How long a live consumer may hold an item before it is handed to another.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// Payload limit; none means the largest payload that fits a znode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u32>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { max_attempts: 5, visibility_timeout: Duration::from_secs(300), max_payload_bytes: None }
    }
}

impl LockConfig {
    pub fn from_znode(path: &str, data: &[u8]) -> Result<Self, ConfigError> {
        let config: Self = parse("lock", path, data)?;
        if config.max_holders == 0 {
            return Err(ConfigError {
                kind: "lock",
                path: path.to_owned(),
                reason: "maxHolders must be at least 1".into(),
            });
        }
        Ok(config)
    }
}

impl QueueConfig {
    pub fn from_znode(path: &str, data: &[u8]) -> Result<Self, ConfigError> {
        let config: Self = parse("queue", path, data)?;
        let invalid = |reason: &str| ConfigError { kind: "queue", path: path.to_owned(), reason: reason.to_owned() };
        if config.max_attempts == 0 {
            return Err(invalid("maxAttempts must be at least 1"));
        }
        if config.visibility_timeout.is_zero() {
            return Err(invalid("visibilityTimeout must be positive"));
        }
        Ok(config)
    }
}

fn parse<T: Default + serde::de::DeserializeOwned>(
    kind: &'static str,
    path: &str,
    data: &[u8],
) -> Result<T, ConfigError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(data).map_err(|e| ConfigError { kind, path: path.to_owned(), reason: e.to_string() })
}

/// Serializes a config for its znode.
pub fn to_znode<T: Serialize>(config: &T) -> Vec<u8> {
    serde_json::to_vec(config).expect("config types serialize infallibly")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_data_means_defaults() {
        assert_eq!(LockConfig::from_znode("/p", b"").unwrap(), LockConfig::default());
        assert_eq!(QueueConfig::from_znode("/p", b"  ").unwrap().max_attempts, 5);
    }

    #[test]
    fn round_trips_and_reads_durations() {
        let c = QueueConfig::from_znode("/p", br#"{"maxAttempts":3,"visibilityTimeout":"30s"}"#).unwrap();
        assert_eq!(c.visibility_timeout, Duration::from_secs(30));
        assert_eq!(QueueConfig::from_znode("/p", &to_znode(&c)).unwrap(), c);
        let l = LockConfig { max_holders: 3, default_ttl: Some(Duration::from_millis(1500)) };
        assert_eq!(LockConfig::from_znode("/p", &to_znode(&l)).unwrap(), l);
    }

    #[test]
    fn rejects_typos_and_nonsense() {
        let err = LockConfig::from_znode("/p/l", br#"{"maxHolder":3}"#).unwrap_err();
        assert!(err.reason.contains("maxHolder"), "{err}");
        assert!(LockConfig::from_znode("/p", br#"{"maxHolders":0}"#).is_err());
        assert!(QueueConfig::from_znode("/p", br#"{"visibilityTimeout":"soon"}"#).is_err());
    }
}
