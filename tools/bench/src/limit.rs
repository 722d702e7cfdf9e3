//! The limit: what a lock cycle cannot beat — create and delete of an ephemeral
//! sequential node with the zookeeper-client crate, 1 client and 64 in parallel.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use zookeeper_client as zk;

use super::{Bench, Figure, Report};

/// Runs `clients` tasks of `ops` timed operations each; returns every latency and the wall
/// time. `op(client_index)` is one operation.
pub async fn parallel<F, Fut>(clients: usize, ops: usize, op: F) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(ops);
            for _ in 0..ops {
                let t = Instant::now();
                op(c).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, start.elapsed()))
}

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let admin = bench.admin().await?;
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    admin.mkdir("/bench/raw", &open).await?;
    for clients in [1usize, 64] {
        let client = Arc::new(zk::Client::connect(&bench.ensemble.connect_string()).await?);
        for c in 0..clients {
            let _ = client.create(&format!("/bench/raw/c{c}"), b"", &open).await;
        }
        let ops = bench.sizes.cycles_per_client * if clients == 1 { 5 } else { 1 };
        let (latencies, wall) = parallel(clients, ops, move |c| {
            let client = client.clone();
            async move {
                let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
                let base = format!("/bench/raw/c{c}/n-");
                let (_, seq) = client.create(&base, b"", &ephemeral).await?;
                client.delete(&format!("{base}{seq}"), None).await?;
                Ok(())
            }
        })
        .await?;
        report.push(
            Figure::from_latencies("limit", &format!("zookeeper create+delete, {clients} client(s)"), latencies, wall)
                .note("one session, zookeeper-client crate"),
        );
        super::settle().await;
    }
    Ok(())
}
