//! The nemesis: faults at random times from a seed, each undone before the next. The
//! kinds are taken in an order shuffled by the seed, all of them before any repeats, so
//! even a short run meets every kind.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use rand::seq::SliceRandom as _;
use rand::{Rng, RngExt as _, SeedableRng as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, SESSION_TIMEOUT, TEAM_B};
use super::workloads::Workloads;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum FaultKind {
    /// SIGKILL the ZooKeeper leader, restart it 3 s later.
    KillZkLeader,
    /// SIGSTOP a ZooKeeper follower for 5 s.
    PauseZkFollower,
    /// Cut one ZooKeeper server off the network for 8 s.
    PartitionZk,
    /// Stop the whole ensemble for 20 s.
    StopEnsemble,
    /// SIGSTOP a sidecar (and its app) past its session timeout.
    PauseSidecar,
    /// SIGKILL a sidecar (and its app) and start it again.
    KillSidecar,
    /// SIGKILL the operator replica that leads, restart it.
    KillOperatorLeader,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillZkLeader,
        FaultKind::PauseZkFollower,
        FaultKind::PartitionZk,
        FaultKind::StopEnsemble,
        FaultKind::PauseSidecar,
        FaultKind::KillSidecar,
        FaultKind::KillOperatorLeader,
    ];

    /// Whether the fault takes a pod's app down with its sidecar (its deliveries may be
    /// redelivered).
    pub fn hits_a_pod(self) -> bool {
        matches!(self, FaultKind::PauseSidecar | FaultKind::KillSidecar)
    }
}

/// One injected fault.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// What exactly: "server 2", "pod web-1", ...
    pub target: String,
    /// The pod it hit, for pod faults.
    pub pod: Option<String>,
    pub start: Instant,
    pub end: Instant,
}

/// Runs faults until `stop`, returning what it did. Faults never overlap.
pub async fn nemesis(
    cluster: &mut Cluster,
    workloads: &Arc<Workloads>,
    kinds: &[FaultKind],
    seed: u64,
    outage: Duration,
    started: Instant,
    stop: CancellationToken,
) -> Result<Vec<Fault>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<FaultKind> = Vec::new();
    let mut faults = Vec::new();
    loop {
        let quiet = Duration::from_millis(rng.random_range(2_000..6_000));
        tokio::select! {
            _ = stop.cancelled() => return Ok(faults),
            _ = tokio::time::sleep(quiet) => {}
        }
        if order.is_empty() {
            order = kinds.to_vec();
            order.shuffle(&mut rng);
        }
        let kind = order.pop().expect("refilled above");
        let start = Instant::now();
        let (target, pod) = inject(cluster, workloads, kind, &mut rng, outage).await?;
        let fault = Fault { kind, target, pod, start, end: Instant::now() };
        println!(
            "[{:>6.1}s] fault: {:?} on {} ({:.1} s)",
            (start - started).as_secs_f64(),
            kind,
            fault.target,
            (fault.end - start).as_secs_f64()
        );
        faults.push(fault);
    }
}

/// Injects one fault and undoes it; returns its target.
async fn inject(
    cluster: &mut Cluster,
    workloads: &Arc<Workloads>,
    kind: FaultKind,
    rng: &mut impl Rng,
    outage: Duration,
) -> Result<(String, Option<String>)> {
    let ensemble = &mut cluster.stack.ensemble;
    match kind {
        FaultKind::KillZkLeader => {
            let leader = ensemble.wait_for_leader(Duration::from_secs(60)).await?;
            ensemble.kill(leader);
            tokio::time::sleep(Duration::from_secs(3)).await;
            ensemble.restart(leader, Duration::from_secs(90)).await?;
            Ok((format!("ZooKeeper server {leader} (leader)"), None))
        }
        FaultKind::PauseZkFollower => {
            let leader = ensemble.wait_for_leader(Duration::from_secs(60)).await?;
            let follower = (leader + rng.random_range(1..ensemble.len())) % ensemble.len();
            ensemble.pause(follower)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            ensemble.resume(follower)?;
            ensemble.wait_until_serving(Duration::from_secs(90)).await?;
            Ok((format!("ZooKeeper server {follower} (follower)"), None))
        }
        FaultKind::PartitionZk => {
            let server = rng.random_range(0..ensemble.len());
            ensemble.partition(server)?;
            tokio::time::sleep(Duration::from_secs(8)).await;
            ensemble.heal(server)?;
            ensemble.wait_until_serving(Duration::from_secs(90)).await?;
            Ok((format!("ZooKeeper server {server}"), None))
        }
        FaultKind::StopEnsemble => {
            ensemble.stop_all();
            tokio::time::sleep(outage).await;
            ensemble.start_all(Duration::from_secs(90)).await?;
            Ok(("every ZooKeeper server".to_owned(), None))
        }
        FaultKind::PauseSidecar => {
            // The pod whose counter client is between its read and its write, if one is:
            // the pause fencing tokens exist for. Else any pod of `default`.
            let busy = wait_for_one(&workloads.mid_section).await;
            let index = pick_pod(cluster, busy, rng, |p| p.namespace == "default");
            let pod = &mut cluster.pods[index];
            pod.pause()?;
            tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(3)).await;
            pod.resume()?;
            Ok((format!("pod {}/{}", pod.namespace, pod.name), Some(pod.name.clone())))
        }
        FaultKind::KillSidecar => {
            // A pod whose consumer is processing an item, if one is. Else any pod.
            let busy = wait_for_one(&workloads.processing).await;
            let index = pick_pod(cluster, busy, rng, |p| p.namespace == "default" || p.namespace == TEAM_B);
            let pod = &mut cluster.pods[index];
            pod.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            pod.restart(workloads).await?;
            Ok((format!("pod {}/{}", pod.namespace, pod.name), Some(pod.name.clone())))
        }
        FaultKind::KillOperatorLeader => {
            // A replica restarted by the last such fault may still be taking the Lease.
            let mut leader = cluster.stack.operator_leader().await;
            for _ in 0..100 {
                if leader.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                leader = cluster.stack.operator_leader().await;
            }
            let leader = leader.context("no operator replica took the Lease within 20 s")?;
            let operator = &mut cluster.stack.operators[leader];
            operator.process.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            operator.restart()?;
            Ok((format!("operator {}", operator.pod_name()), None))
        }
    }
}

/// A pod busy at something worth interrupting, waiting up to 2 s for one.
async fn wait_for_one(busy: &super::workloads::Busy) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Some(pod) = busy.any() {
            return Some(pod);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn pick_pod(
    cluster: &Cluster,
    preferred: Option<String>,
    rng: &mut impl Rng,
    eligible: impl Fn(&super::cluster::SimPod) -> bool,
) -> usize {
    if let Some(index) = preferred.and_then(|name| cluster.pods.iter().position(|p| p.name == name)) {
        return index;
    }
    let candidates: Vec<usize> = (0..cluster.pods.len()).filter(|i| eligible(&cluster.pods[*i])).collect();
    candidates[rng.random_range(0..candidates.len())]
}
