//! `POST /lock`, `GET|DELETE /lock/{name}`, `POST /lock/{name}/renew`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use paddock_recipes::Name;
use paddock_recipes::lock::{LockError, LockMode, LockSnapshot};
use serde::Deserialize;
use serde_json::json;

use crate::error::extract::{Json, Path, Query};
use crate::error::{ApiError, ApiResult, parse_duration};
use crate::locks::{AcquireOutcome, LockServiceError};
use crate::state::AppState;

/// Longest blocking acquire one request may ask for, but for `"wait": "forever"`.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// `"wait": "forever"`: until granted or the request is given up (an election's candidate).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Shortest and longest lease.
const MIN_TTL: Duration = Duration::from_millis(100);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/lock", post(acquire).delete(super::lock_sets::release))
        .route("/lock/{name}", get(status).delete(release))
        .route("/lock/{name}/renew", post(renew))
        .route("/lock/{name}/holders", get(super::lock_observe::holders))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    name: Option<String>,
    /// Several locks, all or none.
    names: Option<Vec<String>>,
    wait: Option<String>,
    owner: Option<String>,
    ttl: Option<String>,
    mode: Option<LockMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerQuery {
    owner: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewQuery {
    owner: Option<String>,
    ttl: Option<String>,
}

async fn acquire(State(state): State<AppState>, Json(body): Json<AcquireBody>) -> ApiResult<Response> {
    let owner = owner_or_pod(&state, body.owner)?;
    let wait = match body.wait.as_deref() {
        None => Duration::ZERO,
        Some("forever") => FOREVER,
        Some(w) => bounded("wait", parse_duration("wait", w)?, Duration::ZERO, MAX_WAIT)?,
    };
    let ttl = body.ttl.as_deref().map(|t| bounded("ttl", parse_duration("ttl", t)?, MIN_TTL, MAX_TTL)).transpose()?;
    let mode = body.mode.unwrap_or(LockMode::Exclusive);
    let name = match (body.name, body.names) {
        (Some(name), None) => Name::new("lock", &name)?,
        (None, Some(names)) => return super::lock_sets::acquire(&state, names, owner, mode, wait, ttl).await,
        _ => {
            return Err(ApiError::bad_request(
                "give \"name\" (one lock) or \"names\" (several, acquired all or none), not both",
            ));
        }
    };
    let outcome = state.locks.acquire(name.clone(), owner.clone(), mode, wait, ttl).await;
    match outcome.map_err(|e| lock_error(&state, &name, e))? {
        AcquireOutcome::Acquired(grant) => Ok((StatusCode::OK, axum::Json(grant)).into_response()),
        AcquireOutcome::Busy(snapshot) => Err(busy(&state, &name, &owner, wait, &snapshot, "")),
    }
}

/// 409 `lock-busy`, naming the holders; `set` says what became of the rest of a set.
pub(super) fn busy(
    state: &AppState,
    name: &Name,
    owner: &str,
    wait: Duration,
    snapshot: &LockSnapshot,
    set: &str,
) -> ApiError {
    let holders: Vec<String> = snapshot
        .holders
        .iter()
        .map(|h| match (&h.holder, &h.foreign) {
            (Some(holder), _) => format!("{}/{}", holder.pod, holder.owner),
            (None, Some(data)) => format!("a non-Paddock client ({data})"),
            (None, None) => h.node.clone(),
        })
        .collect();
    let message = format!(
        "lock {name} in namespace {} not acquired within {}: held by {}; {} waiting{set}. \
         Retry, or pass a longer \"wait\"",
        state.locks.namespace(),
        humantime::format_duration(wait),
        if holders.is_empty() { "nobody (it was just released)".to_owned() } else { holders.join(", ") },
        snapshot.waiters,
    );
    ApiError::conflict("lock-busy", message).with_details(json!({
        "name": name.as_str(),
        "owner": owner,
        "holders": snapshot.holders,
        "waiters": snapshot.waiters,
        "maxHolders": snapshot.max_holders,
    }))
}

async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<OwnerQuery>,
) -> ApiResult<Response> {
    let name = Name::new("lock", &name)?;
    let owner = owner_or_pod(&state, query.owner)?;
    let status = state.locks.status(name.clone(), owner).await.map_err(|e| lock_error(&state, &name, e))?;
    Ok(axum::Json(status).into_response())
}

