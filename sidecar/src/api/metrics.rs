//! `GET /metrics` (Prometheus text format) and `GET /openapi.json`.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

/// The API's description, kept beside the code and checked against the router by a test.
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

pub fn router() -> Router<AppState> {
    scrape_router().route("/openapi.json", get(openapi))
}

/// `/metrics` alone: what the probe port serves beside the probes.
pub fn scrape_router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The gauges of what is there now are set from the services' state first.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.locks.report_gauges();
    state.queues.report_gauges();
    state.metrics.zookeeper_connected.set(i64::from(state.session.is_connected()));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
}
