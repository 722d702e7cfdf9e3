//! One ZooKeeper idiom, written once: a write has three outcomes — applied, not applied,
//! unknown (the connection broke before the reply) — and the unknown one is retried for
//! as long as the session may live, each retry told that it is one, so it can look for
//! its own earlier effect before it acts again. Shaped like zookeeper-client's
//! `retry_on_connection_loss`, with the session's deadline and the `retried` flag added.
//!
//! Invariants:
//! - A retry happens only after an outcome-unknown error, and never past the session
//!   timeout from the first try: after that the session may be gone, and with it every
//!   ephemeral the first try may have made.
//! - The caller sees the last try's result; the retries in between are at debug level.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::zk;

/// Pause between a try whose outcome is unknown and the next (the client reconnects
/// meanwhile).
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The request may or may not have been applied: the connection broke before the reply
/// (ConnectionLoss, Timeout, or an I/O error the client reports as a custom error). The
/// session may still be alive; retry idempotently or look at what is there.
pub fn outcome_unknown(err: &zk::Error) -> bool {
    matches!(err, zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::Custom(_))
}

/// ZooKeeper cannot be asked right now (the above, or no session at all).
pub fn unavailable(err: &zk::Error) -> bool {
    outcome_unknown(err) || matches!(err, zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::NoHosts)
}

/// Errors that may leave a write's outcome unknown.
pub trait MaybeUnknown {
    fn outcome_unknown(&self) -> bool;
}

impl MaybeUnknown for zk::Error {
    fn outcome_unknown(&self) -> bool {
        outcome_unknown(self)
    }
}

impl MaybeUnknown for zk::MultiWriteError {
    fn outcome_unknown(&self) -> bool {
        matches!(self, zk::MultiWriteError::RequestFailed { source } if outcome_unknown(source))
    }
}

impl MaybeUnknown for crate::queue::QueueError {
    fn outcome_unknown(&self) -> bool {
        matches!(self, crate::queue::QueueError::ZooKeeper(err) if outcome_unknown(err))
    }
}

/// What a try knows about the ones before it.
#[derive(Debug, Clone, Copy)]
pub struct Try {
    /// An earlier try's outcome was unknown: it may have been applied.
    pub retried: bool,
    /// When retrying stops (the session timeout after the first try).
    pub deadline: Instant,
}

/// Runs `attempt` until its result is not outcome-unknown, or the session timeout has
/// passed since the first try; the last result is returned.
pub async fn while_unknown<T, E, F, Fut>(client: &zk::Client, what: &str, attempt: F) -> Result<T, E>
where
    E: MaybeUnknown + std::fmt::Display,
    F: FnMut(Try) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    while_unknown_until(Instant::now() + client.session_timeout(), what, attempt).await
}

/// [`while_unknown`] with the deadline of an enclosing retry (a look-up that is itself
/// part of resolving an unknown outcome).
pub async fn while_unknown_until<T, E, F, Fut>(deadline: Instant, what: &str, mut attempt: F) -> Result<T, E>
where
    E: MaybeUnknown + std::fmt::Display,
    F: FnMut(Try) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut this = Try { retried: false, deadline };
    loop {
        match attempt(this).await {
            Err(err) if err.outcome_unknown() && Instant::now() < deadline => {
                tracing::debug!(what, error = %err, "outcome unknown; trying again");
                this.retried = true;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            result => return result,
        }
    }
}
