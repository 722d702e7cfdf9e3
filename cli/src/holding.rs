//! Knowing that a lock is still held while the command runs.
//!
//! Three ways to learn it is not:
//! - the sidecar says so on `/events` (`lock.lost`: session expired, lease elapsed, node
//!   deleted);
//! - a heartbeat says so: a renewal refused (with `--ttl`), or the lock's state for this
//!   owner no longer `held` with this token (a restarted sidecar, whose new session holds
//!   nothing);
//! - the sidecar is silent: no heartbeat has confirmed the hold for longer than the
//!   sidecar's session timeout. A pod's session expires after that much silence, and
//!   another pod may be granted the lock, so the command must stop.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::CliError;
use crate::events::{self, Event};
use crate::sidecar::Sidecar;

/// The hold being watched.
#[derive(Debug, Clone)]
pub struct Hold {
    pub name: String,
    pub owner: String,
    pub token: i64,
    /// Renewed on every heartbeat when set.
    pub ttl: Option<Duration>,
    /// The sidecar's ZooKeeper session timeout: the longest silence a hold survives.
    pub session_timeout: Duration,
}

impl Hold {
    /// How often to confirm it: four times per session timeout, three per lease.
    fn heartbeat(&self) -> Duration {
        let every = self.session_timeout / 4;
        let every = self.ttl.map_or(every, |ttl| every.min(ttl / 3));
        every.max(Duration::from_millis(50))
    }
}

/// What a heartbeat found.
enum Beat {
    /// Held, as of when the request was sent.
    Held(Instant),
    /// Not held any more, and why.
    Gone(String),
    /// No answer; the silence counts.
    Silent,
}

/// Resolves when the hold is lost, with the reason. Drop it to stop watching.
pub async fn until_lost(sidecar: Sidecar, hold: Hold) -> String {
    let mut events = events::follow(sidecar.clone());
    let (beats_to, mut beats) = mpsc::channel(4);
    let heartbeat = tokio::spawn(beat(sidecar.clone(), hold.clone(), beats_to));
    let _stop_heartbeat = AbortOnDrop(heartbeat);
    let mut confirmed = Instant::now();
    loop {
        let silence_ends = confirmed + hold.session_timeout;
        tokio::select! {
            Some(event) = events.recv() => {
                if let Some(reason) = lost_by(&event, &hold) {
                    return reason;
                }
            }
            Some(beat) = beats.recv() => match beat {
                Beat::Held(at) => confirmed = confirmed.max(at),
                Beat::Gone(reason) => return reason,
                Beat::Silent => {}
            },
            _ = tokio::time::sleep_until(silence_ends) => {
                return format!(
                    "the sidecar at {} has not confirmed the lock for {:?}, its session timeout: its ZooKeeper \
                     session may have expired and another pod may hold the lock",
                    sidecar.url(),
                    hold.session_timeout
                );
            }
        }
    }
}

/// `lock.lost` of this hold, with its reason.
fn lost_by(event: &Event, hold: &Hold) -> Option<String> {
    let ours = event["type"] == "lock.lost"
        && event["name"] == hold.name.as_str()
        && event["owner"] == hold.owner.as_str()
        && event["token"] == hold.token;
    ours.then(|| format!("the sidecar reported it lost: {}", event["reason"].as_str().unwrap_or("unknown reason")))
}

async fn beat(sidecar: Sidecar, hold: Hold, beats: mpsc::Sender<Beat>) {
    let every = hold.heartbeat();
    loop {
        tokio::time::sleep(every).await;
        let sent = Instant::now();
        let found = match hold.ttl {
            Some(ttl) => renewed(&sidecar, &hold, ttl, every).await,
            None => still_held(&sidecar, &hold, every).await,
        };
        let beat = match found {
            Ok(None) => Beat::Held(sent),
            Ok(Some(reason)) => Beat::Gone(reason),
            Err(CliError::Api { status, message, .. }) if status == 404 || status == 409 => Beat::Gone(message),
            Err(_) => Beat::Silent,
        };
        if beats.send(beat).await.is_err() {
            return;
        }
    }
}

/// `None` while held; else why not.
async fn renewed(sidecar: &Sidecar, hold: &Hold, ttl: Duration, timeout: Duration) -> Result<Option<String>, CliError> {
    let grant = sidecar.renew(&hold.name, &hold.owner, ttl, timeout).await?;
    Ok((grant["token"] != hold.token).then(|| format!("the sidecar renewed another hold ({grant})")))
}

/// `None` while held; else why not.
async fn still_held(sidecar: &Sidecar, hold: &Hold, timeout: Duration) -> Result<Option<String>, CliError> {
    let status = sidecar.lock_status(&hold.name, Some(&hold.owner), timeout).await?;
    Ok(match status["state"].as_str() {
        Some("held") if status["token"] == hold.token => None,
        Some("lost") => {
            Some(format!("the sidecar reports it lost: {}", status["lostReason"].as_str().unwrap_or("unknown")))
        }
        _ => Some(format!(
            "the sidecar no longer holds it for {} (a restarted sidecar has a new ZooKeeper session, without the old one's locks)",
            hold.owner
        )),
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
