//! The election workload: every `default` pod has a candidate for the `leader` lock. A
//! leader serves a term of a few writes to a token-checking log (each write carries its
//! fencing token), then steps down and campaigns again. Pausing a leader mid-term past
//! its session timeout is what fencing exists for: another candidate leads meanwhile,
//! and the paused one's next write comes with a stale token.
//!
//! The checker judges "at most one leader at any time" by the log's history: the tokens
//! of accepted writes never go down (a write with a lower token accepted after a higher
//! one means two leaders acted at once), and one token is one leader.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use paddock_testkit::client::Acquire;
use rand::RngExt as _;

use super::Broken;
use super::workloads::{PodHandle, Workloads, jitter, release};

pub const LEADER_LOCK: &str = "leader";

/// What leaders write: (token, leader) in the order the log accepted them.
#[derive(Debug)]
pub struct LeaderLog {
    state: Mutex<LogState>,
    checks_tokens: bool,
}

#[derive(Debug, Default)]
struct LogState {
    highest: i64,
    accepted: Vec<(i64, String)>,
    rejected: u64,
}

impl LeaderLog {
    pub fn new(broken: Option<Broken>) -> Self {
        Self { state: Mutex::default(), checks_tokens: broken != Some(Broken::ElectionWithoutFencing) }
    }

    /// Accepts the write unless its token is lower than one already accepted.
    fn write(&self, token: i64, leader: &str) -> bool {
        let mut state = self.state.lock().unwrap();
        if self.checks_tokens && token < state.highest {
            state.rejected += 1;
            return false;
        }
        state.highest = state.highest.max(token);
        state.accepted.push((token, leader.to_owned()));
        true
    }

    /// Accepted writes and terms, and stale writes rejected.
    pub fn counts(&self) -> (u64, u64, u64) {
        let state = self.state.lock().unwrap();
        let mut terms: Vec<i64> = state.accepted.iter().map(|(t, _)| *t).collect();
        terms.dedup();
        (state.accepted.len() as u64, terms.len() as u64, state.rejected)
    }

    /// Two leaders at once, as the history shows them.
    pub fn violations(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let mut violations = Vec::new();
        let mut leaders: HashMap<i64, &str> = HashMap::new();
        let mut highest: Option<(i64, &str)> = None;
        for (token, leader) in &state.accepted {
            if let Some(other) = leaders.insert(*token, leader)
                && other != leader
            {
                violations.push(format!("election: token {token} led by both {other} and {leader}"));
            }
            match highest {
                Some((top, by)) if *token < top => violations.push(format!(
                    "election: {leader} wrote with token {token} after {by} had written with {top}: two leaders at once"
                )),
                _ => highest = Some((*token, leader)),
            }
        }
        violations.truncate(10);
        violations
    }
}

impl Workloads {
    /// Campaigns for `leader`; each term is a few fenced writes, then the leader steps down.
    pub(super) async fn candidate(&self, pod: &mut PodHandle, owner: &str) {
        while !self.stop_producing.is_cancelled() {
            pod.checkpoint().await;
            match pod.client.acquire(LEADER_LOCK, owner, "2s").await {
                Ok(Acquire::Acquired { token, .. }) => {
                    self.serve_term(pod, token).await;
                    release(pod, LEADER_LOCK, owner).await;
                }
                Ok(Acquire::Busy(_)) => {}
                Ok(Acquire::Failed { .. }) | Err(_) => {
                    self.counts.lock_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve_term(&self, pod: &mut PodHandle, token: i64) {
        let writes = rand::rng().random_range(3..7);
        let _leading = self.leading.enter(&pod.name);
        for _ in 0..writes {
            // Deciding what to write, then writing it: a pause here leaves a stale leader.
            tokio::time::sleep(jitter(40, 120)).await;
            pod.checkpoint().await;
            if !self.leaders.write(token, &pod.name) {
                return; // deposed while paused: the log refused, the term is over
            }
            self.availability.success("election");
        }
    }
}
