//! The config the operator writes into a lock's or queue's znode and the sidecar reads.
//! JSON with camelCase keys and durations as strings (`"30s"`, `"5m"`); empty data means
//! all defaults.
//!
//! Read tolerantly: a newer operator may write keys an older sidecar does not know (the
//! sidecar runs inside application pods and is upgraded only when they restart, so a
//! minor version of skew each way is normal). Unknown keys are ignored and reported to
//! the caller, which counts them; they are never fatal. Typos cannot reach a znode: the
//! operator writes configs from specs the CRD schema has validated.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} config in znode {path}: {reason}")]
pub struct ConfigError {
    pub kind: &'static str,
    pub path: String,
    pub reason: String,
}

/// A lock's config: data of `<root>/<ns>/locks/<name>`. `lockDelay` is written only when
/// set and non-zero (a 0.1.0 sidecar rejects keys it does not know); absent means none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LockConfig {
    /// How many may hold the lock at once: 1 is a mutex, N > 1 a semaphore.
    pub max_holders: u32,
    /// Lease for acquires that do not name a `ttl`; none means held until released or
    /// until the holder's session ends.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<Duration>,
    /// How long nobody is granted the lock after a holder vanished without releasing it
    /// (its session expired, its lease elapsed, its node was deleted), counted from when
    /// the acquirer learned of it; none (or zero) means no delay.
    #[serde(with = "humantime_serde", skip_serializing_if = "no_delay")]
    pub lock_delay: Option<Duration>,
}

fn no_delay(delay: &Option<Duration>) -> bool {
    delay.is_none_or(|d| d.is_zero())
}

/// The longest lock-delay a lock may have.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

impl Default for LockConfig {
    fn default() -> Self {
        Self { max_holders: 1, default_ttl: None, lock_delay: None }
    }
}

impl LockConfig {
    /// The lock-delay, zero when there is none.
    pub fn lock_delay(&self) -> Duration {
        self.lock_delay.unwrap_or(Duration::ZERO)
    }
}

/// A queue's config: data of `<root>/<ns>/queues/<name>`. The keys after the first three
/// are written only when a resource sets them (a 0.1.0 sidecar rejects keys it does not
/// know), and each one's absence means the older behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueueConfig {
    /// Deliveries before an item is dead-lettered.
    pub max_attempts: u32,
    /// How long a live consumer may hold an item before it is handed to another.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// Payload limit; none means the largest payload that fits a znode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u32>,
    /// The longest visibility one extend may ask for; none means
    /// [`DEFAULT_MAX_VISIBILITY`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_visibility: Option<Duration>,
    /// How long an idempotency key is remembered; none means
    /// [`DEFAULT_DEDUPLICATION_WINDOW`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub deduplication_window: Option<Duration>,
    /// The back-off before an item nacked without a delay, or given back by the
    /// visibility timeout, is ready again; none means at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// Visibility an extend may ask for when the queue does not say (SQS's limit).
pub const DEFAULT_MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// How long idempotency keys are remembered when the queue does not say.
pub const DEFAULT_DEDUPLICATION_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Exponential back-off of redeliveries: `initial_delay × multiplier^(attempt−1)`, at most
/// `max_delay`, where `attempt` counts the deliveries so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    #[serde(default = "RetryPolicy::default_multiplier")]
    pub multiplier: f64,
}

impl RetryPolicy {
    fn default_multiplier() -> f64 {
        2.0
    }

    /// The delay before the delivery after `attempt` deliveries (1 for the first).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let scaled = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        if scaled.is_finite() && scaled < self.max_delay.as_secs_f64() {
            Duration::from_secs_f64(scaled.max(0.0))
        } else {
            self.max_delay
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            visibility_timeout: Duration::from_secs(300),
            max_payload_bytes: None,
            max_visibility: None,
            deduplication_window: None,
            retry: None,
        }
    }
}

impl QueueConfig {
    pub fn max_visibility(&self) -> Duration {
        self.max_visibility.unwrap_or(DEFAULT_MAX_VISIBILITY)
    }

    pub fn deduplication_window(&self) -> Duration {
        self.deduplication_window.unwrap_or(DEFAULT_DEDUPLICATION_WINDOW)
    }

