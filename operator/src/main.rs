//! paddock-operator: reconciles DistributedLock and WorkQueue resources into ZooKeeper.
//!
//! Today it prints its CRDs (`paddock-operator crd`); the controllers are being built
//! (see the open "Operator" issue) and the binary says so instead of pretending to run.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "paddock-operator", version, about = "Reconciles DistributedLock and WorkQueue into ZooKeeper")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (YAML), as `crds/` holds them.
    Crd,
    /// Run the controllers (not built yet).
    Run,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Crd => {
            print!("{}", paddock_operator::crd::crds_yaml());
            Ok(())
        }
        Command::Run => anyhow::bail!(
            "the controllers are not built yet: provision locks and queues with paddock_recipes::provision \
             (scripts/run-local.sh does) until the operator lands"
        ),
    }
}
