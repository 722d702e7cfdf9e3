//! `GET /lock/{name}/holders?after=&wait=`: who holds a lock and how many wait, without
//! contending: at once when its version differs from `after`, else at its next change or
//! when `wait` ends. A replica learns its leader (the first holder of a mutex) this way.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paddock_recipes::Name;
use paddock_recipes::lock::{LockError, Observed};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::locks::lock_error;
use crate::error::extract::{Path, Query};
use crate::error::{ApiError, ApiResult, parse_duration};
use crate::locks::View;
use crate::state::AppState;

/// Longest long-poll one request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// How long a first look may take before the answer is 503.
const FIRST_LOOK: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HoldersQuery {
    after: Option<i64>,
    wait: Option<String>,
}

pub(super) async fn holders(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HoldersQuery>,
) -> ApiResult<Response> {
    let name = Name::new("lock", &name)?;
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => parse_duration("wait", w)?.min(MAX_WAIT),
    };
    let mut view = state.locks.observe(&name);
    let looked = tokio::time::timeout(FIRST_LOOK, view.wait_for(|v| !matches!(v, View::Starting))).await.is_ok();
    if !looked {
        return Err(ApiError::unavailable(format!(
            "lock {name}: no answer from ZooKeeper within {FIRST_LOOK:?}; retry"
        )));
    }
    let observed = ready(&state, &name, &view.borrow())?;
    if query.after != Some(observed.version) || wait.is_zero() {
        return Ok(answer(&name, &observed));
    }
    let changed = |v: &View| !matches!(v, View::Ready(o) if o.version == observed.version);
    // Its end (a change, the wait over, or the observer ended) is read from the view.
    let _ = tokio::time::timeout(wait, view.wait_for(changed)).await.map(drop);
    let latest = ready(&state, &name, &view.borrow())?;
    Ok(answer(&name, &latest))
}

fn ready(state: &AppState, name: &Name, view: &View) -> ApiResult<Arc<Observed>> {
    match view {
        View::Ready(observed) => Ok(observed.clone()),
        View::NotProvisioned(path) => Err(lock_error(state, name, LockError::NotProvisioned(path.clone()).into())),
        View::Invalid(e) => Err(lock_error(state, name, LockError::Config(e.clone()).into())),
        View::Failed(reason) => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "zookeeper-error", format!("lock {name}: {reason}")))
        }
        View::Unavailable(reason) => Err(ApiError::unavailable(format!(
            "lock {name}: ZooKeeper cannot be asked now ({reason}); retry when /readyz answers 200"
        ))),
        View::Starting => Err(ApiError::unavailable(format!("lock {name}: not looked at yet; retry"))),
    }
}

/// The lock as `/holders` and `lock.changed` show it.
pub(super) fn describe(name: &Name, observed: &Observed) -> Value {
    json!({
        "name": name.as_str(),
        "version": observed.version,
        "leader": observed.holders.first(),
        "holders": observed.holders,
        "waiters": observed.waiters,
        "maxHolders": observed.max_holders,
    })
}

fn answer(name: &Name, observed: &Observed) -> Response {
    (StatusCode::OK, axum::Json(describe(name, observed))).into_response()
}

/// `lock.changed` for each change of the view (its current state first).
pub(super) fn changes(name: Name, view: watch::Receiver<View>) -> impl futures::Stream<Item = Value> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::WatchStream::new(view).filter_map(move |v| match v {
        View::Ready(observed) => {
            let mut event = describe(&name, &observed);
            event["type"] = json!("lock.changed");
            Some(event)
        }
        _ => None,
    })
}
