//! What can go wrong, each with the exit code a script can test and a message that says
//! what to do.

use serde_json::Value;

/// The sidecar is not there (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;
/// The lock is busy (EX_TEMPFAIL): try again later.
pub const EXIT_BUSY: i32 = 75;
/// The lock was lost while the command ran.
pub const EXIT_LOST: i32 = 76;
/// The lock or queue is not provisioned, or its config is unusable (EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "the Paddock sidecar is not reachable at {url}: {reason}. Is this pod annotated \
         paddock.dev/inject: \"true\" and its sidecar ready? Set PADDOCK_URL (or --url) if it listens elsewhere"
    )]
    Unreachable { url: String, reason: String },
    /// The sidecar answered an error; its message says what to do.
    #[error("{message}")]
    Api { status: u16, code: String, message: String, details: Value },
    #[error("{0}")]
    Input(String),
    #[error("cannot run {command}: {reason}")]
    Spawn { command: String, reason: String, exit: i32 },
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Unreachable { .. } => EXIT_UNAVAILABLE,
            CliError::Api { status: 503, .. } => EXIT_UNAVAILABLE,
            CliError::Api { code, .. } if code == "lock-busy" => EXIT_BUSY,
            CliError::Api { code, .. } if code.ends_with("-not-found") || code.ends_with("-config-invalid") => {
                EXIT_CONFIG
            }
            CliError::Spawn { exit, .. } => *exit,
            CliError::Api { .. } | CliError::Input(_) => 1,
        }
    }

    /// The sidecar's error code, when it answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CliError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Worth trying again: the sidecar or its ZooKeeper session is away for now.
    pub fn is_transient(&self) -> bool {
        self.exit_code() == EXIT_UNAVAILABLE
    }
}
