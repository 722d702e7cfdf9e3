//! Classifying ZooKeeper errors.

use crate::zk;

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
