//! A small HTTP client for one sidecar, as an app would call it: keep-alive connections,
//! JSON in and out. Used by tests, the fault suite and benchmarks.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct PodClient {
    http: reqwest::Client,
    base: String,
}

/// An item from `GET /queue/next`.
#[derive(Debug, Clone)]
pub struct Item {
    pub queue: String,
    pub id: String,
    pub attempt: u32,
    pub payload: Vec<u8>,
}

/// The outcome of `POST /lock`.
#[derive(Debug, Clone)]
pub enum Acquire {
    Acquired {
        token: i64,
        body: Value,
    },
    Busy(Value),
    /// Any other status, with its JSON body (e.g. 503 while ZooKeeper elects a leader).
    Failed {
        status: u16,
        body: Value,
    },
}

impl PodClient {
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("building an HTTP client");
        Self { http, base: base.into() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn acquire(&self, name: &str, owner: &str, wait: &str) -> Result<Acquire> {
        self.acquire_with(json!({ "name": name, "owner": owner, "wait": wait })).await
    }

    pub async fn acquire_with(&self, body: Value) -> Result<Acquire> {
        let response = self.http.post(self.url("/lock")).json(&body).send().await.context("POST /lock")?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.context("POST /lock: JSON body")?;
        Ok(match status {
            200 => Acquire::Acquired { token: body["token"].as_i64().context("token in grant")?, body },
            409 if body["error"] == "lock-busy" => Acquire::Busy(body),
            _ => Acquire::Failed { status, body },
        })
    }

    /// `DELETE /lock/{name}?owner=`: status and body.
    pub async fn release(&self, name: &str, owner: &str) -> Result<(u16, Value)> {
        let response = self.http.delete(self.url(&format!("/lock/{name}"))).query(&[("owner", owner)]).send().await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// `GET /lock/{name}?owner=`.
    pub async fn lock_status(&self, name: &str, owner: &str) -> Result<(u16, Value)> {
        let response = self.http.get(self.url(&format!("/lock/{name}"))).query(&[("owner", owner)]).send().await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// `POST /queue/{name}` with `payload`; the new id.
    pub async fn enqueue(&self, queue: &str, payload: impl Into<reqwest::Body>) -> Result<(u16, Value)> {
        self.enqueue_keyed(queue, payload, None).await
    }

    /// `POST /queue/{name}` with an `Idempotency-Key` when one is given.
    pub async fn enqueue_keyed(
        &self,
        queue: &str,
        payload: impl Into<reqwest::Body>,
        key: Option<&str>,
    ) -> Result<(u16, Value)> {
        let mut request = self.http.post(self.url(&format!("/queue/{queue}"))).body(payload);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// `POST /queue/{name}/batch` with text payloads.
    pub async fn enqueue_batch(&self, queue: &str, payloads: &[String]) -> Result<(u16, Value)> {
        let items: Vec<Value> = payloads.iter().map(|p| json!({ "payload": p })).collect();
        let response =
            self.http.post(self.url(&format!("/queue/{queue}/batch"))).json(&json!({ "items": items })).send().await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// `GET /queue/next?queue=&wait=`: Ok(None) on 204; Err on anything but 200/204.
    pub async fn next(&self, queue: &str, wait: &str) -> Result<Option<Item>> {
        let response = self.http.get(self.url("/queue/next")).query(&[("queue", queue), ("wait", wait)]).send().await?;
        match response.status().as_u16() {
            204 => Ok(None),
            200 => {
                let header = |name: &str| {
                    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default()
                };
                let (queue, id, attempt) =
                    (header("paddock-queue"), header("paddock-item-id"), header("paddock-attempt"));
                let payload = response.bytes().await?.to_vec();
                Ok(Some(Item { queue, id, attempt: attempt.parse().context("Paddock-Attempt")?, payload }))
            }
            status => anyhow::bail!("GET /queue/next: {status} {}", response.text().await.unwrap_or_default()),
        }
    }

    /// `POST /queue/{name}/{id}/ack` or `/nack` (with a query such as `delay=1s`): status and body.
    pub async fn settle(&self, queue: &str, id: &str, verb: &str, query: &str) -> Result<(u16, Value)> {
        let url = self.url(&format!("/queue/{queue}/{id}/{verb}?{query}"));
        let response = self.http.post(url).send().await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// `GET /queue/{name}`: the stats object.
    pub async fn queue_stats(&self, queue: &str) -> Result<Value> {
        let response = self.http.get(self.url(&format!("/queue/{queue}"))).send().await?;
        anyhow::ensure!(response.status().is_success(), "GET /queue/{queue}: {}", response.status());
        Ok(response.json::<Value>().await?["stats"].clone())
    }

    /// The value of a metric (summed over its labels) from `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = self.http.get(self.url("/metrics")).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .sum())
    }

    /// Opens `GET /events` and returns a receiver of (event type, JSON data).
    pub async fn events(&self) -> Result<tokio::sync::mpsc::UnboundedReceiver<(String, Value)>> {
        self.events_at("/events").await
    }

    /// As [`Self::events`], for `path` with a query (e.g. `/events?watch=leader`).
    pub async fn events_at(&self, path: &str) -> Result<tokio::sync::mpsc::UnboundedReceiver<(String, Value)>> {
        use futures::StreamExt;
        let response = self.http.get(self.url(path)).timeout(Duration::from_secs(3600)).send().await?;
        anyhow::ensure!(response.status().is_success(), "GET {path}: {}", response.status());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut stream = response.bytes_stream();
        tokio::spawn(async move {
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let mut kind = String::new();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            kind = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if !kind.is_empty() && tx.send((kind, serde_json::from_str(&data).unwrap_or(Value::Null))).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