    /// How long an item waits before its next delivery when it comes back without a delay
    /// of its own, after `attempt` deliveries.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        self.retry.as_ref().map_or(Duration::ZERO, |retry| retry.delay_after(attempt))
    }
}

/// A config as read, with the keys this version does not know (ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<T> {
    pub config: T,
    pub unknown_fields: Vec<String>,
}

impl LockConfig {
    pub fn from_znode(path: &str, data: &[u8]) -> Result<Self, ConfigError> {
        Self::parse_znode(path, data).map(|p| p.config)
    }

    /// As [`LockConfig::from_znode`], also naming the keys it ignored.
    pub fn parse_znode(path: &str, data: &[u8]) -> Result<Parsed<Self>, ConfigError> {
        let (config, unknown_fields): (Self, _) = parse("lock", path, data)?;
        if config.max_holders == 0 {
            return Err(ConfigError {
                kind: "lock",
                path: path.to_owned(),
                reason: "maxHolders must be at least 1".into(),
            });
        }
        if config.lock_delay.is_some_and(|d| d > MAX_LOCK_DELAY) {
            return Err(ConfigError {
                kind: "lock",
                path: path.to_owned(),
                reason: format!("lockDelay must be at most {}s", MAX_LOCK_DELAY.as_secs()),
            });
        }
        Ok(Parsed { config, unknown_fields })
    }
}

impl QueueConfig {
    pub fn from_znode(path: &str, data: &[u8]) -> Result<Self, ConfigError> {
        Self::parse_znode(path, data).map(|p| p.config)
    }

    /// As [`QueueConfig::from_znode`], also naming the keys it ignored.
    pub fn parse_znode(path: &str, data: &[u8]) -> Result<Parsed<Self>, ConfigError> {
        let (config, unknown_fields): (Self, _) = parse("queue", path, data)?;
        let invalid = |reason: &str| ConfigError { kind: "queue", path: path.to_owned(), reason: reason.to_owned() };
        if config.max_attempts == 0 {
            return Err(invalid("maxAttempts must be at least 1"));
        }
        if config.visibility_timeout.is_zero() {
            return Err(invalid("visibilityTimeout must be positive"));
        }
        if config.max_visibility.is_some_and(|max| max.is_zero()) {
            return Err(invalid("maxVisibility must be positive"));
        }
        if config.deduplication_window.is_some_and(|window| window.is_zero()) {
            return Err(invalid("deduplicationWindow must be positive"));
        }
        if let Some(retry) = &config.retry {
            if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
                return Err(invalid("retry.multiplier must be a number of at least 1"));
            }
            if retry.max_delay < retry.initial_delay {
                return Err(invalid("retry.maxDelay must not be shorter than retry.initialDelay"));
            }
        }
        Ok(Parsed { config, unknown_fields })
    }
}

