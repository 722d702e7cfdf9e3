//! `GET /status`: this pod at a glance, without asking ZooKeeper: its session, the locks
//! it holds, waits for or lost, and the queue items its app holds. `paddock status` shows
//! it; `paddock lock` learns the session timeout from it (the longest silence a hold
//! survives).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/status", get(status))
}

async fn status(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "pod": state.locks.pod(),
        "namespace": state.locks.namespace().as_str(),
        "session": {
            "connected": state.session.is_connected(),
            "timeoutMs": state.session.session_timeout().as_millis() as u64,
        },
        "locks": state.locks.owned(),
        "inFlight": state.queues.in_flight(),
    }))
}
