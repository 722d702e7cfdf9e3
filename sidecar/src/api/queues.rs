//! The queue API: enqueue (single and batch), `GET /queue/next`, ack, nack, stats and
//! dead letters.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use paddock_recipes::Name;
use paddock_recipes::queue::item::{ItemId, MAX_PRIORITY};
use paddock_recipes::queue::{NackOutcome, NewItem, QueueError, StoredDeadLetter};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::extract::{Json, Path, Query};
use crate::error::{ApiError, ApiResult, parse_duration};
use crate::queues::{Handed, QueueServiceError};
use crate::state::AppState;

const MAX_WAIT: Duration = Duration::from_secs(600);
const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_BATCH: usize = 1000;
const MAX_ITEMS_PER_NEXT: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/queue/next", get(next))
        .route("/queue/{name}", post(enqueue).get(stats))
        .route("/queue/{name}/batch", post(enqueue_batch))
        .route("/queue/{name}/dead", get(dead_letters))
        .route("/queue/{name}/dead/{id}", get(dead_letter))
        .route("/queue/{name}/dead/{id}/requeue", post(requeue))
        .route("/queue/{name}/{id}/ack", post(ack))
        .route("/queue/{name}/{id}/nack", post(nack))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueQuery {
    priority: Option<u8>,
    delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    items: Vec<BatchItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BatchItem {
    /// Text payload.
    payload: Option<String>,
    /// Binary payload, base64.
    payload_base64: Option<String>,
    content_type: Option<String>,
    priority: Option<u8>,
    delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NextQuery {
    queue: Option<String>,
    wait: Option<String>,
    max: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NackQuery {
    delay: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    limit: Option<usize>,
    /// `false` leaves the payloads out (a listing of large items).
    payload: Option<bool>,
}

fn queue_name(name: &str) -> ApiResult<Name> {
    Ok(Name::new("queue", name)?)
}

fn item_id(id: &str) -> ApiResult<ItemId> {
    ItemId::parse(id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid-item-id", e.to_string()))
}

fn priority(p: Option<u8>) -> ApiResult<u8> {
    match p {
        None => Ok(0),
        Some(p) if p <= MAX_PRIORITY => Ok(p),
        Some(p) => Err(ApiError::bad_request(format!(
            "priority {p} is out of range: use 0 (default) to {MAX_PRIORITY}, higher first"
        ))),
    }
}

fn delay(field: &str, d: Option<&str>) -> ApiResult<Duration> {
    let Some(d) = d else { return Ok(Duration::ZERO) };
    let d = parse_duration(field, d)?;
    if d > MAX_DELAY {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-duration",
            format!("{field} is over the limit of 7 days"),
        ));
    }
    Ok(d)
}

async fn enqueue(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<EnqueueQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let item = NewItem {
        payload: body.to_vec(),
        content_type,
        priority: priority(query.priority)?,
        delay: delay("delay", query.delay.as_deref())?,
    };
    let ids = state.queues.enqueue(&queue, vec![item]).await.map_err(|e| queue_error(&state, &queue, e))?;
    let id = ids.first().map(ToString::to_string).unwrap_or_default();
    Ok((StatusCode::CREATED, axum::Json(json!({ "queue": queue.as_str(), "id": id }))).into_response())
}

async fn enqueue_batch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<BatchBody>,
) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    if body.items.is_empty() || body.items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {MAX_BATCH} items, got {}; split larger batches",
            body.items.len()
        )));
    }
    let mut items = Vec::with_capacity(body.items.len());
    for (i, item) in body.items.into_iter().enumerate() {
        let payload = match (item.payload, item.payload_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => BASE64
                .decode(b64.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("items[{i}].payloadBase64 is not valid base64: {e}")))?,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "items[{i}] needs exactly one of \"payload\" (text) or \"payloadBase64\" (bytes)"
                )));
            }
        };
        items.push(NewItem {
            payload,
            content_type: item.content_type,
            priority: priority(item.priority)?,
            delay: delay(&format!("items[{i}].delay"), item.delay.as_deref())?,
        });
    }
    let ids = state.queues.enqueue(&queue, items).await.map_err(|e| queue_error(&state, &queue, e))?;
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    Ok((StatusCode::CREATED, axum::Json(json!({ "queue": queue.as_str(), "ids": ids }))).into_response())
}

