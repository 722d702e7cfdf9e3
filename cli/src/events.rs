//! The sidecar's `GET /events` stream (server-sent events), followed for as long as the
//! caller listens: reconnected after a break, each event handed on as JSON with its type.
//! A break can hide an event; callers also look for themselves (heartbeats, extends), so
//! the stream only makes them learn sooner.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::sidecar::Sidecar;

/// One event: its `type` field (`lock.lost`, `queue.claim-lost`, ...) and the rest.
pub type Event = Value;

/// Follows the stream in a task until the receiver is dropped.
pub fn follow(sidecar: Sidecar) -> mpsc::Receiver<Event> {
    let (sender, receiver) = mpsc::channel(256);
    tokio::spawn(async move {
        while !sender.is_closed() {
            if let Err(e) = stream_into(&sidecar, &sender).await {
                note_break(&e);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    receiver
}

/// Reads one connection's events until it ends.
async fn stream_into(sidecar: &Sidecar, sender: &mpsc::Sender<Event>) -> Result<(), String> {
    let response = sidecar.send(sidecar.request(Method::GET, "/events")).await.map_err(|e| e.to_string())?;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| e.to_string())?));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(event) = parse_block(&block)
                && sender.send(event).await.is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The JSON of one event's `data:` lines; keep-alive comments and others are `None`.
fn parse_block(block: &str) -> Option<Event> {
    let data: Vec<&str> = block.lines().filter_map(|line| line.strip_prefix("data:")).map(str::trim_start).collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

/// A broken stream is expected (the sidecar restarts); it is said only when asked for.
fn note_break(error: &str) {
    if std::env::var_os("PADDOCK_DEBUG").is_some() {
        eprintln!("paddock: events stream: {error}; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::parse_block;

    #[test]
    fn data_lines_are_the_event_and_comments_are_not() {
        let event = parse_block("event: lock.lost\ndata: {\"type\":\"lock.lost\",\"name\":\"a\"}\n\n").unwrap();
        assert_eq!(event["type"], "lock.lost");
        assert_eq!(event["name"], "a");
        assert!(parse_block(":\n\n").is_none());
    }
}
