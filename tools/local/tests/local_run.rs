//! The README's run command: it brings up the whole stack (a real ensemble, the API
//! stand-in, the operator, the examples applied, a sidecar answering on 127.0.0.1), kubectl
//! works with the kubeconfig it wrote, and Ctrl-C leaves no process behind.

use std::process::Command;
use std::time::{Duration, Instant};

use paddock_testkit::ensemble::free_ports;
use paddock_testkit::{Acquire, PodClient, ProcessHandle};

/// Pids of every live process whose ancestry leads to `root`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_command_serves_and_ctrl_c_leaves_nothing_behind() {
    let listen = format!("127.0.0.1:{}", free_ports(1).unwrap()[0]);
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_paddock-local"));
    command.args(["--listen", &listen, "--dir"]).arg(dir.path()).env("RUST_LOG", "warn");
    let mut local = ProcessHandle::spawn("paddock-local", command).unwrap();
    let pod = PodClient::new(format!("http://{listen}"));

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = pod.http().get(pod.url("/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no /healthz within 60 s");
        assert!(!local.has_exited(), "paddock-local exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It is the whole thing, not just a health endpoint: the example lock works, and
    // kubectl with the kubeconfig it wrote shows the holder the operator observed.
    // (/healthz answers before the session is up and the operator has provisioned the
    // lock: on a loaded machine the first acquire may be a 503 or a 404 for a moment.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pod.acquire("orders", "me", "5s").await.unwrap() {
            Acquire::Acquired { .. } => break,
            other => assert!(Instant::now() < deadline, "the example lock was not granted within 60 s: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kubeconfig = dir.path().join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = Command::new("kubectl").args(["get", "dlock", "orders"]).env("KUBECONFIG", &kubeconfig).output();
        let table = output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        if table.contains("demo-0") {
            break;
        }
        assert!(Instant::now() < deadline, "kubectl get dlock orders never showed the holder: {table}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let children = descendants(local.pid().unwrap());
    let running = |program: &str| {
        let cmdline = |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        children.iter().filter(|pid| cmdline(pid).contains(program)).count()
    };
    assert_eq!(running("QuorumPeerMain"), 3, "a 3-node ensemble runs under it: {children:?}");
    assert_eq!(running("paddock-operator"), 1, "the operator runs under it: {children:?}");

    local.signal(libc::SIGINT).unwrap(); // Ctrl-C
    let deadline = Instant::now() + Duration::from_secs(30);
    while !local.has_exited() {
        assert!(Instant::now() < deadline, "paddock-local did not stop on Ctrl-C");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while children.iter().any(|pid| alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "processes left behind: {:?}",
            children.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
