//! Paddock's test tools: a real ZooKeeper ensemble on demand with fault injection, and
//! sidecar processes standing for pods. Never shipped; used by tests, benchmarks and the
//! local run.

pub mod apiserver;
pub mod bench;
pub mod chaos;
pub mod client;
pub mod curator;
pub mod ensemble;
pub mod fault_proxy;
pub mod fenced;
pub mod netns;
pub mod operator;
pub mod process;
pub mod provision;
pub mod stack;

pub use client::{Acquire, PodClient};
pub use ensemble::{Ensemble, EnsembleOptions, Mode};
pub use fault_proxy::FaultProxy;
pub use operator::{Operator, OperatorOptions};
pub use process::{ProcessHandle, Sidecar, SidecarOptions};

/// Structured logs for tests and tools; `RUST_LOG` overrides the default level.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// Waits until `check` holds, polling every 100 ms; panics naming `what` after `timeout`.
/// For tests that wait on a condition (never a bare sleep).
pub async fn eventually<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A binary of the workspace, beside the running test's own directory (`cargo test
/// --workspace` builds every binary before it runs tests).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    find_binary(name).unwrap_or_else(|e| panic!("{e:#}: run the tests with `cargo test --workspace`"))
}

/// A binary of the workspace beside the running executable: a bin of this crate runs in
/// `target/<profile>/`, a test in `target/<profile>/deps/`.
pub fn find_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    let exe = std::env::current_exe().context("the running executable's path")?;
    let dir = exe.parent().context("the executable's directory")?;
    [Some(dir.join(name)), dir.parent().map(|p| p.join(name))]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found beside {}; build it with `cargo build --workspace`", exe.display()))
}
