//! Apache Curator as a test peer (Debian's libcurator-recipes-java): a small Java program
//! (`java/CuratorLock.java`, compiled on first use) holding an `InterProcessMutex`,
//! driven line by line so a test can interleave it with sidecars.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::ProcessHandle;

const JARS: &[&str] = &[
    "curator-recipes.jar",
    "curator-framework.jar",
    "curator-client.jar",
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "guava.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
];

/// The Curator classpath, with `extra` (compiled classes) first.
pub fn classpath(extra: &Path) -> Result<String> {
    let mut parts = vec![extra.display().to_string()];
    for jar in JARS {
        let path = Path::new("/usr/share/java").join(jar);
        if !path.exists() {
            bail!("{} missing: run `bash scripts/install-deps.sh` (installs libcurator-recipes-java)", path.display());
        }
        parts.push(path.display().to_string());
    }
    Ok(parts.join(":"))
}

/// Compiles the Java peers into `out` (javac from the JDK).
pub fn compile(out: &Path) -> Result<()> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/CuratorLock.java");
    let status = Command::new("javac")
        .arg("-cp")
        .arg(classpath(out)?)
        .arg("-d")
        .arg(out)
        .arg(&source)
        .status()
        .context("running javac (install a JDK: scripts/install-deps.sh)")?;
    anyhow::ensure!(status.success(), "javac failed on {}", source.display());
    Ok(())
}

/// A Curator InterProcessMutex client in its own JVM.
pub struct CuratorMutex {
    _process: ProcessHandle,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _classes: PathBuf,
}

impl CuratorMutex {
    /// Starts the peer on `lock_path` (classes compiled into `classes`).
    pub fn start(classes: &Path, connect: &str, lock_path: &str) -> Result<Self> {
        let mut command = Command::new("java");
        command
            .arg("-cp")
            .arg(classpath(classes)?)
            .args(["-XX:TieredStopAtLevel=1", "CuratorLock", connect, lock_path])
            .stdout(Stdio::piped());
        command.stdin(Stdio::piped());
        let mut process = ProcessHandle::spawn_with_stdin("curator", command, true)?;
        let (stdin, stdout) = process.take_stdio().context("curator stdio")?;
        let mut peer = Self { _process: process, stdin, stdout: BufReader::new(stdout), _classes: classes.to_owned() };
        let ready = peer.read_line()?;
        anyhow::ensure!(ready == "ready", "curator peer said {ready:?}");
        Ok(peer)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        anyhow::ensure!(!line.is_empty(), "curator peer exited");
        Ok(line.trim().to_owned())
    }

    fn command(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.read_line()
    }

    /// Tries to acquire within `millis`; true when acquired. Blocking: call from
    /// `spawn_blocking` when something else must run meanwhile.
    pub fn acquire(&mut self, millis: u64) -> Result<bool> {
        match self.command(&format!("acquire {millis}"))?.as_str() {
            "acquired" => Ok(true),
            "timeout" => Ok(false),
            other => bail!("curator peer: {other}"),
        }
    }

    pub fn release(&mut self) -> Result<()> {
        let reply = self.command("release")?;
        anyhow::ensure!(reply == "released", "curator peer: {reply}");
        Ok(())
    }
}
