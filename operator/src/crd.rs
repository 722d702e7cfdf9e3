//! The custom resources: `DistributedLock` (dlock) and `WorkQueue` (wq), group
//! `paddock.dev`, version `v1alpha1`, namespaced, category `paddock`. `paddock-operator
//! crd` prints their CRDs; `crds/` holds that output (a test fails when it is stale).

// kube's `printcolumn(name = .., type_ = ..)` repeats keys per column, which clippy's
// duplicated_attributes lint mistakes for a repeated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happens to the znodes when the resource is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Locks: delete. Queues: delete only when empty; keep (and say so) otherwise.
    #[default]
    Retain,
    /// Delete the znodes, also of a queue that still holds items.
    Delete,
}

/// A distributed lock (a mutex, or a semaphore with `maxHolders` > 1) with fencing tokens.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "paddock.dev",
    version = "v1alpha1",
    kind = "DistributedLock",
    namespaced,
    shortname = "dlock",
    category = "paddock",
    status = "DistributedLockStatus",
    doc = "A distributed lock kept in ZooKeeper; apps take it through their Paddock sidecar",
    printcolumn(name = "Holder", type_ = "string", json_path = ".status.holders[0].pod"),
    printcolumn(name = "Waiters", type_ = "integer", json_path = ".status.waiters"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DistributedLockSpec {
    /// How many may hold the lock at once: 1 is a mutex, more a semaphore.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_holders: u32,
    /// Lease for acquires that name no `ttl`, e.g. "30s"; none: held until released or
    /// until the holder's session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms')").message("ttl must be at least 100ms"))]
    pub ttl: Option<String>,
    /// After a holder vanished without releasing (session expired, lease elapsed, node
    /// deleted), nobody is granted the lock for this long, e.g. "5s"; at most 60s; none: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('60s')").message("lockDelay must be at most 60s"))]
    pub lock_delay: Option<String>,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DistributedLockStatus {
    /// The lock's znode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub holders: Vec<Holder>,
    #[serde(default)]
    pub waiters: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Holder {
    pub pod: String,
    pub owner: String,
    pub token: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// A work queue kept in ZooKeeper: at-least-once, nothing lost.
#[derive(CustomResource, KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "paddock.dev",
    version = "v1alpha1",
    kind = "WorkQueue",
    namespaced,
    shortname = "wq",
    category = "paddock",
    status = "WorkQueueStatus",
    doc = "A work queue kept in ZooKeeper; apps enqueue and consume through their Paddock sidecar",
    printcolumn(name = "Depth", type_ = "integer", json_path = ".status.depth"),
    printcolumn(name = "In flight", type_ = "integer", json_path = ".status.inFlight"),
    printcolumn(name = "Dead", type_ = "integer", json_path = ".status.deadLettered"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkQueueSpec {
    /// Deliveries before an item is dead-lettered.
    #[serde(default = "five")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_attempts: u32,
    /// How long a consumer may hold an item before it goes to another, e.g. "5m".
    #[serde(default = "five_minutes")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("visibilityTimeout must be at least 1s"))]
    pub visibility_timeout: String,
    /// Payload limit in bytes; at most 1,000,000 (what a znode holds with the envelope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_payload_bytes: Option<u32>,
    /// The longest visibility one extend may ask for, e.g. "1h"; none: 12h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')").message("maxVisibility must be at least 1s"))]
    pub max_visibility: Option<String>,
    /// How long an Idempotency-Key is remembered, e.g. "10m"; none: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(
        validation = Rule::new("duration(self) >= duration('1s')").message("deduplicationWindow must be at least 1s")
    )]
    pub deduplication_window: Option<String>,
    /// Back-off before an item nacked without a delay, or given back by the visibility
    /// timeout, is ready again; none: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Retain (default) keeps a queue that still holds items when the resource is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Redeliveries wait initialDelay × multiplier^(attempt−1), at most maxDelay.
#[derive(KubeSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[x_kube(
    validation = Rule::new("duration(self.maxDelay) >= duration(self.initialDelay)")
        .message("retry.maxDelay must not be shorter than retry.initialDelay")
)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// The wait after the first delivery, e.g. "1s".
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub initial_delay: String,
    /// The longest wait, e.g. "5m"; at least initialDelay.
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_delay: String,
    /// Each further delivery's wait is the previous one's times this; at least 1.
    #[serde(default = "two")]
    #[schemars(range(min = 1))]
    pub multiplier: f64,
}

/// What a spec that sets nothing but its name gets: the serde defaults of each field.
impl Default for WorkQueueSpec {
    fn default() -> Self {
        Self {
            max_attempts: five(),
            visibility_timeout: five_minutes(),
            max_payload_bytes: None,
            max_visibility: None,
            deduplication_window: None,
            retry: None,
            deletion_policy: DeletionPolicy::default(),
        }
    }
}

fn five() -> u32 {
    5
}

fn two() -> f64 {
    2.0
}

fn five_minutes() -> String {
    "5m".to_owned()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkQueueStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub depth: u64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub delayed: u64,
    #[serde(default)]
    pub dead_lettered: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Both CRDs as one YAML stream, as `paddock-operator crd` prints and `crds/` holds.
pub fn crds_yaml() -> String {
    [DistributedLock::crd(), WorkQueue::crd()]
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("CRDs serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}
