//! The sidecar's HTTP API, as the subcommands use it: one method per call, errors turned
//! into [`CliError`] (the sidecar's JSON error, or "not reachable" with what to check).

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::error::CliError;

#[derive(Debug, Clone)]
pub struct Sidecar {
    http: reqwest::Client,
    base: String,
}

/// A queue item handed to this pod.
#[derive(Debug, Clone)]
pub struct Item {
    pub queue: String,
    pub id: String,
    pub attempt: String,
    pub content_type: Option<String>,
    pub payload: Vec<u8>,
}

impl Sidecar {
    pub fn new(url: &str) -> Self {
        Self { http: reqwest::Client::new(), base: url.trim_end_matches('/').to_owned() }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends, and turns a connection failure or an error status into a [`CliError`].
    pub async fn send(&self, request: RequestBuilder) -> Result<reqwest::Response, CliError> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"].as_str().unwrap_or("unexpected-answer").to_owned();
        let message = match body["message"].as_str() {
            Some(message) => message.to_owned(),
            None => format!("the sidecar at {} answered HTTP {status}: is PADDOCK_URL a Paddock sidecar?", self.base),
        };
        Err(CliError::Api { status, code, message, details: body })
    }

    pub async fn json(&self, request: RequestBuilder) -> Result<Value, CliError> {
        let response = self.send(request).await?;
        response.json().await.map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, error: &reqwest::Error) -> CliError {
        let reason = if error.is_timeout() {
            "no answer in time".to_owned()
        } else if error.is_connect() {
            "connection refused or failed".to_owned()
        } else {
            error.to_string()
        };
        CliError::Unreachable { url: self.base.clone(), reason }
    }

    /// The pod's view (`GET /status`); `None` from a sidecar older than that endpoint.
    pub async fn status(&self) -> Result<Option<Value>, CliError> {
        match self.json(self.request(Method::GET, "/status").timeout(Duration::from_secs(10))).await {
            Ok(status) => Ok(Some(status)),
            Err(e) if e.code() == Some("no-such-endpoint") => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn lock_status(&self, name: &str, owner: Option<&str>, timeout: Duration) -> Result<Value, CliError> {
        let mut request = self.request(Method::GET, &format!("/lock/{name}")).timeout(timeout);
        if let Some(owner) = owner {
            request = request.query(&[("owner", owner)]);
        }
        self.json(request).await
    }

    pub async fn renew(&self, name: &str, owner: &str, ttl: Duration, timeout: Duration) -> Result<Value, CliError> {
        let ttl = format!("{}ms", ttl.as_millis());
        let request = self.request(Method::POST, &format!("/lock/{name}/renew")).timeout(timeout);
        self.json(request.query(&[("owner", owner), ("ttl", &ttl)])).await
    }

    pub async fn release(&self, name: &str, owner: &str) -> Result<Value, CliError> {
        let request = self.request(Method::DELETE, &format!("/lock/{name}")).timeout(Duration::from_secs(30));
        self.json(request.query(&[("owner", owner)])).await
    }

    /// `GET /queue/{name}`: stats and config.
    pub async fn queue(&self, name: &str) -> Result<Value, CliError> {
        self.json(self.request(Method::GET, &format!("/queue/{name}")).timeout(Duration::from_secs(30))).await
    }

    /// One item, waiting up to `wait` for it.
    pub async fn next(&self, queue: &str, wait: Duration) -> Result<Option<Item>, CliError> {
        let wait_ms = format!("{}ms", wait.as_millis());
        let request = self
            .request(Method::GET, "/queue/next")
            .query(&[("queue", queue), ("wait", &wait_ms)])
            .timeout(wait + Duration::from_secs(30));
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (Some(id), attempt) = (header("paddock-item-id"), header("paddock-attempt")) else {
            return Err(CliError::Input(format!("{} answered an item without Paddock-Item-Id", self.base)));
        };
        let content_type = header("content-type");
        let payload = response.bytes().await.map_err(|e| self.unreachable(&e))?.to_vec();
        Ok(Some(Item { queue: queue.to_owned(), id, attempt: attempt.unwrap_or_default(), content_type, payload }))
    }

    pub async fn ack(&self, item: &Item) -> Result<(), CliError> {
        let path = format!("/queue/{}/{}/ack", item.queue, item.id);
        self.send(self.request(Method::POST, &path).timeout(Duration::from_secs(30))).await.map(drop)
    }

    /// Gives the item back; the queue's retry back-off applies.
    pub async fn nack(&self, item: &Item, reason: &str) -> Result<(), CliError> {
        let path = format!("/queue/{}/{}/nack", item.queue, item.id);
        let request = self.request(Method::POST, &path).query(&[("reason", reason)]);
        self.send(request.timeout(Duration::from_secs(30))).await.map(drop)
    }

    pub async fn extend(&self, item: &Item, visibility: Duration) -> Result<(), CliError> {
        let path = format!("/queue/{}/{}/extend", item.queue, item.id);
        let visibility = format!("{}ms", visibility.as_millis());
        let request = self.request(Method::POST, &path).query(&[("visibility", visibility)]);
        self.send(request.timeout(Duration::from_secs(10))).await.map(drop)
    }

    /// `POST /queue/{name}/batch`: answers the ids, in the items' order.
    pub async fn enqueue_batch(&self, queue: &str, items: Vec<Value>) -> Result<Vec<String>, CliError> {
        let request = self.request(Method::POST, &format!("/queue/{queue}/batch")).json(&json!({ "items": items }));
        let answer = self.json(request.timeout(Duration::from_secs(60))).await?;
        let ids = answer["ids"].as_array().map(|ids| ids.iter().filter_map(|id| id.as_str().map(str::to_owned)));
        Ok(ids.map(Iterator::collect).unwrap_or_default())
    }
}
