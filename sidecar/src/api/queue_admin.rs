//! The queue API of the people who run a queue: dead letters (list, read, requeue,
//! purge), peek at what waits, and purge it.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use paddock_recipes::queue::StoredDeadLetter;
use serde::Deserialize;
use serde_json::{Value, json};

use super::queues::{item_id, queue_error, queue_name};
use crate::error::ApiResult;
use crate::error::extract::{Path, Query};
use crate::state::AppState;

/// Most items or dead letters one listing returns.
const MAX_LISTED: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/queue/{name}/items", get(peek).delete(purge))
        .route("/queue/{name}/dead", get(dead_letters).delete(purge_dead))
        .route("/queue/{name}/dead/{id}", get(dead_letter))
        .route("/queue/{name}/dead/{id}/requeue", post(requeue))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    /// Whether to include the payloads (dead letters: default true; items: default false).
    payload: Option<bool>,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// `GET /queue/{name}/items?limit=N&payload=true`: what waits (ready, then delayed), in
/// delivery order, without claiming anything.
async fn peek(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let limit = query.limit.unwrap_or(100).min(MAX_LISTED);
    let with_payload = query.payload.unwrap_or(false);
    let items = state.queues.peek(&queue, limit, with_payload).await.map_err(|e| queue_error(&state, &queue, e))?;
    let now = paddock_recipes::queue::item::now_ms();
    let items: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut body = json!({
                "id": item.id.to_string(),
                "priority": item.priority,
                "group": item.group,
                "dueAt": rfc3339(item.due_ms),
                "ready": item.due_ms <= now,
                "enqueuedAt": rfc3339(item.enqueued_at_ms),
                "attempt": item.attempts,
                "contentType": item.content_type,
                "size": item.size,
            });
            if let Some(payload) = &item.payload {
                body["payloadBase64"] = json!(BASE64.encode(payload));
            }
            body
        })
        .collect();
    Ok(axum::Json(json!({ "queue": queue.as_str(), "items": items })).into_response())
}

/// `DELETE /queue/{name}/items`: removes every item nobody holds; items in flight stay
/// with their consumers, whose acks still succeed.
async fn purge(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let purged = state.queues.purge(&queue).await.map_err(|e| queue_error(&state, &queue, e))?;
    Ok(axum::Json(json!({ "queue": queue.as_str(), "removed": purged.removed, "leftInFlight": purged.in_flight }))
        .into_response())
}

/// `DELETE /queue/{name}/dead`: removes every dead letter.
async fn purge_dead(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let removed = state.queues.purge_dead(&queue).await.map_err(|e| queue_error(&state, &queue, e))?;
    Ok(axum::Json(json!({ "queue": queue.as_str(), "removed": removed })).into_response())
}

async fn dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let limit = query.limit.unwrap_or(100).min(MAX_LISTED);
    let letters = state.queues.dead_letters(&queue, limit).await.map_err(|e| queue_error(&state, &queue, e))?;
    let with_payload = query.payload.unwrap_or(true);
    let items: Vec<Value> = letters.iter().map(|letter| dead_letter_json(letter, with_payload)).collect();
    Ok(axum::Json(json!({ "queue": queue.as_str(), "items": items })).into_response())
}

async fn dead_letter(State(state): State<AppState>, Path((name, id)): Path<(String, String)>) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let dead_id = item_id(&id)?.to_string();
    let letter = state.queues.dead_letter(&queue, &dead_id).await.map_err(|e| queue_error(&state, &queue, e))?;
    let mut body = dead_letter_json(&letter, true);
    body["queue"] = json!(queue.as_str());
    Ok(axum::Json(body).into_response())
}

/// What an operator of the queue needs to see in a dead letter: why it died, every
/// delivery (pod, time, outcome), and the item itself (payload as base64, and as text
/// when it is UTF-8).
fn dead_letter_json(stored: &StoredDeadLetter, with_payload: bool) -> Value {
    let letter = &stored.letter;
    let at = rfc3339;
    let deliveries: Vec<Value> = letter
        .attempts
        .deliveries
        .iter()
        .map(|d| json!({ "attempt": d.attempt, "pod": d.pod, "at": at(d.at_ms), "outcome": d.outcome }))
        .collect();
    let mut body = json!({
        "id": stored.id,
        "reason": letter.reason,
        "deadAt": at(letter.dead_at_ms),
        "enqueuedAt": at(letter.envelope.enqueued_at_ms),
        "originalId": letter.envelope.original_id,
        "priority": letter.envelope.priority,
        "group": letter.envelope.group,
        "contentType": letter.envelope.content_type,
        "attempts": letter.attempts.attempt,
        "deliveries": deliveries,
        "payloadBytes": stored.payload.len(),
    });
    if with_payload {
        body["payloadBase64"] = json!(BASE64.encode(&stored.payload));
        if let Ok(text) = std::str::from_utf8(&stored.payload) {
            body["payload"] = json!(text);
        }
    }
    body
}

async fn requeue(State(state): State<AppState>, Path((name, id)): Path<(String, String)>) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let dead_id = item_id(&id)?.to_string();
    let new_id = state.queues.requeue_dead(&queue, &dead_id).await.map_err(|e| queue_error(&state, &queue, e))?;
    Ok(axum::Json(json!({ "queue": queue.as_str(), "deadId": dead_id, "id": new_id.to_string() })).into_response())
}
