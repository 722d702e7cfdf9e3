//! What the CLI's tests share: a real ensemble with a lock and a queue, sidecar processes
//! standing for pods, and `paddock` run as a real process against one of them.

#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use paddock_recipes::{LockConfig, QueueConfig};
#[allow(unused_imports)] // not every test file waits
pub use paddock_testkit::eventually;
use paddock_testkit::process::Sidecar;
use paddock_testkit::{Ensemble, PodClient, SidecarOptions, init_tracing, provision, workspace_binary};
use tokio::process::{Child, Command};

pub const NAMESPACE: &str = "team-a";
pub const PADDOCK: &str = env!("CARGO_BIN_EXE_paddock");

/// A real 3-node ensemble with the lock `orders` and the queue `jobs` (with `queue`'s config).
pub async fn ensemble(queue: QueueConfig) -> Ensemble {
    init_tracing();
    let ensemble = Ensemble::start().await.expect("ensemble starts");
    let admin = provision::admin(&ensemble.connect_string()).await.unwrap();
    provision::lock(&admin, NAMESPACE, "orders", LockConfig::default()).await.unwrap();
    provision::queue(&admin, NAMESPACE, "jobs", queue).await.unwrap();
    ensemble
}

/// A sidecar process for `pod`, and a client of its API.
pub async fn sidecar(ensemble: &Ensemble, pod: &str, session_timeout: Duration) -> (Sidecar, PodClient) {
    let binary = workspace_binary("paddock-sidecar");
    let options =
        SidecarOptions::new(binary, ensemble.connect_string(), pod, NAMESPACE).session_timeout(session_timeout);
    let sidecar = Sidecar::start(options).await.expect("sidecar starts");
    let client = PodClient::new(sidecar.url(""));
    (sidecar, client)
}

/// `paddock ARGS` against `sidecar`, stdout and stderr piped.
pub fn paddock(sidecar: &Sidecar, args: &[&str]) -> Command {
    let mut command = Command::new(PADDOCK);
    command.args(args).env("PADDOCK_URL", sidecar.url("")).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.kill_on_drop(true);
    command
}

/// Runs `paddock ARGS` to its end: exit code, stdout, stderr.
pub async fn run(sidecar: &Sidecar, args: &[&str]) -> (i32, String, String) {
    let output = paddock(sidecar, args).output().await.expect("paddock runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// The first line `child` prints on stdout.
pub async fn first_line(child: &mut Child) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.as_mut().expect("stdout piped");
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stdout);
    let read = reader.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("a line within 30 s").expect("stdout");
    line.trim().to_owned()
}

/// The exit code of `child`, which must end within `timeout`.
pub async fn exit_code(child: &mut Child, timeout: Duration) -> i32 {
    let status = tokio::time::timeout(timeout, child.wait()).await.expect("paddock ends in time").unwrap();
    status.code().unwrap_or(-1)
}

pub async fn stderr(child: &mut Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    child.stderr.as_mut().expect("stderr piped").read_to_string(&mut text).await.unwrap();
    text
}

/// Writes an executable shell script.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// Sends `signal` to a process.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill only sends a signal.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "signal {signal} to {pid}");
}