fn parse<T: Default + serde::de::DeserializeOwned>(
    kind: &'static str,
    path: &str,
    data: &[u8],
) -> Result<(T, Vec<String>), ConfigError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok((T::default(), Vec::new()));
    }
    let invalid = |e: serde_json::Error| ConfigError { kind, path: path.to_owned(), reason: e.to_string() };
    let mut unknown = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(data);
    let config =
        serde_ignored::deserialize(&mut deserializer, |field| unknown.push(field.to_string())).map_err(invalid)?;
    deserializer.end().map_err(invalid)?;
    Ok((config, unknown))
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
        let l = LockConfig { max_holders: 3, default_ttl: Some(Duration::from_millis(1500)), lock_delay: None };
        assert_eq!(LockConfig::from_znode("/p", &to_znode(&l)).unwrap(), l);
    }

    #[test]
    fn rejects_nonsense() {
        assert!(LockConfig::from_znode("/p", br#"{"maxHolders":0}"#).is_err());
        assert!(QueueConfig::from_znode("/p", br#"{"visibilityTimeout":"soon"}"#).is_err());
        assert!(QueueConfig::from_znode("/p", br#"{"maxAttempts":3} trailing"#).is_err());
    }

    /// A newer operator's config, read by this version: what it knows applies, the rest is
    /// named so it can be counted.
    #[test]
    fn keys_of_a_newer_operator_are_ignored_and_named() {
        let lock = LockConfig::parse_znode("/p/l", br#"{"maxHolders":1,"fairness":"strict"}"#).unwrap();
        assert_eq!(lock.config, LockConfig::default());
        assert_eq!(lock.unknown_fields, ["fairness"]);
        let queue = QueueConfig::parse_znode(
            "/p/q",
            br#"{"maxAttempts":2,"orderingKeys":true,"priorityAging":{"step":"1m"},"visibilityTimeout":"30s"}"#,
        )
        .unwrap();
        assert_eq!((queue.config.max_attempts, queue.config.visibility_timeout), (2, Duration::from_secs(30)));
        assert_eq!(queue.unknown_fields, ["orderingKeys", "priorityAging"]);
    }

    /// Keys a resource does not set are not written, so a 0.1.0 sidecar (which rejects
    /// unknown keys) reads the configs of queues that use no newer feature.
    #[test]
    fn a_queue_without_new_features_writes_only_the_keys_of_0_1_0() {
        let written = String::from_utf8(to_znode(&QueueConfig::default())).unwrap();
        assert_eq!(written, r#"{"maxAttempts":5,"visibilityTimeout":"5m"}"#);
    }

    /// `lockDelay` is read when present; a config without it (as 0.1.0 and every lock
    /// without the field write) means no delay, and it is written only when set.
    #[test]
    fn lock_delay_is_read_and_written_only_when_set() {
        let old = LockConfig::parse_znode("/p/l", br#"{"maxHolders":1,"defaultTtl":"30s"}"#).unwrap();
        assert!(old.unknown_fields.is_empty());
        assert_eq!((old.config.lock_delay, old.config.lock_delay()), (None, Duration::ZERO));
        let new = LockConfig::parse_znode("/p/l", br#"{"maxHolders":1,"lockDelay":"3s"}"#).unwrap();
        assert!(new.unknown_fields.is_empty(), "{:?}", new.unknown_fields);
        assert_eq!(new.config.lock_delay(), Duration::from_secs(3));
        assert_eq!(LockConfig::from_znode("/p", &to_znode(&new.config)).unwrap(), new.config);

        assert_eq!(String::from_utf8(to_znode(&LockConfig::default())).unwrap(), r#"{"maxHolders":1}"#);
        let zero = LockConfig { lock_delay: Some(Duration::ZERO), ..LockConfig::default() };
        assert_eq!(String::from_utf8(to_znode(&zero)).unwrap(), r#"{"maxHolders":1}"#, "zero is not written");
        let set = LockConfig { lock_delay: Some(Duration::from_millis(2500)), ..LockConfig::default() };
        assert_eq!(String::from_utf8(to_znode(&set)).unwrap(), r#"{"maxHolders":1,"lockDelay":"2s 500ms"}"#);
        assert!(LockConfig::from_znode("/p", br#"{"lockDelay":"61s"}"#).is_err(), "at most 60s");
        assert!(LockConfig::from_znode("/p", br#"{"lockDelay":"soon"}"#).is_err());
    }

    #[test]
    fn new_queue_keys_are_read_and_checked() {
        let c = QueueConfig::from_znode(
            "/p",
            br#"{"maxVisibility":"1h","deduplicationWindow":"30s","retry":{"initialDelay":"500ms","maxDelay":"4s","multiplier":2}}"#,
        )
        .unwrap();
        assert_eq!(c.max_visibility(), Duration::from_secs(3600));
        assert_eq!(c.deduplication_window(), Duration::from_secs(30));
        let delays: Vec<_> = (1..=5).map(|attempt| c.retry_delay(attempt)).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000].map(Duration::from_millis));
        assert_eq!(QueueConfig::from_znode("/p", &to_znode(&c)).unwrap(), c);
        assert_eq!(QueueConfig::default().retry_delay(3), Duration::ZERO);
        assert_eq!(QueueConfig::default().max_visibility(), DEFAULT_MAX_VISIBILITY);
        for bad in [
            r#"{"maxVisibility":"0s"}"#,
            r#"{"retry":{"initialDelay":"1s","maxDelay":"1s","multiplier":0.5}}"#,
            r#"{"retry":{"initialDelay":"2s","maxDelay":"1s"}}"#,
        ] {
            assert!(QueueConfig::from_znode("/p", bad.as_bytes()).is_err(), "{bad} is rejected");
        }
    }
}
