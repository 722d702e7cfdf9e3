//! `paddock work QUEUE -- CMD`: CMD once per item, the payload on stdin; exit 0 acks,
//! anything else nacks; the item's visibility is extended while CMD runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::{Instant, interval_at};
use tokio_util::sync::CancellationToken;

use crate::args::WorkArgs;
use crate::child::{self, Signals};
use crate::error::CliError;
use crate::events;
use crate::sidecar::{Item, Sidecar};

/// How long one request waits for an item. Short, so that a stopping worker, which lets
/// its last request finish (an item claimed for a request that was dropped would wait
/// for its visibility timeout), is not held up long.
const POLL: Duration = Duration::from_secs(5);
/// A queue whose config does not say (a sidecar that does not answer it) has the default.
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(300);
/// How long an ack or nack is retried while the sidecar or its session is away.
const SETTLE_RETRIES_FOR: Duration = Duration::from_secs(60);

struct Shared {
    sidecar: Sidecar,
    args: WorkArgs,
    visibility: Duration,
    extend_every: Duration,
    /// Cancelled on the first SIGTERM/SIGINT: no new items.
    stop: CancellationToken,
    /// Cancelled `--grace` after `stop` (or at a second signal): running items are given back.
    overdue: CancellationToken,
    /// Ids of this queue's items whose claim the sidecar reported lost.
    claims_lost: broadcast::Sender<String>,
    /// Items still to take, with `--max-items` or `--once`.
    budget: Option<AtomicU64>,
}

pub async fn run(sidecar: Sidecar, args: WorkArgs) -> Result<i32, CliError> {
    let queue = sidecar.queue(&args.queue).await?;
    let visibility = queue["config"]["visibilityTimeout"]
        .as_str()
        .and_then(|v| humantime::parse_duration(v).ok())
        .unwrap_or(DEFAULT_VISIBILITY);
    let extend_every = args.extend_every.unwrap_or(visibility / 3).max(Duration::from_millis(100));
    let budget = if args.once { Some(1) } else { args.max_items }.map(AtomicU64::new);
    let shared = Arc::new(Shared {
        sidecar: sidecar.clone(),
        visibility,
        extend_every,
        stop: CancellationToken::new(),
        overdue: CancellationToken::new(),
        claims_lost: broadcast::channel(1024).0,
        budget,
        args,
    });
    tokio::spawn(stop_on_signals(shared.clone()));
    tokio::spawn(follow_claims(shared.clone()));
    let mut workers = JoinSet::new();
    for _ in 0..shared.args.concurrency {
        workers.spawn(worker(shared.clone()));
    }
    let mut code = 0;
    while let Some(done) = workers.join_next().await {
        match done.expect("a worker does not panic") {
            Ok(Some(failed)) => code = failed,
            Ok(None) => {}
            Err(e) => {
                shared.stop.cancel();
                return Err(e);
            }
        }
    }
    Ok(if shared.args.once { code } else { 0 })
}

async fn stop_on_signals(shared: Arc<Shared>) {
    let mut signals = Signals::catch();
    let signal = signals.next().await;
    shared.stop.cancel();
    eprintln!(
        "paddock: signal {signal}: taking no new items from {}; running ones have {:?} to finish",
        shared.args.queue, shared.args.grace
    );
    tokio::select! {
        _ = tokio::time::sleep(shared.args.grace) => {}
        _ = signals.next() => {}
    }
    shared.overdue.cancel();
}

async fn follow_claims(shared: Arc<Shared>) {
    let mut events = events::follow(shared.sidecar.clone());
    while let Some(event) = events.recv().await {
        if event["type"] == "queue.claim-lost"
            && event["queue"] == shared.args.queue.as_str()
            && let Some(id) = event["id"].as_str()
        {
            let _ = shared.claims_lost.send(id.to_owned());
        }
    }
}

