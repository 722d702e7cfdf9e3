//! The user's command: started in a process group of its own, so that stopping it stops
//! everything it started (a shell script's children too), and signalled as a group.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::error::CliError;

pub struct Child {
    process: tokio::process::Child,
    /// Its process group (its own pid), until it has been reaped.
    group: Option<i32>,
}

/// Starts `command` with `env` added; `stdin` is written to it and closed, when given.
pub fn spawn(command: &[String], env: &[(&str, String)], stdin: Option<Vec<u8>>) -> Result<Child, CliError> {
    let (program, args) = command.split_first().ok_or_else(|| CliError::Input("no command given after --".into()))?;
    let mut process = Command::new(program);
    process.args(args).envs(env.iter().map(|(k, v)| (k, v))).process_group(0);
    process.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::inherit() });
    let mut process = process.spawn().map_err(|e| CliError::Spawn {
        command: program.clone(),
        reason: e.to_string(),
        // As a shell says it: 127 not found, 126 found but not runnable.
        exit: if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 },
    })?;
    if let (Some(payload), Some(mut pipe)) = (stdin, process.stdin.take()) {
        // A command that does not read its input is fine: a broken pipe is not an error.
        tokio::spawn(async move {
            let _ = pipe.write_all(&payload).await;
        });
    }
    let group = process.id().map(|pid| pid as i32);
    Ok(Child { process, group })
}

impl Child {
    /// Sends `signal` to the command's whole process group.
    pub fn signal(&self, signal: i32) {
        if let Some(group) = self.group {
            // SAFETY: killpg only sends a signal; a group that is gone answers ESRCH.
            unsafe { libc::killpg(group, signal) };
        }
    }

    pub async fn wait(&mut self) -> ExitStatus {
        // Waiting fails only for a child we did not spawn; should it, say "killed".
        self.process.wait().await.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(libc::SIGKILL))
    }

    /// SIGTERM to the group, SIGKILL after `grace` if the command has not ended by then.
    pub async fn terminate(&mut self, grace: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => {
                // What the command left behind in its group goes too.
                self.signal(libc::SIGKILL);
                status
            }
            Err(_) => {
                self.signal(libc::SIGKILL);
                self.wait().await
            }
        }
    }
}

/// The exit code a shell would report for `status`: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1)
}

/// The signals paddock passes on to its command (or, before there is one, stops on).
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Takes them over from the default (which would end paddock without cleaning up).
    pub fn catch() -> Self {
        let take = |kind| signal(kind).expect("installing a signal handler");
        Self {
            terminate: take(SignalKind::terminate()),
            interrupt: take(SignalKind::interrupt()),
            hangup: take(SignalKind::hangup()),
        }
    }

    /// The next one that arrives.
    pub async fn next(&mut self) -> i32 {
        tokio::select! {
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }
}
