//! `paddock lock NAME -- CMD`: acquire, run CMD with the fencing token, stop it if the lock
//! is lost, release when it ends.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::args::{LockArgs, Wait};
use crate::child::{self, Child, Signals};
use crate::error::{CliError, EXIT_BUSY, EXIT_LOST};
use crate::holding::{self, Hold};
use crate::sidecar::Sidecar;

/// The longest wait one acquire request may ask the sidecar for.
const MAX_WAIT_PER_REQUEST: Duration = Duration::from_secs(600);
/// A sidecar older than `GET /status` does not say its session timeout: its default.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(sidecar: Sidecar, args: LockArgs) -> Result<i32, CliError> {
    let owner = args.owner.clone().unwrap_or_else(default_owner);
    let session_timeout = session_timeout(&sidecar).await?;
    let mut signals = Signals::catch();
    let acquired = tokio::select! {
        acquired = acquire(&sidecar, &args, &owner) => acquired?,
        signal = signals.next() => {
            // The wait is withdrawn with its request; a grant that crossed it is given back.
            release_if_held(&sidecar, &args.name, &owner).await;
            return Ok(128 + signal);
        }
    };
    let Some(grant) = acquired else {
        return Ok(EXIT_BUSY);
    };
    let token = grant["token"].as_i64().ok_or_else(|| CliError::Input(format!("no token in the grant: {grant}")))?;
    let env = [
        ("PADDOCK_LOCK_NAME", args.name.clone()),
        ("PADDOCK_LOCK_OWNER", owner.clone()),
        ("PADDOCK_LOCK_TOKEN", token.to_string()),
    ];
    let mut child = match child::spawn(&args.command, &env, None) {
        Ok(child) => child,
        Err(e) => {
            release(&sidecar, &args.name, &owner).await;
            return Err(e);
        }
    };
    let hold = Hold { name: args.name.clone(), owner: owner.clone(), token, ttl: args.ttl, session_timeout };
    match supervise(&mut child, &mut signals, holding::until_lost(sidecar.clone(), hold)).await {
        Ended::Exited(code) => {
            release(&sidecar, &args.name, &owner).await;
            Ok(code)
        }
        Ended::Lost(reason) => {
            eprintln!(
                "paddock: lock {} (token {token}) lost while the command ran: {reason}. Sent SIGTERM to the command \
                 (SIGKILL after {:?})",
                args.name, args.grace
            );
            child.terminate(args.grace).await;
            Ok(EXIT_LOST)
        }
    }
}

/// One owner per run: two runs in one pod must exclude each other.
fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("paddock-{}@{}", std::process::id(), if host.is_empty() { "localhost" } else { host })
}

pub async fn session_timeout(sidecar: &Sidecar) -> Result<Duration, CliError> {
    let status = sidecar.status().await?;
    let millis = status.as_ref().and_then(|s| s["session"]["timeoutMs"].as_u64());
    Ok(millis.map_or(DEFAULT_SESSION_TIMEOUT, Duration::from_millis))
}

/// The grant, or `None` when the lock stayed busy for `--wait` (said on stderr).
async fn acquire(sidecar: &Sidecar, args: &LockArgs, owner: &str) -> Result<Option<Value>, CliError> {
    let deadline = match args.wait {
        Wait::For(wait) => Some(Instant::now() + wait),
        Wait::Forever => None,
    };
    loop {
        let (wait, timeout) = match deadline {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now()).min(MAX_WAIT_PER_REQUEST);
                (json!(format!("{}ms", wait.as_millis())), Some(wait + Duration::from_secs(30)))
            }
            None => (json!("forever"), None),
        };
        let mut body = json!({
            "name": args.name,
            "owner": owner,
            "wait": wait,
            "mode": if args.shared { "shared" } else { "exclusive" },
        });
        if let Some(ttl) = args.ttl {
            body["ttl"] = json!(format!("{}ms", ttl.as_millis()));
        }
        let mut request = sidecar.request(Method::POST, "/lock").json(&body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        match sidecar.json(request).await {
            Ok(grant) => return Ok(Some(grant)),
            Err(e) if e.code() == Some("lock-busy") && deadline.is_none_or(|d| Instant::now() < d) => {
                eprintln!("paddock: still waiting for lock {}: {e}", args.name);
            }
            Err(e) if e.code() == Some("lock-busy") => {
                eprintln!("paddock: {e}. The command did not run");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

async fn release(sidecar: &Sidecar, name: &str, owner: &str) {
    if let Err(e) = sidecar.release(name, owner).await {
        // Lost already, or the sidecar went away (its session, and so the lock, with it).
        eprintln!("paddock: releasing lock {name}: {e}");
    }
}

async fn release_if_held(sidecar: &Sidecar, name: &str, owner: &str) {
    if let Ok(status) = sidecar.lock_status(name, Some(owner), Duration::from_secs(5)).await
        && status["state"] == "held"
    {
        release(sidecar, name, owner).await;
    }
}

enum Ended {
    Exited(i32),
    Lost(String),
}

/// Waits for the command, passing on the signals paddock gets, until it exits or the
/// lock is lost.
async fn supervise(child: &mut Child, signals: &mut Signals, lost: impl Future<Output = String>) -> Ended {
    tokio::pin!(lost);
    loop {
        tokio::select! {
            status = child.wait() => return Ended::Exited(child::exit_code(status)),
            reason = &mut lost => return Ended::Lost(reason),
            signal = signals.next() => child.signal(signal),
        }
    }
}
