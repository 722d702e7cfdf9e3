//! `paddock`: Paddock's locks and queues for scripts and jobs, over the sidecar of the pod
//! it runs in. Each subcommand has a file: `lock` (with `holding`, which watches the hold),
//! `work`, `enqueue`, `status`; they share the sidecar's client (`sidecar`, `events`) and
//! the child process (`child`).

mod args;
mod child;
mod enqueue;
mod error;
mod events;
mod holding;
mod lock;
mod sidecar;
mod status;
mod work;

use std::path::Path;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command};
use crate::error::CliError;
use crate::sidecar::Sidecar;

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paddock: {e}");
            e.exit_code()
        }
    };
    // Tasks still following the sidecar (event streams) end with the process.
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32, CliError> {
    let sidecar = Sidecar::new(&cli.url);
    match cli.command {
        Command::Lock(args) => lock::run(sidecar, args).await,
        Command::Work(args) => work::run(sidecar, args).await,
        Command::Enqueue(args) => enqueue::run(sidecar, args).await,
        Command::Status(args) => status::run(sidecar, args).await,
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "paddock", &mut std::io::stdout());
            Ok(0)
        }
        Command::Install { dir } => install(&dir).map(|()| 0),
    }
}

/// Copies this binary to `dir/paddock`, whole or not at all (a temporary file renamed).
fn install(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt;
    let fail =
        |what: &str, e: std::io::Error| CliError::Input(format!("installing into {}: {what}: {e}", dir.display()));
    let exe = std::env::current_exe().map_err(|e| fail("finding this binary", e))?;
    let target = dir.join("paddock");
    let partial = dir.join(".paddock.partial");
    std::fs::copy(&exe, &partial).map_err(|e| fail("copying", e))?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).map_err(|e| fail("chmod", e))?;
    std::fs::rename(&partial, &target).map_err(|e| fail("renaming", e))?;
    println!("{}", target.display());
    Ok(())
}
