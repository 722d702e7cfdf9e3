//! Several locks in one request: `POST /lock` with `"names"` (all or none, one token per
//! lock) and `DELETE /lock?names=a,b&owner=` (the set released with one request).

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use paddock_recipes::Name;
use paddock_recipes::lock::LockMode;
use serde::Deserialize;
use serde_json::json;

use super::locks::{busy, lock_error, owner_or_pod};
use crate::error::extract::Query;
use crate::error::{ApiError, ApiResult};
use crate::locks::SetOutcome;
use crate::state::AppState;

/// The most locks one set may name.
const MAX_SET: usize = 64;

pub(super) async fn acquire(
    state: &AppState,
    names: Vec<String>,
    owner: String,
    mode: LockMode,
    wait: Duration,
    ttl: Option<Duration>,
) -> ApiResult<Response> {
    let names = parse_names(names.iter().map(String::as_str))?;
    let outcome = state.locks.acquire_set(names, owner.clone(), mode, wait, ttl).await;
    match outcome {
        Ok(SetOutcome::Acquired(grants)) => Ok(axum::Json(json!({ "owner": owner, "locks": grants })).into_response()),
        Ok(SetOutcome::Busy { name, snapshot }) => {
            Err(busy(state, &name, &owner, wait, &snapshot, "; none of the set is held (all or none)"))
        }
        Err((name, e)) => Err(lock_error(state, &name, e)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReleaseQuery {
    names: Option<String>,
    owner: Option<String>,
}

/// `DELETE /lock?names=a,b&owner=`: each lock released, or why not, in one answer.
pub(super) async fn release(State(state): State<AppState>, Query(query): Query<ReleaseQuery>) -> ApiResult<Response> {
    let owner = owner_or_pod(&state, query.owner)?;
    let Some(names) = query.names else {
        return Err(ApiError::bad_request(
            "name the locks to release: DELETE /lock?names=a,b,c (one lock: DELETE /lock/{name})",
        ));
    };
    let names = parse_names(names.split(','))?;
    let mut released = Vec::new();
    let mut errors = Vec::new();
    for (name, result) in state.locks.release_set(names, owner.clone()).await {
        match result {
            Ok(token) => released.push(json!({ "name": name.as_str(), "token": token })),
            Err(e) => {
                let error = lock_error(&state, &name, e);
                errors.push(json!({ "name": name.as_str(), "error": error.code, "message": error.message }));
            }
        }
    }
    Ok(axum::Json(json!({ "owner": owner, "released": released, "errors": errors })).into_response())
}

fn parse_names<'a>(names: impl Iterator<Item = &'a str>) -> ApiResult<Vec<Name>> {
    let names: Vec<Name> = names.map(|n| Name::new("lock", n.trim())).collect::<Result<_, _>>()?;
    if names.is_empty() || names.len() > MAX_SET {
        return Err(ApiError::bad_request(format!("\"names\" must name 1 to {MAX_SET} locks")));
    }
    Ok(names)
}
