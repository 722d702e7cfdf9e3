//! Liveness and readiness. `/healthz` answers while the process serves; `/readyz` only
//! while a ZooKeeper session is connected, so the kubelet stops routing nothing (the API
//! is local) but the app can wait on it before its first lock.

use std::sync::atomic::{AtomicU8, Ordering};

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
    let (status, body) = match state.session.client() {
        Ok(current) if state.session.is_connected() => {
            (StatusCode::OK, json!({ "status": "ready", "sessionId": format!("{:#x}", current.client.session_id().0) }))
        }
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "suspended", "message": "connection to ZooKeeper lost; reconnecting" }),
        ),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "not-ready", "message": err.to_string() })),
    };
    state.readiness.observe(status == StatusCode::OK, &body);
    (status, Json(body))
}

/// What `/readyz` last answered, so a change is logged once, when it happens, and a
/// kubelet probing every few seconds adds nothing to the log while nothing changes.
#[derive(Debug, Default)]
pub struct Readiness {
    /// 0: not probed yet, 1: ready, 2: not ready.
    last: AtomicU8,
}

impl Readiness {
    fn observe(&self, ready: bool, body: &Value) {
        let now = if ready { 1 } else { 2 };
        let before = self.last.swap(now, Ordering::Relaxed);
        if before == now {
            return;
        }
        if before == 0 && !ready {
            // Still starting: the session's own log tells how connecting goes.
            tracing::debug!("not ready yet: connecting to ZooKeeper");
        } else if ready {
            tracing::info!("ready: the ZooKeeper session is connected");
        } else {
            let reason = body["message"].as_str().unwrap_or_default();
            tracing::warn!(reason, "not ready: /readyz answers 503 until the ZooKeeper session is back");
        }
    }
}
