//! `paddock enqueue QUEUE [FILE|-]`: one item from a file or stdin, or with `--lines` one
//! item per line, sent in batches (each batch one ZooKeeper transaction: all or none).

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::args::EnqueueArgs;
use crate::error::CliError;
use crate::sidecar::Sidecar;

/// Payload bytes per batch, well inside the sidecar's 1 MiB body and ZooKeeper's packet.
const BATCH_BYTES: usize = 512 * 1024;
/// How long a keyed send is retried while the sidecar or its session is away.
const KEYED_RETRIES_FOR: Duration = Duration::from_secs(60);

pub async fn run(sidecar: Sidecar, args: EnqueueArgs) -> Result<i32, CliError> {
    let input = read_input(&args)?;
    if !args.lines {
        let id = send_one(&sidecar, &args, input).await?;
        println!("{id}");
        return Ok(0);
    }
    let started = Instant::now();
    let lines: Vec<&[u8]> = input.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut sent = 0;
    for batch in batches(&lines, args.batch as usize) {
        let items: Vec<Value> = batch.iter().enumerate().map(|(i, line)| item(&args, line, sent + i + 1)).collect();
        let ids = send_batch(&sidecar, &args, items)
            .await
            .map_err(|e| stopped_at(e, sent, args.idempotency_key.is_some()))?;
        for id in &ids {
            println!("{id}");
        }
        sent += batch.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "paddock: {sent} items enqueued to {} in {seconds:.2} s ({:.0} items/s)",
        args.queue,
        sent as f64 / seconds
    );
    Ok(0)
}

fn read_input(args: &EnqueueArgs) -> Result<Vec<u8>, CliError> {
    let mut input = Vec::new();
    match args.file.as_deref() {
        None => std::io::stdin().read_to_end(&mut input).map(drop),
        Some(path) if path.as_os_str() == "-" => std::io::stdin().read_to_end(&mut input).map(drop),
        Some(path) => std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut input)).map(drop),
    }
    .map_err(|e| CliError::Input(format!("reading the payload: {e}")))?;
    Ok(input)
}

/// Consecutive lines, at most `count` and about [`BATCH_BYTES`] per batch.
fn batches<'a>(lines: &'a [&'a [u8]], count: usize) -> Vec<&'a [&'a [u8]]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        if i > start && (i - start == count || bytes + line.len() > BATCH_BYTES) {
            batches.push(&lines[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += line.len();
    }
    if start < lines.len() {
        batches.push(&lines[start..]);
    }
    batches
}

/// One batch item; line `number` (from 1) of a keyed run gets `KEY-number`.
fn item(args: &EnqueueArgs, line: &[u8], number: usize) -> Value {
    let mut item = match std::str::from_utf8(line) {
        Ok(text) => json!({ "payload": text }),
        Err(_) => json!({ "payloadBase64": BASE64.encode(line) }),
    };
    item["contentType"] = json!(args.content_type.as_deref().unwrap_or("text/plain; charset=utf-8"));
    if let Some(priority) = args.priority {
        item["priority"] = json!(priority);
    }
    if let Some(delay) = args.delay {
        item["delay"] = json!(format!("{}ms", delay.as_millis()));
    }
    if let Some(key) = &args.idempotency_key {
        item["idempotencyKey"] = json!(format!("{key}-{number}"));
    }
    if let Some(group) = &args.group {
        item["group"] = json!(group);
    }
    item
}

async fn send_one(sidecar: &Sidecar, args: &EnqueueArgs, payload: Vec<u8>) -> Result<String, CliError> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(priority) = args.priority {
        query.push(("priority", priority.to_string()));
    }
    if let Some(delay) = args.delay {
        query.push(("delay", format!("{}ms", delay.as_millis())));
    }
    if let Some(group) = &args.group {
        query.push(("group", group.clone()));
    }
    let content_type = args.content_type.as_deref().unwrap_or("application/octet-stream");
    let answer = keyed_retry(args, || {
        let mut request = sidecar
            .request(Method::POST, &format!("/queue/{}", args.queue))
            .query(&query)
            .header("content-type", content_type)
            .body(payload.clone())
            .timeout(Duration::from_secs(60));
        if let Some(key) = &args.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        sidecar.json(request)
    })
    .await?;
    if answer["duplicate"] == true {
        eprintln!("paddock: key seen within the queue's deduplication window: not stored again");
    }
    Ok(answer["id"].as_str().unwrap_or("null").to_owned())
}

async fn send_batch(sidecar: &Sidecar, args: &EnqueueArgs, items: Vec<Value>) -> Result<Vec<String>, CliError> {
    keyed_retry(args, || sidecar.enqueue_batch(&args.queue, items.clone())).await
}

/// Sends again while the sidecar is away, but only with idempotency keys: without them a
/// send whose answer was lost may have been stored, and a second would store it twice.
async fn keyed_retry<T, F: Future<Output = Result<T, CliError>>>(
    args: &EnqueueArgs,
    mut send: impl FnMut() -> F,
) -> Result<T, CliError> {
    let give_up = Instant::now() + KEYED_RETRIES_FOR;
    loop {
        match send().await {
            Err(e) if e.is_transient() && args.idempotency_key.is_some() && Instant::now() < give_up => {
                eprintln!("paddock: {e}; sending again (the idempotency key keeps it from being stored twice)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            result => return result,
        }
    }
}

fn stopped_at(error: CliError, sent: usize, keyed: bool) -> CliError {
    let advice = if keyed {
        "run the same command again: lines already stored are not stored twice"
    } else {
        "those before it are stored; that batch may or may not be. Send with --idempotency-key to make a rerun safe"
    };
    CliError::Input(format!("stopped at line {}: {error}; {advice}", sent + 1))
}

#[cfg(test)]
mod tests {
    use super::{BATCH_BYTES, batches};

    #[test]
    fn batches_hold_at_most_the_count_and_about_the_byte_budget() {
        let small = vec![b"x".as_slice(); 1001];
        let sizes: Vec<usize> = batches(&small, 500).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [500, 500, 1]);
        let big = vec![0u8; BATCH_BYTES / 2 + 1];
        let lines = vec![big.as_slice(); 3];
        let sizes: Vec<usize> = batches(&lines, 500).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1, 1], "two such lines are over the byte budget");
    }
}
