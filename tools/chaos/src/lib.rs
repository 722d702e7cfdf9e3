//! The whole system under faults, in the spirit of Jepsen: real ZooKeeper, the real
//! operator and sidecar binaries, kubectl, workloads through the sidecars' HTTP API, a
//! nemesis scheduled from a seed, and checkers that would catch a violation.
//!
//! - `cluster`: the processes (the stack of `paddock_local` plus pods of two namespaces).
//! - `workloads`: what the apps do and write down.
//! - `faults`: the nemesis.
//! - `report`: the checkers and the verdict.
//! - `durability`: ZooKeeper's own durability under the same faults, by a plain client.
//! - `election`, `groups`: workloads of their own (a leader's fenced log, ordered groups);
//!   `group_checks`: the grouped workload's checkers.
//!
//! `bash scripts/chaos.sh --duration 30m` runs a long one; CI runs a short one
//! (`tests/chaos.rs`).

pub mod cluster;
pub mod durability;
pub mod election;
pub mod faults;
pub mod group_checks;
pub mod groups;
pub mod report;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use paddock_recipes::zk;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::cluster::{Cluster, TEAM_B};
use self::durability::{DurabilityLedger, Sabotage};
pub use self::faults::FaultKind;
use self::report::DeadLetter;
pub use self::report::Report;
use self::workloads::{QUEUE, Workloads};

/// After the faults the backlog drains at the consumers' pace: the drain fails after
/// this long without the depth falling ...
const DRAIN_STALL: Duration = Duration::from_secs(60);
/// ... or after this long in all.
const DRAIN_CAP: Duration = Duration::from_secs(600);

/// A deliberately broken variant, to prove the checkers bite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Broken {
    /// The store accepts writes whatever their fencing token.
    NoFencing,
    /// Consumers ack an item before they process it.
    AckBeforeProcessing,
    /// Consumers fail every tenth item (they nack it): after the queue's `maxAttempts`
    /// deliveries it goes to the dead letters, which the ledger must count, not call lost.
    FailSomeItems,
    /// Keyed producers send no idempotency key (they still send every 20th item again
    /// after its confirmation, as if the answer had been lost): items stored twice.
    DropIdempotencyKeys,
    /// Some of the durability ledger's confirmed ZooKeeper writes are undone behind its
    /// back, as by a server that lost committed transactions.
    ZookeeperLosesWrites,
    /// The election's log accepts a leader's write whatever its token: a deposed leader
    /// that was paused mid-term writes after its successor.
    ElectionWithoutFencing,
    /// Grouped consumers ack an item before they process it: the group's next item goes
    /// out (the queue keeps its promise) while the first is still being processed, and
    /// may be done first; `group-order` must say so.
    GroupAckBeforeProcessing,
    /// The grouped producer sends its items without their group: nothing holds a group's
    /// next item back while one is in flight; `group-exclusive` must say so.
    ProducersDropGroups,
}

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub seed: u64,
    /// How long faults are injected (the drain and checks come after).
    pub duration: Duration,
    pub faults: Vec<FaultKind>,
    /// How long `StopEnsemble` keeps the ensemble down.
    pub outage: Duration,
    pub broken: Option<Broken>,
    /// The ensemble serves TLS only, and every operator, sidecar and checker connects
    /// over TLS with a certificate of its own (see `cluster`).
    pub tls: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            duration: Duration::from_secs(120),
            faults: FaultKind::ALL.to_vec(),
            outage: Duration::from_secs(20),
            broken: None,
            tls: false,
        }
    }
}

