//! The sidecar's footprint: resident memory idle and under the 64-client lock load, CPU
//! per 1,000 lock cycles, and start-up time to `/readyz`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paddock_testkit::{Acquire, PodClient, Sidecar, SidecarOptions};

use super::limit::parallel;
use super::{Bench, Figure, NS, Report};

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

/// CPU time (user + system) of a process so far.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

pub async fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    // Start-up: process start to /readyz answering 200, five times.
    let mut startups = Vec::new();
    for i in 0..5 {
        let options =
            SidecarOptions::new(&bench.sidecar_binary, bench.ensemble.connect_string(), &format!("boot-{i}"), NS);
        let start = Instant::now();
        let sidecar = Sidecar::start_polling(options, Duration::from_millis(1)).await?;
        startups.push(start.elapsed());
        drop(sidecar);
    }
    report.push(
        Figure::from_latencies("sidecar", "start-up to /readyz", startups, Duration::from_secs(1))
            .note("rate is not meaningful here"),
    );

    // A fresh sidecar: idle, then under 64 clients cycling locks.
    let options = SidecarOptions::new(&bench.sidecar_binary, bench.ensemble.connect_string(), "footprint", NS);
    let sidecar = Sidecar::start(options).await?;
    let pid = sidecar.process.pid().context("pid")?;
    let pod = PodClient::new(sidecar.url(""));
    let _ = pod.lock_status("lock-0", "warm").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.push(Figure::value("sidecar", "resident memory, idle", rss_kib(pid)? as f64 / 1024.0, "MiB"));

    let cpu_before = cpu_time(pid)?;
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let ops = bench.sizes.cycles_per_client;
    let (latencies, _) = parallel(64, ops, move |c| {
        let pod = pod.clone();
        async move {
            let (name, owner) = (format!("lock-{c}"), format!("w{c}"));
            match pod.acquire(&name, &owner, "10s").await? {
                Acquire::Acquired { .. } => {}
                other => anyhow::bail!("{other:?}"),
            }
            let (status, _) = pod.release(&name, &owner).await?;
            anyhow::ensure!(status == 200);
            Ok(())
        }
    })
    .await?;
    sampler.abort();
    let cycles = latencies.len();
    let cpu = cpu_time(pid)? - cpu_before;
    report.push(Figure::value(
        "sidecar",
        "resident memory, 64 clients cycling locks (peak)",
        peak.load(std::sync::atomic::Ordering::SeqCst) as f64 / 1024.0,
        "MiB",
    ));
    report.push(Figure::value(
        "sidecar",
        "CPU per 1,000 lock cycles",
        cpu.as_secs_f64() * 1000.0 / cycles as f64 * 1000.0,
        &format!("ms (over {cycles} cycles)"),
    ));
    Ok(())
}
