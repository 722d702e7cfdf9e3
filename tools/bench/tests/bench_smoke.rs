//! The benchmark command runs every benchmark and prints its table (tiny sizes; the
//! figures of a debug build mean little and are not checked — `scripts/bench.sh` measures).

use std::process::Command;

#[test]
fn the_quick_benchmark_prints_every_figure_and_ratio() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["all", "--quick"])
        .env("RUST_LOG", "error")
        .output()
        .expect("bench runs");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "bench failed: {}", String::from_utf8_lossy(&output.stderr));
    for row in [
        "zookeeper create+delete, 64 client(s)",
        "paddock sidecar HTTP, 1 client(s)",
        "paddock library, 64 client(s)",
        "curator, 1 client(s)",
        "kazoo, 64 client(s)",
        "paddock sidecar, 16 contenders",
        "curator, 16 contenders",
        "paddock sidecar HTTP, batches of 100",
        "kazoo, batches of 100",
        "paddock sidecar HTTP, 8 consumer(s)",
        "curator, 8 consumer(s)",
        "enqueue to receipt, paddock sidecar",
        "dequeue+ack (library, 4 consumers) at depth 5000",
        "largest child list at depth 5000",
        "start-up to /readyz",
        "resident memory, idle",
        "CPU per 1,000 lock cycles",
        "sidecar HTTP / library, uncontended median (1 client)",
        "paddock dequeue+ack (HTTP, 8 consumers) / kazoo (8 consumers)",
        "rate at depth 5000 / at depth 1000",
        "sidecar HTTP enqueue / curator put, single, same rounds (rate)",
        "multi: receipt + item + last receipt's delete",
        "kazoo Queue, 1 consumer(s)",
        "sidecar HTTP, batches of 500, max=100, batch acks",
        "sidecar HTTP, the same over 1,000 groups",
        "claim, 200 groups of 3",
        "batched end to end: 1,000 groups / ungrouped",
        "claim median, 200 groups / 10 groups",
    ] {
        assert!(table.contains(row), "the table lacks {row:?}:\n{table}");
    }
    // The sidecar has the API every row needs (issue 16): nothing is left pending.
    assert!(!table.contains("PENDING") && !table.contains(" pending "), "a row is pending:\n{table}");
    println!("{table}");
}
