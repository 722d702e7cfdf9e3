//! The nemesis: faults at random times from a seed, each undone before the next. The
//! kinds are taken in an order shuffled by the seed, all of them before any repeats, so
//! even a short run meets every kind.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use paddock_testkit::fault_proxy::{Match, op};
use rand::seq::SliceRandom as _;
use rand::{Rng, RngExt as _, SeedableRng as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, LEASE_DURATION, SESSION_TIMEOUT, TEAM_B};
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
    /// Lose the reply of a write (create, delete, setData, multi) of a busy pod's sidecar
    /// after the server applied it (its fault proxy closes the connection).
    LostReply,
    /// Cut a sidecar off every ZooKeeper server past its session timeout while its app
    /// goes on calling it (a node's network); a lock it held must be reported lost.
    CutOffSidecar,
    /// SIGSTOP the operator replica that leads past its renew deadline and its lease.
    PauseOperatorLeader,
}

/// Every write a lost reply may hit.
const WRITES: &[i32] =
    &[op::CREATE, op::CREATE2, op::CREATE_CONTAINER, op::CREATE_TTL, op::DELETE, op::SET_DATA, op::MULTI];
/// The lock a cut-off pod holds through its cut, to see it reported lost: the semaphore
/// `workers` of `default` (`examples/`), which no workload uses.
pub const WITNESS_LOCK: &str = "workers";
/// How long `CutOffSidecar` cuts a pod off: past its session timeout.
const CUT_OFF: Duration = Duration::from_secs(SESSION_TIMEOUT.as_secs() * 2);
/// How long `PauseOperatorLeader` stops the leader: past its renew deadline and lease.
const OPERATOR_PAUSE: Duration = Duration::from_secs(LEASE_DURATION.as_secs() * 4);

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::KillZkLeader,
        FaultKind::PauseZkFollower,
        FaultKind::PartitionZk,
        FaultKind::StopEnsemble,
        FaultKind::PauseSidecar,
        FaultKind::KillSidecar,
        FaultKind::KillOperatorLeader,
        FaultKind::LostReply,
        FaultKind::CutOffSidecar,
        FaultKind::PauseOperatorLeader,
    ];

    /// Whether the fault ends a pod's ZooKeeper session (its deliveries may be
    /// redelivered): its sidecar paused, killed or cut off.
    pub fn hits_a_pod(self) -> bool {
        matches!(self, FaultKind::PauseSidecar | FaultKind::KillSidecar | FaultKind::CutOffSidecar)
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
    /// What the nemesis itself saw go wrong while it injected the fault.
    pub violations: Vec<String>,
    /// What it checked and found right (the same words each time, to be counted).
    pub checks: Vec<String>,
}

/// What injecting one fault did and saw.
#[derive(Debug, Default)]
struct Injected {
    target: String,
    pod: Option<String>,
    violations: Vec<String>,
    checks: Vec<String>,
}

impl Injected {
    fn on(target: String) -> Self {
        Self { target, ..Default::default() }
    }