async fn release(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<OwnerQuery>,
) -> ApiResult<Response> {
    let name = Name::new("lock", &name)?;
    let owner = owner_or_pod(&state, query.owner)?;
    let token = state.locks.release(name.clone(), owner.clone()).await.map_err(|e| lock_error(&state, &name, e))?;
    Ok(axum::Json(json!({ "name": name.as_str(), "owner": owner, "token": token, "released": true })).into_response())
}

async fn renew(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<RenewQuery>,
) -> ApiResult<Response> {
    let name = Name::new("lock", &name)?;
    let owner = owner_or_pod(&state, query.owner)?;
    let ttl = query.ttl.as_deref().map(|t| bounded("ttl", parse_duration("ttl", t)?, MIN_TTL, MAX_TTL)).transpose()?;
    let grant = state.locks.renew(name.clone(), owner, ttl).map_err(|e| lock_error(&state, &name, e))?;
    Ok(axum::Json(grant).into_response())
}

/// The owner named in the request, or this pod.
pub(super) fn owner_or_pod(state: &AppState, owner: Option<String>) -> ApiResult<String> {
    match owner {
        None => Ok(state.locks.pod().to_owned()),
        Some(o) if !o.is_empty() && o.len() <= 253 && o.chars().all(|c| c.is_ascii_graphic()) => Ok(o),
        Some(_) => {
            Err(ApiError::bad_request("owner must be 1 to 253 visible ASCII characters (no spaces), e.g. \"worker-3\""))
        }
    }
}

fn bounded(field: &str, value: Duration, min: Duration, max: Duration) -> ApiResult<Duration> {
    if value < min || value > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-duration",
            format!(
                "{field} {} is out of range: use {} to {}",
                humantime::format_duration(value),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(value)
}

pub(super) fn lock_error(state: &AppState, name: &Name, err: LockServiceError) -> ApiError {
    let ns = state.locks.namespace();
    match err {
        LockServiceError::Lock(LockError::NotProvisioned(path)) => {
            ApiError::not_provisioned("lock", "DistributedLock", name, ns, &path)
        }
        LockServiceError::Lock(LockError::Config(e)) => {
            ApiError::config_invalid("lock", "DistributedLock", name, ns, e)
        }
        LockServiceError::Lock(err @ LockError::SharedSemaphore { .. }) => {
            ApiError::bad_request(format!("{err}; use mode \"exclusive\" with this lock"))
        }
        LockServiceError::Lock(LockError::ContenderLost(node)) => ApiError::unavailable(format!(
            "our place in the queue for lock {name} ({node}) vanished while waiting, \
             most likely because the ZooKeeper session expired; retry"
        )),
        LockServiceError::Lock(LockError::ZooKeeper(e)) | LockServiceError::ZooKeeper(e) => {
            ApiError::zookeeper(&format!("lock {name} in namespace {ns}"), e)
        }
        LockServiceError::Session(e) => e.into(),
        LockServiceError::AlreadyWaiting { owner, .. } => ApiError::conflict(
            "already-waiting",
            format!(
                "owner {owner} already has an acquire of lock {name} waiting; \
                 wait for it, or use a different \"owner\" per worker"
            ),
        ),
        LockServiceError::HeldShared { owner, .. } => ApiError::conflict(
            "lock-held-shared",
            format!(
                "owner {owner} holds lock {name} in shared mode and asked for it exclusive; a shared hold \
                 cannot be upgraded in place: release it (DELETE /lock/{name}?owner={owner}), then acquire exclusive"
            ),
        ),
        LockServiceError::NotHeld { owner, .. } => ApiError::not_found(
            "lock-not-held",
            format!("lock {name} in namespace {ns} is not held by owner {owner}; nothing to release or renew"),
        ),
        LockServiceError::StaleGrant { owner, decided_ago, why, .. } => ApiError::unavailable(format!(
            "lock {name} was due to owner {owner}, but this sidecar was stalled for {} (over half its ZooKeeper \
             session timeout) between deciding the grant and answering, and {why}; the lock was not acquired \
             and no token was issued: retry the acquire (once /readyz answers 200)",
            humantime::format_duration(decided_ago)
        ))
        .with_details(json!({ "name": name.as_str(), "owner": owner, "decidedAgoMs": decided_ago.as_millis() as u64 })),
        LockServiceError::Lost { owner, token, reason, .. } => ApiError::conflict(
            "lock-lost",
            format!(
                "lock {name} held by owner {owner} with token {token} was lost ({}); \
                 stop using that token and acquire the lock again",
                reason.as_str()
            ),
        )
        .with_details(json!({ "token": token, "reason": reason })),
    }
}
