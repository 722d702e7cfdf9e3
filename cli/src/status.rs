//! `paddock status [NAME...]`: what this pod holds, waits for and has in flight; or the
//! named locks (holders, waiters) and queues (depths). A table, or JSON with `-o json`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::args::{Output, StatusArgs};
use crate::error::CliError;
use crate::sidecar::Sidecar;

pub async fn run(sidecar: Sidecar, args: StatusArgs) -> Result<i32, CliError> {
    if args.names.is_empty() {
        let status = sidecar.status().await?.ok_or_else(|| {
            CliError::Input(format!(
                "the sidecar at {} is older than GET /status; name the locks and queues to show: paddock status NAME...",
                sidecar.url()
            ))
        })?;
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&status).expect("JSON")),
            Output::Table => print!("{}", pod_table(&status)),
        }
        return Ok(0);
    }
    let (mut locks, mut queues) = (Vec::new(), Vec::new());
    for name in &args.names {
        match sidecar.lock_status(name, None, Duration::from_secs(10)).await {
            Ok(lock) => locks.push(lock),
            Err(e) if e.code() == Some("lock-not-found") => match sidecar.queue(name).await {
                Ok(queue) => queues.push(queue),
                Err(e) if e.code() == Some("queue-not-found") => {
                    return Err(CliError::Input(format!(
                        "no DistributedLock or WorkQueue named {name} is provisioned in this pod's namespace: \
                         check the name, or `kubectl get dlock,wq`"
                    )));
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    match args.output {
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(&json!({ "locks": locks, "queues": queues })).expect("JSON"))
        }
        Output::Table => print!("{}", named_table(&locks, &queues)),
    }
    Ok(0)
}

fn pod_table(status: &Value) -> String {
    let session = &status["session"];
    let mut out = format!(
        "pod {} in namespace {}: ZooKeeper session {} (timeout {} ms)\n",
        text(&status["pod"]),
        text(&status["namespace"]),
        if session["connected"] == true { "connected" } else { "NOT connected" },
        text(&session["timeoutMs"]),
    );
    let locks = rows(&status["locks"], &["name", "owner", "state", "token", "mode", "acquiredAt"]);
    out += &table(&["LOCK", "OWNER", "STATE", "TOKEN", "MODE", "SINCE"], locks, "no locks held or waited for");
    let items = rows(&status["inFlight"], &["queue", "id", "attempt", "visibleForMs"]);
    out += &table(&["QUEUE", "ITEM IN FLIGHT", "ATTEMPT", "VISIBLE FOR (ms)"], items, "no queue items in flight");
    out
}

fn named_table(locks: &[Value], queues: &[Value]) -> String {
    let mut out = String::new();
    if !locks.is_empty() {
        let rows = locks
            .iter()
            .map(|lock| {
                let holders: Vec<String> = lock["holders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| match h["holder"].as_object() {
                        Some(holder) => format!("{}/{}", text(&holder["pod"]), text(&holder["owner"])),
                        None => format!("non-Paddock ({})", text(&h["foreign"])),
                    })
                    .collect();
                let holders = if holders.is_empty() { "-".to_owned() } else { holders.join(", ") };
                vec![text(&lock["name"]), holders, text(&lock["waiters"]), text(&lock["maxHolders"])]
            })
            .collect();
        out += &table(&["LOCK", "HELD BY", "WAITING", "MAX HOLDERS"], rows, "");
    }
    if !queues.is_empty() {
        let columns = ["depth", "ready", "inFlight", "delayed", "deadLettered"];
        let rows = queues
            .iter()
            .map(|q| std::iter::once(text(&q["queue"])).chain(columns.iter().map(|c| text(&q["stats"][c]))).collect())
            .collect();
        out += &table(&["QUEUE", "DEPTH", "READY", "IN FLIGHT", "DELAYED", "DEAD"], rows, "");
    }
    out
}

fn rows(list: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    list.iter().map(|entry| fields.iter().map(|f| text(&entry[f])).collect()).collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell; `empty` (if any) when there are no rows.
fn table(header: &[&str], rows: Vec<Vec<String>>, empty: &str) -> String {
    if rows.is_empty() {
        return if empty.is_empty() { String::new() } else { format!("{empty}\n") };
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::pod_table;

    #[test]
    fn the_pod_table_has_a_row_per_hold_and_item() {
        let status = json!({
            "pod": "demo-0", "namespace": "default", "session": {"connected": true, "timeoutMs": 10000},
            "locks": [{"name": "orders", "owner": "w-1", "state": "held", "token": 42, "mode": "exclusive",
                       "acquiredAt": "2026-12-07T04:00:00Z"}],
            "inFlight": [{"queue": "jobs", "id": "b1.0000000001", "attempt": 2, "visibleForMs": 2900}],
        });
        let table = pod_table(&status);
        assert!(table.starts_with("pod demo-0 in namespace default: ZooKeeper session connected"), "{table}");
        assert!(
            table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["orders", "w-1", "held", "42", "exclusive", "2026-12-07T04:00:00Z"]),
            "{table}"
        );
        assert!(
            table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["jobs", "b1.0000000001", "2", "2900"]),
            "{table}"
        );
    }
}