/// `GET /queue/next`: one item as the raw payload with `Paddock-*` headers, or with
/// `max` > 1 a JSON list `{"items": [{queue, id, attempt, contentType, payloadBase64,
/// enqueuedAt}]}`. 204 when nothing came within `wait`.
async fn next(State(state): State<AppState>, Query(query): Query<NextQuery>) -> ApiResult<Response> {
    let queue = match (query.queue.as_deref(), &state.default_queue) {
        (Some(q), _) => queue_name(q)?,
        (None, Some(q)) => q.clone(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "no queue named: pass ?queue=NAME, or set PADDOCK_QUEUE (pod annotation paddock.dev/queue)",
            ));
        }
    };
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => {
            let w = parse_duration("wait", w)?;
            if w > MAX_WAIT {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-duration",
                    "wait is over the limit of 10m",
                ));
            }
            w
        }
    };
    let max = query.max.unwrap_or(1);
    if max == 0 || max > MAX_ITEMS_PER_NEXT {
        return Err(ApiError::bad_request(format!(
            "max must be 1 to {MAX_ITEMS_PER_NEXT}: how many items to hand out at once"
        )));
    }
    let handed = state.queues.next(&queue, wait, max).await.map_err(|e| queue_error(&state, &queue, e))?;
    if handed.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if query.max.is_none() {
        return Ok(single(handed.into_iter().next().expect("not empty")));
    }
    let items: Vec<Value> = handed
        .iter()
        .map(|h| {
            json!({
                "queue": h.queue.as_str(),
                "id": h.delivery.id.to_string(),
                "attempt": h.delivery.attempt,
                "contentType": h.delivery.envelope.content_type,
                "enqueuedAt": h.delivery.envelope.enqueued_at_ms,
                "payloadBase64": BASE64.encode(&h.delivery.payload),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

fn single(handed: Handed) -> Response {
    let mut headers = HeaderMap::new();
    let d = &handed.delivery;
    let content_type = d.envelope.content_type.as_deref().unwrap_or("application/octet-stream");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    for (name, value) in [
        ("paddock-queue", handed.queue.to_string()),
        ("paddock-item-id", d.id.to_string()),
        ("paddock-attempt", d.attempt.to_string()),
        ("paddock-enqueued-at", d.envelope.enqueued_at_ms.to_string()),
    ] {
        headers.insert(name, HeaderValue::from_str(&value).expect("ids and numbers are header-safe"));
    }
    (StatusCode::OK, headers, d.payload.clone()).into_response()
}

async fn ack(State(state): State<AppState>, Path((name, id)): Path<(String, String)>) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let id = item_id(&id)?;
    state.queues.ack(&queue, &id).await.map_err(|e| queue_error(&state, &queue, e))?;
    Ok(axum::Json(json!({ "queue": queue.as_str(), "id": id.to_string(), "acked": true })).into_response())
}

async fn nack(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Query(query): Query<NackQuery>,
) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let id = item_id(&id)?;
    let delay = delay("delay", query.delay.as_deref())?;
    let outcome = state
        .queues
        .nack(&queue, &id, delay, query.reason.as_deref())
        .await
        .map_err(|e| queue_error(&state, &queue, e))?;
    let body = match outcome {
        NackOutcome::Requeued { id: new_id } => json!({
            "queue": queue.as_str(), "id": id.to_string(), "outcome": "requeued",
            "newId": new_id.map(|i| i.to_string()),
        }),
        NackOutcome::DeadLettered => {
            json!({ "queue": queue.as_str(), "id": id.to_string(), "outcome": "dead-lettered" })
        }
    };
    Ok(axum::Json(body).into_response())
}

async fn stats(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let (stats, config) = state.queues.stats(&queue).await.map_err(|e| queue_error(&state, &queue, e))?;
    Ok(axum::Json(json!({ "queue": queue.as_str(), "stats": stats, "config": config })).into_response())
}

async fn dead_letters(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<DeadQuery>,
) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let limit = query.limit.unwrap_or(100).min(1000);
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
    let at = |ms: u64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
    };
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

fn queue_error(state: &AppState, queue: &Name, err: QueueServiceError) -> ApiError {
    let ns = state.queues.namespace();
    match err {
        QueueServiceError::Queue(QueueError::NotProvisioned(path)) => {
            ApiError::not_provisioned("queue", "WorkQueue", queue, ns, &path)
        }
        QueueServiceError::Queue(QueueError::Config(e)) => ApiError::config_invalid("queue", "WorkQueue", queue, ns, e),
        QueueServiceError::Queue(QueueError::NoSuchItem(id)) => ApiError::conflict(
            "claim-lost",
            format!("item {id} is no longer in queue {queue}; it was acked or moved after this pod lost its claim"),
        ),
        QueueServiceError::Queue(QueueError::ClaimLost(id)) => ApiError::conflict(
            "claim-lost",
            format!("this pod's claim on item {id} of queue {queue} is gone; it may be redelivered elsewhere, so do not assume your processing counted"),
        ),
        QueueServiceError::Queue(QueueError::DeadLettered(id)) => ApiError::conflict(
            "dead-lettered",
            format!(
                "item {id} of queue {queue} was dead-lettered while this pod held it, so this is not recorded as an ack; \
                 see GET /queue/{queue}/dead/{id} and requeue it if it must run again"
            ),
        ),
        QueueServiceError::Queue(QueueError::NoSuchDeadLetter(id)) => {
            ApiError::not_found("dead-letter-not-found", format!("queue {queue} has no dead letter {id}; list them with GET /queue/{queue}/dead"))
        }
        QueueServiceError::Queue(QueueError::ZooKeeper(e)) | QueueServiceError::ZooKeeper(e) => {
            ApiError::zookeeper(&format!("queue {queue} in namespace {ns}"), e)
        }
        QueueServiceError::Session(e) => e.into(),
        QueueServiceError::PayloadTooLarge { size, limit, .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("payload of {size} bytes is over queue {queue}'s limit of {limit} bytes; store large data elsewhere and enqueue a reference"),
        )
        .with_details(json!({ "limit": limit, "size": size })),
        QueueServiceError::NotHeld { id, .. } => ApiError::conflict(
            "claim-lost",
            format!(
                "this pod does not hold item {id} of queue {queue}: its claim ended (visibility timeout, \
                 session expiry, or already acked/nacked) and it may have been redelivered elsewhere; \
                 do not assume your processing counted"
            ),
        ),
        QueueServiceError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "the sidecar is shutting down and hands out no more items",
        ),
    }
}
