//! Paddock's test tools: a real ZooKeeper ensemble on demand with fault injection, and
//! sidecar processes standing for pods. Never shipped; used by tests, benchmarks and the
//! local run.

pub mod apiserver;
pub mod bench;
pub mod client;
pub mod curator;
pub mod ensemble;
pub mod fenced;
pub mod process;
pub mod provision;

pub use client::{Acquire, PodClient};
pub use ensemble::{Ensemble, EnsembleOptions, Mode};
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
