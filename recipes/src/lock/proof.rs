//! Whether a grant still stands when it is handed out. A grant is decided by a listing
//! of the lock's contenders; between that listing and the caller's answer the process may
//! be stopped (a pause, a starved machine) for longer than its session, which then expired
//! at the server with our ephemeral contender, and another contender may hold the lock.
//!
//! Invariants:
//! - A grant's proof ([`Held::proved_at`]) is the send time of a request answered on our
//!   session that showed our contender there (the deciding listing: there and first).
//! - A grant proved under half the session timeout ago stands for at least the other
//!   half, time enough to answer; an older one is handed out only once [`reprove`] has
//!   found our contender still ours, and otherwise given up ([`forgo`]).

use std::time::Duration;

use tokio::time::Instant;

use super::Held;
use crate::retry::while_unknown;
use crate::zk;

impl Held {
    /// Whether the grant certainly stands for long enough to be handed out: proved under
    /// half the session timeout ago, which leaves the other half for the answer to reach
    /// the caller (the queue's claims keep the same rule, `Delivery::claim_is_fresh`).
    pub fn is_fresh(&self, session_timeout: Duration) -> bool {
        self.proved_at.elapsed() < session_timeout / 2
    }
}

/// Proves a grant again: after `sync` (a follower that lags must not show a contender
/// its leader already removed with an expired session), our contender is there and this
/// session's ephemeral. Then true, and `proved_at` is this read's send time; false when
/// it is gone (also when the session has expired: its ephemerals went with it) or not
/// ours. An unknown outcome is retried for as long as the session may live; an error (no
/// answer in that time, the client closed) proves nothing either way.
pub async fn reprove(client: &zk::Client, held: &mut Held) -> Result<bool, zk::Error> {
    let read = while_unknown(client, "proving a grant again", |_| async {
        let sent_at = Instant::now();
        client.sync(&held.lock_path).await?;
        let stat = client.check_stat(&held.node_path).await?;
        Ok::<_, zk::Error>(stat.is_some_and(|s| s.ephemeral_owner == client.session_id().0).then_some(sent_at))
    })
    .await;
    let proved = match read {
        Ok(proved) => proved,
        Err(zk::Error::SessionExpired) => None,
        Err(err) => return Err(err),
    };
    Ok(match proved {
        Some(sent_at) => {
            held.proved_at = sent_at;
            true
        }
        None => false,
    })
}

/// Gives up a grant that was never handed out: its held record, then its contender,
/// whatever of them is left. Unlike [`abandon`](super::abandon) the record goes too:
/// nobody acted on this grant, so no next holder need wait a lock-delay for it. Unknown
/// outcomes are retried for as long as the session may live; what is left after that
/// goes with the session (a record left behind only delays the next grant once).
pub async fn forgo(client: &zk::Client, held: &Held) {
    super::contender::withdraw(client, held.record.clone(), Some(held.node_path.clone())).await;
}
