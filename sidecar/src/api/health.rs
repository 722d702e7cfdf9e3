//! Liveness and readiness. `/healthz` answers while the process serves; `/readyz` only
//! while a ZooKeeper session is connected, so the kubelet stops routing nothing (the API
//! is local) but the app can wait on it before its first lock.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.session.client() {
        Ok(current) if state.session.is_connected() => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "sessionId": format!("{:#x}", current.client.session_id().0) })),
        ),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "suspended", "message": "connection to ZooKeeper lost; reconnecting" })),
        ),
        Err(err) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not-ready", "message": err.to_string() })))
        }
    }
}
