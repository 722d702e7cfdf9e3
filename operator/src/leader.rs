//! Leader election over a coordination.k8s.io Lease, so two operator replicas never
//! reconcile at once — as client-go's leaderelection does it:
//!
//! - The leader renews every `retry_period`. It leads only until `renew_deadline` (2/3 of
//!   the lease, client-go's 10 s for 15 s) after the start of its last successful renewal:
//!   every request is timed out at that deadline, and [`Leadership::is_leading`] turns
//!   false at it by the monotonic clock — also when the process was paused (SIGSTOP, a
//!   frozen VM) and resumes past it, before any of its tasks got to run. The reconciles
//!   check it, so a leader that lost track of time acts on nothing.
//! - Another replica takes the lease over only when it has seen the same lease record
//!   unchanged for the whole `lease_duration` by its own monotonic clock (no comparison
//!   of clocks of different machines), or when the lease is free. The leader stops a third
//!   of the lease before anyone may take over. Takeovers are optimistic updates
//!   (resourceVersion), so two cannot win.
//! - On shutdown, or when it stops leading, the leader gives the lease up at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

/// Whether this replica leads now. Cheap to clone; shared by the election (which extends
/// it on every renewal) and the controllers (which check it before they act).
#[derive(Debug, Clone)]
pub struct Leadership {
    until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Not leading until an election says so.
    pub fn new() -> Self {
        Self { until: Arc::new(Mutex::new(None)) }
    }

    /// Leading for good (tools and tests that run no election).
    pub fn always() -> Self {
        Self { until: Arc::new(Mutex::new(Some(Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)))) }
    }

    pub fn is_leading(&self) -> bool {
        self.until.lock().expect("not poisoned").is_some_and(|until| Instant::now() < until)
    }

    fn lead_until(&self, until: Instant) {
        *self.until.lock().expect("not poisoned") = Some(until);
    }

    fn deadline(&self) -> Option<Instant> {
        *self.until.lock().expect("not poisoned")
    }

    fn stop(&self) {
        *self.until.lock().expect("not poisoned") = None;
    }
}

impl Default for Leadership {
    fn default() -> Self {
        Self::new()
    }
}

/// An identity for the Lease when the pod's name is not known: the host's name and a
/// random part, so that replicas whose containers all run as pid 1 never share one.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "paddock-operator".to_owned());
    format!("{host}-{}", random_hex())
}

/// 128 random bits as hex.
fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The lease record as last seen, and when (by this replica's clock).
#[derive(Debug)]
struct Observed {
    record: (Option<String>, Option<MicroTime>, Option<i32>),
    at: Instant,
}

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    leadership: Leadership,
    observed: Mutex<Option<Observed>>,
}

/// Why [`LeaderElection::hold`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// Another replica holds the lease.
    TakenOver,
    /// No renewal succeeded before the renew deadline (API trouble, or this process was
    /// paused past it).
    RenewDeadline,
}

impl LeaderElection {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
        leadership: Leadership,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
            leadership,
            observed: Mutex::new(None),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        loop {
            let started = Instant::now();
            match tokio::time::timeout(self.renew_deadline, self.try_lead()).await {
                Ok(Ok(true)) => {
                    self.leadership.lead_until(started + self.renew_deadline);
                    tracing::info!(identity = self.identity, lease = self.name, "leading");
                    return;
                }
                Ok(Ok(false)) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, lease = self.name, "leader election"),
                Err(_) => {
                    tracing::warn!(lease = self.name, timeout = ?self.renew_deadline, "leader election timed out")
                }
            }
            tokio::time::sleep(self.retry_period).await;
        }
    }

    /// Renews the lease until this replica stops leading: another took it, or no renewal
    /// succeeded before the renew deadline. Leadership has ended when it returns.
    pub async fn hold(&self) -> Lost {
        let lost = loop {
            tokio::time::sleep(self.retry_period).await;
            let started = Instant::now();
            let Some(deadline) = self.leadership.deadline().filter(|d| started < *d) else {
                break Lost::RenewDeadline;
            };
            match tokio::time::timeout_at(deadline, self.try_lead()).await {
                Ok(Ok(true)) => self.leadership.lead_until(started + self.renew_deadline),
                Ok(Ok(false)) => break Lost::TakenOver,
                Ok(Err(err)) => tracing::warn!(error = %err, lease = self.name, "could not renew the lease"),
                Err(_) => break Lost::RenewDeadline,
            }
        };
        self.leadership.stop();
        match lost {
            Lost::TakenOver => tracing::warn!(identity = self.identity, "lost the lease to another replica"),
            Lost::RenewDeadline => tracing::warn!(
                identity = self.identity,
                renew_deadline = ?self.renew_deadline,
                "stopped leading: the lease was not renewed within the renew deadline"
            ),
        }
        lost
    }

    /// Gives the lease up (shutdown, or leadership ended), so another replica leads at
    /// once. Only while it is still ours; bounded by the renew deadline.
    pub async fn release(&self) {
        self.leadership.stop();
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
            if let Some(spec) = lease.spec.as_mut()
                && spec.holder_identity.as_deref() == Some(&self.identity)
            {
                spec.holder_identity = None;
                spec.renew_time = None;
                self.api.replace(&self.name, &PostParams::default(), &lease).await?;
            }
            Ok::<_, kube::Error>(())
        };
        match tokio::time::timeout(self.renew_deadline, release).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, lease = self.name, "could not give the lease up"),
            Err(_) => tracing::warn!(lease = self.name, "giving the lease up timed out"),
        }
    }

    /// Takes or renews the lease if it is free, expired or ours.
    async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(&self.identity);
        let expired = current.holder_identity.is_none() || self.unchanged_for_a_lease(&current);
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + if ours { 0 } else { 1 };
        lease.spec = Some(spec(transitions, if ours { current.acquire_time } else { None }));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether this replica has seen `current` unchanged for the lease duration it states.
    fn unchanged_for_a_lease(&self, current: &LeaseSpec) -> bool {
        let record = (current.holder_identity.clone(), current.renew_time.clone(), current.lease_transitions);
        let duration = Duration::from_secs(current.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let mut observed = self.observed.lock().expect("not poisoned");
        match observed.as_ref() {
            Some(seen) if seen.record == record => seen.at.elapsed() >= duration,
            _ => {
                *observed = Some(Observed { record, at: Instant::now() });
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_without_a_pod_name_get_identities_of_their_own() {
        let (a, b) = (default_identity(), default_identity());
        assert_ne!(a, b);
        assert!(!a.ends_with(&format!("-{}", std::process::id())), "{a}");
    }

    #[test]
    fn leadership_ends_at_its_deadline_whoever_asks() {
        let leadership = Leadership::new();
        assert!(!leadership.is_leading());
        let deadline = Instant::now() + Duration::from_millis(50);
        leadership.lead_until(deadline);
        assert!(leadership.is_leading());
        let other = leadership.clone();
        std::thread::sleep(deadline - Instant::now());
        assert!(!other.is_leading(), "not a moment past the deadline");
        assert!(!leadership.is_leading());
    }
}
