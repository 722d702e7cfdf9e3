//! The command line: what each subcommand takes, with the help text a person reads.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  paddock lock nightly-report --wait 30s --ttl 60s -- ./report.sh
  paddock work jobs --concurrency 4 -- ./handle.sh
  ls *.jpg | paddock enqueue thumbnails --lines
  paddock status orders jobs

Exit codes: the command's own (128+N when a signal N ended it); 69 the sidecar is not
reachable; 75 the lock is busy; 76 the lock was lost while the command ran; 78 the lock or
queue is not provisioned or its config is unusable; 1 any other error.";

/// Locks and work queues of Paddock for scripts and jobs. Talks to the Paddock sidecar of
/// this pod (`PADDOCK_URL`).
#[derive(Debug, Parser)]
#[command(name = "paddock", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The sidecar's HTTP API.
    #[arg(long, env = "PADDOCK_URL", default_value = "http://127.0.0.1:7420", global = true)]
    pub url: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Lock(LockArgs),
    Work(WorkArgs),
    Enqueue(EnqueueArgs),
    Status(StatusArgs),
    /// Prints a completion script for a shell, e.g. `paddock completion bash > /etc/bash_completion.d/paddock`.
    Completion {
        shell: clap_complete::Shell,
    },
    /// Copies this binary to DIR/paddock (the webhook's init step for `paddock.dev/cli: "true"`).
    #[command(hide = true)]
    Install {
        dir: PathBuf,
    },
}

/// Runs CMD while holding a lock, and stops it if the lock is lost.
///
/// CMD gets PADDOCK_LOCK_NAME, PADDOCK_LOCK_OWNER and PADDOCK_LOCK_TOKEN (the fencing
/// token: send it with every write the lock protects). The lock is released when CMD
/// exits, and paddock exits with CMD's exit code. If the lock is lost while CMD runs (the
/// sidecar's ZooKeeper session ended, a renewal was refused, or the sidecar was silent
/// for longer than its session timeout), CMD's process group gets SIGTERM, SIGKILL after
/// --grace, and paddock exits 76. SIGTERM, SIGINT and SIGHUP to paddock are passed to CMD.
#[derive(Debug, Args)]
#[command(after_help = "Example: paddock lock orders --wait 1m --ttl 30s -- ./migrate.sh --apply")]
pub struct LockArgs {
    /// The DistributedLock's name (in this pod's namespace).
    pub name: String,
    /// How long to wait for the lock; busy after it, CMD does not run and paddock exits 75.
    /// `forever` waits until granted: a leader loop (each replica runs CMD when it leads;
    /// when CMD ends the lock is released and the next in line leads).
    #[arg(long, value_parser = parse_wait, default_value = "0s")]
    pub wait: Wait,
    /// Hold it as a lease of this length, renewed while CMD runs (a pod that stops
    /// renewing loses it after this, even if its sidecar lives on).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
    /// Take it shared (a read lock): shared holders run together, an exclusive one alone.
    #[arg(long)]
    pub shared: bool,
    /// Who holds it, as the lock's holders show. Default: paddock-<pid>@<host>, unique
    /// per run, so two runs in one pod exclude each other.
    #[arg(long)]
    pub owner: Option<String>,
    /// After SIGTERM, how long CMD has before SIGKILL when the lock is lost.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub grace: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs CMD once for each item of a queue: payload on stdin, exit 0 acks, else nacks.
///
/// CMD gets PADDOCK_QUEUE, PADDOCK_ITEM_ID, PADDOCK_ATTEMPT (deliveries so far, this one
/// included) and PADDOCK_CONTENT_TYPE. While it runs, paddock extends the item's
/// visibility, so a long job is not handed to another consumer; if the claim is lost
/// anyway (the sidecar's session ended), CMD's process group gets SIGTERM, SIGKILL after
/// --grace. A failed item comes back after the queue's retry back-off and goes to the
/// dead letters after its maxAttempts. On SIGTERM or SIGINT paddock takes no new items,
/// lets running ones finish within --grace, gives the rest back (nack) and exits 0.
#[derive(Debug, Args)]
#[command(after_help = "Example: paddock work jobs --concurrency 4 -- ./handle.sh")]
pub struct WorkArgs {
    /// The WorkQueue's name (in this pod's namespace).
    pub queue: String,
    /// Items processed at once (each by its own CMD).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// How often to extend an item's visibility while CMD runs. Default: a third of the
    /// queue's visibilityTimeout (each extend asks for the whole visibilityTimeout).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub extend_every: Option<Duration>,
    /// Exit 0 after this many items were handled (acked or given back).
    #[arg(long)]
    pub max_items: Option<u64>,
    /// Handle at most one item, waiting up to --wait for it, then exit: 0 when it was
    /// acked or none came, CMD's exit code when it failed.
    #[arg(long)]
    pub once: bool,
    /// With --once: how long to wait for an item.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub wait: Duration,
    /// After SIGTERM, how long running items have to finish; and, when a claim is lost,
    /// how long CMD has between SIGTERM and SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub grace: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Enqueues one item from a file or stdin, or one item per line with --lines. Prints the
/// ids, one a line.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  paddock enqueue jobs job.json --idempotency-key job-42\n  \
                        find . -name '*.jpg' | paddock enqueue thumbnails --lines\n  \
                        paddock enqueue ledger --lines --group customer-42 < entries.txt")]
pub struct EnqueueArgs {
    /// The WorkQueue's name (in this pod's namespace).
    pub queue: String,
    /// The payload's file; `-` or none reads stdin.
    pub file: Option<PathBuf>,
    /// Each line is an item (without its newline; empty lines are skipped), sent in batches.
    #[arg(long)]
    pub lines: bool,
    /// Items per batch with --lines (1-1000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// 0-9, higher first.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: Option<u8>,
    /// Keeps the item invisible until then.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,
    /// Stored once however often it is sent within the queue's deduplicationWindow; with
    /// --lines, line N gets KEY-N, so a whole file can be sent again safely.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The payload's content type.
    #[arg(long)]
    pub content_type: Option<String>,
    /// An ordered group (1-128 bytes): its items run one at a time, in the order enqueued,
    /// whichever consumer takes them.
    #[arg(long)]
    pub group: Option<String>,
}

/// Shows what this pod holds and waits for, or the named locks and queues.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Locks and queues to show; none shows this pod's holds, waits and items in flight.
    pub names: Vec<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How long `paddock lock` waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    For(Duration),
    Forever,
}

fn parse_wait(value: &str) -> Result<Wait, String> {
    match value {
        "forever" => Ok(Wait::Forever),
        _ => humantime::parse_duration(value).map(Wait::For).map_err(|e| format!("{e} (or \"forever\")")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}