    fn on_pod(pod: &super::cluster::SimPod) -> Self {
        Self {
            target: format!("pod {}/{}", pod.namespace, pod.name),
            pod: Some(pod.name.clone()),
            ..Default::default()
        }
    }
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
        let quiet = Duration::from_millis(rng.random_range(1_500..4_500));
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
        let injected = inject(cluster, workloads, kind, &mut rng, outage).await?;
        let fault = Fault {
            kind,
            target: injected.target,
            pod: injected.pod,
            start,
            end: Instant::now(),
            violations: injected.violations,
            checks: injected.checks,
        };
        for violation in &fault.violations {
            println!("  VIOLATION: {violation}");
        }
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

/// Injects one fault and undoes it; returns its target and what it saw.
async fn inject(
    cluster: &mut Cluster,
    workloads: &Arc<Workloads>,
    kind: FaultKind,
    rng: &mut impl Rng,
    outage: Duration,
) -> Result<Injected> {
    let ensemble = &mut cluster.stack.ensemble;
    match kind {
        FaultKind::KillZkLeader => {
            let leader = ensemble.wait_for_leader(Duration::from_secs(60)).await?;
            ensemble.kill(leader);
            tokio::time::sleep(Duration::from_secs(3)).await;
            ensemble.restart(leader, Duration::from_secs(90)).await?;
            Ok(Injected::on(format!("ZooKeeper server {leader} (leader)")))
        }
        FaultKind::PauseZkFollower => {
            let leader = ensemble.wait_for_leader(Duration::from_secs(60)).await?;
            let follower = (leader + rng.random_range(1..ensemble.len())) % ensemble.len();
            ensemble.pause(follower)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            ensemble.resume(follower)?;
            ensemble.wait_until_serving(Duration::from_secs(90)).await?;
            Ok(Injected::on(format!("ZooKeeper server {follower} (follower)")))
        }
        FaultKind::PartitionZk => {
            let server = rng.random_range(0..ensemble.len());
            ensemble.partition(server)?;
            tokio::time::sleep(Duration::from_secs(8)).await;
            ensemble.heal(server)?;
            ensemble.wait_until_serving(Duration::from_secs(90)).await?;
            Ok(Injected::on(format!("ZooKeeper server {server}")))
        }
        FaultKind::StopEnsemble => {
            ensemble.stop_all();
            tokio::time::sleep(outage).await;
            ensemble.start_all(Duration::from_secs(90)).await?;
            Ok(Injected::on("every ZooKeeper server".to_owned()))
        }
        FaultKind::PauseSidecar => {
            // By turns, the pod whose counter client is between its read and its write and
            // the pod whose leader is mid-term, if one is: the pauses fencing tokens exist
            // for. Else any pod of `default`.
            let turn = workloads.pauses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let busy =
                wait_for_one(if turn.is_multiple_of(2) { &workloads.mid_section } else { &workloads.leading }).await;
            let index = pick_pod(cluster, busy, rng, |p| p.namespace == "default");
            let pod = &mut cluster.pods[index];
            pod.pause()?;
            tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(3)).await;
            pod.resume()?;
            Ok(Injected::on_pod(pod))
        }
        FaultKind::KillSidecar => {
            // A pod whose consumer is processing an item, if one is. Else any pod.
            let busy = wait_for_one(&workloads.processing).await;
            let index = pick_pod(cluster, busy, rng, |p| p.namespace == "default" || p.namespace == TEAM_B);
            let pod = &mut cluster.pods[index];
            pod.kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            pod.restart(workloads).await?;
            Ok(Injected::on_pod(pod))
        }
        FaultKind::KillOperatorLeader => {
            let leader = operator_leader(cluster).await?;
            let operator = &mut cluster.stack.operators[leader];
            operator.process.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            operator.restart()?;
            Ok(Injected::on(format!("operator {}", operator.pod_name())))
        }
        FaultKind::PauseOperatorLeader => {
            let leader = operator_leader(cluster).await?;
            cluster.stack.operators[leader].process.pause()?;
            tokio::time::sleep(OPERATOR_PAUSE).await;
            // While it sleeps, another replica must have taken the Lease.
            let holder = cluster.stack.operator_leader().await;
            let operator = &mut cluster.stack.operators[leader];
            operator.process.resume()?;
            let mut injected = Injected::on(format!("operator {}", operator.pod_name()));
            // Woken, it finds the Lease gone and exits to rejoin the election; its pod
            // would be restarted, and so it is here.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !operator.process.has_exited() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if operator.process.has_exited() {
                operator.restart()?;
                injected
                    .target
                    .push_str(" (it exited on waking, having lost the Lease, and was restarted as its pod would be)");
            }
            if holder == Some(leader) {
                injected.violations.push(format!(
                    "operator: the Lease still named {} after it was stopped for {OPERATOR_PAUSE:?} (lease {LEASE_DURATION:?}): no replica took over",
                    operator.pod_name()
                ));
            } else {
                injected.checks.push("another replica held the Lease while the leader was stopped".into());
            }
            Ok(injected)
        }
        FaultKind::LostReply => lose_a_reply(cluster, workloads, rng).await,
        FaultKind::CutOffSidecar => cut_off_a_pod(cluster, workloads, rng).await,
    }
}

