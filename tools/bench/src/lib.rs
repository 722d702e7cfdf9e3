//! Benchmarks: Paddock against the ensemble's own limit, Apache Curator and kazoo, on one
//! ensemble started for the run. Figures, never assertions: `scripts/bench.sh` runs them.

pub mod batched;
pub mod enqueue;
pub mod footprint;
pub mod limit;
pub mod locks;
pub mod peers;
pub mod queues;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use paddock_testkit::{Ensemble, PodClient, Sidecar, SidecarOptions, provision};

pub use stats::{Figure, Report};

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub cycles_per_client: usize,
    pub handoffs: usize,
    pub queue_items: usize,
    pub depths: Vec<usize>,
    pub wakeups: usize,
    /// Items per batched end-to-end variant, over `batched_rounds` turns.
    pub batched_items: usize,
    pub batched_rounds: usize,
    /// Claim cost: the two numbers of groups, the items in each queue, the claims timed.
    pub claim_groups: (usize, usize),
    pub claim_depth: usize,
    pub claims: usize,
    /// Turns of the `enqueue` part's variants.
    pub enqueue_rounds: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            cycles_per_client: 200,
            handoffs: 500,
            queue_items: 5_000,
            depths: vec![1_000, 100_000, 1_000_000],
            wakeups: 100,
            batched_items: 20_000,
            batched_rounds: 2,
            claim_groups: (10, 10_000),
            claim_depth: 30_000,
            claims: 1_000,
            enqueue_rounds: 5,
        }
    }

    /// A smoke run: every code path, tiny numbers (CI).
    pub fn quick() -> Self {
        Self {
            cycles_per_client: 10,
            handoffs: 30,
            queue_items: 200,
            depths: vec![1_000, 5_000],
            wakeups: 5,
            batched_items: 1_000,
            batched_rounds: 1,
            claim_groups: (10, 200),
            claim_depth: 600,
            claims: 50,
            enqueue_rounds: 1,
        }
    }
}

/// What every benchmark shares: the ensemble, a sidecar, the peers.
pub struct Bench {
    pub ensemble: Ensemble,
    pub sidecar: Sidecar,
    pub pod: PodClient,
    pub sidecar_binary: PathBuf,
    pub sizes: Sizes,
    pub peers: Option<peers::Peers>,
}

pub const NS: &str = "bench";

impl Bench {
    pub async fn start(sizes: Sizes, sidecar_binary: PathBuf, with_peers: bool) -> Result<Self> {
        let heap_mb = if sizes.depths.iter().any(|d| *d > 100_000) { 2048 } else { 512 };
        let ensemble = Ensemble::start_with(paddock_testkit::EnsembleOptions { heap_mb, ..Default::default() }).await?;
        let options = SidecarOptions::new(&sidecar_binary, ensemble.connect_string(), "bench-0", NS);
        let sidecar = Sidecar::start(options).await?;
        let pod = PodClient::new(sidecar.url(""));
        let peers = if with_peers { Some(peers::Peers::prepare()?) } else { None };
        Ok(Self { ensemble, sidecar, pod, sidecar_binary, sizes, peers })
    }

    pub async fn admin(&self) -> Result<zookeeper_client::Client> {
        provision::admin(&self.ensemble.connect_string()).await
    }

    /// Sum of `zk_packets_received` over the servers: requests the ensemble served.
    pub async fn packets_received(&self) -> Result<u64> {
        let mut total = 0;
        for i in 0..self.ensemble.len() {
            total += self.ensemble.packets_received(i).await?;
        }
        Ok(total)
    }
}

/// Runs the chosen benchmarks and returns the report.
pub async fn run(bench: &Bench, which: &[&str]) -> Result<Report> {
    let mut report = Report::default();
    let all = which.contains(&"all");
    let wants = |name: &str| all || which.contains(&name);
    if wants("limit") || wants("locks") {
        limit::run(bench, &mut report).await?;
    }
    if wants("locks") {
        locks::uncontended(bench, &mut report).await?;
        locks::handoff(bench, &mut report).await?;
    }
    // Before the queue benchmarks: their consumers' views go on removing old buckets and
    // groups in the background, which would fall on some of its turns and not others.
    if wants("enqueue") {
        enqueue::anatomy(bench, &mut report).await?;
    }
    if wants("queues") {
        queues::rates(bench, &mut report).await?;
        batched::throughput(bench, &mut report).await?;
        queues::wakeup(bench, &mut report).await?;
    } else if which.contains(&"batched") {
        batched::throughput(bench, &mut report).await?;
    }
    if wants("queue-depth") {
        queues::depth(bench, &mut report).await?;
    }
    if wants("footprint") {
        footprint::run(bench, &mut report).await?;
    }
    Ok(report)
}

/// A short pause between phases, so one phase's tail does not bleed into the next.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}
