//! `bench`: Paddock against the ensemble's limit, Apache Curator and kazoo, side by side
//! on one 3-node ensemble started for the run. Prints one table with every figure and
//! the ratios computed in the run. `scripts/bench.sh` builds it in release mode and
//! installs the peers first.

use anyhow::{Context, Result};
use clap::Parser;
use paddock_bench::{self as bench, Bench, Sizes};

#[derive(Debug, Parser)]
#[command(about = "Benchmark Paddock against ZooKeeper's limit, Curator and kazoo")]
struct Args {
    /// What to run: all, limit, locks, queues (batched: only its batched rows), enqueue,
    /// queue-depth, footprint.
    #[arg(default_value = "all")]
    which: Vec<String>,
    /// Tiny sizes: checks that every benchmark runs (CI), figures mean little.
    #[arg(long)]
    quick: bool,
    /// Skip Curator and kazoo (no Java/Python peers needed).
    #[arg(long)]
    no_peers: bool,
    /// Depths for queue-depth, e.g. --depths 1000,100000,1000000.
    #[arg(long, value_delimiter = ',')]
    depths: Vec<usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut sizes = if args.quick { Sizes::quick() } else { Sizes::full() };
    if !args.depths.is_empty() {
        sizes.depths = args.depths.clone();
    }
    let sidecar = std::env::current_exe()?.with_file_name("paddock-sidecar");
    anyhow::ensure!(sidecar.exists(), "{} missing: build it (scripts/bench.sh does)", sidecar.display());
    let which: Vec<&str> = args.which.iter().map(String::as_str).collect();
    eprintln!(
        "==> starting a 3-node ensemble, a sidecar{}",
        if args.no_peers { "" } else { ", and compiling the Curator peer" }
    );
    let started = std::time::Instant::now();
    let bench = Bench::start(sizes.clone(), sidecar, !args.no_peers).await.context("setting up")?;
    eprintln!("==> running {which:?} with {sizes:?}");
    let report = bench::run(&bench, &which).await?;
    println!(
        "\nPaddock benchmarks ({}; {} s in all)\n",
        if args.quick { "quick sizes" } else { "full sizes" },
        started.elapsed().as_secs()
    );
    println!("{}", report.table());
    Ok(())
}