/// The operator replica holding the Lease; a replica restarted by the last operator fault
/// may still be taking it. A replica that has exited (one that lost the Lease exits to
/// rejoin the election) is restarted first, as its pod would be.
async fn operator_leader(cluster: &mut Cluster) -> Result<usize> {
    for operator in &mut cluster.stack.operators {
        if operator.process.has_exited() {
            println!("  operator {} had exited: restarted, as its pod would be", operator.pod_name());
            operator.restart()?;
        }
    }
    for _ in 0..100 {
        if let Some(leader) = cluster.stack.operator_leader().await {
            return Ok(leader);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("no operator replica took the Lease within 20 s")
}

/// Arms the fault proxy of a busy pod to lose the reply of its next applied write (of a
/// kind drawn from the seed: any write, a queue's or a lock's), then lets the sidecar
/// reconnect. The sidecar must treat the write as "outcome unknown".
async fn lose_a_reply(cluster: &mut Cluster, workloads: &Arc<Workloads>, rng: &mut impl Rng) -> Result<Injected> {
    // What to hit, drawn from the seed: a queue's write of a pod whose consumer is busy
    // (claim, ack, enqueue), a lock write of a pod whose counter holds `orders`, a lock
    // write of team-b (semaphore and read/write holders), or any write of any pod.
    let (index, body_contains) = match rng.random_range(0..4) {
        0 => (
            pick_pod(cluster, wait_for_one(&workloads.processing).await, rng, |p| p.namespace == "default"),
            Some("/queues/"),
        ),
        1 => (
            pick_pod(cluster, wait_for_one(&workloads.mid_section).await, rng, |p| p.namespace == "default"),
            Some("/locks/"),
        ),
        2 => (pick_pod(cluster, None, rng, |p| p.namespace == TEAM_B), Some("/locks/")),
        _ => (pick_pod(cluster, None, rng, |_| true), None),
    };
    let pod = &cluster.pods[index];
    let rule = pod.proxy.lose_next_reply(Match { opcodes: WRITES, body_contains, ..Default::default() });
    let mut injected = Injected::on_pod(pod);
    injected.pod = None; // the session survives: not a pod fault
    let root = format!("/paddock/{}/", pod.namespace);
    match rule.wait(Duration::from_secs(5)).await {
        Ok(fired) => {
            let ops: Vec<String> = fired
                .operations()
                .iter()
                .map(|(opcode, path)| format!("{} {}", op_name(*opcode), path.strip_prefix(&root).unwrap_or(path)))
                .collect();
            injected.target =
                format!("{}: the reply of {} [{}]", injected.target, op_name(fired.opcode), ops.join(", "));
            // The sidecar reconnects (same session) within a moment.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(_) => {
            injected.target = format!(
                "{}: no applied write{} within 5 s",
                injected.target,
                body_contains.map(|p| format!(" under {p}")).unwrap_or_default()
            )
        }
    }
    Ok(injected)
}

/// Cuts a pod's sidecar off every ZooKeeper server for twice its session timeout while its
/// app goes on calling it, with a lock held through the cut: by the time ZooKeeper has
/// expired the session, the sidecar must tell the app the lock is lost, and after the
/// heal refuse its release as lost.
async fn cut_off_a_pod(cluster: &mut Cluster, workloads: &Arc<Workloads>, rng: &mut impl Rng) -> Result<Injected> {
    let busy = wait_for_one(&workloads.mid_section).await;
    let index = pick_pod(cluster, busy, rng, |p| p.namespace == "default");
    let pod = &mut cluster.pods[index];
    let client = pod.client();
    let mut injected = Injected::on_pod(pod);
    const OWNER: &str = "cut-off-witness";
    let witness =
        matches!(client.acquire(WITNESS_LOCK, OWNER, "5s").await, Ok(paddock_testkit::Acquire::Acquired { .. }));
    pod.proxy.blackhole();
    let cut = Instant::now();
    // Past the session timeout, and the app asks its sidecar about the lock.
    let asked_after = SESSION_TIMEOUT + Duration::from_secs(2);
    tokio::time::sleep(asked_after).await;
    let during = tokio::time::timeout(Duration::from_secs(2), client.lock_status(WITNESS_LOCK, OWNER)).await;
    tokio::time::sleep(CUT_OFF.saturating_sub(cut.elapsed())).await;
    pod.proxy.heal();
    let name = format!("{}/{}", pod.namespace, pod.name);
    if !witness {
        injected.target.push_str(" (it took no lock before the cut: the ensemble was busy)");
    } else {
        match during {
            Ok(Ok((200, body))) if body["state"] == "lost" => {
                injected.checks.push("its lock was reported lost while it was cut off".into())
            }
            Ok(Ok((status, body))) => injected.violations.push(format!(
                "cut-off: pod {name}, cut off from every ZooKeeper server for {asked_after:?} (session timeout {SESSION_TIMEOUT:?}), answered GET /lock/{WITNESS_LOCK} with {status} {body}: its app would go on acting on a lock ZooKeeper has given away"
            )),
            Ok(Err(err)) => injected.violations.push(format!(
                "cut-off: pod {name}, cut off for {asked_after:?}: GET /lock/{WITNESS_LOCK} failed: {err:#}"
            )),
            Err(_) => injected.violations.push(format!(
                "cut-off: pod {name}, cut off for {asked_after:?}: GET /lock/{WITNESS_LOCK} went unanswered for 2 s, so its app cannot learn the lock is lost"
            )),
        }
        // Healed: the release of the lost lock is refused as lost (it may take the sidecar
        // a moment to reconnect: a 503 is asked again).
        let mut release = client.release(WITNESS_LOCK, OWNER).await;
        for _ in 0..40 {
            if !matches!(release, Ok((503, _)) | Err(_)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            release = client.release(WITNESS_LOCK, OWNER).await;
        }
        match release {
            Ok((409, body)) if body["error"] == "lock-lost" => {
                injected.checks.push("the release of its lock was refused as lost after the heal".into())
            }
            other => injected.violations.push(format!(
                "cut-off: pod {name}: after the heal, the release of the lock it held through the cut answered {other:?}, not 409 lock-lost"
            )),
        }
    }
    Ok(injected)
}

fn op_name(opcode: i32) -> &'static str {
    match opcode {
        op::CREATE | op::CREATE2 => "create",
        op::CREATE_CONTAINER => "createContainer",
        op::CREATE_TTL => "createTtl",
        op::DELETE => "delete",
        op::SET_DATA => "setData",
        op::CHECK => "check",
        op::MULTI => "multi",
        _ => "op",
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
