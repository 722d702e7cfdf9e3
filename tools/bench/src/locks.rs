//! Lock cycles (acquire + release), uncontended, and the contended hand-over.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use paddock_recipes::lock::{self, AcquireRequest, HolderInfo, LockMode};
use paddock_recipes::{LockConfig, zk};
use paddock_testkit::{Acquire, PodClient, provision};

use super::limit::parallel;
use super::{Bench, Figure, NS, Report};

pub async fn uncontended(bench: &Bench, report: &mut Report) -> Result<()> {
    let admin = bench.admin().await?;
    for c in 0..64 {
        provision::lock(&admin, NS, &format!("lock-{c}"), LockConfig::default()).await?;
    }
    for clients in [1usize, 64] {
        let ops = bench.sizes.cycles_per_client * if clients == 1 { 5 } else { 1 };
        // Through the sidecar's HTTP API (keep-alive connections).
        let pod = bench.pod.clone();
        let (latencies, wall) = parallel(clients, ops, move |c| {
            let pod = pod.clone();
            async move { http_cycle(&pod, &format!("lock-{c}"), &format!("w{c}")).await }
        })
        .await?;
        report.push(Figure::from_latencies(
            "lock cycle",
            &format!("paddock sidecar HTTP, {clients} client(s)"),
            latencies,
            wall,
        ));
        super::settle().await;

        // The library directly, one session (as the sidecar has), config read once per lock
        // (the sidecar caches it too).
        let client = Arc::new(zk::Client::connect(&bench.ensemble.connect_string()).await?);
        let config = lock::read_config(&client, &format!("/paddock/{NS}/locks/lock-0")).await?;
        let (latencies, wall) = parallel(clients, ops, move |c| {
            let (client, config) = (client.clone(), config.clone());
            async move { library_cycle(&client, &config, &format!("/paddock/{NS}/locks/lock-{c}")).await }
        })
        .await?;
        report.push(Figure::from_latencies(
            "lock cycle",
            &format!("paddock library, {clients} client(s)"),
            latencies,
            wall,
        ));
        super::settle().await;

        if let Some(peers) = &bench.peers {
            let connect = bench.ensemble.connect_string();
            for peer in ["curator", "kazoo"] {
                let f = peers.run(peer, &connect, &["lock-cycle", &clients.to_string(), &ops.to_string()]).await?;
                report.push(f.named("lock cycle", &format!("{peer}, {clients} client(s)")));
                super::settle().await;
            }
        }
    }
    report.ratio(
        "sidecar HTTP / library, uncontended median (1 client)",
        ("lock cycle", "paddock sidecar HTTP, 1 client(s)"),
        ("lock cycle", "paddock library, 1 client(s)"),
        true,
        "<= 1.2",
    );
    for peer in ["curator", "kazoo"] {
        report.ratio(
            &format!("{peer} / sidecar HTTP, uncontended median (1 client)"),
            ("lock cycle", &format!("{peer}, 1 client(s)")),
            ("lock cycle", "paddock sidecar HTTP, 1 client(s)"),
            true,
            "> 1 (sidecar faster)",
        );
    }
    report.ratio(
        "sidecar HTTP 64 clients / raw create+delete 64 clients, throughput",
        ("lock cycle", "paddock sidecar HTTP, 64 client(s)"),
        ("limit", "zookeeper create+delete, 64 client(s)"),
        false,
        ">= 0.8",
    );
    Ok(())
}

async fn http_cycle(pod: &PodClient, name: &str, owner: &str) -> Result<()> {
    match pod.acquire(name, owner, "10s").await? {
        Acquire::Acquired { .. } => {}
        other => bail!("acquire {name}: {other:?}"),
    }
    let (status, body) = pod.release(name, owner).await?;
    anyhow::ensure!(status == 200, "release {name}: {status} {body}");
    Ok(())
}

async fn library_cycle(client: &zk::Client, config: &LockConfig, path: &str) -> Result<()> {
    let holder = HolderInfo { pod: "bench".into(), owner: "bench".into() };
    let request = AcquireRequest {
        lock_path: path,
        mode: LockMode::Exclusive,
        holder: &holder,
        wait: Duration::from_secs(10),
        acl: Default::default(),
    };
    match lock::acquire(client, config, &request, &()).await? {
        lock::Acquisition::Acquired(held) => {
            lock::release(client, &held).await?;
            Ok(())
        }
        lock::Acquisition::TimedOut(_) => bail!("uncontended lock {path} timed out"),
    }
}

/// 16 contenders on one lock: time from a release to the next holder's acquire, and the
/// ZooKeeper requests per hand-over (`mntr`), with 4 and with 16 waiters.
pub async fn handoff(bench: &Bench, report: &mut Report) -> Result<()> {
    let admin = bench.admin().await?;
    provision::lock(&admin, NS, "handoff", LockConfig::default()).await?;
    for contenders in [4usize, 16] {
        let rounds = bench.sizes.handoffs;
        let released_at: Arc<Mutex<Option<Instant>>> = Arc::default();
        let gaps: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let packets_before = bench.packets_received().await?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..contenders {
            let (pod, released_at, gaps, done) = (bench.pod.clone(), released_at.clone(), gaps.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let owner = format!("c{c}");
                while done.load(std::sync::atomic::Ordering::SeqCst) < rounds {
                    match pod.acquire("handoff", &owner, "30s").await? {
                        Acquire::Acquired { .. } => {}
                        other => bail!("handoff acquire: {other:?}"),
                    }
                    if let Some(at) = released_at.lock().unwrap().take() {
                        gaps.lock().unwrap().push(at.elapsed());
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    *released_at.lock().unwrap() = Some(Instant::now());
                    let (status, _) = pod.release("handoff", &owner).await?;
                    anyhow::ensure!(status == 200, "handoff release: {status}");
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let wall = start.elapsed();
        let packets = bench.packets_received().await? - packets_before;
        let handed = done.load(std::sync::atomic::Ordering::SeqCst);
        let gaps = gaps.lock().unwrap().clone();
        report.push(
            Figure::from_latencies("handoff", &format!("paddock sidecar, {contenders} contenders"), gaps, wall)
                .note(format!("{:.1} ZooKeeper requests per hand-over", packets as f64 / handed as f64)),
        );
        super::settle().await;
        if let Some(peers) = &bench.peers {
            let connect = bench.ensemble.connect_string();
            for peer in ["curator", "kazoo"] {
                let before = bench.packets_received().await?;
                let f = peers.run(peer, &connect, &["handoff", &contenders.to_string(), &rounds.to_string()]).await?;
                let per = (bench.packets_received().await? - before) as f64 / rounds as f64;
                report.push(
                    f.named("handoff", &format!("{peer}, {contenders} contenders"))
                        .note(format!("{per:.1} ZooKeeper requests per hand-over (incl. session setup)")),
                );
                super::settle().await;
            }
        }
    }
    Ok(())
}
