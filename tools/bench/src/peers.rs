//! Apache Curator and kazoo doing the same work (`peers/`), each run as its own
//! process against the same ensemble, printing one JSON line of figures.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use paddock_testkit::curator;
use serde_json::Value;

use super::Figure;

pub struct Peers {
    classes: tempfile::TempDir,
    kazoo_script: PathBuf,
}

/// A peer's figures before they get a name in the table.
pub struct PeerFigure(Value);

impl PeerFigure {
    /// A number the peer printed (`ops`, `seconds`, `rate`, `median_us`, `p99_us`).
    pub fn number(&self, key: &str) -> Option<f64> {
        self.0[key].as_f64()
    }

    pub fn named(&self, group: &str, name: &str) -> Figure {
        let v = &self.0;
        Figure {
            group: group.to_owned(),
            name: name.to_owned(),
            ops: v["ops"].as_u64().unwrap_or(0) as usize,
            rate: v["rate"].as_f64().unwrap_or(0.0),
            median_us: v["median_us"].as_f64(),
            p99_us: v["p99_us"].as_f64(),
            note: String::new(),
        }
    }
}

impl Peers {
    /// Compiles the Curator peer and checks that kazoo is importable.
    pub fn prepare() -> Result<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers");
        let classes = tempfile::tempdir()?;
        let status = std::process::Command::new("javac")
            .arg("-cp")
            .arg(curator::classpath(classes.path())?)
            .arg("-d")
            .arg(classes.path())
            .arg(dir.join("CuratorBench.java"))
            .status()
            .context("javac")?;
        anyhow::ensure!(status.success(), "compiling CuratorBench.java failed");
        let probe = std::process::Command::new("python3").args(["-c", "import kazoo"]).status()?;
        anyhow::ensure!(probe.success(), "kazoo is not installed: pip install kazoo (scripts/bench.sh does)");
        Ok(Self { classes, kazoo_script: dir.join("kazoo_bench.py") })
    }

    /// Runs one peer (`curator` or `kazoo`) with `args` (mode and sizes).
    pub async fn run(&self, peer: &str, connect: &str, args: &[&str]) -> Result<PeerFigure> {
        let mut command = match peer {
            "curator" => {
                let mut c = tokio::process::Command::new("java");
                c.arg("-cp").arg(curator::classpath(self.classes.path())?).arg("CuratorBench");
                c
            }
            _ => {
                let mut c = tokio::process::Command::new("python3");
                c.arg(&self.kazoo_script);
                c
            }
        };
        command.arg(connect).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(900), command.output())
            .await
            .with_context(|| format!("{peer} {args:?} timed out"))??;
        anyhow::ensure!(output.status.success(), "{peer} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        let line = String::from_utf8_lossy(&output.stdout);
        let value: Value = serde_json::from_str(line.trim()).with_context(|| format!("{peer} printed {line:?}"))?;
        Ok(PeerFigure(value))
    }
}