/// Runs the suite once and returns its report (violations included; the caller decides).
pub async fn run(options: ChaosOptions) -> Result<Report> {
    println!(
        "== Paddock fault run: seed {} (replay with --seed {}), {:?} of faults {:?}{}{} ==",
        options.seed,
        options.seed,
        options.duration,
        options.faults,
        if options.tls { ", over TLS" } else { "" },
        options.broken.map(|b| format!(", BROKEN: {b:?}")).unwrap_or_default()
    );
    let workloads = Arc::new(Workloads::new(options.broken));
    let mut cluster = Cluster::start(&workloads, options.tls).await.context("bringing the stack up")?;
    println!("stack up: logs in {}", cluster.dir.path().display());
    let mut report = Report { seed: options.seed, duration: options.duration, ..Default::default() };
    check_isolation(&cluster, &mut report, "at the start").await?;

    let started = Instant::now();
    let stop = CancellationToken::new();
    let durability = Arc::new(DurabilityLedger::default());
    let durability_writer = {
        let (ledger, stop) = (durability.clone(), stop.clone());
        let zk = cluster.zk.clone();
        let sabotage =
            if options.broken == Some(Broken::ZookeeperLosesWrites) { Sabotage::UndoSome } else { Sabotage::None };
        tokio::spawn(async move { ledger.write(zk, sabotage, stop).await })
    };
    let timer = {
        let (stop, duration) = (stop.clone(), options.duration);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        })
    };
    let faults =
        faults::nemesis(&mut cluster, &workloads, &options.faults, options.seed, options.outage, started, stop.clone())
            .await;
    timer.abort();
    stop.cancel();
    let faults = faults.context("injecting a fault")?;
    durability_writer.await.context("the durability ledger's writer")?;

    workloads.stop_producing.cancel();
    // Enqueues still in flight finish (or fail) before the queue is judged empty.
    let producers_gone = Instant::now() + Duration::from_secs(60);
    while workloads.producers.load(std::sync::atomic::Ordering::SeqCst) > 0 && Instant::now() < producers_gone {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = drain(&cluster, DRAIN_STALL, DRAIN_CAP).await;
    for pod in &mut cluster.pods {
        pod.stop_app();
    }
    if !drained {
        report.checks.push(format!(
            "the queue did not drain after the faults: no progress for {} s (or {} s in all)",
            DRAIN_STALL.as_secs(),
            DRAIN_CAP.as_secs()
        ));
    }
    let dead = dead_letters(&cluster, &mut report).await?;
    let web = cluster.pods.iter().find(|p| p.namespace == "default").expect("a pod of default").client();
    let grouped_dead = groups::dead_letters(&web).await?;
    check_locks_left(&cluster, &mut report).await;

    report::check_counter(&workloads, &mut report);
    report::check_gauges(&workloads, &mut report);
    report::check_election(&workloads, &mut report);
    report::check_queue(&workloads, &faults, &dead, &mut report);
    group_checks::check_groups(&workloads, &faults, &grouped_dead, started, &mut report);
    report::summarize(&workloads, &faults, started, &mut report);
    report.durability = durability.check(&cluster.zk, started).await?;
    check_isolation(&cluster, &mut report, "after the faults").await?;
    check_operator(&cluster, &mut report).await?;
    if !report.clean() {
        let Cluster { dir, mut stack, pods, .. } = cluster;
        drop(pods);
        // The servers' logs too: whether ZooKeeper itself lost a committed write is told there.
        stack.ensemble.keep_logs();
        drop(stack);
        println!("logs kept in {}", dir.keep().display());
    }
    Ok(report)
}