/// Takes and handles items until stopped or the budget is spent; `Some(code)` when the
/// last item it handled failed with that exit code.
async fn worker(shared: Arc<Shared>) -> Result<Option<i32>, CliError> {
    let mut failed = None;
    while !shared.stop.is_cancelled() && take(&shared.budget) {
        let wait = if shared.args.once { shared.args.wait } else { POLL };
        let item = match shared.sidecar.next(&shared.args.queue, wait).await {
            Ok(Some(item)) => item,
            Ok(None) if shared.args.once => return Ok(None),
            Ok(None) => {
                give_back(&shared.budget);
                continue;
            }
            Err(e) if e.is_transient() => {
                give_back(&shared.budget);
                eprintln!("paddock: {e}; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shared.stop.cancelled() => {}
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if shared.stop.is_cancelled() {
            settle(&shared, &item, Settle::Nack("the worker was stopping when it arrived".into())).await;
            break;
        }
        failed = handle(&shared, item).await;
    }
    Ok(failed)
}

fn take(budget: &Option<AtomicU64>) -> bool {
    budget
        .as_ref()
        .is_none_or(|left| left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok())
}

fn give_back(budget: &Option<AtomicU64>) {
    if let Some(left) = budget {
        left.fetch_add(1, Ordering::SeqCst);
    }
}

enum Outcome {
    Exited(i32),
    ClaimLost(String),
    Overdue,
}

/// Runs CMD for one item and acks or nacks it; the exit code when it failed.
async fn handle(shared: &Shared, item: Item) -> Option<i32> {
    let env = [
        ("PADDOCK_QUEUE", item.queue.clone()),
        ("PADDOCK_ITEM_ID", item.id.clone()),
        ("PADDOCK_ATTEMPT", item.attempt.clone()),
        ("PADDOCK_CONTENT_TYPE", item.content_type.clone().unwrap_or_default()),
    ];
    let mut child = match child::spawn(&shared.args.command, &env, Some(item.payload.clone())) {
        Ok(child) => child,
        Err(e) => {
            settle(shared, &item, Settle::Nack(e.to_string())).await;
            eprintln!("paddock: {e}");
            return Some(e.exit_code());
        }
    };
    let mut claims_lost = shared.claims_lost.subscribe();
    let mut extend = interval_at(Instant::now() + shared.extend_every, shared.extend_every);
    let outcome = loop {
        tokio::select! {
            status = child.wait() => break Outcome::Exited(child::exit_code(status)),
            _ = extend.tick() => match shared.sidecar.extend(&item, shared.visibility).await {
                Ok(()) => {}
                Err(e) if e.code() == Some("claim-lost") => break Outcome::ClaimLost(e.to_string()),
                Err(e) => eprintln!("paddock: extending item {}: {e}", item.id),
            },
            Ok(id) = claims_lost.recv() => if id == item.id {
                break Outcome::ClaimLost("the sidecar reported this pod's claim lost".into());
            },
            _ = shared.overdue.cancelled() => break Outcome::Overdue,
        }
    };
    match outcome {
        Outcome::Exited(0) => {
            settle(shared, &item, Settle::Ack).await;
            None
        }
        Outcome::Exited(code) => {
            settle(shared, &item, Settle::Nack(format!("the command exited {code}"))).await;
            Some(code)
        }
        Outcome::ClaimLost(reason) => {
            eprintln!(
                "paddock: item {} of {}: claim lost while the command ran ({reason}); it may be delivered again. \
                 Sent SIGTERM to the command (SIGKILL after {:?})",
                item.id, item.queue, shared.args.grace
            );
            child.terminate(shared.args.grace).await;
            None
        }
        Outcome::Overdue => {
            child.terminate(Duration::from_secs(2)).await;
            settle(shared, &item, Settle::Nack("the worker stopped before the command finished".into())).await;
            None
        }
    }
}

enum Settle {
    Ack,
    Nack(String),
}

/// Acks or nacks, retrying while the sidecar is away (both are safe to repeat).
async fn settle(shared: &Shared, item: &Item, settle: Settle) {
    let give_up = Instant::now() + SETTLE_RETRIES_FOR;
    let mut pause = Duration::from_millis(200);
    loop {
        let result = match &settle {
            Settle::Ack => shared.sidecar.ack(item).await,
            Settle::Nack(reason) => shared.sidecar.nack(item, reason).await,
        };
        match result {
            Ok(()) => return,
            Err(e) if e.is_transient() && Instant::now() < give_up => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                let what = if matches!(settle, Settle::Ack) { "ack" } else { "nack" };
                eprintln!("paddock: {what} of item {} of {}: {e}", item.id, item.queue);
                return;
            }
        }
    }
}
