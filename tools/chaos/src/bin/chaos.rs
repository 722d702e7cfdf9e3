//! The fault suite on demand: `chaos --duration 30m` (a seed is drawn and printed unless
//! given; `--seed N` replays a run's fault schedule). Exits 1 when the checkers found a
//! violation, a lost item, or a write ZooKeeper confirmed and lost.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use paddock_chaos::{self as chaos, Broken, ChaosOptions, FaultKind};

#[derive(Debug, Parser)]
#[command(about = "Run Paddock's workloads under faults and check what they saw")]
struct Args {
    /// How long to inject faults, e.g. 2m, 30m.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule (random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Only these faults (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// How long the whole ensemble stays down.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// Break something on purpose, to see the checkers catch it.
    #[arg(long, value_enum)]
    broken: Option<Broken>,
    /// The ensemble serves TLS only; operators, sidecars and checkers connect over TLS.
    #[arg(long)]
    tls: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let seed = args.seed.unwrap_or_else(rand::random);
    let options = ChaosOptions {
        seed,
        duration: args.duration,
        faults: if args.faults.is_empty() { FaultKind::ALL.to_vec() } else { args.faults },
        outage: args.outage,
        broken: args.broken,
        tls: args.tls,
    };
    let report = chaos::run(options).await?;
    println!("{report}");
    if !report.clean() {
        std::process::exit(1);
    }
    Ok(())
}
