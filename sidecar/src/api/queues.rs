//! The queue API of the apps that produce and consume: enqueue (single and batch),
//! `GET /queue/next`, ack, nack, extend and stats. What the people who run a queue use
//! (dead letters, peek, purge) is in `queue_admin`.

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
use paddock_recipes::queue::{Enqueued, MAX_KEY_BYTES, NackOutcome, NewItem, QueueError};
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
        .route("/queue/{name}/ack", post(super::queue_acks::ack_many))
        .route("/queue/{name}/{id}/ack", post(ack))
        .route("/queue/{name}/{id}/nack", post(nack))
        .route("/queue/{name}/{id}/extend", post(extend))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueQuery {
    priority: Option<u8>,
    delay: Option<String>,
    group: Option<String>,
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
    idempotency_key: Option<String>,
    group: Option<String>,
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
struct ExtendQuery {
    visibility: Option<String>,
}

pub(super) fn queue_name(name: &str) -> ApiResult<Name> {
    Ok(Name::new("queue", name)?)
}

pub(super) use paddock_recipes::queue::group::GroupKey;

pub(super) fn item_id(id: &str) -> ApiResult<ItemId> {
    ItemId::parse(id).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid-item-id", e.to_string()))
}

fn group(field: &str, key: Option<&str>) -> ApiResult<Option<GroupKey>> {
    key.map(|key| {
        GroupKey::new(key).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-group",
                format!("{field}: {e}; use a shorter key, e.g. a hash of the longer one"),
            )
        })
    })
    .transpose()
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

/// An idempotency key as given (header `Idempotency-Key`, or a batch item's field).
fn idempotency_key(field: &str, key: Option<&str>) -> ApiResult<Option<String>> {
    match key {
        None => Ok(None),
        Some(key) if !key.is_empty() && key.len() <= MAX_KEY_BYTES => Ok(Some(key.to_owned())),
        Some(key) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            format!(
                "{field} must be 1 to {MAX_KEY_BYTES} bytes, got {}; use a stable id of the job (a UUID, a hash)",
                key.len()
            ),
        )),
    }
}

/// What an enqueue answers: 201 when it stored anything, 200 when every item was a
/// duplicate of one enqueued within the deduplication window.
fn enqueue_status(enqueued: &[Enqueued]) -> StatusCode {
    if enqueued.iter().all(|e| e.duplicate) { StatusCode::OK } else { StatusCode::CREATED }
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
        group: group("group", query.group.as_deref())?,
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-idempotency-key",
                    "the Idempotency-Key header must be visible ASCII",
                )
            })?;
            idempotency_key("the Idempotency-Key header", Some(text))?
        }
    };
    let keyed = key.is_some();
    let enqueued =
        state.queues.enqueue(&queue, vec![item], vec![key]).await.map_err(|e| queue_error(&state, &queue, e))?;
    let status = enqueue_status(&enqueued);
    let first = enqueued.into_iter().next().expect("one item, one answer");
    let mut body = json!({ "queue": queue.as_str(), "id": first.id.map(|id| id.to_string()) });
    if keyed {
        body["duplicate"] = json!(first.duplicate);
    }
    Ok((status, axum::Json(body)).into_response())
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
    let mut keys = Vec::with_capacity(body.items.len());
    for (i, item) in body.items.into_iter().enumerate() {
        keys.push(idempotency_key(&format!("items[{i}].idempotencyKey"), item.idempotency_key.as_deref())?);
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
            group: group(&format!("items[{i}].group"), item.group.as_deref())?,
        });
    }
    let keyed = keys.iter().any(Option::is_some);
    let enqueued = state.queues.enqueue(&queue, items, keys).await.map_err(|e| queue_error(&state, &queue, e))?;
    let ids: Vec<Option<String>> = enqueued.iter().map(|e| e.id.as_ref().map(ToString::to_string)).collect();
    let mut body = json!({ "queue": queue.as_str(), "ids": ids });
    if keyed {
        body["duplicates"] = json!(enqueued.iter().map(|e| e.duplicate).collect::<Vec<_>>());
    }
    Ok((enqueue_status(&enqueued), axum::Json(body)).into_response())
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
                "group": h.delivery.envelope.group,
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
    if let Some(group) = &d.envelope.group {
        headers.insert("paddock-group", group_header(group));
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
    // Without a delay the queue's retry back-off applies (none: ready again at once).
    let delay = query.delay.as_deref().map(|d| delay("delay", Some(d))).transpose()?;
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

/// `POST /queue/{name}/{id}/extend?visibility=D`: the app is still working on the item;
/// it stays this pod's until now + D (at most the queue's `maxVisibility`).
async fn extend(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Query(query): Query<ExtendQuery>,
) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let id = item_id(&id)?;
    let Some(visibility) = query.visibility.as_deref() else {
        return Err(ApiError::bad_request(
            "extend needs ?visibility=DURATION (e.g. 30s): how long from now the item stays this pod's",
        ));
    };
    let visibility = parse_duration("visibility", visibility)?;
    if visibility.is_zero() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid-duration", "visibility must be positive"));
    }
    let until = state.queues.extend(&queue, &id, visibility).await.map_err(|e| queue_error(&state, &queue, e))?;
    let until = humantime::format_rfc3339_millis(until).to_string();
    Ok(axum::Json(json!({ "queue": queue.as_str(), "id": id.to_string(), "visibleUntil": until })).into_response())
}

async fn stats(State(state): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let queue = queue_name(&name)?;
    let (stats, config) = state.queues.stats(&queue).await.map_err(|e| queue_error(&state, &queue, e))?;
    let longest = match stats.groups {
        0 => None,
        _ => state.queues.longest_group(&queue).await.map_err(|e| queue_error(&state, &queue, e))?,
    };
    let mut stats = serde_json::to_value(stats).expect("stats serialize");
    stats["longestGroup"] = json!(longest);
    Ok(axum::Json(json!({ "queue": queue.as_str(), "stats": stats, "config": config })).into_response())
}

/// A group key as a header value: percent-encoded where it is not visible ASCII (and for
/// `%` itself), so any key fits.
fn group_header(key: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' || byte == b' ' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&encoded).expect("visible ASCII is header-safe")
}

pub(super) fn queue_error(state: &AppState, queue: &Name, err: QueueServiceError) -> ApiError {
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
        QueueServiceError::VisibilityTooLong { asked, limit, .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "visibility-too-long",
            format!(
                "a visibility of {} is over queue {queue}'s maxVisibility of {}; extend again later instead, \
                 or raise spec.maxVisibility of the WorkQueue",
                humantime::format_duration(asked),
                humantime::format_duration(limit)
            ),
        )
        .with_details(json!({ "limit": humantime::format_duration(limit).to_string() })),
        QueueServiceError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "the sidecar is shutting down and hands out no more items",
        ),
    }
}