/// Waits until the queues (`jobs` and the grouped one) are empty (nothing ready, nothing
/// claimed), then a moment for the work in progress to finish. Whether everything was processed is the checkers' call.
/// A backlog drains at the consumers' pace, so the wait goes on while the depth falls and
/// ends (not drained) after `stall` without progress, or at `cap`. Prints the depth
/// every 10 s, and what each pod of the queue's namespace sees if it does not drain.
async fn drain(cluster: &Cluster, stall: Duration, cap: Duration) -> bool {
    let started = Instant::now();
    let pods: Vec<_> = cluster.pods.iter().filter(|p| p.namespace == "default").collect();
    let pod = pods[0].client();
    let mut progress_at = started + Duration::from_secs(10);
    let (mut lowest, mut last_progress) = (u64::MAX, started);
    while last_progress.elapsed() < stall && started.elapsed() < cap {
        let stats = (pod.queue_stats(QUEUE).await, pod.queue_stats(groups::GROUPED_QUEUE).await);
        if let (Ok(jobs), Ok(grouped)) = &stats {
            let empty = |s: &serde_json::Value| s["depth"] == 0 && s["inFlight"] == 0;
            if empty(jobs) && empty(grouped) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return true;
            }
            let depth = |s: &serde_json::Value| s["depth"].as_u64().unwrap_or(u64::MAX / 2);
            if depth(jobs) + depth(grouped) < lowest {
                (lowest, last_progress) = (depth(jobs) + depth(grouped), Instant::now());
            }
        }
        if Instant::now() >= progress_at {
            progress_at += Duration::from_secs(10);
            for (queue, stats) in [(QUEUE, &stats.0), (groups::GROUPED_QUEUE, &stats.1)] {
                match stats {
                    Ok(s) => println!("draining {queue}: depth {}, in flight {}", s["depth"], s["inFlight"]),
                    Err(err) => println!("draining {queue}: stats unavailable: {err:#}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for pod in pods {
        let client = pod.client();
        let delivered = client.metric("paddock_queue_delivered_total").await.unwrap_or(f64::NAN);
        let ready = client.http().get(client.url("/readyz")).send().await.map(|r| r.status().to_string());
        for queue in [QUEUE, groups::GROUPED_QUEUE] {
            let stats = client.queue_stats(queue).await.map(|s| s.to_string()).unwrap_or_else(|e| format!("{e:#}"));
            println!("not drained: {}: readyz {ready:?}, delivered {delivered}, {queue} stats {stats}", pod.name);
        }
    }
    false
}

/// The queue's dead letters, all of them, as `GET /queue/{name}/dead` shows them. It lists
/// at most 1000; when the queue's stats count more, the rest are listed in ZooKeeper
/// (with the namespace's identity) and read one by one through `GET .../dead/{id}`.
async fn dead_letters(cluster: &Cluster, report: &mut Report) -> Result<Vec<DeadLetter>> {
    const PAGE: usize = 1000;
    let web = cluster.pods.iter().find(|p| p.namespace == "default").expect("a pod of default");
    let pod = web.client();
    let get = |path: String| {
        let pod = pod.clone();
        async move {
            // The sidecar may still be reconnecting after the faults: ask again on a 503.
            for _ in 0..60 {
                let response = pod.http().get(pod.url(&path)).send().await?;
                if response.status() != 503 {
                    anyhow::ensure!(response.status().is_success(), "GET {path}: {}", response.status());
                    return Ok::<_, anyhow::Error>(response.json::<serde_json::Value>().await?);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            anyhow::bail!("GET {path}: 503 for 30 s")
        }
    };
    let listing = get(format!("/queue/{QUEUE}/dead?limit={PAGE}")).await?;
    let mut letters: Vec<DeadLetter> =
        listing["items"].as_array().into_iter().flatten().filter_map(DeadLetter::from_api).collect();
    let counted = get(format!("/queue/{QUEUE}")).await?["stats"]["deadLettered"].as_u64().unwrap_or(0);
    if letters.len() >= PAGE || (letters.len() as u64) < counted {
        let admin = cluster
            .zk
            .connect(zk::Client::connector().with_auth("digest", web.credentials.as_bytes()))
            .await
            .context("connecting as default to list the dead letters")?;
        let mut ids = admin.list_children(&format!("/paddock/default/queues/{QUEUE}/dead")).await?;
        ids.sort();
        let listed = letters.len();
        let seen: std::collections::HashSet<String> = letters.iter().map(|l| l.id.clone()).collect();
        for id in ids.into_iter().filter(|id| !seen.contains(id)) {
            if let Some(letter) = DeadLetter::from_api(&get(format!("/queue/{QUEUE}/dead/{id}")).await?) {
                letters.push(letter);
            }
        }
        report.checks.push(format!(
            "dead letters: GET /queue/{QUEUE}/dead listed {listed} (it lists at most {PAGE}); the other {} were read one by one",
            letters.len() - listed
        ));
    }
    Ok(letters)
}

/// Once every app has released its locks (each asks again while a release's outcome is
/// unknown, and gives up a place an unanswered acquire may have left it), no lock has a
/// holder or a waiter left: a contender left behind would live as long as its pod's
/// session, taking a place of a semaphore from everyone.
async fn check_locks_left(cluster: &Cluster, report: &mut Report) {
    let locks = [
        ("default", workloads::COUNTER_LOCK),
        ("default", faults::WITNESS_LOCK),
        (TEAM_B, workloads::SEMAPHORE_LOCK),
        (TEAM_B, workloads::RW_LOCK),
    ];
    let mut left = Vec::new();
    // A pod killed at the very end takes its session timeout to let go.
    let deadline = Instant::now() + cluster::SESSION_TIMEOUT * 3;
    for (namespace, lock) in locks {
        let pod = cluster.pods.iter().find(|p| p.namespace == namespace).expect("a pod per namespace").client();
        let mut last = String::from("no answer");
        loop {
            match pod.lock_status(lock, "checker").await {
                Ok((200, body)) if body["holders"].as_array().is_some_and(|h| h.is_empty()) && body["waiters"] == 0 => {
                    last.clear();
                    break;
                }
                Ok((status, body)) => {
                    last = format!("{status}: holders {} waiters {}", body["holders"], body["waiters"])
                }
                Err(err) => last = format!("{err:#}"),
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !last.is_empty() {
            // What the holder's own sidecar says of it: does it still know the place?
            let mut owners = Vec::new();
            if let Ok((_, body)) = pod.lock_status(lock, "checker").await {
                for holder in body["holders"].as_array().into_iter().flatten() {
                    let (owner, name) = (holder["holder"]["owner"].as_str(), holder["holder"]["pod"].as_str());
                    let Some(sim) = cluster.pods.iter().find(|p| Some(p.name.as_str()) == name) else { continue };
                    let owner = owner.unwrap_or_default();
                    let state = match sim.client().lock_status(lock, owner).await {
                        Ok((status, body)) => format!("{status} state {}", body["state"]),
                        Err(err) => format!("{err:#}"),
                    };
                    owners.push(format!("GET /lock/{lock}?owner={owner} on {}: {state}", sim.name));
                }
            }
            left.push(format!("{lock} of {namespace} ({last}; {})", owners.join("; ")));
        }
    }
    if left.is_empty() {
        report.checks.push("locks after the faults: no holder or waiter left once the apps released them".into());
    } else {
        report.violations.extend(
            left.into_iter()
                .map(|l| format!("locks after the faults: {l}, after every app released it: a contender left behind")),
        );
    }
}

/// Two namespaces cannot see or touch each other's locks and queues: not through their
/// sidecars (the names do not resolve) and not with their ZooKeeper identity (NoAuth).
async fn check_isolation(cluster: &Cluster, report: &mut Report, when: &str) -> Result<()> {
    let find = |namespace: &str| cluster.pods.iter().find(|p| p.namespace == namespace).expect("a pod per namespace");
    let (web, batch) = (find("default"), find(TEAM_B));
    let mut failures = Vec::new();
    let (batch_client, web_client) = (batch.client(), web.client());
    let intruder_lock = |name: &str| serde_json::json!({"name": name, "owner": "intruder"});
    let attempts = [
        ("POST /lock orders", batch_client.http().post(batch_client.url("/lock")).json(&intruder_lock("orders"))),
        ("POST /lock pool", web_client.http().post(web_client.url("/lock")).json(&intruder_lock("pool"))),
        ("POST /queue/jobs", batch_client.http().post(batch_client.url("/queue/jobs")).body("intruder")),
    ];
    for (what, request) in attempts {
        // A sidecar still reconnecting after the faults answers 503: ask again.
        let mut status = 503;
        for _ in 0..60 {
            let request = request.try_clone().expect("a request without a streamed body");
            // No answer at all (the sidecar restarting) counts as unavailable too.
            status = request.send().await.map_or(503, |r| r.status().as_u16());
            if status != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if status != 404 {
            failures.push(format!("{what} from the other namespace answered {status}, not 404"));
        }
    }
    let intruder = cluster
        .zk
        .connect(zk::Client::connector().with_auth("digest", batch.credentials.as_bytes()))
        .await
        .context("connecting as team-b")?;
    for path in ["/paddock/default/locks/orders", "/paddock/default/queues/jobs"] {
        let mut answer = intruder.get_children(path).await;
        for _ in 0..20 {
            if !matches!(answer, Err(ref e) if paddock_recipes::retry::outcome_unknown(e)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            answer = intruder.get_children(path).await;
        }
        match answer {
            Err(zk::Error::NoAuth) => {}
            other => {
                failures.push(format!("team-b's identity listing {path}: {:?}, not NoAuth", other.map(|c| c.0.len())))
            }
        }
    }
    if failures.is_empty() {
        report
            .checks
            .push(format!("isolation {when}: team-b and default cannot see or touch each other's locks and queues"));
    } else {
        report.violations.extend(failures.into_iter().map(|f| format!("isolation {when}: {f}")));
    }
    Ok(())
}

/// After the faults, the operator still works: every resource is Ready again, and a lock
/// applied now is provisioned and can be taken.
async fn check_operator(cluster: &Cluster, report: &mut Report) -> Result<()> {
    let stack = &cluster.stack;
    let manifest = cluster.dir.path().join("after-faults.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: paddock.dev/v1alpha1\nkind: DistributedLock\nmetadata:\n  name: after-faults\n  namespace: team-b\nspec:\n  maxHolders: 1\n",
    )?;
    stack.kubectl(&["apply", "-f", &manifest.to_string_lossy()])?;
    for namespace in ["default", TEAM_B] {
        if let Err(err) = stack.wait_ready(namespace, Duration::from_secs(90)).await {
            report.violations.push(format!("operator: {err:#}"));
            return Ok(());
        }
    }
    let batch = cluster.pods.iter().find(|p| p.namespace == TEAM_B).expect("a team-b pod").client();
    match batch.acquire("after-faults", "checker", "10s").await {
        Ok(paddock_testkit::Acquire::Acquired { .. }) => report.checks.push(
            "operator: all resources Ready after the faults; a lock applied afterwards was provisioned and taken"
                .into(),
        ),
        other => {
            report.violations.push(format!("operator: the lock applied after the faults could not be taken: {other:?}"))
        }
    }
    Ok(())
}
